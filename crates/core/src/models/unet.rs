//! U-Net (Ronneberger et al. 2015) with batch norm: four 2x down-steps, transposed-convolution
//! up-steps, skip connections by concatenation, one output logit per pixel.

use serde::{Deserialize, Serialize};
use tch::Tensor;
use tch::nn::{self, ModuleT};

use super::resnet::batch_norm;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: i64,
    /// Channels of the first stage; each deeper stage doubles them.
    pub base: i64,
    /// Number of 2x down-steps (the input side must be divisible by 2^depth).
    pub depth: usize,
}

impl UNetConfig {
    /// `base` channels, depth 4. At 16 (the segmenter shipped before the lean ones): 1.9 M
    /// parameters, 6.0 GFLOP per 256x256 image; at 8: 0.49 M, 1.16 GFLOP at 224x224 (at depth
    /// 5, tried and not shipped: 1.9 M, 1.43 GFLOP; see the segmenter's card).
    #[must_use]
    pub fn with_base(base: i64) -> Self {
        Self {
            in_channels: 1,
            base,
            depth: 4,
        }
    }

    /// How many times smaller the bottleneck's grid is than the input's: the input side must
    /// be a multiple of it.
    #[must_use]
    pub fn down_sampling(&self) -> u32 {
        1 << self.depth.min(16)
    }

    /// Refuses shapes cxr does not run (one input channel) or that no file of at most
    /// [`super::MAX_MODEL_BYTES`] can hold: base 1-64 channels, depth 1-5 (the 256 px input
    /// halves that often). Checked before any parameter is allocated.
    pub fn check(&self) -> Result<(), String> {
        if self.in_channels != 1 {
            return Err(format!(
                "architecture.in_channels is {}; cxr feeds the segmenter one gray channel",
                self.in_channels
            ));
        }
        if !(1..=64).contains(&self.base) {
            return Err(format!(
                "architecture.base is {}; expected 1 to 64 channels",
                self.base
            ));
        }
        if !(1..=5).contains(&self.depth) {
            return Err(format!(
                "architecture.depth is {}; expected 1 to 5",
                self.depth
            ));
        }
        Ok(())
    }
}

/// Two 3x3 convolutions, each followed by batch norm and `ReLU`.
#[derive(Debug)]
struct DoubleConv {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
}

impl DoubleConv {
    fn new(p: &nn::Path, cin: i64, cout: i64) -> Self {
        let config = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        Self {
            conv1: nn::conv2d(p / "conv1", cin, cout, 3, config),
            bn1: batch_norm(p / "bn1", cout),
            conv2: nn::conv2d(p / "conv2", cout, cout, 3, config),
            bn2: batch_norm(p / "bn2", cout),
        }
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let ys = xs.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        ys.apply(&self.conv2).apply_t(&self.bn2, train).relu()
    }
}

#[derive(Debug)]
pub struct UNet {
    down: Vec<DoubleConv>,
    bottleneck: DoubleConv,
    up: Vec<(nn::ConvTranspose2D, DoubleConv)>,
    head: nn::Conv2D,
}

impl UNet {
    #[must_use]
    pub fn new(p: &nn::Path, config: &UNetConfig) -> Self {
        let width = |level: usize| config.base << level;
        let mut cin = config.in_channels;
        let down = (0..config.depth)
            .map(|level| {
                let block = DoubleConv::new(&(p / format!("down{level}")), cin, width(level));
                cin = width(level);
                block
            })
            .collect();
        let bottleneck = DoubleConv::new(&(p / "bottleneck"), cin, width(config.depth));
        let up = (0..config.depth)
            .rev()
            .map(|level| {
                let q = p / format!("up{level}");
                let step = nn::ConvTransposeConfig {
                    stride: 2,
                    ..Default::default()
                };
                let upconv =
                    nn::conv_transpose2d(&q / "upconv", width(level + 1), width(level), 2, step);
                (
                    upconv,
                    DoubleConv::new(&(&q / "conv"), 2 * width(level), width(level)),
                )
            })
            .collect();
        let head = nn::conv2d(p / "head", width(0), 1, 1, nn::ConvConfig::default());
        Self {
            down,
            bottleneck,
            up,
            head,
        }
    }
}

impl ModuleT for UNet {
    /// # Shapes
    /// `[N, in_channels, H, W]` -> `[N, 1, H, W]` lung logits
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut skips = Vec::with_capacity(self.down.len());
        let mut ys = xs.shallow_clone();
        for block in &self.down {
            let y = block.forward_t(&ys, train);
            ys = y.max_pool2d_default(2);
            skips.push(y);
        }
        ys = self.bottleneck.forward_t(&ys, train);
        for ((upconv, block), skip) in self.up.iter().zip(skips.iter().rev()) {
            let up = ys.apply(upconv);
            ys = block.forward_t(&Tensor::cat(&[skip, &up], 1), train);
        }
        ys.apply(&self.head)
    }
}
