//! When not to trust a prediction. A classifier trained here answers for any input, so every
//! prediction carries a familiarity score and flags, fitted when the classifier is trained and
//! stored with it:
//!
//! - **familiarity**: the Mahalanobis distance of the image's pooled features (the input of
//!   the classifier's last layer) from the training images' features, with a shrunk covariance;
//!   `unfamiliar` when it is beyond the 99th percentile of the validation images' distances;
//! - **implausible lungs**: the lung mask covers a share of the image, or has a shape (its
//!   bounding box's width over height), outside what the training images showed;
//! - **not a chest radiograph**: a colour picture, no lungs found, features far beyond anything
//!   seen in training, or a whole-image layout (the radiograph shrunk to 8x8 and standardised:
//!   where it is dark and bright) far beyond every training radiograph's. The classifier's
//!   features see only the lungs, equalised, so a gray drawing can look ordinary to them; the
//!   layout sees the whole picture; or an image far smoother than any radiograph (no fine
//!   structure: ribs, vessels, noise), as a rendered gradient or a flat drawing is. Such an
//!   input is refused: it gets no label.

pub mod acquisition;

use serde::{Deserialize, Serialize};

pub use self::acquisition::AcquisitionModel;
use crate::mask::LungMask;
use crate::shape::ShapeMeasures;

/// Something about an input that makes its prediction less trustworthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flag {
    /// Features beyond the 99th percentile of validation images' distance to training.
    Unfamiliar,
    /// Lung share or shape outside the range seen in training.
    ImplausibleLungs,
    /// A colour picture, no lungs, or features far beyond any radiograph seen: refused.
    NotAChestRadiograph,
}

impl Flag {
    /// The name used in JSON, tables and the viewer.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Unfamiliar => "unfamiliar",
            Self::ImplausibleLungs => "implausible-lungs",
            Self::NotAChestRadiograph => "not-a-chest-radiograph",
        }
    }
}

/// Mean colour saturation above which an image is a colour picture, not a radiograph (mean of
/// max(R,G,B) - min(R,G,B) over the image, in [0, 1]). Radiographs saved as RGB have 0 up to
/// compression noise.
pub const COLOUR_LIMIT: f32 = 0.06;
/// Saturation from which a pixel is clearly coloured (26 of 255 levels: far above the few
/// levels of JPEG chroma noise on a gray picture).
pub const COLOURED_PIXEL: f32 = 0.1;
/// Share of clearly coloured pixels from which an image is a colour picture even when its mean
/// saturation is low: a screenshot of a viewer, a grey radiograph framed by coloured badges,
/// selections and annotations (the committed screenshot fixture has 1.9%).
pub const COLOURED_SHARE_LIMIT: f32 = 0.005;
/// Share of an image in one flat shade (five neighbouring levels of 256) from which it is a
/// document, a drawing or a screen, not a radiograph. A radiograph's flattest part is its black
/// border: at most 46% of any of the 1,292 shared radiographs; a text page is 65-85% paper.
pub const FLAT_LIMIT: f32 = 0.6;
/// Lung share under which the segmenter found no lungs.
pub const NO_LUNGS: f32 = 0.02;
/// Distance beyond which an image is too unlike any radiograph seen to be classified: this
/// many times the largest distance among the training and validation images.
pub const FAR_BEYOND: f32 = 2.0;

/// The lung-mask measures the plausibility check uses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LungShape {
    /// Share of the image marked lung.
    pub fraction: f32,
    /// Width over height of the lungs' bounding box (0 without lungs).
    pub aspect: f32,
}

impl LungShape {
    #[must_use]
    pub fn of(mask: &LungMask) -> Self {
        Self {
            fraction: crate::mask::coverage(mask),
            aspect: crate::mask::lung_box(mask)
                .map_or(0.0, |b| b.width() as f32 / b.height() as f32),
        }
    }
}

/// What training saw, to judge new inputs by. Stored in the classifier's JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustModel {
    /// Mean of the training images' pooled features.
    pub feature_mean: Vec<f32>,
    /// Inverse of their shrunk covariance, row-major `d x d`.
    pub precision: Vec<f32>,
    /// 99th percentile of the validation images' distances: beyond it, `unfamiliar`.
    pub unfamiliar_above: f32,
    /// [`FAR_BEYOND`] times the largest training or validation distance: beyond it, not a
    /// chest radiograph.
    pub refuse_above: f32,
    /// Lung fraction and aspect ranges (0.5th to 99.5th percentile of training, widened by a
    /// tenth of their width on each side).
    pub lung_fraction: [f32; 2],
    pub lung_aspect: [f32; 2],
    /// The training radiographs' whole-image layouts ([`layout`]), and the distance beyond
    /// which an image is no chest radiograph ([`FAR_BEYOND`] times the largest training or
    /// validation distance). Absent in models fitted before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<LayoutModel>,
    /// The 0.5th to 99.5th percentile of the training radiographs' [`detail`]; an image with
    /// less than half the low end is too smooth to be a radiograph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<[f32; 2]>,
    /// The training sources' acquisitions ([`acquisition`]): an image acquired unlike every
    /// one of them is `unfamiliar`. Absent in models fitted before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acquisition: Option<AcquisitionModel>,
    /// The [`MASK_SHAPE_QUANTILE`] of each lung-shape measure over the masks the segmenter drew
    /// on the training and validation radiographs: within it, a mask is no reason for
    /// `implausible-lungs` (see [`crate::shape::ShapeModel::verdict`]). Absent in models fitted
    /// before it existed (the reference masks' limits alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_shapes: Option<ShapeMeasures>,
}

/// The share of the training radiographs' masks whose shape measures a trust model takes as
/// familiar: the ragged last percent of a hospital's masks is still flagged.
pub const MASK_SHAPE_QUANTILE: f64 = 0.99;

/// A Gaussian over whole-image layouts, with its refusal distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutModel {
    pub mean: Vec<f32>,
    pub precision: Vec<f32>,
    pub refuse_above: f32,
}

/// Side of the layout grid.
pub const LAYOUT_SIDE: u32 = 8;

/// The image shrunk to 8x8 (area average) and standardised: where a picture is dark and bright,
/// which is much the same for every frontal chest radiograph (dark lungs either side of a
/// bright mediastinum, shoulders above, abdomen below).
#[must_use]
pub fn layout(gray: &crate::xray::GrayF32) -> Vec<f32> {
    let small = image::imageops::thumbnail(gray, LAYOUT_SIDE, LAYOUT_SIDE);
    let v = small.as_raw();
    let n = v.len().max(1) as f32;
    let mean = v.iter().sum::<f32>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n)
        .sqrt()
        .max(1e-3);
    v.iter().map(|x| (x - mean) / std).collect()
}

/// Fine structure: the mean absolute 4-neighbour Laplacian of the image resized to 256x256 and
/// standardised. Ribs, vessels and film or detector noise give every radiograph some; a
/// rendered gradient or a flat drawing has almost none.
#[must_use]
pub fn detail(gray: &crate::xray::GrayF32) -> f32 {
    const SIDE: u32 = 256;
    let side = SIDE as usize;
    let v = crate::preprocess::segmenter_input(gray, SIDE);
    let mut total = 0.0f64;
    for y in 1..side - 1 {
        for x in 1..side - 1 {
            let c = v[y * side + x];
            let lap = v[y * side + x - 1]
                + v[y * side + x + 1]
                + v[(y - 1) * side + x]
                + v[(y + 1) * side + x]
                - 4.0 * c;
            total += f64::from(lap.abs());
        }
    }
    (total / ((side - 2) * (side - 2)) as f64) as f32
}

/// Mean and inverse covariance of `rows` (`[n, dim]`, row-major), the covariance shrunk by
/// `shrink` towards a scaled identity.
fn gaussian(rows: &[f32], dim: usize, shrink: f64) -> crate::Result<(Vec<f32>, Vec<f32>)> {
    let n = rows.len() / dim.max(1);
    if n < 2 || dim == 0 {
        return Err(crate::CoreError::Invalid(
            "too few training images to fit the familiarity model".into(),
        ));
    }
    let t = tch::Tensor::from_slice(rows)
        .f_view([n as i64, dim as i64])?
        .f_to_kind(tch::Kind::Double)?;
    let mean = t.f_mean_dim(0, false, tch::Kind::Double)?;
    let centred = t.f_sub(&mean)?;
    let cov = centred
        .f_transpose(0, 1)?
        .f_matmul(&centred)?
        .f_div_scalar((n - 1) as f64)?;
    // Shrink towards a scaled identity: with a few hundred images and 64-128 dimensions the
    // sample covariance is ill-conditioned.
    let trace = cov.f_trace()?.f_double_value(&[])?;
    let eye = tch::Tensor::f_eye(dim as i64, (tch::Kind::Double, tch::Device::Cpu))?;
    let shrunk = cov
        .f_mul_scalar(1.0 - shrink)?
        .f_add(&eye.f_mul_scalar(shrink * trace / dim as f64)?)?;
    let precision = tch::Tensor::f_linalg_inv(&shrunk)?.f_to_kind(tch::Kind::Float)?;
    Ok((
        Vec::<f32>::try_from(mean.f_to_kind(tch::Kind::Float)?)?,
        Vec::<f32>::try_from(precision.f_contiguous()?.f_view([-1])?)?,
    ))
}

/// Mahalanobis distance of `x` from `mean` under `precision`.
fn mahalanobis(x: &[f32], mean: &[f32], precision: &[f32]) -> f32 {
    let d = mean.len();
    let diff: Vec<f64> = x.iter().zip(mean).map(|(a, m)| f64::from(a - m)).collect();
    let mut total = 0.0;
    for (i, row) in precision.chunks(d).enumerate() {
        let row_dot: f64 = row.iter().zip(&diff).map(|(p, x)| f64::from(*p) * x).sum();
        total += diff[i] * row_dot;
    }
    total.max(0.0).sqrt() as f32
}

/// The whole-image measures of one input: its [`Appearance`], [`layout`] and [`detail`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageChecks {
    pub appearance: Appearance,
    pub layout: Vec<f32>,
    pub detail: f32,
    /// [`acquisition::measures`].
    pub acquisition: Vec<f32>,
}

impl ImageChecks {
    #[must_use]
    pub fn of(xray: &crate::xray::Xray) -> Self {
        Self {
            appearance: Appearance::of(xray),
            layout: layout(&xray.gray),
            detail: detail(&xray.gray),
            acquisition: acquisition::measures(&xray.gray),
        }
    }
}

/// What [`TrustModel::fit`] learns from: the training and validation images' pooled features
/// (`[n, dim]`, row-major) and layouts (`[n, 64]`), and the training images' lung shapes.
pub struct TrustData<'a> {
    pub train_features: &'a [f32],
    pub validation_features: &'a [f32],
    pub dim: usize,
    pub train_layouts: &'a [f32],
    pub validation_layouts: &'a [f32],
    pub shapes: &'a [LungShape],
    /// The training images' [`detail`].
    pub details: &'a [f32],
    /// The training and validation images' [`acquisition::measures`] (`[n, DIM]`), and each
    /// image's source; empty to fit no acquisition model.
    pub train_acquisitions: &'a [f32],
    pub validation_acquisitions: &'a [f32],
    pub train_sources: &'a [&'a str],
    pub validation_sources: &'a [&'a str],
    /// The lung-shape measures of the segmenter's masks of the training and validation images
    /// (those it could measure); empty to take the reference masks' limits alone.
    pub mask_shapes: &'a [ShapeMeasures],
}

/// The verdict on one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Assessment {
    /// Mahalanobis distance to the training features (higher is less familiar); `None` when
    /// the classifier has no trust model.
    pub familiarity: Option<f32>,
    pub flags: Vec<Flag>,
    /// Why each flag was raised, in words: `reasons[i]` explains `flags[i]`.
    pub reasons: Vec<String>,
}

impl Assessment {
    #[must_use]
    pub fn has(&self, flag: Flag) -> bool {
        self.flags.contains(&flag)
    }

    /// The segmenter's lung-shape verdict on the mask (`None`: plausible) as `implausible-lungs`,
    /// unless the input is refused anyway. The pipeline and the training tables both call it.
    pub fn shape_verdict(&mut self, reason: Option<String>) {
        if let Some(reason) = reason
            && !self.has(Flag::NotAChestRadiograph)
        {
            self.raise(Flag::ImplausibleLungs, reason);
        }
    }

    /// Adds `flag` with its reason; a flag raised again gets the new reason appended, so
    /// `reasons[i]` always explains `flags[i]`.
    pub(crate) fn raise(&mut self, flag: Flag, reason: String) {
        if let Some(i) = self.flags.iter().position(|&f| f == flag) {
            self.reasons[i].push_str("; ");
            self.reasons[i].push_str(&reason);
        } else {
            self.flags.push(flag);
            self.reasons.push(reason);
        }
    }
}

/// How coloured a decoded image is, saturation being max(R,G,B) - min(R,G,B) in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Colourfulness {
    /// Mean saturation over the image.
    pub mean: f32,
    /// Share of pixels whose saturation is at least [`COLOURED_PIXEL`].
    pub coloured_share: f32,
}

impl Colourfulness {
    /// Why this is a colour picture, not a radiograph, if it is.
    #[must_use]
    pub fn verdict(self) -> Option<String> {
        if self.mean > COLOUR_LIMIT {
            Some(format!(
                "a colour picture (mean saturation {:.2}); radiographs are gray",
                self.mean
            ))
        } else if self.coloured_share >= COLOURED_SHARE_LIMIT {
            Some(format!(
                "a colour picture ({:.1}% of its pixels coloured, as in a screenshot); \
                 radiographs are gray: send the radiograph itself",
                100.0 * self.coloured_share
            ))
        } else {
            None
        }
    }
}

/// What a picture is made of, judged without any model: whether it is in colour, and how much
/// of it is one flat shade. Either can show that it is no radiograph.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Appearance {
    pub colour: Colourfulness,
    /// The largest share of the image within five neighbouring levels of 256 ([`flat_share`]).
    pub flat_share: f32,
}

impl Appearance {
    #[must_use]
    pub fn of(xray: &crate::xray::Xray) -> Self {
        Self {
            colour: colourfulness(&xray.original),
            flat_share: flat_share(&xray.gray),
        }
    }

    /// Why this picture is no radiograph, one reason per finding.
    #[must_use]
    pub fn verdicts(self) -> Vec<String> {
        let mut reasons: Vec<String> = self.colour.verdict().into_iter().collect();
        if self.flat_share >= FLAT_LIMIT {
            reasons.push(format!(
                "{:.0}% of it is one flat shade, as on a document, a drawing or a screen; \
                 radiographs stay under {:.0}%",
                100.0 * self.flat_share,
                100.0 * FLAT_LIMIT
            ));
        }
        reasons
    }
}

/// The largest share of `gray`'s pixels whose values lie within five neighbouring levels of
/// 256: paper, a flat fill or a screen's background, which no exposure of a body gives.
#[must_use]
pub fn flat_share(gray: &crate::xray::GrayF32) -> f32 {
    let mut histogram = [0_u64; 256];
    for &v in gray.as_raw() {
        histogram[(v.clamp(0.0, 1.0) * 255.0).round() as usize] += 1;
    }
    let n = gray.as_raw().len().max(1) as f64;
    let flattest = histogram
        .windows(5)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or(0);
    (flattest as f64 / n) as f32
}

/// The colourfulness of a decoded image (zero for gray images).
#[must_use]
pub fn colourfulness(image: &image::DynamicImage) -> Colourfulness {
    if !image.color().has_color() {
        return Colourfulness::default();
    }
    let rgb = image.to_rgb8();
    let n = rgb.pixels().len().max(1) as f64;
    let coloured_from = (COLOURED_PIXEL * 255.0).round() as u8;
    let (mut total, mut coloured) = (0_u64, 0_u64);
    for p in rgb.pixels() {
        let [r, g, b] = p.0;
        let saturation = r.max(g).max(b) - r.min(g).min(b);
        total += u64::from(saturation);
        coloured += u64::from(saturation >= coloured_from);
    }
    Colourfulness {
        mean: (total as f64 / n / 255.0) as f32,
        coloured_share: (coloured as f64 / n) as f32,
    }
}

impl TrustModel {
    /// Fits the model on what training saw.
    pub fn fit(data: &TrustData<'_>) -> crate::Result<Self> {
        let dim = data.dim;
        let (feature_mean, precision) = gaussian(data.train_features, dim, 0.2)?;
        let mut model = Self {
            feature_mean,
            precision,
            unfamiliar_above: 0.0,
            refuse_above: 0.0,
            lung_fraction: range(data.shapes.iter().map(|s| s.fraction)),
            lung_aspect: range(data.shapes.iter().map(|s| s.aspect)),
            layout: None,
            acquisition: AcquisitionModel::fit(
                data.train_acquisitions,
                data.train_sources,
                data.validation_acquisitions,
                data.validation_sources,
            )?,
            detail: (!data.details.is_empty()).then(|| {
                let mut d = data.details.to_vec();
                d.sort_by(f32::total_cmp);
                [percentile(&d, 0.005), percentile(&d, 0.995)]
            }),
            mask_shapes: ShapeMeasures::quantile(data.mask_shapes, MASK_SHAPE_QUANTILE),
        };
        let distances =
            |flat: &[f32]| -> Vec<f32> { flat.chunks(dim).map(|f| model.distance(f)).collect() };
        let (d_train, mut d_val) = (
            distances(data.train_features),
            distances(data.validation_features),
        );
        d_val.sort_by(f32::total_cmp);
        model.unfamiliar_above = percentile(&d_val, 0.99);
        let largest = d_train.iter().chain(&d_val).copied().fold(0.0, f32::max);
        model.refuse_above = FAR_BEYOND * largest;
        if !data.train_layouts.is_empty() {
            let side = (LAYOUT_SIDE * LAYOUT_SIDE) as usize;
            let (mean, precision) = gaussian(data.train_layouts, side, 0.2)?;
            let largest = data
                .train_layouts
                .chunks(side)
                .chain(data.validation_layouts.chunks(side))
                .map(|l| mahalanobis(l, &mean, &precision))
                .fold(0.0, f32::max);
            model.layout = Some(LayoutModel {
                mean,
                precision,
                refuse_above: FAR_BEYOND * largest,
            });
        }
        Ok(model)
    }

    /// Mahalanobis distance of pooled features `f` to the training mean.
    #[must_use]
    pub fn distance(&self, f: &[f32]) -> f32 {
        mahalanobis(f, &self.feature_mean, &self.precision)
    }

    /// Judges one input from its pooled features, whole-image layout, lung shape and
    /// colourfulness.
    #[must_use]
    pub fn assess(&self, features: &[f32], image: &ImageChecks, lungs: LungShape) -> Assessment {
        let layout = &image.layout[..];
        let distance = self.distance(features);
        let mut a = assess_input(lungs, image.appearance);
        a.familiarity = Some(distance);
        if let Some(reason) = self
            .acquisition
            .as_ref()
            .and_then(|m| m.verdict(&image.acquisition))
        {
            a.raise(Flag::Unfamiliar, reason);
        }
        // Each whole-image measure alone refuses an image far beyond every radiograph seen;
        // smoother than any radiograph seen and odd in one more way (the layout, or the
        // features) refuses it too: a real radiograph is rarely odd in two independent ways at
        // once. A layout and features both unlike the training radiographs' are not
        // independent: that is a radiograph framed by a hospital the model never saw (the
        // model trained without Hannover refused 14 of its 238 radiographs so), flagged
        // `unfamiliar`, not refused.
        let mut odd: Vec<String> = Vec::new();
        let smoother = self.detail.is_some_and(|[low, _]| image.detail < low);
        if let Some([low, _]) = self.detail
            && smoother
        {
            let reason = format!(
                "smoother than any training radiograph (fine structure {:.4}, training {low:.4} \
                 or more)",
                image.detail
            );
            if image.detail < low / 2.0 {
                a.raise(Flag::NotAChestRadiograph, reason.clone());
            }
            odd.push(reason);
        }
        if let Some(model) = self
            .layout
            .as_ref()
            .filter(|m| m.mean.len() == layout.len())
        {
            let far = mahalanobis(layout, &model.mean, &model.precision);
            let largest = model.refuse_above / FAR_BEYOND;
            if !far.is_finite() || far > largest {
                let reason = format!(
                    "its layout (where it is dark and bright) is at distance {far:.1} from the \
                     training radiographs', the farthest of which is at {largest:.1}"
                );
                if !far.is_finite() || far > model.refuse_above {
                    a.raise(Flag::NotAChestRadiograph, reason.clone());
                }
                odd.push(reason);
            }
        }
        if !distance.is_finite() || distance > self.refuse_above {
            a.raise(
                Flag::NotAChestRadiograph,
                format!(
                    "features at distance {distance:.1} from the training radiographs, beyond \
                     {:.1}",
                    self.refuse_above
                ),
            );
        }
        if distance > self.unfamiliar_above {
            odd.push(format!("unfamiliar features (distance {distance:.1})"));
        }
        if odd.len() >= 2 && smoother {
            a.raise(Flag::NotAChestRadiograph, odd.join(", and "));
        } else if odd.len() >= 2 {
            a.raise(Flag::Unfamiliar, odd.join(", and "));
        }
        // The classifier's features flag an image only where no acquisition model was fitted
        // (a trust model from before it): in leave-one-source-out the feature flag caught no
        // held-out image the acquisition check missed, and flagged up to 24% of a seen
        // source's test images (models/classifier.md).
        if self.acquisition.is_none() && distance > self.unfamiliar_above {
            a.raise(
                Flag::Unfamiliar,
                format!(
                    "familiarity distance {distance:.1} above the validation images' 99th \
                     percentile {:.1}",
                    self.unfamiliar_above
                ),
            );
        }
        let outside = |v: f32, [lo, hi]: [f32; 2]| v < lo || v > hi;
        if lungs.fraction >= NO_LUNGS
            && (outside(lungs.fraction, self.lung_fraction)
                || outside(lungs.aspect, self.lung_aspect))
        {
            a.raise(
                Flag::ImplausibleLungs,
                format!(
                    "lungs cover {:.1}% of the image with a width/height of {:.2}; training \
                     showed {:.1}-{:.1}% and {:.2}-{:.2}",
                    100.0 * lungs.fraction,
                    lungs.aspect,
                    100.0 * self.lung_fraction[0],
                    100.0 * self.lung_fraction[1],
                    self.lung_aspect[0],
                    self.lung_aspect[1]
                ),
            );
        }
        a
    }
}

/// The checks that need no trust model: the picture's [`Appearance`] and the presence of lungs.
#[must_use]
pub fn assess_input(lungs: LungShape, appearance: Appearance) -> Assessment {
    let mut a = Assessment::default();
    for reason in appearance.verdicts() {
        a.raise(Flag::NotAChestRadiograph, reason);
    }
    if lungs.fraction < NO_LUNGS {
        a.raise(
            Flag::NotAChestRadiograph,
            format!(
                "no lungs found ({:.1}% of the image)",
                100.0 * lungs.fraction
            ),
        );
    }
    a
}

/// The 0.5th to 99.5th percentile range of `values`, widened by a tenth of its width each side.
fn range(values: impl Iterator<Item = f32>) -> [f32; 2] {
    let mut v: Vec<f32> = values.filter(|x| x.is_finite()).collect();
    v.sort_by(f32::total_cmp);
    let (lo, hi) = (percentile(&v, 0.005), percentile(&v, 0.995));
    let margin = 0.1 * (hi - lo);
    [lo - margin, hi + margin]
}

/// Linear-interpolated percentile `q` of sorted values (0 when empty).
fn percentile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, (pos - pos.floor()) as f32);
    let next = sorted[(i + 1).min(sorted.len() - 1)];
    sorted[i] + frac * (next - sorted[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn noise(rng: &mut rand::rngs::StdRng, n: usize, d: usize, scale: f32) -> Vec<f32> {
        (0..n * d)
            .map(|_| {
                // Sum of uniforms: near-Gaussian, enough for a test.
                let s: f32 = (0..6).map(|_| rng.random_range(-1.0f32..1.0)).sum();
                s * scale
            })
            .collect()
    }

    /// Whole-image checks of an ordinary radiograph with this `layout` and mean saturation.
    fn checks(layout: &[f32], mean: f32) -> ImageChecks {
        ImageChecks {
            appearance: Appearance {
                colour: Colourfulness {
                    mean,
                    ..Default::default()
                },
                flat_share: 0.1,
            },
            acquisition: Vec::new(),
            layout: layout.to_vec(),
            detail: 0.2,
        }
    }

    /// A trust model fitted on seeded noise (8 feature dimensions), its validation features
    /// and validation layouts.
    fn fitted() -> (TrustModel, Vec<f32>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let d = 8;
        let train = noise(&mut rng, 400, d, 1.0);
        let val = noise(&mut rng, 100, d, 1.0);
        let side = (LAYOUT_SIDE * LAYOUT_SIDE) as usize;
        let (train_layouts, validation_layouts) = (
            noise(&mut rng, 400, side, 1.0),
            noise(&mut rng, 100, side, 1.0),
        );
        let shapes: Vec<LungShape> = (0..100)
            .map(|i| LungShape {
                fraction: 0.2 + 0.001 * i as f32,
                aspect: 1.0 + 0.002 * i as f32,
            })
            .collect();
        let model = TrustModel::fit(&TrustData {
            train_features: &train,
            validation_features: &val,
            dim: d,
            train_layouts: &train_layouts,
            validation_layouts: &validation_layouts,
            shapes: &shapes,
            details: &[0.1, 0.2, 0.3],
            train_acquisitions: &[],
            validation_acquisitions: &[],
            train_sources: &[],
            validation_sources: &[],
            mask_shapes: &[],
        })
        .unwrap();
        (model, val, validation_layouts)
    }

    const USUAL: LungShape = LungShape {
        fraction: 0.25,
        aspect: 1.1,
    };

    #[test]
    fn distance_flags_outliers_and_refuses_far_ones() {
        let (model, val, validation_layouts) = fitted();
        let (d, side) = (8, (LAYOUT_SIDE * LAYOUT_SIDE) as usize);
        let layout = &validation_layouts[..side];
        let usual = USUAL;
        // A typical point: no flags.
        let typical = model.assess(&val[..d], &checks(layout, 0.0), usual);
        assert!(typical.flags.is_empty(), "{typical:?}");
        // A point a few times beyond the validation spread: unfamiliar, not refused.
        let edge: Vec<f32> = vec![model.unfamiliar_above * 0.8; d];
        let a = model.assess(&edge, &checks(layout, 0.0), usual);
        assert!(
            a.has(Flag::Unfamiliar) && !a.has(Flag::NotAChestRadiograph),
            "{a:?}"
        );
        // Far away: refused.
        let far: Vec<f32> = vec![100.0; d];
        assert!(
            model
                .assess(&far, &checks(layout, 0.0), usual)
                .has(Flag::NotAChestRadiograph)
        );
        // Lungs outside the training range.
        let big = LungShape {
            fraction: 0.6,
            aspect: 1.1,
        };
        let odd = model.assess(&val[..d], &checks(layout, 0.0), big);
        assert_eq!(odd.flags, [Flag::ImplausibleLungs]);
        // Colour and missing lungs, whatever the features.
        assert!(
            model
                .assess(&val[..d], &checks(layout, 0.3), usual)
                .has(Flag::NotAChestRadiograph)
        );
        let none = LungShape {
            fraction: 0.0,
            aspect: 0.0,
        };
        let a = model.assess(&val[..d], &checks(layout, 0.3), none);
        assert_eq!(a.flags, [Flag::NotAChestRadiograph], "{a:?}");
        // Raised twice (colour and no lungs): one flag, both reasons.
        assert_eq!(a.reasons.len(), 1);
        assert!(
            a.reasons[0].contains("colour") && a.reasons[0].contains("no lungs"),
            "{a:?}"
        );
        // A layout far from every training layout: refused, whatever the features.
        let odd_layout: Vec<f32> = (0..side)
            .map(|i| if i < side / 2 { 10.0 } else { -10.0 })
            .collect();
        let a = model.assess(&val[..d], &checks(&odd_layout, 0.0), usual);
        assert_eq!(a.flags, [Flag::NotAChestRadiograph], "{a:?}");
        assert!(a.reasons[0].contains("layout"), "{a:?}");
        // Smoother than any training radiograph and with unfamiliar features: refused; only
        // smoother, not refused.
        let mut smoother = checks(layout, 0.0);
        smoother.detail = 0.08;
        assert!(model.assess(&val[..d], &smoother, usual).flags.is_empty());
        let a = model.assess(&edge, &smoother, usual);
        assert!(
            a.has(Flag::NotAChestRadiograph) && a.has(Flag::Unfamiliar),
            "{a:?}"
        );
        // Far smoother than any training radiograph: refused.
        let mut smooth = checks(layout, 0.0);
        smooth.detail = 0.01;
        let a = model.assess(&val[..d], &smooth, usual);
        assert_eq!(a.flags, [Flag::NotAChestRadiograph], "{a:?}");
        assert!(a.reasons[0].contains("smooth"), "{a:?}");
        // About 1% of validation points are beyond the 99th percentile.
        let beyond = val
            .chunks(d)
            .filter(|f| model.distance(f) > model.unfamiliar_above)
            .count();
        assert!(beyond <= 2, "{beyond}");
    }

    /// With an acquisition model, unfamiliar features alone flag nothing: the picture's
    /// acquisition says whether its source is known. Without one they still do.
    #[test]
    fn features_flag_only_where_no_acquisition_model_was_fitted() {
        let (mut model, _, validation_layouts) = fitted();
        let layout = &validation_layouts[..(LAYOUT_SIDE * LAYOUT_SIDE) as usize];
        let edge: Vec<f32> = vec![model.unfamiliar_above * 0.8; 8];
        assert!(
            model
                .assess(&edge, &checks(layout, 0.0), USUAL)
                .has(Flag::Unfamiliar)
        );
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let rows = noise(&mut rng, 80, acquisition::DIM, 1.0);
        let sources = vec!["here"; 80];
        model.acquisition = AcquisitionModel::fit(
            &rows[..60 * acquisition::DIM],
            &sources[..60],
            &rows[60 * acquisition::DIM..],
            &sources[60..],
        )
        .unwrap();
        assert!(model.acquisition.is_some());
        let mut familiar = checks(layout, 0.0);
        familiar.acquisition = rows[..acquisition::DIM].to_vec();
        let a = model.assess(&edge, &familiar, USUAL);
        assert!(a.flags.is_empty(), "{a:?}");
        assert!(a.familiarity.unwrap() > model.unfamiliar_above);
        // An acquisition unlike the source's is still unfamiliar.
        familiar.acquisition = vec![50.0; acquisition::DIM];
        let a = model.assess(&edge, &familiar, USUAL);
        assert_eq!(a.flags, [Flag::Unfamiliar], "{a:?}");
        assert!(a.reasons[0].contains("acquired unlike"), "{a:?}");
    }

    /// Framed beyond the farthest training radiograph (not far beyond) with unfamiliar
    /// features: a radiograph from an unseen hospital, flagged with both reasons, not refused.
    #[test]
    fn an_unseen_framing_with_unfamiliar_features_is_flagged_not_refused() {
        let (model, _, validation_layouts) = fitted();
        let layout = &validation_layouts[..(LAYOUT_SIDE * LAYOUT_SIDE) as usize];
        let edge: Vec<f32> = vec![model.unfamiliar_above * 0.8; 8];
        let layouts = model.layout.as_ref().unwrap();
        let (largest, refuse) = (layouts.refuse_above / FAR_BEYOND, layouts.refuse_above);
        let framed = |t: f32| -> Vec<f32> { layout.iter().map(|v| v + t).collect() };
        let at = |t: f32| mahalanobis(&framed(t), &layouts.mean, &layouts.precision);
        let (mut low, mut high) = (0.0_f32, 100.0_f32);
        for _ in 0..60 {
            let mid = f32::midpoint(low, high);
            if at(mid) < f32::midpoint(largest, refuse) {
                low = mid;
            } else {
                high = mid;
            }
        }
        assert!(
            at(low) > largest && at(low) < refuse,
            "{} {largest} {refuse}",
            at(low)
        );
        let a = model.assess(&edge, &checks(&framed(low), 0.0), USUAL);
        assert_eq!(a.flags, [Flag::Unfamiliar], "{a:?}");
        assert!(
            a.reasons
                .iter()
                .any(|r| r.contains("layout") && r.contains("unfamiliar features")),
            "{a:?}"
        );
    }

    #[test]
    fn colourfulness_tells_gray_from_colour() {
        let gray = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, _| {
            let v = (x * 10) as u8;
            image::Rgb([v, v, v])
        }));
        assert_eq!(colourfulness(&gray), Colourfulness::default());
        assert_eq!(colourfulness(&gray).verdict(), None);
        let colour = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(16, 16, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 16) as u8, 128])
        }));
        assert!(colourfulness(&colour).mean > COLOUR_LIMIT);
        assert!(
            colourfulness(&colour)
                .verdict()
                .unwrap()
                .contains("mean saturation")
        );
    }

    /// A gray picture with JPEG-like chroma noise passes; the same picture with a coloured
    /// frame of 1% of its pixels (mean saturation far under the limit) is a colour picture.
    #[test]
    fn a_little_clear_colour_is_a_screenshot_and_chroma_noise_is_not() {
        let (w, h) = (200_u32, 100_u32);
        let noisy = |x: u32, y: u32| {
            let v = ((x * 7 + y * 3) % 200) as u8 + 20;
            let jitter = ((x * 31 + y * 17) % 9) as u8; // up to 8 levels of chroma noise
            image::Rgb([
                v,
                v.saturating_add(jitter / 2),
                v.saturating_sub(jitter / 2),
            ])
        };
        let gray = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, noisy));
        let c = colourfulness(&gray);
        assert!(c.coloured_share == 0.0 && c.verdict().is_none(), "{c:?}");
        // A badge of 200 red pixels: 1% of the image.
        let framed = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            if x < 20 && y < 10 {
                image::Rgb([220, 38, 38])
            } else {
                noisy(x, y)
            }
        }));
        let c = colourfulness(&framed);
        assert!(
            c.mean < COLOUR_LIMIT && (c.coloured_share - 0.01).abs() < 1e-6,
            "{c:?}"
        );
        assert!(
            c.verdict().unwrap().contains("1.0% of its pixels coloured"),
            "{c:?}"
        );
    }

    /// A page of text lines is mostly paper and refused; a radiograph-like gradient with a
    /// black border over 45% of it (the flattest shared radiograph has 46%) is not.
    #[test]
    fn a_page_is_one_flat_shade_and_a_bordered_radiograph_is_not() {
        let page = crate::xray::GrayF32::from_fn(300, 400, |x, y| {
            let ink = y % 20 < 8 && x > 30 && x < 270 && (x / 7) % 5 != 0;
            image::Luma([if ink { 0.1 } else { 0.96 }])
        });
        let share = flat_share(&page);
        assert!(share > FLAT_LIMIT, "{share}");
        let appearance = Appearance {
            colour: Colourfulness::default(),
            flat_share: share,
        };
        assert!(
            appearance.verdicts()[0].contains("one flat shade"),
            "{appearance:?}"
        );
        let bordered = crate::xray::GrayF32::from_fn(300, 400, |x, y| {
            let v = if x < 135 {
                0.0
            } else {
                (x + 2 * y) as f32 / 1100.0
            };
            image::Luma([v])
        });
        let share = flat_share(&bordered);
        assert!((0.45..FLAT_LIMIT).contains(&share), "{share}");
        let appearance = Appearance {
            colour: Colourfulness::default(),
            flat_share: share,
        };
        assert!(appearance.verdicts().is_empty());
    }
}
