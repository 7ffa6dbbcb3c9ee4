//! Line layers: outlines of a mask and borders between labelled regions.

#[allow(clippy::wildcard_imports)] // the render module's parts share their helpers
use super::*;

/// Images wider than this get 2 px mask outlines.
pub(super) const THICK_EDGE_WIDTH: u32 = 400;

/// Pixels on the border of a binary mask (value >= 128 is inside): inside pixels with an outside
/// (or off-image) 4-neighbour. Thicken to ~2 px on images wider than 400 px so it stays visible.
///
/// Thickening grows the outline inwards (inside pixels 4-adjacent to the 1 px border), so the
/// outline never covers pixels outside the mask.
#[must_use]
pub fn mask_edges(mask: &GrayImage) -> Vec<bool> {
    let (width, height) = mask.dimensions();
    let (w, h) = (width as usize, height as usize);
    let inside: Vec<bool> = mask.pixels().map(|p| p.0[0] >= 128).collect();

    // 4-neighbours of (x, y) that lie in the image, as indices.
    let neighbours = |x: usize, y: usize| {
        let left = x.checked_sub(1).map(|xl| y * w + xl);
        let right = (x + 1 < w).then(|| y * w + x + 1);
        let up = y.checked_sub(1).map(|yu| yu * w + x);
        let down = (y + 1 < h).then(|| (y + 1) * w + x);
        [left, right, up, down]
    };

    let mut edges = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if inside[i] {
                edges[i] = neighbours(x, y)
                    .iter()
                    .any(|n| n.is_none_or(|j| !inside[j]));
            }
        }
    }

    if width > THICK_EDGE_WIDTH {
        let thin = edges.clone();
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if inside[i] && !thin[i] {
                    edges[i] = neighbours(x, y).iter().flatten().any(|&j| thin[j]);
                }
            }
        }
    }
    edges
}

/// Pixels where a label differs from its right or lower neighbour, limited to labels for which
/// `keep(label)` is true on at least one side (for LIME: outline only the chosen superpixels).
///
/// Panics (assert) if `labels` does not hold `width * height` values.
#[must_use]
pub fn label_edges(
    labels: &[u32],
    width: u32,
    height: u32,
    keep: impl Fn(u32) -> bool,
) -> Vec<bool> {
    let (w, h) = (width as usize, height as usize);
    assert_eq!(
        labels.len(),
        w * h,
        "label map has {} values but the image is {width}x{height}",
        labels.len()
    );
    let mut edges = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let here = labels[i];
            let differs = |j: usize| {
                let there = labels[j];
                there != here && (keep(here) || keep(there))
            };
            let right = x + 1 < w && differs(i + 1);
            let down = y + 1 < h && differs(i + w);
            edges[i] = right || down;
        }
    }
    edges
}
