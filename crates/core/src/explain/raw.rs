//! Raw outputs (`cxr explain --raw DIR`): the arrays behind an overlay, as `NumPy` `.npy` files,
//! and an index naming them, so that a researcher can analyse and compare maps further.
//!
//! Per image `STEM` (the file name without its extension), in DIR:
//! - `STEM.lung_mask.npy`: `uint8` `[height, width]`, 1 lung, 0 not (the segmenter's mask).
//! - `STEM.METHOD.heatmap.npy`: `float32` `[height, width]` in [0, 1], the heatmap at the
//!   radiograph's own resolution (bilinear from the classifier's grid, 0 outside its crop; the
//!   overlay also fades it outside the lungs, this does not).
//! - `STEM.METHOD.heatmap_grid.npy`: `float32` `[224, 224]`, the heatmap on the classifier's
//!   input grid as the explainer made it: the report's `heatmap` summary is computed on it.
//! - For methods with superpixels (LIME): `STEM.METHOD.segments.npy` (`int32` `[height,
//!   width]`, the superpixel label of each pixel, -1 outside the crop),
//!   `STEM.METHOD.segments_grid.npy` (`int32` `[224, 224]`) and `STEM.METHOD.weights.npy`
//!   (`float64` `[superpixels]`, the weight of each label).
//! - `STEM.raw.json`: the index ([`RawIndex`], schema in `docs/schema/raw-index.schema.json`).

use std::path::Path;

use serde::Serialize;

use super::{Explanation, Segments};
use crate::pipeline::Analysis;
use crate::preprocess::CropBox;
use crate::{Result, fsutil, npy};

/// What `STEM.raw.json` says: the image, where the classifier's grid lies on it, and the files.
#[derive(Debug, Clone, Serialize)]
pub struct RawIndex {
    pub sha256: String,
    /// The radiograph's size: the shape of the full-resolution arrays is `[height, width]`.
    pub width: u32,
    pub height: u32,
    /// The classifier's square input in radiograph pixels: grid cell (u, v) covers
    /// `x0 + u * side / grid` .. `x0 + (u + 1) * side / grid` (likewise y).
    pub crop: CropBox,
    /// Side of the classifier's grid (the shape of the `_grid` arrays is `[grid, grid]`).
    pub grid: usize,
    /// File name of the lung mask.
    pub lung_mask: String,
    pub methods: Vec<RawMethod>,
}

/// One method's files (names relative to the index's folder).
#[derive(Debug, Clone, Serialize)]
pub struct RawMethod {
    pub method: String,
    /// The class explained.
    pub target: String,
    pub heatmap: String,
    pub heatmap_grid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superpixels: Option<RawSuperpixels>,
}

/// A superpixel method's label maps and weights.
#[derive(Debug, Clone, Serialize)]
pub struct RawSuperpixels {
    pub segments: String,
    pub segments_grid: String,
    pub weights: String,
    /// The labels the method selected (drawn on the overlay), strongest first.
    pub selected: Vec<u32>,
}

/// Writes the raw arrays of `explanations` (`(method, target, explanation)`) of the analysed
/// image `stem` into `dir`, each file atomically, the index last; returns the index.
pub fn write(
    dir: &Path,
    stem: &str,
    sha256: &str,
    analysis: &Analysis,
    explanations: &[(&str, &str, &Explanation)],
) -> Result<RawIndex> {
    let (width, height) = analysis.mask.dimensions();
    let full = [height as usize, width as usize];
    let crop = analysis.input.crop;
    let save = |name: String, bytes: Vec<u8>| -> Result<String> {
        fsutil::write_atomic(&dir.join(&name), &bytes)?;
        Ok(name)
    };
    let lung: Vec<u8> = analysis
        .mask
        .as_raw()
        .iter()
        .map(|&p| u8::from(p >= 128))
        .collect();
    let lung_mask = save(format!("{stem}.lung_mask.npy"), npy::encode(&full, &lung))?;
    let mut methods = Vec::with_capacity(explanations.len());
    for &(method, target, explanation) in explanations {
        let heat = &explanation.heatmap;
        let cells = [heat.height, heat.width];
        let prefix = format!("{stem}.{method}");
        let original = heat.to_original(&crop, width, height);
        let superpixels = match &explanation.segments {
            Some(segments) => Some(RawSuperpixels {
                segments: save(
                    format!("{prefix}.segments.npy"),
                    npy::encode(
                        &full,
                        &signed(&segments.to_original(
                            heat.width,
                            heat.height,
                            &crop,
                            width,
                            height,
                        )),
                    ),
                )?,
                segments_grid: save(
                    format!("{prefix}.segments_grid.npy"),
                    npy::encode(&cells, &signed(&segments.labels)),
                )?,
                weights: save(
                    format!("{prefix}.weights.npy"),
                    npy::encode(&[segments.weights.len()], &segments.weights),
                )?,
                selected: segments.selected.clone(),
            }),
            None => None,
        };
        methods.push(RawMethod {
            method: method.to_owned(),
            target: target.to_owned(),
            heatmap: save(
                format!("{prefix}.heatmap.npy"),
                npy::encode(&full, &original.values),
            )?,
            heatmap_grid: save(
                format!("{prefix}.heatmap_grid.npy"),
                npy::encode(&cells, &heat.values),
            )?,
            superpixels,
        });
    }
    let index = RawIndex {
        sha256: sha256.to_owned(),
        width,
        height,
        crop,
        grid: crate::preprocess::CLASSIFIER_SIDE as usize,
        lung_mask,
        methods,
    };
    let json = serde_json::to_vec_pretty(&index)
        .map_err(|e| crate::CoreError::internal("serialising the raw index", e))?;
    fsutil::write_atomic(&dir.join(format!("{stem}.raw.json")), &json)?;
    Ok(index)
}

/// Labels as numpy's `int32`, [`Segments::OUTSIDE`] as -1.
fn signed(labels: &[u32]) -> Vec<i32> {
    labels
        .iter()
        .map(|&l| {
            if l == Segments::OUTSIDE {
                -1
            } else {
                i32::try_from(l).unwrap_or(-1)
            }
        })
        .collect()
}
