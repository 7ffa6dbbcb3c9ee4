//! RISE (Petsiuk et al. 2018): randomised input sampling.

use cxr_core::Result;
use cxr_core::explain::{ExplainInput, Explainer, ExplainerConfig, Explanation, Heatmap, Param};
use cxr_core::models::{Classifier, target_probabilities};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

/// RISE: average of random smooth masks weighted by the target probability of the masked input.
///
/// Each mask is a `cells` x `cells` grid of cells kept with probability `keep`, upsampled
/// bilinearly to slightly more than the input and shifted by a random offset (so cell edges do
/// not align), then applied as a soft mask toward 0 (the lung mean). The map is
/// `sum_i p_i M_i / (N keep)`.
pub struct Rise {
    masks: usize,
    cells: usize,
    keep: f64,
    batch: usize,
    seed: u64,
}

impl Rise {
    pub fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        let rise = Self {
            masks: config.get("masks")?,
            cells: config.get("cells")?,
            keep: config.get("keep")?,
            batch: config.get("batch")?,
            seed: config.get("seed")?,
        };
        if rise.masks == 0
            || rise.cells == 0
            || rise.batch == 0
            || !(0.0 < rise.keep && rise.keep <= 1.0)
        {
            return Err(config.error("rise: needs masks, cells, batch >= 1 and 0 < keep <= 1"));
        }
        Ok(Box::new(rise))
    }

    /// `n` soft masks `[n, 1, h, w]`.
    fn masks(&self, n: usize, h: i64, w: i64, rng: &mut StdRng) -> Tensor {
        let c = self.cells as i64;
        let grid: Vec<f32> = (0..n as i64 * c * c)
            .map(|_| f32::from(rng.random_bool(self.keep)))
            .collect();
        let (cell_h, cell_w) = ((h + c - 1) / c, (w + c - 1) / c);
        let up = Tensor::from_slice(&grid)
            .view([n as i64, 1, c, c])
            .upsample_bilinear2d([(c + 1) * cell_h, (c + 1) * cell_w], false, None, None);
        let crops: Vec<Tensor> = (0..n as i64)
            .map(|i| {
                let (dy, dx) = (rng.random_range(0..cell_h), rng.random_range(0..cell_w));
                up.get(i).narrow(1, dy, h).narrow(2, dx, w)
            })
            .collect();
        Tensor::stack(&crops, 0)
    }
}

impl Explainer for Rise {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let size = input.input.size();
        let (h, w) = (size[2], size[3]);
        let device = model.device();
        let x = input.input.f_to_device(device)?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut saliency = Tensor::zeros([1, 1, h, w], (Kind::Float, device));
        let mut done = 0;
        while done < self.masks {
            let n = self.batch.min(self.masks - done);
            let masks = self.masks(n, h, w, &mut rng).to_device(device);
            let probs = target_probabilities(model, &(&x * &masks), input.target)?;
            saliency += (masks * probs.f_view([-1, 1, 1, 1])?).f_sum_dim_intlist(
                [0i64].as_slice(),
                true,
                Kind::Float,
            )?;
            done += n;
            input.report_progress(done, self.masks)?;
        }
        let saliency = saliency / (self.masks as f64 * self.keep);
        // RISE values are all positive (expected probability under masking); subtract the
        // minimum so the map shows where evidence is above the baseline level.
        let shifted = &saliency - saliency.min();
        let mut details = serde_json::Map::new();
        details.insert("masks".into(), self.masks.into());
        details.insert("cells".into(), self.cells.into());
        details.insert("keep".into(), self.keep.into());
        details.insert("seed".into(), self.seed.into());
        Ok(Explanation {
            heatmap: Heatmap::from_tensor(&shifted)?,
            details,
            segments: None,
        })
    }
}

cxr_core::register_explainer! {
    name: "rise",
    summary: "RISE: class probability under random smooth masks, averaged per pixel",
    needs: cxr_core::models::Gradients::None,
    params: &[
        Param { name: "masks", default: "1000", help: "random masks" },
        Param { name: "cells", default: "7", help: "grid cells per side of each mask" },
        Param { name: "keep", default: "0.5", help: "probability that a cell is kept" },
        Param { name: "batch", default: "100", help: "masked images per forward pass" },
        Param { name: "seed", default: "0", help: "random seed of the masks" },
    ],
    ctor: Rise::from_config,
}
