//! Occlusion (Zeiler and Fergus 2014).

use cxr_core::Result;
use cxr_core::explain::{ExplainInput, Explainer, ExplainerConfig, Explanation, Heatmap, Param};
use cxr_core::models::{Classifier, target_probabilities};
use tch::Tensor;

/// Occlusion: slide a square window over the input, hide it (set to 0, the lung mean), and
/// record how much the target class's probability drops; each pixel gets the mean drop of
/// the windows that covered it. Windows are evaluated in batches.
pub struct Occlusion {
    window: usize,
    stride: usize,
    batch: usize,
}

impl Occlusion {
    pub fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        let window = config.get("window")?;
        let stride = config.get("stride")?;
        let batch = config.get("batch")?;
        if window == 0 || stride == 0 || batch == 0 {
            return Err(config.error("occlusion: window, stride and batch must be positive"));
        }
        Ok(Box::new(Self {
            window,
            stride,
            batch,
        }))
    }
}

/// Window origins along one axis, the last one flush with the edge.
fn origins(length: usize, window: usize, stride: usize) -> Vec<usize> {
    let window = window.min(length);
    let mut starts: Vec<usize> = (0..=length - window).step_by(stride).collect();
    if starts.last() != Some(&(length - window)) {
        starts.push(length - window);
    }
    starts
}

impl Explainer for Occlusion {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let size = input.input.size();
        let (h, w) = (size[2] as usize, size[3] as usize);
        let window = self.window.min(h).min(w);
        let windows: Vec<(usize, usize)> = origins(h, window, self.stride)
            .into_iter()
            .flat_map(|y| {
                origins(w, window, self.stride)
                    .into_iter()
                    .map(move |x| (y, x))
            })
            .collect();
        let x = input.input.f_to_device(model.device())?;
        let probability = |batch: &Tensor| target_probabilities(model, batch, input.target);
        let reference = probability(&x)?.double_value(&[0]) as f32;
        let mut drop = vec![0.0f32; h * w];
        let mut covered = vec![0.0f32; h * w];
        let mut done = 0;
        for chunk in windows.chunks(self.batch) {
            let mut keep = vec![1.0f32; chunk.len() * h * w];
            for (k, &(y0, x0)) in chunk.iter().enumerate() {
                for y in y0..y0 + window {
                    keep[k * h * w + y * w + x0..k * h * w + y * w + x0 + window].fill(0.0);
                }
            }
            let keep = Tensor::from_slice(&keep)
                .view([chunk.len() as i64, 1, h as i64, w as i64])
                .to_device(x.device());
            let probs =
                Vec::<f32>::try_from(probability(&(&x * keep))?.to_device(tch::Device::Cpu))?;
            for (&(y0, x0), p) in chunk.iter().zip(probs) {
                for y in y0..y0 + window {
                    for i in y * w + x0..y * w + x0 + window {
                        drop[i] += reference - p;
                        covered[i] += 1.0;
                    }
                }
            }
            done += chunk.len();
            input.report_progress(done, windows.len())?;
        }
        let relevance = drop
            .iter()
            .zip(&covered)
            .map(|(d, c)| d / c.max(1.0))
            .collect();
        let mut details = serde_json::Map::new();
        details.insert("windows".into(), windows.len().into());
        details.insert("window".into(), window.into());
        details.insert("stride".into(), self.stride.into());
        Ok(Explanation {
            heatmap: Heatmap::from_relevance(relevance, w, h),
            details,
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "occlusion",
    summary: "Drop in the class probability when a sliding square window is hidden",
    needs: cxr_core::models::Gradients::None,
    params: &[
        Param { name: "window", default: "24", help: "side of the hidden square, in input pixels" },
        Param { name: "stride", default: "12", help: "step between windows" },
        Param { name: "batch", default: "64", help: "occluded images per forward pass" },
    ],
    ctor: Occlusion::from_config,
}

#[cfg(test)]
mod tests {
    #[test]
    fn windows_reach_the_far_edge() {
        assert_eq!(super::origins(224, 24, 12).last(), Some(&200));
        assert_eq!(super::origins(10, 4, 4), vec![0, 4, 6]);
        assert_eq!(super::origins(3, 8, 2), vec![0]);
    }
}
