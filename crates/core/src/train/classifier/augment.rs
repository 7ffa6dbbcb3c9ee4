//! Augmentation of one training batch: scanner-style blur, noise and lung-mask jitter when the
//! defences ask for it, then a random affine warp and intensity jitter.

use rand::Rng;
use rand::rngs::StdRng;
use tch::Tensor;

use super::Defences;
use super::dataset::Prepared;
use crate::Result;
use crate::preprocess::{CLASSIFIER_SIDE, InputStyle};
use crate::train::{gather, warp};

pub(super) const AUGMENTATION: &str = "random rotation +-10 deg, scale +-10%, shift +-10%; \
contrast and brightness +-10% (on the preprocessed input); the shortcut defences below add more";

/// Binary masks dilated (`r` > 0) or eroded (`r` < 0) by `|r|` pixels.
fn morph(masks: &Tensor, r: i64) -> Tensor {
    let k = 2 * r.abs() + 1;
    let pool = |m: &Tensor| m.max_pool2d([k, k], [1, 1], [r.abs(), r.abs()], [1, 1], false);
    match r.signum() {
        1 => pool(masks),
        -1 => 1.0 - pool(&(1.0 - masks)),
        _ => masks.shallow_clone(),
    }
}

/// The tensor twin of [`crate::preprocess::feather`], for augmented masks.
fn feather_t(masks: &Tensor) -> Tensor {
    let k = crate::preprocess::FEATHER as i64;
    masks
        .avg_pool2d([1, k], [1, 1], [0, k / 2], false, false, None)
        .avg_pool2d([k, 1], [1, 1], [k / 2, 0], false, false, None)
}

/// The input of one training batch: augmented as `defences` say, then warped; also returns
/// the warped lung mask (for the lung-focus penalty).
pub(super) fn training_batch(
    data: &Prepared,
    batch: &[usize],
    defences: &Defences,
    rng: &mut StdRng,
    device: tch::Device,
) -> Result<(Tensor, Tensor)> {
    let mut masks = gather(&data.masks, batch, device);
    let mut unmasked = gather(&data.unmasked, batch, device);
    if defences.style_augmentation {
        masks = morph(&masks, rng.random_range(-3..=3));
        let side = i64::from(CLASSIFIER_SIDE);
        let small = (side as f64 * rng.random_range(0.4..=1.0)).round() as i64;
        if small < side {
            unmasked = unmasked
                .upsample_bilinear2d([small, small], false, None, None)
                .upsample_bilinear2d([side, side], false, None, None);
        }
        let sigma = rng.random_range(0.0..=0.2);
        unmasked = &unmasked + unmasked.randn_like() * sigma;
    }
    let weights = match defences.input {
        InputStyle::Masked => masks.shallow_clone(),
        InputStyle::EqualisedFeathered => feather_t(&masks),
    };
    let (scale, shift) = if defences.framing {
        (0.30, 0.15)
    } else {
        (0.10, 0.10)
    };
    let theta = crate::train::random_affines(batch.len(), rng, 10.0, scale, shift);
    let x = warp(&(unmasked * weights), &theta, false)?;
    let x = crate::train::jitter_intensity(&x, rng, 0.10);
    Ok((x, warp(&masks, &theta, true)?))
}
