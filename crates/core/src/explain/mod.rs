//! Explanations: the [`Explainer`] contract, the registry that collects implementations at link
//! time, heatmaps, and the quality measures applied to every explainer alike.
//!
//! Explainers work on the classifier's own input (the 224x224 preprocessed radiograph) and
//! return a heatmap on that grid; [`Heatmap::to_original`] maps it back onto the radiograph
//! through the crop the preprocessing made.

mod config;
pub mod quality;
pub mod raw;
pub mod registry;
pub mod report;

use std::ops::ControlFlow;

use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use config::ExplainerConfig;
#[doc(hidden)]
pub use inventory;
pub use registry::{ExplainerEntry, Method, MethodSpec, Param};

use crate::models::Classifier;
use crate::preprocess::CropBox;
use crate::{CoreError, Result};

/// What an explainer is asked to explain.
pub struct ExplainInput<'a> {
    /// The preprocessed radiograph, `[1, 1, H, W]` (H = W = 224 for the shipped classifier).
    pub input: &'a Tensor,
    /// The lung mask on the same grid (1 lung, 0 not), row-major.
    pub lung_mask: &'a [f32],
    /// Index of the class to explain (0 is the positive class).
    pub target: usize,
    /// Hears how a long explanation gets on, and may stop it.
    pub progress: Option<Progress<'a>>,
}

/// Told `(done, total)` as an explainer that runs many model evaluations (LIME samples, RISE
/// masks, occlusion windows, IG steps) gets through them, for progress bars and honest ETAs;
/// answers whether to go on. `Break` stops the explainer with [`CoreError::Cancelled`] within
/// one batch (the viewer moved on to another image, or is closing).
pub type Progress<'a> = &'a dyn Fn(usize, usize) -> ControlFlow<()>;

impl ExplainInput<'_> {
    /// Reports `done` of `total` evaluations to [`ExplainInput::progress`], if anyone listens;
    /// [`CoreError::Cancelled`] when it says stop. Explainers call it after every batch.
    pub fn report_progress(&self, done: usize, total: usize) -> Result<()> {
        match self.progress.map(|progress| progress(done, total)) {
            Some(ControlFlow::Break(())) => Err(CoreError::Cancelled),
            _ => Ok(()),
        }
    }
}

/// An explainer's answer. Serialisable so that `cxr explain --raw` can keep it in the result
/// cache next to the report (see [`crate::service::Service::arrays`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    pub heatmap: Heatmap,
    /// Method-specific facts worth reporting (LIME's fit and weights, IG's completeness gap...).
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Superpixel labels on the heatmap's grid and which ones the method selected (LIME), for
    /// drawing their boundaries.
    pub segments: Option<Segments>,
}

/// Superpixels used by an explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segments {
    /// One label per heatmap cell, row-major, numbered from 0.
    pub labels: Vec<u32>,
    pub selected: Vec<u32>,
    /// The method's weight of each label (LIME: the ridge coefficient), indexed by label.
    pub weights: Vec<f64>,
}

impl Segments {
    /// The label of a radiograph pixel outside the classifier's crop.
    pub const OUTSIDE: u32 = u32::MAX;

    /// The labels on the original radiograph (`width` x `height`): each pixel takes the label
    /// of the grid cell (`grid_width` x `grid_height`) it falls in through `crop`, and
    /// [`Segments::OUTSIDE`] where it falls in none.
    #[must_use]
    pub fn to_original(
        &self,
        grid_width: usize,
        grid_height: usize,
        crop: &CropBox,
        width: u32,
        height: u32,
    ) -> Vec<u32> {
        let scale = grid_width as f32 / crop.side;
        (0..height)
            .flat_map(|y| (0..width).map(move |x| (x, y)))
            .map(|(x, y)| {
                let u = ((x as f32 + 0.5 - crop.x0) * scale).floor();
                let v = ((y as f32 + 0.5 - crop.y0) * scale).floor();
                if u < 0.0 || v < 0.0 || u >= grid_width as f32 || v >= grid_height as f32 {
                    Self::OUTSIDE
                } else {
                    self.labels[v as usize * grid_width + u as usize]
                }
            })
            .collect()
    }
}

/// An explanation method. Implementations live one per file in `cxr-explainers` (or anywhere
/// else) and register with [`register_explainer!`](crate::register_explainer).
pub trait Explainer: Send {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation>;
}

/// Non-negative relevance on a grid, scaled to [0, 1].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heatmap {
    pub width: usize,
    pub height: usize,
    /// Row-major values in [0, 1].
    pub values: Vec<f32>,
}

impl Heatmap {
    /// Relevance for the target class: negative values (evidence against) become 0, NaN
    /// becomes 0, and the rest is divided by the maximum. All zero stays all zero.
    #[must_use]
    pub fn from_relevance(mut values: Vec<f32>, width: usize, height: usize) -> Self {
        assert_eq!(values.len(), width * height, "heatmap size");
        for v in &mut values {
            if !v.is_finite() || *v < 0.0 {
                *v = 0.0;
            }
        }
        let max = values.iter().copied().fold(0.0f32, f32::max);
        if max > 0.0 {
            for v in &mut values {
                *v /= max;
            }
        }
        Self {
            width,
            height,
            values,
        }
    }

    /// A `[1, 1, H, W]` float tensor of the relevance.
    pub fn from_tensor(relevance: &Tensor) -> Result<Self> {
        let size = relevance.size();
        let (h, w) = (size[size.len() - 2] as usize, size[size.len() - 1] as usize);
        let values = Vec::<f32>::try_from(
            relevance
                .f_to_kind(tch::Kind::Float)?
                .f_to_device(tch::Device::Cpu)?
                .f_view([-1])?,
        )?;
        Ok(Self::from_relevance(values, w, h))
    }

    /// The heatmap drawn on the original radiograph (`width` x `height`) through the crop the
    /// preprocessing made; 0 outside the crop.
    #[must_use]
    pub fn to_original(&self, crop: &CropBox, width: u32, height: u32) -> Self {
        let scale = self.width as f32 / crop.side;
        let mut values = Vec::with_capacity(width as usize * height as usize);
        for y in 0..height {
            for x in 0..width {
                let u = (x as f32 + 0.5 - crop.x0) * scale - 0.5;
                let v = (y as f32 + 0.5 - crop.y0) * scale - 0.5;
                values.push(self.sample(u, v));
            }
        }
        Self {
            width: width as usize,
            height: height as usize,
            values,
        }
    }

    /// Bilinear sample at grid coordinates (u, v); 0 outside.
    fn sample(&self, u: f32, v: f32) -> f32 {
        if u < -0.5 || v < -0.5 || u > self.width as f32 - 0.5 || v > self.height as f32 - 0.5 {
            return 0.0;
        }
        let u = u.clamp(0.0, (self.width - 1) as f32);
        let v = v.clamp(0.0, (self.height - 1) as f32);
        let (u0, v0) = (u.floor() as usize, v.floor() as usize);
        let (u1, v1) = ((u0 + 1).min(self.width - 1), (v0 + 1).min(self.height - 1));
        let (fu, fv) = (u - u0 as f32, v - v0 as f32);
        let at = |x: usize, y: usize| self.values[y * self.width + x];
        let top = at(u0, v0) * (1.0 - fu) + at(u1, v0) * fu;
        let bottom = at(u0, v1) * (1.0 - fu) + at(u1, v1) * fu;
        top * (1.0 - fv) + bottom * fv
    }

    /// Mean, maximum and the share of pixels above one half: a compact summary for reports.
    #[must_use]
    pub fn summary(&self) -> HeatmapSummary {
        let n = self.values.len().max(1) as f32;
        HeatmapSummary {
            mean: self.values.iter().sum::<f32>() / n,
            max: self.values.iter().copied().fold(0.0, f32::max),
            above_half: self.values.iter().filter(|&&v| v > 0.5).count() as f32 / n,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HeatmapSummary {
    pub mean: f32,
    pub max: f32,
    pub above_half: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_is_clipped_and_scaled() {
        let h = Heatmap::from_relevance(vec![-1.0, 0.0, 2.0, f32::NAN], 2, 2);
        assert_eq!(h.values, vec![0.0, 0.0, 1.0, 0.0]);
        let zero = Heatmap::from_relevance(vec![-1.0; 4], 2, 2);
        assert!(zero.values.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn to_original_places_the_grid_inside_the_crop() {
        // A 4x4 grid whose right half is hot, covering original pixels 10..18 of a 30x20 image.
        let grid = Heatmap::from_relevance(
            (0..16)
                .map(|i| if i % 4 >= 2 { 1.0 } else { 0.0 })
                .collect(),
            4,
            4,
        );
        let crop = CropBox {
            x0: 10.0,
            y0: 2.0,
            side: 8.0,
        };
        let full = grid.to_original(&crop, 30, 20);
        assert_eq!((full.width, full.height), (30, 20));
        let at = |x: usize, y: usize| full.values[y * 30 + x];
        assert_eq!(at(2, 5), 0.0, "outside the crop");
        assert_eq!(at(11, 5), 0.0, "cold half");
        assert!((at(16, 5) - 1.0).abs() < 1e-6, "hot half");
        assert_eq!(at(25, 5), 0.0);
    }
}
