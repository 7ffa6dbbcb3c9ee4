//! Grad-CAM (Selvaraju et al. 2017): the last convolutional feature maps weighted by the
//! spatially averaged gradient of the target class's logit, `ReLU`, upsampled to the input.

use cxr_core::Result;
use cxr_core::explain::{ExplainInput, Explainer, ExplainerConfig, Explanation, Param};
use cxr_core::models::Classifier;
use tch::Kind;

use crate::cam::{Gradients, class_activation_map, features_and_gradients};

/// Gradient-weighted class activation map of the classifier's last convolutional layer.
///
/// The gradient is that of the target class's logit (before softmax), so the map is
/// class-specific. With a global-average-pooling + linear head the channel weights come from
/// the forward pass in closed form (no backward pass); `gradients=autograd` forces a backward.
pub struct GradCam {
    gradients: Gradients,
}

impl GradCam {
    pub fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        Ok(Box::new(Self {
            gradients: Gradients::from_config(config)?,
        }))
    }
}

impl Explainer for GradCam {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let (features, gradients) =
            features_and_gradients(model, input.input, input.target, self.gradients)?;
        let weights = gradients.f_mean_dim([1i64, 2].as_slice(), false, Kind::Float)?;
        let heatmap = class_activation_map(&features, &weights, input.input)?;
        Ok(Explanation {
            heatmap,
            details: serde_json::Map::new(),
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "grad-cam",
    summary: "Gradient-weighted class activation map of the last convolutional layer",
    needs: cxr_core::models::Gradients::FeatureMap,
    params: &[Param { name: "gradients", default: "auto", help: "auto (closed form for a GAP+linear head) or autograd" }],
    ctor: GradCam::from_config,
}
