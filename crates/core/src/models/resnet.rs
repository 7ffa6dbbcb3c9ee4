//! A `ResNet` with torchvision's layout and parameter names (`conv1`, `bn1`,
//! `layer{1..4}.{i}.conv1`, `...downsample.0`, `fc`), so the same safetensors load into the
//! `PyTorch` module in `python/cxr_models.py` for side-by-side checks. Widths are configurable:
//! the shipped classifier is ResNet-18's shape at a quarter of its width, on one input channel.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// Shape of a `ResNet` built from basic blocks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub in_channels: i64,
    /// Output channels of each of the four stages.
    pub widths: [i64; 4],
    /// Basic blocks per stage (`[2, 2, 2, 2]` is ResNet-18).
    pub blocks: [usize; 4],
    pub num_classes: i64,
}

impl ResNetConfig {
    /// ResNet-18's shape at a quarter width (16-32-64-128), one gray input channel, two classes:
    /// 0.7 M parameters, a 2.8 MB file, and fast enough for LIME's 1000 forward passes on a CPU.
    #[must_use]
    pub fn resnet18_quarter() -> Self {
        Self {
            in_channels: 1,
            widths: [16, 32, 64, 128],
            blocks: [2, 2, 2, 2],
            num_classes: 2,
        }
    }

    /// Refuses shapes cxr does not run (one input channel) or that no file of at most
    /// [`super::MAX_MODEL_BYTES`] can hold: stage widths 1-512 channels (full ResNet-18's
    /// largest), 1-8 blocks a stage. Checked before any parameter is allocated.
    pub fn check(&self) -> Result<(), String> {
        if self.in_channels != 1 {
            return Err(format!(
                "architecture.in_channels is {}; cxr feeds the classifier one gray channel",
                self.in_channels
            ));
        }
        if let Some(width) = self.widths.iter().find(|w| !(1..=512).contains(*w)) {
            return Err(format!(
                "architecture.widths holds {width}; expected 1 to 512 channels a stage"
            ));
        }
        if let Some(blocks) = self.blocks.iter().find(|b| !(1..=8).contains(*b)) {
            return Err(format!(
                "architecture.blocks holds {blocks}; expected 1 to 8 blocks a stage"
            ));
        }
        Ok(())
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: k / 2,
        bias: false,
        ..Default::default()
    };
    nn::conv2d(p, cin, cout, k, config)
}

/// Batch norm initialised like `PyTorch`'s (weight 1, bias 0).
pub(crate) fn batch_norm(p: nn::Path, c: i64) -> nn::BatchNorm {
    let config = nn::BatchNormConfig {
        ws_init: nn::Init::Const(1.0),
        ..Default::default()
    };
    nn::batch_norm2d(p, c, config)
}

#[derive(Debug)]
struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    downsample: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: &nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| {
            let d = p / "downsample";
            (
                conv(&d / "0", cin, cout, 1, stride),
                batch_norm(&d / "1", cout),
            )
        });
        Self {
            conv1: conv(p / "conv1", cin, cout, 3, stride),
            bn1: batch_norm(p / "bn1", cout),
            conv2: conv(p / "conv2", cout, cout, 3, 1),
            bn2: batch_norm(p / "bn2", cout),
            downsample,
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let ys = ys.apply(&self.conv2).apply_t(&self.bn2, train);
        let shortcut = match &self.downsample {
            Some((c, bn)) => xs.apply(c).apply_t(bn, train),
            None => xs.shallow_clone(),
        };
        (ys + shortcut).relu()
    }
}

/// The network. `features` and `head` are separate so that gradient explainers can reach the
/// last convolutional feature map.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    layers: Vec<Vec<BasicBlock>>,
    fc: nn::Linear,
}

impl ResNet {
    #[must_use]
    pub fn new(p: &nn::Path, config: &ResNetConfig) -> Self {
        let stem = config.widths[0];
        let mut cin = stem;
        let layers = (0..4)
            .map(|stage| {
                let cout = config.widths[stage];
                let stage_path = p / format!("layer{}", stage + 1);
                (0..config.blocks[stage])
                    .map(|i| {
                        let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                        let block = BasicBlock::new(&(&stage_path / i), cin, cout, stride);
                        cin = cout;
                        block
                    })
                    .collect()
            })
            .collect();
        Self {
            conv1: conv(p / "conv1", config.in_channels, stem, 7, 2),
            bn1: batch_norm(p / "bn1", stem),
            layers,
            fc: nn::linear(
                p / "fc",
                config.widths[3],
                config.num_classes,
                nn::LinearConfig::default(),
            ),
        }
    }

    /// The last convolutional feature map.
    ///
    /// # Shapes
    /// `[N, in_channels, H, W]` -> `[N, widths[3], H/32, W/32]`
    pub fn features(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        ys = ys.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in self.layers.iter().flatten() {
            ys = block.forward_t(&ys, train);
        }
        ys
    }

    /// Global average pooling and the linear layer.
    ///
    /// # Shapes
    /// `[N, C, h, w]` -> `[N, num_classes]` logits
    pub fn head(&self, features: &Tensor) -> Tensor {
        features
            .mean_dim([2i64, 3].as_slice(), false, None)
            .apply(&self.fc)
    }

    /// The linear layer's weight, `[num_classes, C]` (Grad-CAM's closed form uses it).
    pub fn fc_weight(&self) -> &Tensor {
        &self.fc.ws
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.head(&self.features(xs, train))
    }
}
