//! The one place where radiographs become network inputs. Training, prediction and explanation
//! all call these functions, so what a model sees never differs between them.

use image::imageops::{self, FilterType};
use tch::{Device, Tensor};

use crate::mask::LungMask;
use crate::xray::GrayF32;

/// Side of the square the segmenters `cxr train segmenter` makes see (each model's JSON says its
/// own: the U-Net shipped before the lean one saw 256).
pub const SEGMENTER_SIDE: u32 = 224;
/// The sides a segmenter may declare: enough for two lungs, at most the shared data's 512.
pub const SEGMENTER_SIDES: std::ops::RangeInclusive<u32> = 64..=512;

/// Refuses a segmenter side outside [`SEGMENTER_SIDES`] or one that `multiple` (the network's
/// total down-sampling) does not divide; the reason says what a side must be.
pub fn check_segmenter_side(side: u32, multiple: u32) -> Result<(), String> {
    if SEGMENTER_SIDES.contains(&side) && side.is_multiple_of(multiple.max(1)) {
        return Ok(());
    }
    Err(format!(
        "a segmenter takes {} to {} pixels, a multiple of {multiple}",
        SEGMENTER_SIDES.start(),
        SEGMENTER_SIDES.end()
    ))
}
/// Side of the square the classifier sees.
pub const CLASSIFIER_SIDE: u32 = 224;
/// Margin added around the lungs' bounding box before cropping, as a share of its size.
const CROP_MARGIN: f32 = 0.08;

/// Segmenter input: the whole radiograph resized to `side` x `side` (aspect not kept: the mask
/// is resized back the same way) and standardised to zero mean and unit variance, which removes
/// exposure differences between sources.
#[must_use]
pub fn segmenter_input(gray: &GrayF32, side: u32) -> Vec<f32> {
    standardise(resize_triangle(gray, side, side).as_raw(), None)
}

/// `gray` resized with a triangle (linear) filter, widened when shrinking: the same result,
/// bit for bit, as `image::imageops::resize(gray, w, h, FilterType::Triangle)` (the same
/// weights, sums in the same order, the same clamping to [0, 1]), which the models were trained
/// on, in a quarter of its time: one channel instead of four, and whole rows at a time.
#[must_use]
pub fn resize_triangle(gray: &GrayF32, w: u32, h: u32) -> GrayF32 {
    let (width, height) = gray.dimensions();
    if (width, height) == (w, h) || width == 0 || height == 0 {
        return imageops::resize(gray, w, h, FilterType::Triangle);
    }
    let (width, w) = (width as usize, w as usize);
    // Down the columns first, a row of output at a time...
    let mut tall = vec![0.0f32; width * h as usize];
    for ((first, weights), out) in triangle_taps(height, h)
        .iter()
        .zip(tall.chunks_exact_mut(width))
    {
        let rows = gray.as_raw()[first * width..].chunks_exact(width);
        for (row, weight) in rows.zip(weights) {
            out.iter_mut().zip(row).for_each(|(o, p)| *o += p * weight);
        }
    }
    // ...then along the rows.
    let columns = triangle_taps(width as u32, w as u32);
    let mut resized = Vec::with_capacity(w * h as usize);
    for row in tall.chunks_exact(width) {
        resized.extend(columns.iter().map(|(first, weights)| {
            let sum = row[*first..]
                .iter()
                .zip(weights)
                .fold(0.0f32, |sum, (p, weight)| sum + p * weight);
            sum.clamp(0.0, 1.0)
        }));
    }
    GrayF32::from_raw(w as u32, h, resized).expect("w x h values")
}

/// For each of `output` positions along an axis `input` pixels long: the first source pixel
/// and the normalised triangle-filter weights of it and the following ones, as `image`
/// computes them.
fn triangle_taps(input: u32, output: u32) -> Vec<(usize, Vec<f32>)> {
    let ratio = input as f32 / output as f32;
    let widen = ratio.max(1.0);
    (0..output)
        .map(|i| {
            let centre = (i as f32 + 0.5) * ratio;
            let left = ((centre - widen).floor() as i64).clamp(0, i64::from(input) - 1);
            let right = ((centre + widen).ceil() as i64).clamp(left + 1, i64::from(input));
            let mut weights: Vec<f32> = (left..right)
                .map(|p| {
                    let x = ((p as f32 - (centre - 0.5)) / widen).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let sum: f32 = weights.iter().fold(0.0, |sum, w| sum + w);
            for w in &mut weights {
                *w /= sum;
            }
            (left as usize, weights)
        })
        .collect()
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
    // The crop's grid is separable: each column samples at one x, each row at one y.
    let columns: Vec<Tap> = (0..side)
        .map(|u| Tap::at(crop.to_original(u as f32, 0.0).0, gray.width()))
        .collect();
    let width = gray.width() as usize;
    let (image, lungs) = (gray.as_raw(), mask.as_raw());
    let mut pixels = Vec::with_capacity(side * side);
    let mut inside = Vec::with_capacity(side * side);
    for v in 0..side {
        let row = Tap::at(crop.to_original(0.0, v as f32).1, gray.height());
        for column in &columns {
            pixels.push(bilinear(row, *column, width, |i| image[i]));
            let m = bilinear(row, *column, width, |i| f32::from(lungs[i]) / 255.0);
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
/// (0, 1) centred and scaled to unit variance: a histogram equalisation over the lungs. Ties
/// share their mean rank.
fn equalise(pixels: &[f32], weights: Option<&[f32]>) -> Vec<f32> {
    let counts = |i: usize| weights.is_none_or(|w| w[i] > 0.0);
    // Every pixel in order of value (its index in the low bits): one pass then knows, for each
    // value, how many counted pixels lie below it and how many equal it.
    let mut order: Vec<u64> = pixels
        .iter()
        .enumerate()
        .map(|(i, p)| (u64::from(ordered_bits(*p)) << 32) | i as u64)
        .collect();
    order.sort_unstable();
    let index = |key: u64| (key & u64::from(u32::MAX)) as usize;
    let n = (0..pixels.len()).filter(|&i| counts(i)).count().max(1) as f32;
    // A uniform variable on (0, 1) has variance 1/12.
    let scale = 12f32.sqrt();
    let mut equalised = vec![0.0; pixels.len()];
    let (mut below, mut start) = (0, 0);
    while start < order.len() {
        let value = pixels[index(order[start])];
        let end = start
            + 1
            + order[start + 1..]
                .iter()
                .take_while(|&&key| pixels[index(key)] == value)
                .count();
        let equal = order[start..end]
            .iter()
            .filter(|&&key| counts(index(key)))
            .count();
        let rank = (2 * below + equal) as f32 / 2.0 / n;
        for &key in &order[start..end] {
            equalised[index(key)] = (rank - 0.5) * scale;
        }
        below += equal;
        start = end;
    }
    equalised
}

/// The bits of `value` as an unsigned number in the order of the values (IEEE total order).
fn ordered_bits(value: f32) -> u32 {
    let bits = value.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

/// The mask smoothed by a `FEATHER`-wide box filter (edges averaged over the pixels inside the
/// grid): 1 deep inside the lungs, a linear ramp across the outline, 0 far outside.
#[must_use]
pub fn feather(mask: &[f32], side: usize) -> Vec<f32> {
    let r = FEATHER / 2;
    let window = |b: usize| (b.saturating_sub(r), (b + r).min(side - 1));
    let mut across = vec![0.0; mask.len()];
    for (row, out) in mask.chunks_exact(side).zip(across.chunks_exact_mut(side)) {
        for (b, value) in out.iter_mut().enumerate() {
            let (lo, hi) = window(b);
            *value = row[lo..=hi].iter().sum::<f32>() / (hi - lo + 1) as f32;
        }
    }
    // Down the columns a row at a time, adding the rows in the same order as a per-pixel sum.
    let mut feathered = vec![0.0; mask.len()];
    for (b, out) in feathered.chunks_exact_mut(side).enumerate() {
        let (lo, hi) = window(b);
        out.fill(-0.0);
        for row in across[lo * side..(hi + 1) * side].chunks_exact(side) {
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        }
        let n = (hi - lo + 1) as f32;
        for o in out.iter_mut() {
            *o /= n;
        }
    }
    feathered
}

/// The square crop around the lungs.
fn lung_crop(mask: &LungMask) -> CropBox {
    let (w, h) = mask.dimensions();
    let lungs = crate::mask::lung_box(mask).unwrap_or(crate::mask::LungBox {
        x0: 0,
        y0: 0,
        x1: w,
        y1: h,
    });
    let (bw, bh) = (lungs.width() as f32, lungs.height() as f32);
    let side = bw.max(bh) * (1.0 + 2.0 * CROP_MARGIN);
    let (cx, cy) = (lungs.x0 as f32 + bw / 2.0, lungs.y0 as f32 + bh / 2.0);
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

/// Where one coordinate of a bilinear sample falls: the two neighbouring pixel positions along
/// that axis (`None` outside the image, which counts as 0) and the weight of the second.
#[derive(Debug, Clone, Copy)]
struct Tap {
    first: Option<usize>,
    second: Option<usize>,
    weight: f32,
}

impl Tap {
    /// The tap at coordinate `x` on an axis `len` pixels long.
    fn at(x: f32, len: u32) -> Self {
        let floor = x.floor();
        let inside = |p: f32| (p >= 0.0 && p < len as f32).then_some(p as usize);
        Self {
            first: inside(floor),
            second: inside(floor + 1.0),
            weight: x - floor,
        }
    }
}

/// Bilinear sample at (`column`, `row`) of a row-major image `width` pixels wide whose pixel
/// `i` is `at(i)`; 0 outside the image.
fn bilinear(row: Tap, column: Tap, width: usize, at: impl Fn(usize) -> f32) -> f32 {
    let get = |y: Option<usize>, x: Option<usize>| match (y, x) {
        (Some(y), Some(x)) => at(y * width + x),
        _ => 0.0,
    };
    let (fx, fy) = (column.weight, row.weight);
    let top = get(row.first, column.first) * (1.0 - fx) + get(row.first, column.second) * fx;
    let bottom = get(row.second, column.first) * (1.0 - fx) + get(row.second, column.second) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    /// Values in [0, 1] from a fixed seed.
    fn noise(w: u32, h: u32, seed: u64) -> GrayF32 {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        GrayF32::from_fn(w, h, |_, _| Luma([rng.random::<f32>()]))
    }

    #[test]
    fn the_triangle_resize_is_the_image_crates_bit_for_bit() {
        for (i, (w, h, to_w, to_h)) in [
            (512, 512, 256, 256),
            (512, 481, 256, 256),
            (300, 200, 256, 256),
            (1000, 37, 256, 256),
            (3, 5, 256, 256),
            (256, 256, 8, 300),
        ]
        .into_iter()
        .enumerate()
        {
            let gray = noise(w, h, i as u64);
            let ours = resize_triangle(&gray, to_w, to_h);
            let theirs = imageops::resize(&gray, to_w, to_h, FilterType::Triangle);
            assert_eq!(ours.dimensions(), theirs.dimensions());
            let differ = ours
                .iter()
                .zip(theirs.iter())
                .filter(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(differ.count(), 0, "{w}x{h} -> {to_w}x{to_h}");
        }
    }

    /// The classifier input made pixel by pixel, the plain way: the optimised
    /// `classifier_input` must give exactly these values.
    fn classifier_input_one_pixel_at_a_time(gray: &GrayF32, mask: &LungMask) -> Vec<f32> {
        let crop = lung_crop(mask);
        let side = CLASSIFIER_SIDE as usize;
        let sample = |data: &dyn Fn(usize) -> f32, w: u32, h: u32, x: f32, y: f32| {
            let (x0, y0) = (x.floor(), y.floor());
            let get = |xi: f32, yi: f32| {
                if xi < 0.0 || yi < 0.0 || xi >= w as f32 || yi >= h as f32 {
                    0.0
                } else {
                    data(yi as usize * w as usize + xi as usize)
                }
            };
            let (fx, fy) = (x - x0, y - y0);
            let top = get(x0, y0) * (1.0 - fx) + get(x0 + 1.0, y0) * fx;
            let bottom = get(x0, y0 + 1.0) * (1.0 - fx) + get(x0 + 1.0, y0 + 1.0) * fx;
            top * (1.0 - fy) + bottom * fy
        };
        let (mut pixels, mut inside) = (vec![], vec![]);
        let (w, h) = gray.dimensions();
        for v in 0..side {
            for u in 0..side {
                let (x, y) = crop.to_original(u as f32, v as f32);
                pixels.push(sample(&|i| gray.as_raw()[i], w, h, x, y));
                let m = sample(&|i| f32::from(mask.as_raw()[i]) / 255.0, w, h, x, y);
                inside.push(if m >= 0.5 { 1.0f32 } else { 0.0 });
            }
        }
        let mut reference: Vec<f32> = pixels
            .iter()
            .zip(&inside)
            .filter(|(_, m)| **m > 0.0)
            .map(|(p, _)| *p)
            .collect();
        reference.sort_by(f32::total_cmp);
        let n = reference.len() as f32;
        let r = FEATHER / 2;
        let mut feathered = inside.clone();
        for horizontal in [true, false] {
            let data = feathered.clone();
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
                    feathered[at(b)] = sum / (hi - lo + 1) as f32;
                }
            }
        }
        pixels
            .iter()
            .zip(&feathered)
            .map(|(p, f)| {
                let below = reference.partition_point(|r| r < p);
                let not_above = reference.partition_point(|r| r <= p);
                ((below + not_above) as f32 / 2.0 / n - 0.5) * 12f32.sqrt() * f
            })
            .collect()
    }

    #[test]
    fn classifier_input_is_the_plain_per_pixel_computation_exactly() {
        // Quantised noise, so that many pixels tie and share a rank.
        let mut gray = noise(300, 260, 11);
        gray.iter_mut()
            .for_each(|p| *p = (*p * 64.0).round() / 64.0);
        let mask = GrayImage::from_fn(300, 260, |x, y| {
            let lung = |cx: f32| {
                ((x as f32 - cx) / 50.0).powi(2) + ((y as f32 - 130.0) / 90.0).powi(2) < 1.0
            };
            Luma([if lung(90.0) || lung(210.0) { 255 } else { 0 }])
        });
        let input = classifier_input(&gray, &mask, InputStyle::EqualisedFeathered);
        let expected = classifier_input_one_pixel_at_a_time(&gray, &mask);
        let differ = input
            .pixels
            .iter()
            .zip(&expected)
            .filter(|(a, b)| a.to_bits() != b.to_bits());
        assert_eq!(differ.count(), 0);
        assert!(input.pixels.iter().any(|&p| p != 0.0));
    }

    fn gradient(w: u32, h: u32) -> GrayF32 {
        GrayF32::from_fn(w, h, |x, y| Luma([(x + y) as f32 / (w + h) as f32]))
    }

    #[test]
    fn segmenter_input_is_a_standardised_square_of_the_side_asked() {
        let input = segmenter_input(&gradient(400, 300), 256);
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
