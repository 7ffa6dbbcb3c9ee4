//! The shortcut defences that are loss terms: the source adversary (gradient reversal) and the
//! penalty on class-activation mass outside the lungs.

use tch::{Kind, Tensor, nn, nn::OptimizerConfig};

use crate::Result;
use crate::train::TrainOptions;

/// `x` in the forward pass, `-weight` times the gradient in the backward pass.
fn reverse_gradient(x: &Tensor, weight: f64) -> Tensor {
    x * (-weight) + (x * (1.0 + weight)).detach()
}

/// Share of each image's positive class-activation map (true class) outside the lungs.
pub(super) fn outside_share(features: &Tensor, fc: &Tensor, y: &Tensor, lungs: &Tensor) -> Tensor {
    let (h, w) = (features.size()[2], features.size()[3]);
    let weights = fc.index_select(0, y).unsqueeze(-1).unsqueeze(-1); // [N, C, 1, 1]
    let cam = (features * weights)
        .sum_dim_intlist(1, false, Kind::Float)
        .relu(); // [N, h, w]
    let inside = lungs.adaptive_avg_pool2d([h, w]).squeeze_dim(1);
    let total = cam.sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float) + 1e-6;
    let outside: Tensor = 1.0 - inside;
    let out = (&cam * outside).sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float);
    (out / total).mean(Kind::Float)
}

/// A small head that predicts an image's source from the classifier's pooled features and the
/// true class; its gradient reaches the features reversed, so they lose what tells the sources
/// of one class apart (conditioning on the class leaves the class information alone).
pub(super) struct SourceAdversary {
    _vs: nn::VarStore,
    net: nn::Sequential,
    classes: i64,
    pub(super) optimizer: nn::Optimizer,
}

impl SourceAdversary {
    pub(super) fn new(
        width: i64,
        classes: usize,
        sources: usize,
        options: &TrainOptions,
    ) -> Result<Self> {
        let vs = nn::VarStore::new(options.device);
        let linear = nn::LinearConfig::default();
        let net = nn::seq()
            .add(nn::linear(
                vs.root() / "a1",
                width + classes as i64,
                64,
                linear,
            ))
            .add_fn(Tensor::relu)
            .add(nn::linear(vs.root() / "a2", 64, sources as i64, linear));
        let optimizer = nn::Adam::default().build(&vs, options.learning_rate)?;
        Ok(Self {
            _vs: vs,
            net,
            classes: classes as i64,
            optimizer,
        })
    }

    /// The source loss of one batch (its gradients zeroed first, so that the caller's backward
    /// pass fills them for [`nn::Optimizer::step`]).
    pub(super) fn loss(
        &mut self,
        features: &Tensor,
        y: &Tensor,
        sources: &Tensor,
        weight: f64,
    ) -> Tensor {
        let pooled = features.mean_dim([2i64, 3].as_slice(), false, Kind::Float);
        let onehot = y.one_hot(self.classes).to_kind(Kind::Float);
        let input = Tensor::cat(&[reverse_gradient(&pooled, weight), onehot], 1);
        self.optimizer.zero_grad();
        input.apply(&self.net).cross_entropy_for_logits(sources)
    }
}
