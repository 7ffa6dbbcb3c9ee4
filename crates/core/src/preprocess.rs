//! The one place where radiographs become network inputs. Training, prediction and explanation
//! all call these functions, so what a model sees never differs between them.

use image::imageops::{self, FilterType};
use tch::{Device, Tensor};

use crate::mask::LungMask;
use crate::xray::GrayF32;

/// Side of the square the segmenter sees.
pub const SEGMENTER_SIDE: u32 = 256;
/// Side of the square the classifier sees.
pub const CLASSIFIER_SIDE: u32 = 224;
/// Margin added around the lungs' bounding box before cropping, as a share of its size.
const CROP_MARGIN: f32 = 0.08;

/// Segmenter input: the whole radiograph resized to 256x256 (aspect not kept: the mask is
/// resized back the same way) and standardised to zero mean and unit variance, which removes
/// exposure differences between sources.
#[must_use]
pub fn segmenter_input(gray: &GrayF32) -> Vec<f32> {
    let small = imageops::resize(gray, SEGMENTER_SIDE, SEGMENTER_SIDE, FilterType::Triangle);
    standardise(small.as_raw(), None)
}

/// Where the classifier's square input lies in the original radiograph, in original pixels.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CropBox {
    pub x0: f32,
    pub y0: f32,
    pub side: f32,
}

impl CropBox {
    /// Original-image coordinates of the centre of input pixel (u, v).
    #[must_use]
    pub fn to_original(&self, u: f32, v: f32) -> (f32, f32) {
        let scale = self.side / CLASSIFIER_SIDE as f32;
        (
            self.x0 + (u + 0.5) * scale - 0.5,
            self.y0 + (v + 0.5) * scale - 0.5,
        )
    }
}

/// How the classifier's input is made from the lung crop; stored with each classifier, so a
/// model is always fed the way it was trained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputStyle {
    /// Lungs standardised (zero mean, unit variance over the lung pixels), everything outside
    /// them 0. The lung outline is a hard edge the model can read (the first shipped models).
    #[default]
    Masked,
    /// Every pixel replaced by its rank among the lung pixels (the lungs' histogram
    /// equalised, scaled to unit variance), which erases exposure, gamma and processing curves
    /// that differ between hospitals and scanners; then faded to 0 outside the lungs through a
    /// feathered mask, so the outline is a soft ramp rather than an edge.
    EqualisedFeathered,
}

impl InputStyle {
    /// One line for model cards.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Masked => {
                "lungs standardised to zero mean and unit variance, outside-lung pixels 0"
            }
            Self::EqualisedFeathered => {
                "lung histogram equalised (each pixel's rank among the lung pixels, unit \
                 variance), faded to 0 outside the lungs through a 9-pixel feathered mask"
            }
        }
    }
}

/// Width of the box filter that feathers the lung mask, in 224-grid pixels.
pub const FEATHER: usize = 9;

/// The classifier's view of a radiograph.
#[derive(Debug, Clone)]
pub struct ClassifierInput {
    /// 224x224 values, row-major, what the classifier sees (see [`InputStyle`]).
    pub pixels: Vec<f32>,
    /// The same crop before the mask is applied (training jitters the mask, then applies it).
    pub unmasked: Vec<f32>,
    /// The lung mask resampled to the same 224x224 grid (1 lung, 0 not).
    pub mask: Vec<f32>,
    pub crop: CropBox,
}

impl ClassifierInput {
    /// A `[1, 1, 224, 224]` tensor on `device`.
    pub fn to_tensor(&self, device: Device) -> Tensor {
        let side = i64::from(CLASSIFIER_SIDE);
        Tensor::from_slice(&self.pixels)
            .view([1, 1, side, side])
            .to_device(device)
    }
}

/// Classifier input: a square crop around the lungs (bounding box of the mask plus a margin; the
/// whole image when the mask is empty), resampled to 224x224, normalised over the lung pixels
/// and masked as `style` says, so that text markers, devices outside the chest and the image
/// border carry no signal.
#[must_use]
pub fn classifier_input(gray: &GrayF32, mask: &LungMask, style: InputStyle) -> ClassifierInput {
    let crop = lung_crop(mask);
    let side = CLASSIFIER_SIDE as usize;
    let mut pixels = Vec::with_capacity(side * side);
    let mut inside = Vec::with_capacity(side * side);
    for v in 0..side {
        for u in 0..side {
            let (x, y) = crop.to_original(u as f32, v as f32);
            pixels.push(bilinear(gray.as_raw(), gray.width(), gray.height(), x, y));
            let m = bilinear_u8(mask.as_raw(), mask.width(), mask.height(), x, y);
            inside.push(if m >= 0.5 { 1.0 } else { 0.0 });
        }
    }
    let has_lungs = inside.iter().any(|&m| m > 0.0);
    let lungs = has_lungs.then_some(&inside[..]);
    let (unmasked, weights) = match style {
        InputStyle::Masked => (standardise(&pixels, lungs), inside.clone()),
        InputStyle::EqualisedFeathered => (equalise(&pixels, lungs), feather(&inside, side)),
    };
    let pixels = if has_lungs {
        unmasked.iter().zip(&weights).map(|(p, m)| p * m).collect()
    } else {
        unmasked.clone()
    };
    ClassifierInput {
        pixels,
        unmasked,
        mask: inside,
        crop,
    }
}

/// Each pixel's rank among the pixels where `weights` > 0 (all when `None`), as a value in
/// (0, 1) centred and scaled to unit variance: a histogram equalisation over the lungs.
fn equalise(pixels: &[f32], weights: Option<&[f32]>) -> Vec<f32> {
    let mut reference: Vec<f32> = match weights {
        Some(w) => pixels
            .iter()
            .zip(w)
            .filter(|(_, w)| **w > 0.0)
            .map(|(p, _)| *p)
            .collect(),
        None => pixels.to_vec(),
    };
    reference.sort_by(f32::total_cmp);
    let n = reference.len().max(1) as f32;
    // A uniform variable on (0, 1) has variance 1/12.
    let scale = 12f32.sqrt();
    pixels
        .iter()
        .map(|p| {
            let below = reference.partition_point(|r| r < p);
            let not_above = reference.partition_point(|r| r <= p);
            let rank = (below + not_above) as f32 / 2.0 / n;
            (rank - 0.5) * scale
        })
        .collect()
}

/// The mask smoothed by a `FEATHER`-wide box filter (edges averaged over the pixels inside the
/// grid): 1 deep inside the lungs, a linear ramp across the outline, 0 far outside.
#[must_use]
pub fn feather(mask: &[f32], side: usize) -> Vec<f32> {
    let r = FEATHER / 2;
    let pass = |data: &[f32], horizontal: bool| -> Vec<f32> {
        let mut out = vec![0.0; data.len()];
        for a in 0..side {
            for b in 0..side {
                let (lo, hi) = (b.saturating_sub(r), (b + r).min(side - 1));
                let at = |k: usize| {
                    if horizontal {
                        a * side + k
                    } else {
                        k * side + a
                    }
                };
                let sum: f32 = (lo..=hi).map(|k| data[at(k)]).sum();
                out[at(b)] = sum / (hi - lo + 1) as f32;
            }
        }
        out
    };
    pass(&pass(mask, true), false)
}

/// The square crop around the lungs.
fn lung_crop(mask: &LungMask) -> CropBox {
    let (w, h) = mask.dimensions();
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] >= 128 {
            let b = bounds.get_or_insert((x, y, x, y));
            *b = (b.0.min(x), b.1.min(y), b.2.max(x), b.3.max(y));
        }
    }
    let (x0, y0, x1, y1) = bounds.unwrap_or((0, 0, w - 1, h - 1));
    let (bw, bh) = ((x1 - x0 + 1) as f32, (y1 - y0 + 1) as f32);
    let side = bw.max(bh) * (1.0 + 2.0 * CROP_MARGIN);
    let (cx, cy) = (x0 as f32 + bw / 2.0, y0 as f32 + bh / 2.0);
    CropBox {
        x0: cx - side / 2.0,
        y0: cy - side / 2.0,
        side,
    }
}

/// Zero mean, unit variance over the pixels where `weights` is non-zero (all when `None`).
fn standardise(pixels: &[f32], weights: Option<&[f32]>) -> Vec<f32> {
    let weight = |i: usize| weights.map_or(1.0, |w| w[i]);
    let (mut n, mut sum) = (0.0f64, 0.0f64);
    for (i, &p) in pixels.iter().enumerate() {
        n += f64::from(weight(i));
        sum += f64::from(weight(i) * p);
    }
    let mean = sum / n.max(1.0);
    let var = pixels
        .iter()
        .enumerate()
        .map(|(i, &p)| f64::from(weight(i)) * (f64::from(p) - mean).powi(2))
        .sum::<f64>()
        / n.max(1.0);
    let std = var.sqrt().max(1e-3);
    pixels
        .iter()
        .map(|&p| ((f64::from(p) - mean) / std) as f32)
        .collect()
}

/// Bilinear sample at (x, y); 0 outside the image.
fn bilinear(data: &[f32], w: u32, h: u32, x: f32, y: f32) -> f32 {
    sample(w, h, x, y, |i| data[i])
}

fn bilinear_u8(data: &[u8], w: u32, h: u32, x: f32, y: f32) -> f32 {
    sample(w, h, x, y, |i| f32::from(data[i]) / 255.0)
}

fn sample(w: u32, h: u32, x: f32, y: f32, at: impl Fn(usize) -> f32) -> f32 {
    let (x0, y0) = (x.floor(), y.floor());
    let (fx, fy) = (x - x0, y - y0);
    let get = |xi: f32, yi: f32| {
        if xi < 0.0 || yi < 0.0 || xi >= w as f32 || yi >= h as f32 {
            0.0
        } else {
            at(yi as usize * w as usize + xi as usize)
        }
    };
    let top = get(x0, y0) * (1.0 - fx) + get(x0 + 1.0, y0) * fx;
    let bottom = get(x0, y0 + 1.0) * (1.0 - fx) + get(x0 + 1.0, y0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    fn gradient(w: u32, h: u32) -> GrayF32 {
        GrayF32::from_fn(w, h, |x, y| Luma([(x + y) as f32 / (w + h) as f32]))
    }

    #[test]
    fn segmenter_input_is_standardised_256_square() {
        let input = segmenter_input(&gradient(400, 300));
        assert_eq!(input.len(), 256 * 256);
        let mean = input.iter().sum::<f32>() / input.len() as f32;
        let var = input.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / input.len() as f32;
        assert!(mean.abs() < 1e-4, "mean {mean}");
        assert!((var - 1.0).abs() < 1e-3, "variance {var}");
    }

    #[test]
    fn classifier_input_crops_to_the_lungs_and_zeroes_the_rest() {
        let gray = gradient(200, 100);
        let mut mask = GrayImage::new(200, 100);
        for y in 20..60 {
            for x in 50..150 {
                mask.put_pixel(x, y, Luma([255]));
            }
        }
        let input = classifier_input(&gray, &mask, InputStyle::Masked);
        // The box is 100x40: the square side is 100 plus 8% margins, centred on it.
        assert!((input.crop.side - 116.0).abs() < 1e-3);
        assert!((input.crop.x0 - 42.0).abs() < 1e-3 && (input.crop.y0 - -18.0).abs() < 1e-3);
        let inside: Vec<f32> = input
            .pixels
            .iter()
            .zip(&input.mask)
            .filter(|&(_, m)| *m > 0.0)
            .map(|(p, _)| *p)
            .collect();
        let mean = inside.iter().sum::<f32>() / inside.len() as f32;
        assert!(mean.abs() < 1e-3, "lungs are centred: {mean}");
        assert!(
            input
                .pixels
                .iter()
                .zip(&input.mask)
                .all(|(p, m)| *m > 0.0 || *p == 0.0)
        );
        // The lung box covers 100/116 of the width and 40/116 of the height.
        let share = input.mask.iter().sum::<f32>() / input.mask.len() as f32;
        assert!(
            (share - (100.0 * 40.0) / (116.0 * 116.0)).abs() < 0.02,
            "share {share}"
        );
    }

    #[test]
    fn empty_mask_uses_the_whole_image() {
        let input = classifier_input(
            &gradient(64, 32),
            &GrayImage::new(64, 32),
            InputStyle::Masked,
        );
        assert!((input.crop.side - 64.0 * 1.16).abs() < 1e-3);
        assert!(input.pixels.iter().any(|&p| p != 0.0));
    }

    #[test]
    fn equalised_input_ignores_monotone_intensity_changes() {
        let gray = gradient(120, 100);
        let mut mask = GrayImage::new(120, 100);
        for y in 10..90 {
            for x in 20..100 {
                mask.put_pixel(x, y, Luma([255]));
            }
        }
        // A gamma curve and a contrast change, as another scanner's processing might apply.
        let mut other = gray.clone();
        for p in other.pixels_mut() {
            p.0[0] = 0.1 + 0.7 * p.0[0].powf(0.6);
        }
        // The largest change of the input under that curve, for one style.
        let change = |style: InputStyle| {
            let (a, b) = (
                classifier_input(&gray, &mask, style),
                classifier_input(&other, &mask, style),
            );
            let diff = a.pixels.iter().zip(&b.pixels).map(|(x, y)| (x - y).abs());
            (diff.fold(0.0, f32::max), a)
        };
        let (diff, a) = change(InputStyle::EqualisedFeathered);
        // Not exactly 0: the crop is resampled (bilinear) before it is equalised, and
        // resampling does not commute with a non-linear curve.
        assert!(diff < 0.03, "max difference {diff}");
        // The masked style does see the change.
        let (diff, _) = change(InputStyle::Masked);
        assert!(diff > 0.3, "max difference {diff}");
        // Lung values have unit variance; the outline is a ramp, not a step.
        let lung: Vec<f32> = a
            .unmasked
            .iter()
            .zip(&a.mask)
            .filter(|(_, m)| **m > 0.0)
            .map(|(p, _)| *p)
            .collect();
        let mean = lung.iter().sum::<f32>() / lung.len() as f32;
        let var = lung.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / lung.len() as f32;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.02,
            "mean {mean} var {var}"
        );
        let soft = feather(&a.mask, CLASSIFIER_SIDE as usize);
        let ramp = soft.iter().filter(|&&v| v > 0.05 && v < 0.95).count();
        assert!(ramp > 500, "{ramp} pixels on the ramp");
    }
}
