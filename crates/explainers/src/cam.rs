//! What Grad-CAM and Grad-CAM++ share: the last feature map, its gradients, and upsampling.

use cxr_core::explain::{ExplainerConfig, Heatmap};
use cxr_core::models::Classifier;
use cxr_core::{CoreError, Result};
use tch::{Kind, Tensor};

/// How to obtain d(logit)/d(feature map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gradients {
    /// Closed form when the head is global average pooling plus a linear layer, else autograd.
    Auto,
    /// Always a backward pass.
    Autograd,
}

impl Gradients {
    pub fn from_config(config: &ExplainerConfig) -> Result<Self> {
        match config.get::<String>("gradients")?.as_str() {
            "auto" => Ok(Self::Auto),
            "autograd" => Ok(Self::Autograd),
            other => Err(config.error(format!("gradients={other}: expected auto or autograd"))),
        }
    }
}

/// Feature map `[C, h, w]` and the gradient of the target logit (before softmax) with respect to
/// it, same shape.
pub fn features_and_gradients(
    model: &dyn Classifier,
    input: &Tensor,
    target: usize,
    how: Gradients,
) -> Result<(Tensor, Tensor)> {
    let no_features = || CoreError::Unsupported {
        reason: "this classifier exposes no feature map".into(),
    };
    if how == Gradients::Auto
        && let Some(weight) = model.linear_head()
    {
        // logit_k = sum_c w[k, c] * mean_ij A[c, i, j] + b_k, so dlogit_k / dA[c, i, j] is
        // w[k, c] / (h w) at every position: one forward pass, no backward.
        let (features, _) =
            tch::no_grad(|| model.features_and_logits(input)).ok_or_else(no_features)??;
        let features = features.f_get(0)?;
        let size = features.size();
        let area = (size[1] * size[2]) as f64;
        let per_channel = weight
            .f_get(target as i64)?
            .f_detach()?
            .f_div_scalar(area)?;
        let gradients = per_channel
            .f_view([size[0], 1, 1])?
            .f_expand(&size, false)?;
        return Ok((features, gradients));
    }
    let (features, logits) = model.features_and_logits(input).ok_or_else(no_features)??;
    let score = logits.f_select(1, target as i64)?.f_sum(Kind::Float)?;
    let gradients = Tensor::f_run_backward(&[&score], &[&features], false, false)?;
    Ok((features.f_detach()?.f_get(0)?, gradients[0].f_get(0)?))
}

/// Weighted channel sum, `ReLU`, bilinear upsampling to the input grid, scaled to [0, 1].
pub fn class_activation_map(
    features: &Tensor,
    weights: &Tensor,
    input: &Tensor,
) -> Result<Heatmap> {
    let size = input.size();
    let cam = (features * weights.f_view([-1, 1, 1])?)
        .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Float)?
        .f_relu()?;
    let (h, w) = (cam.size()[0], cam.size()[1]);
    let up =
        cam.f_view([1, 1, h, w])?
            .f_upsample_bilinear2d([size[2], size[3]], false, None, None)?;
    Heatmap::from_tensor(&up)
}
