//! Integrated Gradients (Sundararajan et al. 2017).

use cxr_core::Result;
use cxr_core::explain::{ExplainInput, Explainer, ExplainerConfig, Explanation, Heatmap, Param};
use cxr_core::models::Classifier;
use tch::{Kind, Tensor};

/// Integrated Gradients: (input - baseline) times the gradient of the target logit averaged
/// along the straight path from the baseline to the input.
///
/// Baseline: all zeros, i.e. every pixel at the lung mean of the standardised input (a lung
/// with no structure). Path integral: the midpoint Riemann sum with `steps` points, evaluated in
/// batches. By completeness the attributions add up to logit(input) - logit(baseline); the gap
/// is reported as `completeness_gap` (relative). The heatmap shows the positive part (evidence
/// for the class), saturating at the `clip` percentile; the share of negative attribution is
/// reported too.
pub struct IntegratedGradients {
    steps: usize,
    batch: usize,
    clip: f32,
}

impl IntegratedGradients {
    /// `steps` path points, evaluated `batch` at a time (both at least 1).
    #[must_use]
    pub fn new(steps: usize, batch: usize) -> Self {
        Self {
            steps: steps.max(1),
            batch: batch.max(1),
            clip: 99.5,
        }
    }

    pub fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        let steps = config.get("steps")?;
        let batch = config.get("batch")?;
        let clip = config.get("clip")?;
        if steps == 0 || batch == 0 || !(50.0..=100.0).contains(&clip) {
            return Err(config.error(
                "integrated-gradients: steps and batch must be positive, clip in 50..=100",
            ));
        }
        Ok(Box::new(Self { steps, batch, clip }))
    }

    /// Attributions `[1, 1, H, W]` and the target logit at the input and at the baseline.
    pub fn attributions(
        &self,
        model: &dyn Classifier,
        input: &Tensor,
        target: usize,
    ) -> Result<(Tensor, f64, f64)> {
        self.attributions_reporting(model, input, target, &|_, _| Ok(()))
    }

    /// [`IntegratedGradients::attributions`], telling `progress` the steps done.
    fn attributions_reporting(
        &self,
        model: &dyn Classifier,
        input: &Tensor,
        target: usize,
        progress: &dyn Fn(usize, usize) -> Result<()>,
    ) -> Result<(Tensor, f64, f64)> {
        let device = model.device();
        let x = input.f_to_device(device)?.f_detach()?;
        let baseline = x.f_zeros_like()?;
        let mut gradient_sum = x.f_zeros_like()?;
        let alphas: Vec<f32> = (0..self.steps)
            .map(|i| (i as f32 + 0.5) / self.steps as f32)
            .collect();
        let mut done = 0;
        for chunk in alphas.chunks(self.batch) {
            let a = Tensor::from_slice(chunk)
                .to_device(device)
                .view([-1, 1, 1, 1]);
            let points = (&baseline + (&x - &baseline) * a)
                .f_detach()?
                .set_requires_grad(true);
            let score = model
                .logits(&points)?
                .f_select(1, target as i64)?
                .f_sum(Kind::Float)?;
            let grads = Tensor::f_run_backward(&[&score], &[&points], false, false)?;
            gradient_sum += grads[0].f_sum_dim_intlist([0i64].as_slice(), true, Kind::Float)?;
            done += chunk.len();
            progress(done, self.steps)?;
        }
        let attributions = (&x - &baseline) * gradient_sum / self.steps as f64;
        let logit = |t: &Tensor| -> Result<f64> {
            Ok(tch::no_grad(|| model.logits(t))?
                .f_select(1, target as i64)?
                .double_value(&[0]))
        };
        Ok((attributions, logit(&x)?, logit(&baseline)?))
    }
}

impl Explainer for IntegratedGradients {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let (attributions, at_input, at_baseline) =
            self.attributions_reporting(model, input.input, input.target, &|done, total| {
                input.report_progress(done, total)
            })?;
        let total = attributions.sum(Kind::Double).double_value(&[]);
        let negative = attributions
            .clamp_max(0.0)
            .abs()
            .sum(Kind::Double)
            .double_value(&[]);
        let absolute = attributions.abs().sum(Kind::Double).double_value(&[]);
        let expected = at_input - at_baseline;
        let mut details = serde_json::Map::new();
        details.insert("steps".into(), self.steps.into());
        details.insert("baseline".into(), "zeros (lung mean)".into());
        details.insert("attribution_sum".into(), total.into());
        details.insert("logit_difference".into(), expected.into());
        details.insert(
            "completeness_gap".into(),
            ((total - expected).abs() / expected.abs().max(1e-6)).into(),
        );
        details.insert(
            "negative_share".into(),
            (negative / absolute.max(1e-12)).into(),
        );
        // Pixel attributions are spiky: a few pixels would take the whole colour range, so the
        // map saturates at the `clip` percentile of the positive attributions (display only;
        // `attribution_sum` and the completeness check use the raw values).
        let raw = Heatmap::from_tensor(&attributions)?;
        let mut positive: Vec<f32> = raw.values.iter().copied().filter(|&v| v > 0.0).collect();
        positive.sort_by(f32::total_cmp);
        let cap = positive
            .get(
                ((positive.len() as f32 * self.clip / 100.0) as usize)
                    .min(positive.len().saturating_sub(1)),
            )
            .copied();
        let values = raw
            .values
            .iter()
            .map(|&v| cap.map_or(v, |c| (v / c.max(f32::MIN_POSITIVE)).min(1.0)))
            .collect();
        details.insert("clip_percentile".into(), f64::from(self.clip).into());
        Ok(Explanation {
            heatmap: Heatmap::from_relevance(values, raw.width, raw.height),
            details,
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "integrated-gradients",
    summary: "Integrated Gradients from an all-lung-mean baseline, with its completeness check",
    needs: cxr_core::models::Gradients::Input,
    params: &[
        Param { name: "steps", default: "32", help: "points on the path (midpoint Riemann sum)" },
        Param { name: "batch", default: "16", help: "path points per forward/backward pass" },
        Param { name: "clip", default: "99.5", help: "percentile of positive attribution shown as 1" },
    ],
    ctor: IntegratedGradients::from_config,
}
