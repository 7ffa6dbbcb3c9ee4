//! Integrated Gradients (Sundararajan et al. 2017).

use cxr_core::explain::{ExplainInput, Explainer, ExplainerConfig, Explanation, Heatmap, Param};
use cxr_core::models::Classifier;
use cxr_core::{CoreError, Result};
use tch::{Kind, Tensor};

/// Integrated Gradients: (input - baseline) times the gradient of the target logit averaged
/// along the straight path from the baseline to the input.
///
/// Baseline: all zeros, i.e. every pixel at the lung mean of the standardised input (a lung
/// with no structure). Path integral: the midpoint Riemann sum with `steps` points, evaluated in
/// batches. By completeness the attributions add up to logit(input) - logit(baseline); the gap
/// is reported as `completeness_gap` (relative). The heatmap shows the positive part (evidence
/// for the class); the share of negative attribution is reported too.
pub struct IntegratedGradients {
    steps: usize,
    batch: usize,
}

impl IntegratedGradients {
    pub fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        let steps = config.get("steps", 32usize)?;
        let batch = config.get("batch", 16usize)?;
        if steps == 0 || batch == 0 {
            return Err(CoreError::Invalid("integrated-gradients: steps and batch must be positive".into()));
        }
        Ok(Box::new(Self { steps, batch }))
    }

    /// Attributions `[1, 1, H, W]` and the target logit at the input and at the baseline.
    pub fn attributions(&self, model: &dyn Classifier, input: &Tensor, target: usize) -> Result<(Tensor, f64, f64)> {
        let device = model.device();
        let x = input.f_to_device(device)?.f_detach()?;
        let baseline = x.f_zeros_like()?;
        let mut gradient_sum = x.f_zeros_like()?;
        let alphas: Vec<f32> = (0..self.steps).map(|i| (i as f32 + 0.5) / self.steps as f32).collect();
        for chunk in alphas.chunks(self.batch) {
            let a = Tensor::from_slice(chunk).to_device(device).view([-1, 1, 1, 1]);
            let points = (&baseline + (&x - &baseline) * a).f_detach()?.set_requires_grad(true);
            let score = model.logits(&points)?.f_select(1, target as i64)?.f_sum(Kind::Float)?;
            let grads = Tensor::f_run_backward(&[&score], &[&points], false, false)?;
            gradient_sum += grads[0].f_sum_dim_intlist([0i64].as_slice(), true, Kind::Float)?;
        }
        let attributions = (&x - &baseline) * gradient_sum / self.steps as f64;
        let logit = |t: &Tensor| -> Result<f64> {
            Ok(tch::no_grad(|| model.logits(t))?.f_select(1, target as i64)?.double_value(&[0]))
        };
        Ok((attributions, logit(&x)?, logit(&baseline)?))
    }
}

impl Explainer for IntegratedGradients {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let (attributions, at_input, at_baseline) = self.attributions(model, input.input, input.target)?;
        let total = attributions.sum(Kind::Double).double_value(&[]);
        let negative = attributions.clamp_max(0.0).abs().sum(Kind::Double).double_value(&[]);
        let absolute = attributions.abs().sum(Kind::Double).double_value(&[]);
        let expected = at_input - at_baseline;
        let mut details = serde_json::Map::new();
        details.insert("steps".into(), self.steps.into());
        details.insert("baseline".into(), "zeros (lung mean)".into());
        details.insert("attribution_sum".into(), total.into());
        details.insert("logit_difference".into(), expected.into());
        details.insert("completeness_gap".into(), ((total - expected).abs() / expected.abs().max(1e-6)).into());
        details.insert("negative_share".into(), (negative / absolute.max(1e-12)).into());
        Ok(Explanation { heatmap: Heatmap::from_tensor(&attributions)?, details, segments: None })
    }
}

cxr_core::register_explainer! {
    name: "integrated-gradients",
    summary: "Integrated Gradients from an all-lung-mean baseline, with its completeness check",
    needs_gradients: false,
    params: &[
        Param { name: "steps", default: "32", help: "points on the path (midpoint Riemann sum)" },
        Param { name: "batch", default: "16", help: "path points per forward/backward pass" },
    ],
    ctor: IntegratedGradients::from_config,
}
