//! Lung masks and their clean-up after the U-Net: keep the lungs (the largest connected regions),
//! drop specks, fill holes.

use image::{GrayImage, Luma};
use imageproc::contrast::{ThresholdType, threshold};
use imageproc::drawing::flood_fill_mut;
use imageproc::region_labelling::{Connectivity, connected_components};

/// A binary lung mask at the radiograph's own resolution: 255 lung, 0 background.
pub type LungMask = GrayImage;

pub const LUNG: u8 = 255;

/// Keeps at most the two largest 4-connected regions (the two lungs; one when they touch), and
/// only those at least `min_share` of the largest, then fills every hole inside them.
#[must_use]
pub fn clean(mask: &LungMask, min_share: f32) -> LungMask {
    let (w, h) = mask.dimensions();
    // imageproc labels runs of equal values: pixels at or above 128 become lung, the rest 0.
    let binary = threshold(mask, 127, ThresholdType::Binary);
    let labels = connected_components(&binary, Connectivity::Four, Luma([0]));
    // Labels are numbered in raster order of each region's first pixel, so ties between
    // equal sizes keep that order through the stable sort.
    let sizes = region_sizes(labels.as_raw());
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let largest = order.first().map_or(0, |&i| sizes[i]);
    let mut keep = vec![false; sizes.len() + 1];
    for &i in order.iter().take(2) {
        keep[i + 1] = sizes[i] as f32 >= min_share * largest as f32;
    }
    // The kept regions, framed by one background pixel so that all background reaching the
    // border is one 4-connected region around the corner.
    let mut framed = LungMask::new(w + 2, h + 2);
    if w > 0 {
        let rows = framed.chunks_exact_mut(w as usize + 2).skip(1);
        for (row, line) in rows.zip(labels.as_raw().chunks_exact(w as usize)) {
            for (pixel, &l) in row[1..=w as usize].iter_mut().zip(line) {
                *pixel = if keep[l as usize] { LUNG } else { 0 };
            }
        }
    }
    fill_holes(framed)
}

/// Pixels in each region of imageproc's `connected_components` labels (index k - 1 for label
/// k; 0 is background).
#[must_use]
pub fn region_sizes(labels: &[u32]) -> Vec<usize> {
    let mut sizes = Vec::new();
    for &l in labels.iter().filter(|&&l| l != 0) {
        let k = l as usize;
        if k > sizes.len() {
            sizes.resize(k, 0);
        }
        sizes[k - 1] += 1;
    }
    sizes
}

/// The inside of a `framed` mask (one background pixel around it) with its holes filled:
/// background that a 4-connected flood fill from the frame's corner does not reach becomes
/// lung. A flood fill rather than labelling the background: that made `clean` about 1.8 times
/// slower and takes some 24 bytes per pixel (imageproc's union-find), the framed copy one.
fn fill_holes(mut framed: LungMask) -> LungMask {
    const OUTSIDE: u8 = 1;
    let (w, h) = (framed.width() - 2, framed.height() - 2);
    flood_fill_mut(&mut framed, 0, 0, Luma([OUTSIDE]));
    let inside = framed
        .chunks_exact(w as usize + 2)
        .skip(1)
        .take(h as usize)
        .flat_map(|row| &row[1..=w as usize])
        .map(|&v| if v == OUTSIDE { 0 } else { LUNG });
    LungMask::from_raw(w, h, inside.collect()).expect("the frame's inside")
}

/// The lungs' bounding box: the pixels at or above 128, `x0..x1` by `y0..y1` (half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LungBox {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl LungBox {
    #[must_use]
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }

    #[must_use]
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
}

/// The bounding box of the lung pixels (at or above 128), `None` when there are none.
#[must_use]
pub fn lung_box(mask: &LungMask) -> Option<LungBox> {
    let w = mask.width() as usize;
    let mut found: Option<LungBox> = None;
    for (y, row) in mask.as_raw().chunks_exact(w.max(1)).enumerate() {
        let (Some(first), Some(last)) = (
            row.iter().position(|&v| v >= 128),
            row.iter().rposition(|&v| v >= 128),
        ) else {
            continue;
        };
        let (x0, x1, y) = (first as u32, last as u32 + 1, y as u32);
        let b = found.get_or_insert(LungBox {
            x0,
            y0: y,
            x1,
            y1: y + 1,
        });
        (b.x0, b.x1, b.y1) = (b.x0.min(x0), b.x1.max(x1), y + 1);
    }
    found
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

    /// `#` lung, `+` a value counted as lung (200), `~` one counted as background (127), any
    /// other character background.
    fn value(c: u8) -> u8 {
        match c {
            b'#' => LUNG,
            b'+' => 200,
            b'~' => 127,
            _ => 0,
        }
    }

    fn from_rows(rows: &[&str]) -> LungMask {
        let w = rows[0].len() as u32;
        let px = rows.iter().flat_map(|r| r.bytes().map(value));
        GrayImage::from_raw(w, rows.len() as u32, px.collect()).unwrap()
    }

    fn to_rows(mask: &LungMask) -> Vec<String> {
        mask.rows()
            .map(|r| r.map(|p| if p.0[0] == LUNG { '#' } else { '.' }).collect())
            .collect()
    }

    #[test]
    fn the_lung_box_spans_every_pixel_at_or_above_128_and_nothing_else() {
        assert_eq!(lung_box(&from_rows(&["....", "~~~~"])), None);
        let mask = from_rows(&[
            "~~~~~~~~", //
            "...+....", "..#.....", "......#.", "........",
        ]);
        let b = lung_box(&mask).unwrap();
        assert_eq!(
            b,
            LungBox {
                x0: 2,
                y0: 1,
                x1: 7,
                y1: 4
            }
        );
        assert_eq!((b.width(), b.height()), (5, 3));
        assert_eq!(
            lung_box(&from_rows(&["#"])).map(|b| (b.width(), b.height())),
            Some((1, 1))
        );
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

    /// Four regions: a ring with a hole (its pixels partly 200, the hole partly 127), a bar, a
    /// square and a speck touching the ring only at a corner (a region of its own, as regions are
    /// 4-connected). The ring and the bar are the two largest.
    #[test]
    fn keeps_the_two_largest_of_four_regions_at_or_above_128_and_fills_the_hole() {
        let mask = from_rows(&[
            "#..........",
            ".#####.....",
            ".#~.+#.....",
            ".#...#..##.",
            ".#####..##.",
            "...........",
            "+++++++....",
        ]);
        assert_eq!(
            to_rows(&clean(&mask, 0.1)),
            vec![
                "...........",
                ".#####.....",
                ".#####.....",
                ".#####.....",
                ".#####.....",
                "...........",
                "#######....",
            ]
        );
        // The bar (7 pixels) is under half the ring (15): only the ring is left.
        assert_eq!(
            to_rows(&clean(&mask, 0.5)),
            vec![
                "...........",
                ".#####.....",
                ".#####.....",
                ".#####.....",
                ".#####.....",
                "...........",
                "...........",
            ]
        );
    }

    /// Background that reaches the border only through a corner is a hole (4-connected), and a
    /// bay open to the border along an edge is not.
    #[test]
    fn a_pocket_open_only_at_a_corner_is_filled_and_a_bay_is_not() {
        let mask = from_rows(&[
            "......", //
            ".####.", ".#..#.", ".###.#", ".#...#", ".#####",
        ]);
        assert_eq!(
            to_rows(&clean(&mask, 0.1)),
            vec!["......", ".####.", ".####.", ".#####", ".#####", ".#####"]
        );
        let bay = from_rows(&["#####", "#...#", "#.#.#", "#.#.."]);
        assert_eq!(to_rows(&clean(&bay, 0.1)), to_rows(&bay));
    }

    #[test]
    fn empty_mask_stays_empty() {
        let mask = GrayImage::new(8, 5);
        assert_eq!(coverage(&clean(&mask, 0.1)), 0.0);
        for (w, h) in [(0, 0), (4, 0), (0, 3)] {
            assert_eq!(clean(&GrayImage::new(w, h), 0.1).dimensions(), (w, h));
        }
    }
}
