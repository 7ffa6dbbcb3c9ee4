//! Lung masks and their clean-up after the U-Net: keep the lungs (the largest connected regions),
//! drop specks, fill holes.

use image::GrayImage;

/// A binary lung mask at the radiograph's own resolution: 255 lung, 0 background.
pub type LungMask = GrayImage;

pub const LUNG: u8 = 255;

/// Keeps at most the two largest 4-connected regions (the two lungs; one when they touch), and
/// only those at least `min_share` of the largest, then fills every hole inside them.
#[must_use]
pub fn clean(mask: &LungMask, min_share: f32) -> LungMask {
    let (w, h) = mask.dimensions();
    let (labels, sizes) = components(mask.as_raw(), w as usize, h as usize, |v| v >= 128);
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let largest = order.first().map_or(0, |&i| sizes[i]);
    let keep: Vec<bool> = (0..sizes.len())
        .map(|i| {
            order.iter().take(2).any(|&k| k == i) && sizes[i] as f32 >= min_share * largest as f32
        })
        .collect();
    let kept: Vec<u8> = labels
        .iter()
        .map(|&l| {
            if l != 0 && keep[l as usize - 1] {
                LUNG
            } else {
                0
            }
        })
        .collect();
    let filled = fill_holes(&kept, w as usize, h as usize);
    GrayImage::from_raw(w, h, filled).expect("same dimensions as the input")
}

/// Background pixels not connected to the border become foreground.
fn fill_holes(mask: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut outside = vec![false; mask.len()];
    let mut stack: Vec<usize> = Vec::new();
    let push = |i: usize, outside: &mut Vec<bool>, stack: &mut Vec<usize>| {
        if mask[i] == 0 && !outside[i] {
            outside[i] = true;
            stack.push(i);
        }
    };
    for x in 0..w {
        push(x, &mut outside, &mut stack);
        push((h - 1) * w + x, &mut outside, &mut stack);
    }
    for y in 0..h {
        push(y * w, &mut outside, &mut stack);
        push(y * w + w - 1, &mut outside, &mut stack);
    }
    while let Some(i) = stack.pop() {
        let (x, y) = (i % w, i / w);
        if x > 0 {
            push(i - 1, &mut outside, &mut stack);
        }
        if x + 1 < w {
            push(i + 1, &mut outside, &mut stack);
        }
        if y > 0 {
            push(i - w, &mut outside, &mut stack);
        }
        if y + 1 < h {
            push(i + w, &mut outside, &mut stack);
        }
    }
    outside.iter().map(|&o| if o { 0 } else { LUNG }).collect()
}

/// 4-connected component labelling: labels (0 = background, k = component k) and the size of
/// each component (index k - 1).
fn components(
    pixels: &[u8],
    w: usize,
    h: usize,
    is_fg: impl Fn(u8) -> bool,
) -> (Vec<u32>, Vec<usize>) {
    let mut labels = vec![0u32; pixels.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..pixels.len() {
        if !is_fg(pixels[start]) || labels[start] != 0 {
            continue;
        }
        let label = sizes.len() as u32 + 1;
        let mut size = 0;
        labels[start] = label;
        stack.push(start);
        while let Some(i) = stack.pop() {
            size += 1;
            let (x, y) = (i % w, i / w);
            let neighbours = [
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y > 0).then(|| i - w),
                (y + 1 < h).then(|| i + w),
            ];
            for j in neighbours.into_iter().flatten() {
                if is_fg(pixels[j]) && labels[j] == 0 {
                    labels[j] = label;
                    stack.push(j);
                }
            }
        }
        sizes.push(size);
    }
    (labels, sizes)
}

/// Fraction of the image covered by lung.
#[must_use]
pub fn coverage(mask: &LungMask) -> f32 {
    let n = mask.as_raw().iter().filter(|&&v| v >= 128).count();
    n as f32 / mask.as_raw().len().max(1) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_rows(rows: &[&str]) -> LungMask {
        let w = rows[0].len() as u32;
        let px = rows
            .iter()
            .flat_map(|r| r.bytes().map(|b| if b == b'#' { LUNG } else { 0 }));
        GrayImage::from_raw(w, rows.len() as u32, px.collect()).unwrap()
    }

    fn to_rows(mask: &LungMask) -> Vec<String> {
        mask.rows()
            .map(|r| r.map(|p| if p.0[0] == LUNG { '#' } else { '.' }).collect())
            .collect()
    }

    #[test]
    fn keeps_two_largest_regions_fills_holes_and_drops_specks() {
        let mask = from_rows(&[
            "..........#",
            ".###...###.",
            ".#.#...###.",
            ".###...###.",
            "...........",
            "#..........",
        ]);
        let cleaned = clean(&mask, 0.1);
        assert_eq!(
            to_rows(&cleaned),
            vec![
                "...........",
                ".###...###.",
                ".###...###.",
                ".###...###.",
                "...........",
                "...........",
            ]
        );
    }

    #[test]
    fn a_small_second_region_is_dropped() {
        let mask = from_rows(&["#####.#", "#####..", "#####.."]);
        assert_eq!(
            to_rows(&clean(&mask, 0.1)),
            vec!["#####..", "#####..", "#####.."]
        );
    }

    #[test]
    fn empty_mask_stays_empty() {
        let mask = GrayImage::new(8, 5);
        assert_eq!(coverage(&clean(&mask, 0.1)), 0.0);
    }
}
