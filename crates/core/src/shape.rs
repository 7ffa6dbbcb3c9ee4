//! What a pair of lungs looks like: a low-dimensional shape space fitted on reference lung
//! masks, to catch a segmentation unlike any lung pair (one lung missing, a blob spilling
//! through the chest wall, a lung ending in a hook). The classifier crops to the mask, so a
//! bad mask is a bad prediction; this check flags it (`implausible-lungs`) with a reason.
//!
//! Two views of a mask, each with limits from the masks it was fitted on:
//!
//! - **the pair's shape**: the lungs' bounding box resampled to a [`GRID`] x [`GRID`] grid of
//!   lung shares, which forgets where and how large the chest is in the frame (hospitals frame
//!   differently) and keeps the outline. The fitted descriptors' principal components span the
//!   shape space; a mask far outside it (the residual) or far along it (the Mahalanobis
//!   distance of its coordinates) is no lung pair: one lung missing, two merged into a blob.
//! - **the outline's raggedness**: the largest region that a morphological opening with a
//!   square [`ROUGHNESS_SCALE`] of the chest's width removes (a spur, hook or blob on a neck)
//!   and the largest a closing adds (a bite or slit cut into a lung), as shares of the lungs. Drawn reference outlines are
//!   smooth; a segmenter that lost its way on an unfamiliar film is not.

use image::{GrayImage, Luma};
use imageproc::distance_transform::Norm;
use imageproc::morphology::{close, open};
use imageproc::region_labelling::{Connectivity, connected_components};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::mask::{self, LungMask};
use crate::{CoreError, Result};

/// Side of the descriptor grid.
pub const GRID: usize = 32;
/// Principal components kept.
pub const COMPONENTS: usize = 12;
/// The shape-space limits are this many times the largest residual and distance among the
/// masks fitted on.
pub const MARGIN: f32 = 1.1;
/// The spur and bite limits are this many times the 99th percentile among the masks fitted on.
pub const ROUGHNESS_MARGIN: f32 = 1.25;
/// Side of the opening and closing square, as a share of the lungs' width.
pub const ROUGHNESS_SCALE: f32 = 0.05;
/// Width masks are resampled to before the opening and closing (their cost stays small).
const ROUGHNESS_WIDTH: usize = 160;

/// The shape space and its limits. Stored in the segmenter's JSON (`shape`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShapeModel {
    /// Mean descriptor, `GRID * GRID`.
    pub mean: Vec<f32>,
    /// Orthonormal principal directions, row-major `COMPONENTS x GRID * GRID`.
    pub components: Vec<f32>,
    /// The variance of the fitted descriptors along each direction.
    pub variances: Vec<f32>,
    /// Beyond this root-mean-square residual outside the space: implausible.
    pub residual_above: f32,
    /// Beyond this Mahalanobis distance inside the space: implausible.
    pub distance_above: f32,
    /// Beyond these shares of the largest spur (opening) and bite (closing): implausible.
    /// [`ROUGHNESS_MARGIN`] times the 99th percentile among the masks fitted on.
    pub spurs_above: f32,
    pub bites_above: f32,
    /// How many masks it was fitted on.
    pub fitted_on: usize,
}

/// Where a mask's descriptor lies relative to the shape space.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShapeScore {
    pub residual: f32,
    pub distance: f32,
}

/// Shares of a mask's lung area in its largest spur (a region an opening removes) and its
/// largest bite (a region a closing adds), with a square [`ROUGHNESS_SCALE`] of the lungs' width, on the mask resampled to
/// [`ROUGHNESS_WIDTH`] columns. `None` without lung pixels.
#[must_use]
pub fn roughness(mask: &LungMask) -> Option<[f32; 2]> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let (sw, sh) = (ROUGHNESS_WIDTH, (ROUGHNESS_WIDTH * h / w.max(1)).max(1));
    let lung = GrayImage::from_fn(sw as u32, sh as u32, |x, y| {
        let (x, y) = (x as usize, y as usize);
        binary(mask.as_raw()[(y * h / sh) * w + x * w / sw] >= 128)
    });
    let area = lung.iter().filter(|&&l| l != 0).count();
    let columns = (0..lung.width()).filter(|&x| (0..lung.height()).any(|y| set(&lung, x, y)));
    let (first, last) = columns.fold((u32::MAX, 0), |(a, b), x| (a.min(x), b.max(x)));
    if area == 0 {
        return None;
    }
    let side = ((ROUGHNESS_SCALE * (last - first + 1) as f32) as usize).max(1) | 1;
    // Within LInf distance `side / 2`: the `side` x `side` square, `side` being odd. Pixels
    // beyond the border count as neither lung nor background, as with edges replicated.
    let radius = (side / 2) as u8;
    let (opened, closed) = (
        open(&lung, Norm::LInf, radius),
        close(&lung, Norm::LInf, radius),
    );
    let spurs = GrayImage::from_fn(lung.width(), lung.height(), |x, y| {
        binary(set(&lung, x, y) && !set(&opened, x, y))
    });
    let bites = GrayImage::from_fn(lung.width(), lung.height(), |x, y| {
        binary(set(&closed, x, y) && !set(&lung, x, y))
    });
    let share = |part: &GrayImage| largest_region(part) as f32 / area as f32;
    Some([share(&spurs), share(&bites)])
}

/// The opening's and closing's radius fits imageproc's `u8` and stays below its distance
/// transform's cap (255, or the image's width plus height, at least `ROUGHNESS_WIDTH + 1`).
const _: () = assert!(ROUGHNESS_SCALE < 1.0 && ROUGHNESS_SCALE * (ROUGHNESS_WIDTH as f32) < 250.0);

/// 255 for set, 0 for not.
fn binary(set: bool) -> Luma<u8> {
    Luma([if set { 255 } else { 0 }])
}

/// Whether the pixel at `(x, y)` is set.
fn set(mask: &GrayImage, x: u32, y: u32) -> bool {
    mask.get_pixel(x, y).0[0] != 0
}

/// Pixels in the largest 8-connected region of `mask` (non-zero pixels). The sharp corners of
/// a normal lung (the costophrenic angles, the apex) each leave a small region; a hook or a
/// bite leaves one large one.
fn largest_region(mask: &GrayImage) -> usize {
    let labels = connected_components(mask, Connectivity::Eight, Luma([0]));
    mask::region_sizes(labels.as_raw())
        .into_iter()
        .max()
        .unwrap_or(0)
}

/// The lungs' bounding box of `mask` (pixels at or above 128) resampled to the grid by area
/// averaging; `None` without lung pixels.
#[must_use]
pub fn descriptor(mask: &LungMask) -> Option<Vec<f32>> {
    let w = mask.width() as usize;
    let raw = mask.as_raw();
    let lungs = crate::mask::lung_box(mask)?;
    let (x0, y0) = (lungs.x0 as usize, lungs.y0 as usize);
    // Each cell averages its share of the box, at least one pixel (a box narrower than the
    // grid repeats pixels rather than leaving cells empty).
    let span = |start: usize, length: usize, cell: usize| {
        let from = start + cell * length / GRID;
        from..(start + (cell + 1) * length / GRID).max(from + 1)
    };
    let (bw, bh) = (lungs.width() as usize, lungs.height() as usize);
    let mut out = Vec::with_capacity(GRID * GRID);
    for gy in 0..GRID {
        let rows = span(y0, bh, gy);
        for gx in 0..GRID {
            let columns = span(x0, bw, gx);
            let (mut lung, mut all) = (0u32, 0u32);
            for y in rows.clone() {
                for &v in &raw[y * w + columns.start..y * w + columns.end] {
                    lung += u32::from(v >= 128);
                    all += 1;
                }
            }
            out.push(lung as f32 / all as f32);
        }
    }
    Some(out)
}

impl ShapeModel {
    /// Fits the model on reference masks; the limits come from the same masks.
    pub fn fit(masks: &[LungMask]) -> Result<Self> {
        let descriptors: Vec<Vec<f32>> = masks.iter().filter_map(descriptor).collect();
        let rough: Vec<[f32; 2]> = masks.iter().filter_map(roughness).collect();
        let mut model = Self::fit_space(&descriptors)?;
        // The few most ragged reference outlines are drawn roughly: 99th percentile, not maximum.
        let limit = |k: usize| {
            let mut v: Vec<f32> = rough.iter().map(|r| r[k]).collect();
            v.sort_by(f32::total_cmp);
            ROUGHNESS_MARGIN * v[(v.len() * 99 / 100).min(v.len().saturating_sub(1))]
        };
        model.spurs_above = limit(0);
        model.bites_above = limit(1);
        Ok(model)
    }

    /// The shape space of descriptors, with its limits from the same descriptors.
    fn fit_space(descriptors: &[Vec<f32>]) -> Result<Self> {
        let dim = GRID * GRID;
        let n = descriptors.len();
        if n <= COMPONENTS {
            return Err(CoreError::Invalid(format!(
                "a lung-shape model needs more than {COMPONENTS} masks, got {n}"
            )));
        }
        let flat: Vec<f64> = descriptors
            .iter()
            .flat_map(|d| d.iter().map(|&v| f64::from(v)))
            .collect();
        let x = Tensor::from_slice(&flat).view([n as i64, dim as i64]);
        let mean = x.mean_dim(0, true, Kind::Double);
        let centred = &x - &mean;
        let covariance = centred.tr().matmul(&centred) / (n as f64 - 1.0);
        // eigh sorts eigenvalues ascending: the last columns are the principal directions.
        let (values, vectors) = covariance.f_linalg_eigh("L")?;
        let top = (dim - COMPONENTS) as i64;
        let variances = values.narrow(0, top, COMPONENTS as i64).flip([0]);
        let components = vectors
            .narrow(1, top, COMPONENTS as i64)
            .flip([1])
            .tr()
            .contiguous();
        let to_f32 = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(Vec::<f32>::try_from(
                t.to_kind(Kind::Float).to_device(Device::Cpu).view([-1]),
            )?)
        };
        let mut model = Self {
            mean: to_f32(&mean)?,
            components: to_f32(&components)?,
            variances: to_f32(&variances.clamp_min(1e-8))?,
            residual_above: 0.0,
            distance_above: 0.0,
            spurs_above: 0.0,
            bites_above: 0.0,
            fitted_on: n,
        };
        let scores: Vec<ShapeScore> = descriptors.iter().map(|d| model.score(d)).collect();
        model.residual_above = MARGIN * scores.iter().map(|s| s.residual).fold(0.0, f32::max);
        model.distance_above = MARGIN * scores.iter().map(|s| s.distance).fold(0.0, f32::max);
        Ok(model)
    }

    /// The residual and distance of a descriptor.
    #[must_use]
    pub fn score(&self, descriptor: &[f32]) -> ShapeScore {
        let dim = self.mean.len();
        let centred: Vec<f32> = descriptor
            .iter()
            .zip(&self.mean)
            .map(|(x, m)| x - m)
            .collect();
        let mut rest = centred.clone();
        let mut distance = 0.0f32;
        for (direction, variance) in self.components.chunks(dim).zip(&self.variances) {
            let c: f32 = direction.iter().zip(&centred).map(|(a, b)| a * b).sum();
            distance += c * c / variance;
            rest.iter_mut()
                .zip(direction)
                .for_each(|(r, a)| *r -= c * a);
        }
        ShapeScore {
            residual: (rest.iter().map(|r| r * r).sum::<f32>() / dim as f32).sqrt(),
            distance: distance.sqrt(),
        }
    }

    /// `mask`'s four measures; `None` without lung pixels.
    #[must_use]
    pub fn measure(&self, mask: &LungMask) -> Option<ShapeMeasures> {
        let d = descriptor(mask)?;
        if d.len() != self.mean.len() {
            return None;
        }
        let s = self.score(&d);
        let [spurs, bites] = roughness(mask)?;
        Some(ShapeMeasures {
            residual: s.residual,
            distance: s.distance,
            spurs,
            bites,
        })
    }

    /// The limits this model draws from its reference masks.
    #[must_use]
    pub fn limits(&self) -> ShapeMeasures {
        ShapeMeasures {
            residual: self.residual_above,
            distance: self.distance_above,
            spurs: self.spurs_above,
            bites: self.bites_above,
        }
    }

    /// Why `mask` is unlike any lung pair the model was fitted on, or `None` when it is not.
    #[must_use]
    pub fn judge(&self, mask: &LungMask) -> Option<String> {
        self.verdict(&self.measure(mask)?, None)
    }

    /// Why a mask measuring `m` is implausible, or `None`. A measure counts only beyond both the
    /// reference masks' limit and, when given, `familiar`: the range of the masks this
    /// segmenter drew on the radiographs a classifier was trained on (see
    /// [`crate::trust::TrustModel::mask_shapes`]). Drawn reference outlines come from two
    /// collections; a hospital's films (portable AP, other framing) give masks that differ from
    /// them in ways its classifier has learnt, and those are no reason to distrust it.
    #[must_use]
    pub fn verdict(&self, m: &ShapeMeasures, familiar: Option<&ShapeMeasures>) -> Option<String> {
        let reference = self.limits();
        let limit = |pick: fn(&ShapeMeasures) -> f32| {
            let own = pick(&reference);
            match familiar.map(pick) {
                Some(seen) if seen > own => (seen, "the classifier's training radiographs"),
                _ => (own, "the reference masks"),
            }
        };
        let beyond = |v: f32, (limit, _): (f32, &str)| !v.is_finite() || v > limit;
        let (residual, distance) = (limit(|m| m.residual), limit(|m| m.distance));
        let (spurs, bites) = (limit(|m| m.spurs), limit(|m| m.bites));
        let mut why = Vec::new();
        if beyond(m.residual, residual) || beyond(m.distance, distance) {
            why.push(format!(
                "the lungs' outline is unlike the {} reference lung pairs' (shape residual \
                 {:.3}, limit {:.3} from {}; shape distance {:.1}, limit {:.1} from {})",
                self.fitted_on,
                m.residual,
                residual.0,
                residual.1,
                m.distance,
                distance.0,
                distance.1
            ));
        }
        if beyond(m.spurs, spurs) {
            why.push(format!(
                "{:.1}% of the lungs lies in one spur, hook or blob narrower than {:.0}% of the \
                 chest (limit {:.1}%, from {})",
                100.0 * m.spurs,
                100.0 * ROUGHNESS_SCALE,
                100.0 * spurs.0,
                spurs.1
            ));
        }
        if beyond(m.bites, bites) {
            why.push(format!(
                "a bite or slit narrower than {:.0}% of the chest is cut into the lungs ({:.1}% \
                 of their area, limit {:.1}%, from {})",
                100.0 * ROUGHNESS_SCALE,
                100.0 * m.bites,
                100.0 * bites.0,
                bites.1
            ));
        }
        (!why.is_empty()).then(|| why.join("; "))
    }
}

/// A mask's measures against a [`ShapeModel`] (or limits on them): how far its outline lies
/// from the shape space and along it, and its largest spur and bite.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ShapeMeasures {
    pub residual: f32,
    pub distance: f32,
    pub spurs: f32,
    pub bites: f32,
}

impl ShapeMeasures {
    /// Each measure's `quantile` (0 to 1) over `measured`; `None` for none.
    #[must_use]
    pub fn quantile(measured: &[Self], quantile: f64) -> Option<Self> {
        if measured.is_empty() {
            return None;
        }
        let at = |pick: fn(&Self) -> f32| {
            let mut v: Vec<f32> = measured
                .iter()
                .map(pick)
                .filter(|v| v.is_finite())
                .collect();
            v.sort_by(f32::total_cmp);
            let i = ((v.len() as f64 - 1.0) * quantile).round() as usize;
            v.get(i).copied().unwrap_or(f32::INFINITY)
        };
        Some(Self {
            residual: at(|m| m.residual),
            distance: at(|m| m.distance),
            spurs: at(|m| m.spurs),
            bites: at(|m| m.bites),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two ellipses side by side, of the given half-widths and heights, in a `w` x `h` image.
    fn lungs(w: u32, h: u32, [a, b]: [f32; 2], [ra, rb]: [f32; 2]) -> LungMask {
        LungMask::from_fn(w, h, |x, y| {
            let (x, y) = (x as f32 / w as f32, y as f32 / h as f32);
            let left = ((x - 0.3) / ra).powi(2) + ((y - 0.5) / a).powi(2) <= 1.0;
            let right = ((x - 0.7) / rb).powi(2) + ((y - 0.5) / b).powi(2) <= 1.0;
            image::Luma([if left || right { 255 } else { 0 }])
        })
    }

    /// At [`ROUGHNESS_WIDTH`] columns nothing is resampled. A 100-pixel-wide lung gives a 5 x 5
    /// square: a rectangle keeps its corners (a diamond or disk would cut them), a spur 3 pixels
    /// wide is opened away while one 5 wide stays, and a slit 3 wide is closed.
    #[test]
    fn roughness_opens_and_closes_with_a_five_pixel_square() {
        let inside = |x: u32, y: u32, (x0, x1): (u32, u32), (y0, y1): (u32, u32)| {
            (x0..x1).contains(&x) && (y0..y1).contains(&y)
        };
        let mask = |spurs_and_slit: bool| {
            LungMask::from_fn(ROUGHNESS_WIDTH as u32, 120, |x, y| {
                let body = inside(x, y, (30, 130), (20, 100));
                let lung = if spurs_and_slit {
                    (body && !inside(x, y, (90, 93), (20, 35)))
                        || inside(x, y, (60, 63), (100, 110))
                        || inside(x, y, (100, 105), (100, 110))
                } else {
                    body
                };
                image::Luma([if lung { 255 } else { 0 }])
            })
        };
        assert_eq!(roughness(&mask(false)), Some([0.0, 0.0]));
        let area = (100 * 80 + 3 * 10 + 5 * 10 - 3 * 15) as f32;
        assert_eq!(
            roughness(&mask(true)),
            Some([3.0 * 10.0 / area, 3.0 * 15.0 / area])
        );
        assert_eq!(roughness(&LungMask::new(160, 120)), None);
    }

    #[test]
    fn the_descriptor_forgets_framing_but_not_the_outline() {
        let small = descriptor(&lungs(200, 200, [0.3, 0.3], [0.15, 0.15])).unwrap();
        let large = descriptor(&lungs(600, 600, [0.3, 0.3], [0.15, 0.15])).unwrap();
        // Only cells on the outline differ (by how the two resolutions cut them).
        let mean = small
            .iter()
            .zip(&large)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / small.len() as f32;
        assert!(mean < 0.02, "{mean}");
        let thinner = descriptor(&lungs(200, 200, [0.3, 0.3], [0.08, 0.08])).unwrap();
        let apart = small
            .iter()
            .zip(&thinner)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / small.len() as f32;
        assert!(apart > 5.0 * mean, "{apart} vs {mean}");
        assert!(descriptor(&LungMask::new(10, 10)).is_none());
    }

    #[test]
    fn a_missing_lung_leaves_the_shape_space_and_ordinary_pairs_stay_in_it() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let pair = |rng: &mut rand::rngs::StdRng| {
            let mut r = || rng.random_range(0.9f32..1.1);
            lungs(160, 160, [0.3 * r(), 0.3 * r()], [0.15 * r(), 0.15 * r()])
        };
        let fitted: Vec<LungMask> = (0..200).map(|_| pair(&mut rng)).collect();
        let model = ShapeModel::fit(&fitted).unwrap();
        let inside = |mask: &LungMask| {
            let s = model.score(&descriptor(mask).unwrap());
            s.residual <= model.residual_above && s.distance <= model.distance_above
        };
        let passed = (0..40).filter(|_| inside(&pair(&mut rng))).count();
        assert!(
            passed >= 38,
            "{passed} of 40 ordinary pairs inside the shape space"
        );
        let one_lung = lungs(160, 160, [0.3, 0.0001], [0.15, 0.0001]);
        assert!(!inside(&one_lung));
        let reason = model.judge(&one_lung).expect("one lung is no pair");
        assert!(
            reason.contains("unlike the 200 reference lung pairs"),
            "{reason}"
        );
    }

    #[test]
    fn a_range_the_classifier_was_trained_on_widens_the_limits_it_exceeds() {
        let fitted: Vec<LungMask> = (0..40)
            .map(|i| {
                let r = 1.0 + 0.005 * i as f32;
                lungs(160, 160, [0.3 * r, 0.3], [0.15, 0.15 * r])
            })
            .collect();
        let model = ShapeModel::fit(&fitted).unwrap();
        let reference = model.limits();
        let ragged = ShapeMeasures {
            spurs: 2.0 * reference.spurs,
            ..reference
        };
        let alone = model
            .verdict(&ragged, None)
            .expect("beyond the reference spurs");
        assert!(alone.contains("from the reference masks"), "{alone}");
        let wider = ShapeMeasures {
            spurs: 3.0 * reference.spurs,
            ..reference
        };
        assert_eq!(model.verdict(&ragged, Some(&wider)), None);
        // A familiar range narrower than the reference's never tightens it.
        let narrower = ShapeMeasures {
            residual: 0.0,
            distance: 0.0,
            spurs: 0.0,
            bites: 0.0,
        };
        assert_eq!(model.verdict(&reference, Some(&narrower)), None);
        let beyond_both = ShapeMeasures {
            spurs: 4.0 * reference.spurs,
            ..reference
        };
        let reason = model.verdict(&beyond_both, Some(&wider)).unwrap();
        assert!(
            reason.contains("spur") && reason.contains("the classifier's training radiographs"),
            "{reason}"
        );
        assert!(
            model
                .verdict(
                    &ShapeMeasures {
                        residual: f32::NAN,
                        ..reference
                    },
                    Some(&wider)
                )
                .is_some()
        );
    }

    #[test]
    fn the_familiar_range_is_each_measures_quantile() {
        let measured: Vec<ShapeMeasures> = (0..=100)
            .map(|i| ShapeMeasures {
                residual: i as f32,
                distance: 2.0 * i as f32,
                spurs: 100.0 - i as f32,
                bites: if i == 50 { f32::NAN } else { 1.0 },
            })
            .collect();
        let q = ShapeMeasures::quantile(&measured, 0.99).unwrap();
        assert_eq!(
            (q.residual, q.distance, q.spurs, q.bites),
            (99.0, 198.0, 99.0, 1.0)
        );
        assert_eq!(ShapeMeasures::quantile(&[], 0.99), None);
    }
}
