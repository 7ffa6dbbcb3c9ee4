//! Where a radiograph was taken, judged from the picture alone: exposure, noise and sharpness at
//! four scales, and what fills the frame's edge. Each hospital's scanners, processing and habits
//! leave their own mark on these, whatever the disease, and the classifier's own features do not
//! see them (they see the lungs, equalised). One Gaussian per training source; an image far
//! from every one of them was acquired unlike anything the model was fitted on, so its
//! prediction may rest on a hospital the model never learned (`unfamiliar`).
//!
//! Measured in leave-one-source-out (each source's images against Gaussians fitted without it),
//! this is what tells an unseen hospital apart, where the classifier's pooled features do not.

use image::imageops::{self, FilterType};
use serde::{Deserialize, Serialize};

use crate::xray::GrayF32;

/// How many measures [`measures`] returns.
pub const DIM: usize = 17;
/// A source needs this many training images for a Gaussian of its own; smaller ones (a
/// collection of a dozen images from many hospitals) stay unfamiliar.
pub const MIN_SOURCE_IMAGES: usize = 30;
/// Longer side the picture is first brought down to, as the training data was (Lanczos, at
/// most 512 px), so that a full-resolution original and its small copy measure alike.
const WORKING_SIDE: u32 = 512;
/// Side of the square picture the measures are taken on.
const SIDE: u32 = 256;
/// Width of the frame's edge, in pixels of the square picture.
const EDGE: usize = 20;
/// Shrinkage of each source's covariance towards its mean variance (leave-one-source-out on
/// the shared data: 0.05 flagged more held-out images than 0.1 or 0.3 for the same share of
/// the seen sources' test images).
const SHRINK: f64 = 0.05;
/// Folds of the training and validation images whose out-of-fold distances set the threshold:
/// every image is measured as an unseen one of its source would be, so the threshold rests on
/// all of them, not on a validation split of a hundred (whose 99th percentile let 8% of the
/// seen sources' test images through as unfamiliar).
const FOLDS: usize = 5;
/// Share of those distances below the threshold (leave-one-source-out on the shared data,
/// against 0.99: more of each held-out source flagged, NIH 88% against 82%, for 2% of the seen
/// sources' test images either way).
const UNFAMILIAR_QUANTILE: f64 = 0.98;

/// The acquisition measures of one radiograph, [`DIM`] numbers: the 1st, 5th, 25th, 50th,
/// 75th, 95th and 99th percentiles of its gray levels; the log mean absolute Laplacian at 256,
/// 128, 64 and 32 px (noise and sharpness: a coarse power spectrum) and the log median one at
/// 256 px (the noise floor); the mean, spread, black share and white share of the frame's edge;
/// and the log of height over width.
#[must_use]
pub fn measures(gray: &GrayF32) -> Vec<f32> {
    let (w, h) = gray.dimensions();
    let longer = w.max(h).max(1);
    let working;
    let source = if longer > WORKING_SIDE {
        let scale = f64::from(WORKING_SIDE) / f64::from(longer);
        let side = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
        working = imageops::resize(gray, side(w), side(h), FilterType::Lanczos3);
        &working
    } else {
        gray
    };
    let square = imageops::resize(source, SIDE, SIDE, FilterType::Triangle);
    let side = SIDE as usize;
    let mut values: Vec<f32> = square.as_raw().iter().map(|v| v.clamp(0.0, 1.0)).collect();

    let mut out = Vec::with_capacity(DIM);
    // The order statistics a full sort would give, each selected from what lies above the last
    // (a sort of the 65,536 values cost milliseconds an image).
    let mut order = values.clone();
    let mut from = 0;
    for q in [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99] {
        let rank = ((order.len() - 1) as f64 * q).round() as usize;
        order[from..].select_nth_unstable_by(rank - from, f32::total_cmp);
        out.push(order[rank]);
        from = rank;
    }
    let mut n = side;
    let mut median = 0.0;
    for level in 0..4 {
        let mut laplacian = absolute_laplacian(&values, n);
        out.push((laplacian.iter().sum::<f32>() / laplacian.len() as f32 + 1e-5).ln());
        if level == 0 {
            let middle = laplacian.len() / 2;
            median = *laplacian.select_nth_unstable_by(middle, f32::total_cmp).1;
        }
        values = halved(&values, n);
        n /= 2;
    }
    out.push((median + 1e-5).ln());

    let edge: Vec<f32> = (0..side * side)
        .filter(|i| {
            let (x, y) = (i % side, i / side);
            x < EDGE || y < EDGE || x >= side - EDGE || y >= side - EDGE
        })
        .map(|i| square.as_raw()[i].clamp(0.0, 1.0))
        .collect();
    let count = edge.len() as f32;
    let mean = edge.iter().sum::<f32>() / count;
    let spread = (edge.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / count).sqrt();
    let share = |keep: fn(f32) -> bool| edge.iter().filter(|&&v| keep(v)).count() as f32 / count;
    out.extend([mean, spread, share(|v| v < 0.03), share(|v| v > 0.97)]);
    out.push((h.max(1) as f32 / w.max(1) as f32).ln());
    out
}

/// |4-neighbour Laplacian| inside an `n` x `n` picture.
fn absolute_laplacian(v: &[f32], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity((n - 2) * (n - 2));
    for y in 1..n - 1 {
        for x in 1..n - 1 {
            let i = y * n + x;
            out.push((v[i - 1] + v[i + 1] + v[i - n] + v[i + n] - 4.0 * v[i]).abs());
        }
    }
    out
}

/// An `n` x `n` picture averaged over 2x2 blocks.
fn halved(v: &[f32], n: usize) -> Vec<f32> {
    let half = n / 2;
    let mut out = Vec::with_capacity(half * half);
    for y in 0..half {
        for x in 0..half {
            let i = 2 * y * n + 2 * x;
            out.push((v[i] + v[i + 1] + v[i + n] + v[i + n + 1]) / 4.0);
        }
    }
    out
}

/// One training source's measures, as a Gaussian in the standardised space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceGaussian {
    pub source: String,
    pub mean: Vec<f32>,
    /// Inverse of the shrunk covariance, row-major `DIM x DIM`.
    pub precision: Vec<f32>,
}

/// The training sources' acquisitions, and the distance beyond which an image is unlike all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcquisitionModel {
    /// Mean and standard deviation of each measure over the training images: the measures are
    /// standardised with them first, so that no unit dominates.
    pub centre: Vec<f32>,
    pub scale: Vec<f32>,
    pub sources: Vec<SourceGaussian>,
    /// [`UNFAMILIAR_QUANTILE`] of the training and validation images' out-of-fold distance to
    /// their nearest source.
    pub unfamiliar_above: f32,
}

impl AcquisitionModel {
    /// Fits one Gaussian per source with at least [`MIN_SOURCE_IMAGES`] images on the training
    /// and validation images together (`[n, DIM]` row-major, each row's source named beside
    /// it), and the threshold on their out-of-fold distances: each of [`FOLDS`] interleaved
    /// folds measured against Gaussians fitted without it. `None` when no source is large
    /// enough.
    pub fn fit(
        train: &[f32],
        train_sources: &[&str],
        validation: &[f32],
        validation_sources: &[&str],
    ) -> crate::Result<Option<Self>> {
        let rows: Vec<&[f32]> = train.chunks(DIM).chain(validation.chunks(DIM)).collect();
        let sources: Vec<&str> = train_sources
            .iter()
            .chain(validation_sources)
            .copied()
            .collect();
        if rows.len() != sources.len() {
            return Ok(None);
        }
        let Some(mut model) = Self::gaussians(&rows, &sources)? else {
            return Ok(None);
        };
        let mut distances = Vec::new();
        for fold in 0..FOLDS {
            let (held, kept): (Vec<usize>, Vec<usize>) =
                (0..rows.len()).partition(|i| i % FOLDS == fold);
            let pick = |ix: &[usize]| -> (Vec<&[f32]>, Vec<&str>) {
                ix.iter().map(|&i| (rows[i], sources[i])).unzip()
            };
            let (fold_rows, fold_sources) = pick(&kept);
            let Some(without) = Self::gaussians(&fold_rows, &fold_sources)? else {
                continue;
            };
            let (held_rows, held_sources) = pick(&held);
            distances.extend(
                held_rows
                    .iter()
                    .zip(held_sources)
                    // A source too small for a Gaussian would only stretch the threshold.
                    .filter(|(_, s)| without.sources.iter().any(|g| g.source == *s))
                    .map(|(m, _)| without.nearest(m).1),
            );
        }
        if distances.is_empty() {
            return Ok(None);
        }
        distances.sort_by(f32::total_cmp);
        model.unfamiliar_above = super::percentile(&distances, UNFAMILIAR_QUANTILE);
        Ok(Some(model))
    }

    /// The standardisation and one Gaussian per large enough source, without a threshold.
    fn gaussians(rows: &[&[f32]], sources: &[&str]) -> crate::Result<Option<Self>> {
        if rows.len() < 2 {
            return Ok(None);
        }
        let n = rows.len() as f32;
        let centre: Vec<f32> = (0..DIM)
            .map(|j| rows.iter().map(|r| r[j]).sum::<f32>() / n)
            .collect();
        let scale: Vec<f32> = (0..DIM)
            .map(|j| {
                let var = rows.iter().map(|r| (r[j] - centre[j]).powi(2)).sum::<f32>() / n;
                var.sqrt().max(1e-3)
            })
            .collect();
        let mut names: Vec<&str> = sources.to_vec();
        names.sort_unstable();
        names.dedup();
        let mut model = Self {
            centre,
            scale,
            sources: Vec::new(),
            unfamiliar_above: f32::INFINITY,
        };
        for name in names {
            let standardised: Vec<f32> = rows
                .iter()
                .zip(sources)
                .filter(|(_, s)| **s == name)
                .flat_map(|(r, _)| model.standardised(r))
                .collect();
            if standardised.len() / DIM < MIN_SOURCE_IMAGES {
                continue;
            }
            let (mean, precision) = super::gaussian(&standardised, DIM, SHRINK)?;
            model.sources.push(SourceGaussian {
                source: name.to_owned(),
                mean,
                precision,
            });
        }
        Ok((!model.sources.is_empty()).then_some(model))
    }

    fn standardised(&self, measures: &[f32]) -> Vec<f32> {
        measures
            .iter()
            .zip(self.centre.iter().zip(&self.scale))
            .map(|(v, (c, s))| (v - c) / s)
            .collect()
    }

    /// The nearest source and the Mahalanobis distance to it.
    #[must_use]
    pub fn nearest(&self, measures: &[f32]) -> (&str, f32) {
        let z = self.standardised(measures);
        self.sources
            .iter()
            .map(|s| {
                (
                    s.source.as_str(),
                    super::mahalanobis(&z, &s.mean, &s.precision),
                )
            })
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap_or(("", f32::INFINITY))
    }

    /// Why an image with these measures is unfamiliar, if it is.
    #[must_use]
    pub fn verdict(&self, measures: &[f32]) -> Option<String> {
        if measures.len() != DIM {
            return None;
        }
        let (source, distance) = self.nearest(measures);
        (distance > self.unfamiliar_above).then(|| {
            let fitted: Vec<&str> = self.sources.iter().map(|s| s.source.as_str()).collect();
            format!(
                "acquired unlike every source the model was fitted on ({}): exposure, noise, \
                 sharpness and frame at distance {distance:.1} from the nearest, {source} \
                 (limit {:.1}, exceeded by 2% of the fitted images measured out of fold)",
                fitted.join(", "),
                self.unfamiliar_above
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A radiograph-like picture: a smooth body with `noise` of seeded grain.
    fn picture(w: u32, h: u32, noise: f32, seed: u32) -> GrayF32 {
        GrayF32::from_fn(w, h, |x, y| {
            let body = 0.5
                + 0.3 * ((x as f32 / w as f32) * 3.1).sin() * ((y as f32 / h as f32) * 2.3).cos();
            let hash = (x.wrapping_mul(73_856_093)
                ^ y.wrapping_mul(19_349_663)
                ^ seed.wrapping_mul(83_492_791))
                % 1000;
            image::Luma([body + noise * (hash as f32 / 1000.0 - 0.5)])
        })
    }

    /// The percentiles are the order statistics of a full sort.
    #[test]
    fn the_percentiles_are_those_of_a_sorted_copy() {
        let gray = picture(300, 280, 0.3, 7);
        let m = measures(&gray);
        let square = imageops::resize(&gray, SIDE, SIDE, FilterType::Triangle);
        let mut sorted: Vec<f32> = square.as_raw().iter().map(|v| v.clamp(0.0, 1.0)).collect();
        sorted.sort_by(f32::total_cmp);
        for (i, q) in [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
            .into_iter()
            .enumerate()
        {
            let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
            assert_eq!(m[i].to_bits(), sorted[rank].to_bits(), "percentile {q}");
        }
        assert!(m[..7].windows(2).all(|w| w[0] <= w[1]), "{m:?}");
    }

    #[test]
    fn measures_are_finite_and_sized_alike_at_any_resolution() {
        for (w, h) in [(64, 64), (300, 500), (2000, 1600)] {
            let m = measures(&picture(w, h, 0.05, 1));
            assert_eq!(m.len(), DIM);
            assert!(m.iter().all(|v| v.is_finite()), "{w}x{h}: {m:?}");
        }
        // A large original measures like its copy shrunk to 512 px, as the training data was.
        let large = picture(2048, 2048, 0.0, 1);
        let small = imageops::resize(&large, 512, 512, FilterType::Lanczos3);
        let (a, b) = (measures(&large), measures(&small));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "{a:?}\n{b:?}");
    }

    /// Two sources told apart by their grain: an image of a third, grainier one is far from
    /// both, a new image of either is not.
    #[test]
    fn a_source_unlike_every_fitted_one_is_unfamiliar() {
        let images = |noise: f32, seeds: std::ops::Range<u32>| -> Vec<f32> {
            seeds
                .flat_map(|s| {
                    measures(&picture(
                        200 + s % 7 * 10,
                        240,
                        noise * (1.0 + (s % 5) as f32 * 0.05),
                        s,
                    ))
                })
                .collect()
        };
        let mut train = images(0.02, 0..40);
        train.extend(images(0.08, 100..140));
        let sources: Vec<&str> = (0..80)
            .map(|i| if i < 40 { "quiet" } else { "grainy" })
            .collect();
        let mut validation = images(0.02, 40..50);
        validation.extend(images(0.08, 140..150));
        let mut validation_sources: Vec<&str> = sources[30..50].to_vec();
        // A validation image of a source without a Gaussian does not stretch the threshold.
        validation.extend(images(0.4, 300..301));
        validation_sources.push("tiny");
        let model = AcquisitionModel::fit(&train, &sources, &validation, &validation_sources)
            .unwrap()
            .unwrap();
        assert_eq!(model.sources.len(), 2);
        // The threshold is set on images each Gaussian did not see: beyond the fitted images'
        // own distances, which a Gaussian of 17 dimensions on 50 images draws in.
        let mut own: Vec<f32> = train
            .chunks(DIM)
            .chain(validation.chunks(DIM).take(20))
            .map(|m| model.nearest(m).1)
            .collect();
        own.sort_by(f32::total_cmp);
        let in_sample = crate::trust::percentile(&own, UNFAMILIAR_QUANTILE);
        assert!(
            model.unfamiliar_above > in_sample * 1.1,
            "{} against {in_sample}",
            model.unfamiliar_above
        );
        for seed in 200..205 {
            let seen = measures(&picture(230, 240, 0.02, seed));
            assert_eq!(model.nearest(&seen).0, "quiet");
            assert!(model.verdict(&seen).is_none(), "{:?}", model.verdict(&seen));
            let unseen = measures(&picture(230, 240, 0.4, seed));
            let why = model
                .verdict(&unseen)
                .expect("a much grainier source is unfamiliar");
            assert!(why.contains("acquired unlike every source"), "{why}");
        }
        // A source under the minimum gets no Gaussian of its own.
        let few: Vec<&str> = (0..80)
            .map(|i| if i < 70 { "big" } else { "small" })
            .collect();
        let big = vec!["big"; validation_sources.len()];
        let model = AcquisitionModel::fit(&train, &few, &validation, &big)
            .unwrap()
            .unwrap();
        let names: Vec<&str> = model.sources.iter().map(|s| s.source.as_str()).collect();
        assert_eq!(names, ["big"]);
    }
}
