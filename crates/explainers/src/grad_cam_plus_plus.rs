//! Grad-CAM++ (Chattopadhay et al. 2018): like Grad-CAM, but each position's gradient is
//! weighted so that several separate regions of evidence all show up.

use cxr_core::Result;
use cxr_core::explain::{ExplainInput, Explainer, ExplainerConfig, Explanation, Param};
use cxr_core::models::Classifier;
use tch::Kind;

use crate::cam::{Gradients, class_activation_map, features_and_gradients};

/// Grad-CAM++ channel weights: sum over positions of relu(g) * g^2 / (2 g^2 + sum(A) g^3), the
/// usual closed form under an exponential of the class score.
pub struct GradCamPlusPlus {
    gradients: Gradients,
}

impl GradCamPlusPlus {
    pub fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        Ok(Box::new(Self {
            gradients: Gradients::from_config(config)?,
        }))
    }
}

impl Explainer for GradCamPlusPlus {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let (a, g) = features_and_gradients(model, input.input, input.target, self.gradients)?;
        let g2 = g.f_pow_tensor_scalar(2)?;
        let g3 = g.f_pow_tensor_scalar(3)?;
        let sum_a = a.f_sum_dim_intlist([1i64, 2].as_slice(), true, Kind::Float)?;
        let denominator = (&g2 * 2.0 + &sum_a * &g3) + 1e-7;
        let alpha = (&g2 / denominator).f_where_self(&g.f_ne(0.0)?, &g.f_zeros_like()?)?;
        let weights =
            (g.f_relu()? * alpha).f_sum_dim_intlist([1i64, 2].as_slice(), false, Kind::Float)?;
        let heatmap = class_activation_map(&a, &weights, input.input)?;
        Ok(Explanation {
            heatmap,
            details: serde_json::Map::new(),
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "grad-cam-plus-plus",
    summary: "Grad-CAM++: position-weighted gradients, better when evidence lies in several regions",
    needs: cxr_core::models::Gradients::FeatureMap,
    params: &[Param { name: "gradients", default: "auto", help: "auto (closed form for a GAP+linear head) or autograd" }],
    ctor: GradCamPlusPlus::from_config,
}
