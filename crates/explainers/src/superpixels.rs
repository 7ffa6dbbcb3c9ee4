//! SLIC superpixels (Achanta et al., 2012, "SLIC Superpixels Compared to
//! State-of-the-Art Superpixel Methods") for single-channel images.
//!
//! The LIME explainer hides whole superpixels of a preprocessed radiograph, so
//! this module partitions an image into compact, intensity-coherent regions.
//!
//! # Distance and scale
//!
//! Each cluster centre carries an intensity `v` and a position `(x, y)`. A
//! pixel is compared to a centre with the squared distance
//!
//! ```text
//! D = (v_p - v_c)^2 + compactness^2 * ((x_p - x_c)^2 + (y_p - y_c)^2) / S^2
//! ```
//!
//! which is the square of the paper's `sqrt(d_c^2 + (d_s / S)^2 m^2)`, with the
//! intensity distance used directly (no division by a colour range). `S` is the
//! grid step, about `sqrt(N / segments)`. A pixel one grid step away from a
//! centre therefore costs as much as an intensity difference of `compactness`.
//!
//! The intensity scale assumed is that of *standardised* input (zero mean, unit
//! variance, values roughly in -3..3), for which the default compactness of
//! `0.5` plays the role of the paper's `m = 10` on CIELAB lightness. For input
//! in `[0, 1]` a compactness of about `0.1`–`0.2` gives similar shapes; larger
//! values give squarer, more grid-like superpixels.
//!
//! Non-finite intensities are treated as `0.0`.

#![allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]

/// Parameters of SLIC on a single-channel image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlicParams {
    /// Approximate number of superpixels wanted (0 is treated as 1; values
    /// above the pixel count are clamped to it).
    pub segments: usize,
    /// Weight of spatial distance against intensity distance (higher = more
    /// compact, more square). A displacement of one grid step costs as much
    /// as an intensity difference of `compactness`; the default (0.5) assumes
    /// standardised intensities spanning about -3..3. Use about 0.1–0.2 for
    /// intensities in `[0, 1]`. Its sign is ignored, values above 1e4 are
    /// clamped, and a non-finite value falls back to the default.
    pub compactness: f32,
    /// k-means iterations (assignment + centre update). 0 is treated as 1.
    pub iterations: usize,
}

/// Compactness used by [`SlicParams::default`].
const DEFAULT_COMPACTNESS: f32 = 0.5;

/// Larger compactness is clamped to this (already a pure spatial grid), which
/// keeps the distance finite.
const MAX_COMPACTNESS: f32 = 1.0e4;

impl Default for SlicParams {
    fn default() -> Self {
        Self {
            segments: 64,
            compactness: DEFAULT_COMPACTNESS,
            iterations: 10,
        }
    }
}

/// A partition of an image into superpixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Superpixels {
    pub width: usize,
    pub height: usize,
    /// Row-major label of each pixel, 0..count, every label used, each superpixel 4-connected.
    pub labels: Vec<u32>,
    pub count: usize,
}

/// Marker for "no cluster / no component yet".
const NONE: usize = usize::MAX;

/// A k-means cluster centre in (intensity, x, y) space.
#[derive(Debug, Clone, Copy)]
struct Centre {
    value: f32,
    x: f32,
    y: f32,
}

impl Superpixels {
    /// SLIC on a row-major single-channel image (`pixels.len() == width * height`).
    ///
    /// Seeds are laid on a regular grid of about `params.segments` cells (the
    /// grid follows the aspect ratio), each moved to the lowest-gradient pixel
    /// of its 3x3 neighbourhood. Each iteration assigns every pixel to the
    /// nearest centre (see the module docs for the distance) among those whose
    /// search window — twice the cell size in each direction — contains it,
    /// then moves centres to the mean of their pixels. Finally connected
    /// pieces smaller than a quarter of the mean cell size are merged into the
    /// neighbour they share the longest border with, and labels are renumbered
    /// `0..count` in order of first appearance (row-major).
    ///
    /// The result is deterministic. Empty images give `count == 0`.
    ///
    /// # Panics
    ///
    /// Panics if `pixels.len() != width * height`.
    #[must_use]
    pub fn slic(pixels: &[f32], width: usize, height: usize, params: SlicParams) -> Superpixels {
        let n = width
            .checked_mul(height)
            .expect("image dimensions overflow usize");
        assert_eq!(
            pixels.len(),
            n,
            "slic: pixels.len() ({}) != width * height ({width} * {height})",
            pixels.len()
        );
        if n == 0 {
            return Superpixels {
                width,
                height,
                labels: Vec::new(),
                count: 0,
            };
        }

        let img: Vec<f32> = pixels
            .iter()
            .map(|&v| if v.is_finite() { v } else { 0.0 })
            .collect();
        let compactness = if params.compactness.is_finite() {
            params.compactness.abs().min(MAX_COMPACTNESS)
        } else {
            DEFAULT_COMPACTNESS
        };
        let wanted = params.segments.clamp(1, n);

        let (nx, ny) = grid_shape(width, height, wanted);
        let cell_w = width as f32 / nx as f32;
        let cell_h = height as f32 / ny as f32;
        let step = (cell_w * cell_h).sqrt();

        let mut centres = initial_centres(&img, width, height, nx, ny);
        let assign = kmeans(
            &img,
            width,
            height,
            &mut centres,
            Window {
                half_w: cell_w,
                half_h: cell_h,
                spatial_weight: (compactness / step).powi(2),
            },
            params.iterations.max(1),
        );

        let min_size = (n / (nx * ny) / 4).max(1);
        let (labels, count) = enforce_connectivity(&assign, width, height, min_size);
        Superpixels {
            width,
            height,
            labels,
            count,
        }
    }

    /// Per-pixel boundary flags: `true` where the right or the lower
    /// 4-neighbour has another label (so each boundary is one pixel thick,
    /// drawn on the left/upper side).
    #[must_use]
    pub fn boundaries(&self) -> Vec<bool> {
        let (w, h) = (self.width, self.height);
        let mut out = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let Some(&l) = self.labels.get(i) else {
                    continue;
                };
                let right = x + 1 < w && self.labels.get(i + 1).is_some_and(|&r| r != l);
                let below = y + 1 < h && self.labels.get(i + w).is_some_and(|&b| b != l);
                out[i] = right || below;
            }
        }
        out
    }

    /// Number of pixels in each superpixel (index = label). Labels outside
    /// `0..count` (only possible in a hand-built value) are ignored.
    #[must_use]
    pub fn sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0usize; self.count];
        for &l in &self.labels {
            if let Some(s) = sizes.get_mut(l as usize) {
                *s += 1;
            }
        }
        sizes
    }
}

/// Grid of `nx * ny` cells, about `wanted` in total, with cells as square as
/// the aspect ratio allows; `1 <= nx <= width`, `1 <= ny <= height`.
fn grid_shape(width: usize, height: usize, wanted: usize) -> (usize, usize) {
    let ny = ((wanted as f32 * height as f32 / width as f32)
        .sqrt()
        .round() as usize)
        .clamp(1, height);
    let nx = ((wanted as f32 / ny as f32).round() as usize).clamp(1, width);
    (nx, ny)
}

/// Squared central-difference gradient magnitude at `(x, y)`, borders clamped.
fn gradient(img: &[f32], width: usize, height: usize, x: usize, y: usize) -> f32 {
    let at = |xx: usize, yy: usize| img[yy * width + xx];
    let gx = at((x + 1).min(width - 1), y) - at(x.saturating_sub(1), y);
    let gy = at(x, (y + 1).min(height - 1)) - at(x, y.saturating_sub(1));
    gx * gx + gy * gy
}

/// Grid seeds at cell centres, each moved to the lowest-gradient pixel of its
/// 3x3 neighbourhood (only when cells are at least 3x3, so that seeds of
/// neighbouring cells cannot collide).
fn initial_centres(img: &[f32], width: usize, height: usize, nx: usize, ny: usize) -> Vec<Centre> {
    let cell_w = width as f32 / nx as f32;
    let cell_h = height as f32 / ny as f32;
    let perturb = cell_w >= 3.0 && cell_h >= 3.0;
    let mut centres = Vec::with_capacity(nx * ny);
    for j in 0..ny {
        for i in 0..nx {
            let mut x = (((i as f32 + 0.5) * cell_w) as usize).min(width - 1);
            let mut y = (((j as f32 + 0.5) * cell_h) as usize).min(height - 1);
            if perturb {
                let (cx, cy) = (x, y);
                let mut best = gradient(img, width, height, cx, cy);
                for yy in cy.saturating_sub(1)..=(cy + 1).min(height - 1) {
                    for xx in cx.saturating_sub(1)..=(cx + 1).min(width - 1) {
                        let g = gradient(img, width, height, xx, yy);
                        if g < best {
                            best = g;
                            x = xx;
                            y = yy;
                        }
                    }
                }
            }
            centres.push(Centre {
                value: img[y * width + x],
                x: x as f32,
                y: y as f32,
            });
        }
    }
    centres
}

/// Search window and spatial weight of the assignment step.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Half-width of the search window (the window is `2 * half_w` wide).
    half_w: f32,
    /// Half-height of the search window.
    half_h: f32,
    /// `(compactness / S)^2`.
    spatial_weight: f32,
}

/// Local k-means. Returns the cluster index of each pixel (`NONE` where no
/// window reached the pixel, which can happen only after centres drifted).
fn kmeans(
    img: &[f32],
    width: usize,
    height: usize,
    centres: &mut [Centre],
    win: Window,
    iterations: usize,
) -> Vec<usize> {
    let n = width * height;
    let mut dist = vec![f32::INFINITY; n];
    let mut assign = vec![NONE; n];
    let mut sums = vec![[0.0f64; 4]; centres.len()];

    for it in 0..iterations {
        if it > 0 {
            update_centres(img, width, &assign, centres, &mut sums);
        }
        dist.fill(f32::INFINITY);
        assign.fill(NONE);
        for (k, c) in centres.iter().enumerate() {
            let x0 = (c.x - win.half_w).floor().max(0.0) as usize;
            let x1 = ((c.x + win.half_w).ceil().max(0.0) as usize).min(width - 1);
            let y0 = (c.y - win.half_h).floor().max(0.0) as usize;
            let y1 = ((c.y + win.half_h).ceil().max(0.0) as usize).min(height - 1);
            for y in y0..=y1 {
                let dy = y as f32 - c.y;
                let dy2 = dy * dy * win.spatial_weight;
                let row = y * width;
                let (img_row, dist_row, assign_row) = (
                    &img[row + x0..=row + x1],
                    &mut dist[row + x0..=row + x1],
                    &mut assign[row + x0..=row + x1],
                );
                let mut dx = x0 as f32 - c.x;
                for ((&v, d_best), a) in img_row
                    .iter()
                    .zip(dist_row.iter_mut())
                    .zip(assign_row.iter_mut())
                {
                    let dv = v - c.value;
                    let d = dv * dv + dx * dx * win.spatial_weight + dy2;
                    if d < *d_best {
                        *d_best = d;
                        *a = k;
                    }
                    dx += 1.0;
                }
            }
        }
    }
    assign
}

/// Moves each centre to the mean (intensity, x, y) of its pixels; centres
/// with no pixels stay where they are.
fn update_centres(
    img: &[f32],
    width: usize,
    assign: &[usize],
    centres: &mut [Centre],
    sums: &mut [[f64; 4]],
) {
    for s in sums.iter_mut() {
        *s = [0.0; 4];
    }
    for (y, (assign_row, img_row)) in assign
        .chunks_exact(width)
        .zip(img.chunks_exact(width))
        .enumerate()
    {
        let yf = y as f64;
        for (x, (&a, &v)) in assign_row.iter().zip(img_row).enumerate() {
            if let Some(s) = sums.get_mut(a) {
                s[0] += f64::from(v);
                s[1] += x as f64;
                s[2] += yf;
                s[3] += 1.0;
            }
        }
    }
    for (c, s) in centres.iter_mut().zip(sums.iter()) {
        if s[3] > 0.0 {
            c.value = (s[0] / s[3]) as f32;
            c.x = (s[1] / s[3]) as f32;
            c.y = (s[2] / s[3]) as f32;
        }
    }
}

/// Union-find root with path halving.
fn find(parent: &mut [usize], mut x: usize) -> usize {
    while parent[x] != x {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    x
}

/// Calls `f` with the index of each 4-neighbour of pixel `i`.
fn for_each_neighbour(i: usize, width: usize, height: usize, mut f: impl FnMut(usize)) {
    let (x, y) = (i % width, i / width);
    if x > 0 {
        f(i - 1);
    }
    if x + 1 < width {
        f(i + 1);
    }
    if y > 0 {
        f(i - width);
    }
    if y + 1 < height {
        f(i + width);
    }
}

/// Splits the k-means assignment into 4-connected pieces, merges pieces
/// smaller than `min_size` into the adjacent piece sharing the longest border
/// (ties: lowest piece index), smallest pieces first, and renumbers the result
/// `0..count` by first appearance in row-major order.
fn enforce_connectivity(
    assign: &[usize],
    width: usize,
    height: usize,
    min_size: usize,
) -> (Vec<u32>, usize) {
    let n = width * height;

    // 1. Connected components of equal assignment.
    let mut comp = vec![NONE; n];
    let mut members: Vec<Vec<usize>> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..n {
        if comp[start] != NONE {
            continue;
        }
        let id = members.len();
        let label = assign[start];
        let mut pixels = vec![start];
        comp[start] = id;
        stack.push(start);
        while let Some(p) = stack.pop() {
            for_each_neighbour(p, width, height, |q| {
                if comp[q] == NONE && assign[q] == label {
                    comp[q] = id;
                    pixels.push(q);
                    stack.push(q);
                }
            });
        }
        members.push(pixels);
    }

    // 2. Merge small components, smallest first.
    let m = members.len();
    let mut parent: Vec<usize> = (0..m).collect();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by_key(|&c| (members[c].len(), c));
    let mut borders: Vec<(usize, usize)> = Vec::new();
    for c in order {
        if parent[c] != c || members[c].len() >= min_size {
            continue;
        }
        borders.clear();
        for &p in &members[c] {
            for_each_neighbour(p, width, height, |q| {
                let r = find(&mut parent, comp[q]);
                if r != c {
                    match borders.iter_mut().find(|(root, _)| *root == r) {
                        Some((_, len)) => *len += 1,
                        None => borders.push((r, 1)),
                    }
                }
            });
        }
        let best = borders
            .iter()
            .copied()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .map(|(root, _)| root);
        if let Some(r) = best {
            parent[c] = r;
            let moved = std::mem::take(&mut members[c]);
            members[r].extend(moved);
        }
    }

    // 3. Renumber roots by first appearance.
    let mut new_id = vec![NONE; m];
    let mut labels = Vec::with_capacity(n);
    let mut count = 0usize;
    for &c in &comp {
        let r = find(&mut parent, c);
        if new_id[r] == NONE {
            new_id[r] = count;
            count += 1;
        }
        labels.push(u32::try_from(new_id[r]).expect("superpixel count exceeds u32::MAX"));
    }
    (labels, count)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random numbers in [0, 1) (xorshift64*).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
            (v >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// A 224x224-style textured image: smooth blobs + stripes + noise,
    /// standardised to zero mean and unit variance.
    fn textured(width: usize, height: usize) -> Vec<f32> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut img: Vec<f32> = (0..width * height)
            .map(|i| {
                let (x, y) = ((i % width) as f32, (i / width) as f32);
                (x * 0.07).sin() * (y * 0.05).cos()
                    + 0.5 * ((x + y) * 0.2).sin()
                    + if (x - 80.0).hypot(y - 120.0) < 40.0 {
                        1.5
                    } else {
                        0.0
                    }
                    + 0.3 * rng.next()
            })
            .collect();
        let mean = img.iter().sum::<f32>() / img.len() as f32;
        let var = img.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / img.len() as f32;
        let sd = var.sqrt();
        for v in &mut img {
            *v = (*v - mean) / sd;
        }
        img
    }

    /// Checks that `sp` is a valid partition: right length, labels in
    /// 0..count, every label used, each label exactly one 4-connected region.
    fn assert_valid(sp: &Superpixels) {
        let (w, h) = (sp.width, sp.height);
        assert_eq!(sp.labels.len(), w * h);
        let mut used = vec![false; sp.count];
        for &l in &sp.labels {
            assert!((l as usize) < sp.count, "label {l} >= count {}", sp.count);
            used[l as usize] = true;
        }
        assert!(used.iter().all(|&u| u), "some label in 0..count unused");

        // Count 4-connected components of equal label; must equal `count`.
        let mut seen = vec![false; w * h];
        let mut components = 0;
        let mut stack = Vec::new();
        for s in 0..w * h {
            if seen[s] {
                continue;
            }
            components += 1;
            seen[s] = true;
            stack.push(s);
            while let Some(p) = stack.pop() {
                let (x, y) = (p % w, p / w);
                let mut nb = Vec::new();
                if x > 0 {
                    nb.push(p - 1);
                }
                if x + 1 < w {
                    nb.push(p + 1);
                }
                if y > 0 {
                    nb.push(p - w);
                }
                if y + 1 < h {
                    nb.push(p + w);
                }
                for q in nb {
                    if !seen[q] && sp.labels[q] == sp.labels[p] {
                        seen[q] = true;
                        stack.push(q);
                    }
                }
            }
        }
        assert_eq!(
            components, sp.count,
            "some label is split into several regions"
        );
        assert_eq!(sp.sizes().iter().sum::<usize>(), w * h);
    }

    fn params(segments: usize) -> SlicParams {
        SlicParams {
            segments,
            ..SlicParams::default()
        }
    }

    #[test]
    fn default_params() {
        let p = SlicParams::default();
        assert_eq!(p.segments, 64);
        assert_eq!(p.iterations, 10);
        assert!(p.compactness > 0.0);
    }

    #[test]
    fn textured_224_is_valid_and_count_near_target() {
        let img = textured(224, 224);
        for segments in [16, 64, 100, 200] {
            let sp = Superpixels::slic(&img, 224, 224, params(segments));
            assert_valid(&sp);
            let lo = segments as f32 * 0.5;
            let hi = segments as f32 * 1.5;
            assert!(
                (lo..=hi).contains(&(sp.count as f32)),
                "segments {segments}: got {} superpixels",
                sp.count
            );
        }
    }

    #[test]
    fn no_tiny_fragments_on_textured_image() {
        let img = textured(224, 224);
        let sp = Superpixels::slic(&img, 224, 224, params(64));
        let min = 224 * 224 / 64 / 4;
        let sizes = sp.sizes();
        assert!(
            sizes.iter().all(|&s| s >= min),
            "smallest superpixel {} < {min}",
            sizes.iter().min().copied().unwrap_or(0)
        );
    }

    #[test]
    fn high_compactness_gives_near_grid() {
        let img = textured(224, 224);
        let sp = Superpixels::slic(
            &img,
            224,
            224,
            SlicParams {
                segments: 64,
                compactness: 1000.0,
                iterations: 10,
            },
        );
        assert_valid(&sp);
        assert_eq!(sp.count, 64);
        let mean = 224.0 * 224.0 / 64.0;
        for s in sp.sizes() {
            assert!((0.7 * mean..=1.3 * mean).contains(&(s as f32)), "size {s}");
        }
    }

    #[test]
    fn step_edge_is_never_straddled() {
        // Step at x = 27, deliberately not on a grid line.
        let (w, h) = (60, 50);
        for (lo, hi, compactness) in [(0.0, 1.0, 0.5), (0.0, 1.0, 0.2), (-1.0, 1.0, 0.5)] {
            let img: Vec<f32> = (0..w * h)
                .map(|i| if i % w < 27 { lo } else { hi })
                .collect();
            for segments in [4, 9, 16, 30] {
                let sp = Superpixels::slic(
                    &img,
                    w,
                    h,
                    SlicParams {
                        segments,
                        compactness,
                        iterations: 10,
                    },
                );
                assert_valid(&sp);
                let mut left = vec![false; sp.count];
                let mut right = vec![false; sp.count];
                for (i, &l) in sp.labels.iter().enumerate() {
                    if i % w < 27 {
                        left[l as usize] = true;
                    } else {
                        right[l as usize] = true;
                    }
                }
                assert!(
                    left.iter().zip(&right).all(|(&a, &b)| !(a && b)),
                    "a superpixel straddles the step (segments {segments}, m {compactness})"
                );
            }
        }
    }

    #[test]
    fn deterministic() {
        let img = textured(224, 224);
        let a = Superpixels::slic(&img, 224, 224, params(100));
        let b = Superpixels::slic(&img, 224, 224, params(100));
        assert_eq!(a, b);
    }

    #[test]
    fn noise_image_gives_valid_partition() {
        let mut rng = Rng(42);
        let img: Vec<f32> = (0..97 * 61).map(|_| rng.next() * 6.0 - 3.0).collect();
        for segments in [1, 10, 64, 500] {
            let sp = Superpixels::slic(&img, 97, 61, params(segments));
            assert_valid(&sp);
        }
    }

    #[test]
    fn boundaries_hand_made() {
        // 0 0 1
        // 0 2 1
        // 2 2 1
        let sp = Superpixels {
            width: 3,
            height: 3,
            labels: vec![0, 0, 1, 0, 2, 1, 2, 2, 1],
            count: 3,
        };
        let expected = vec![
            false, true, false, //
            true, true, false, //
            false, true, false,
        ];
        assert_eq!(sp.boundaries(), expected);
        assert_eq!(sp.sizes(), vec![3, 3, 3]);
    }

    #[test]
    fn boundaries_match_label_differences_on_slic_output() {
        let img = textured(50, 40);
        let sp = Superpixels::slic(&img, 50, 40, params(12));
        let b = sp.boundaries();
        for y in 0..40 {
            for x in 0..50 {
                let i = y * 50 + x;
                let expect = (x + 1 < 50 && sp.labels[i + 1] != sp.labels[i])
                    || (y + 1 < 40 && sp.labels[i + 50] != sp.labels[i]);
                assert_eq!(b[i], expect, "pixel ({x}, {y})");
            }
        }
        assert!(b.iter().any(|&v| v));
    }

    #[test]
    fn tiny_images_and_odd_segment_counts() {
        for (w, h) in [(1, 1), (3, 2), (2, 3), (1, 7), (7, 1), (2, 2), (5, 5)] {
            let img: Vec<f32> = (0..w * h).map(|i| (i % 3) as f32).collect();
            for segments in [0, 1, 2, 5, 6, 100, usize::MAX] {
                for iterations in [0, 1, 10] {
                    let sp = Superpixels::slic(
                        &img,
                        w,
                        h,
                        SlicParams {
                            segments,
                            compactness: 0.5,
                            iterations,
                        },
                    );
                    assert_valid(&sp);
                    assert!(sp.count >= 1 && sp.count <= w * h);
                }
            }
        }
        let one = Superpixels::slic(&[0.3], 1, 1, params(0));
        assert_eq!(one.labels, vec![0]);
        assert_eq!(one.count, 1);
    }

    #[test]
    fn empty_images() {
        for (w, h) in [(0, 0), (0, 5), (5, 0)] {
            let sp = Superpixels::slic(&[], w, h, params(10));
            assert_eq!(sp.count, 0);
            assert!(sp.labels.is_empty());
            assert!(sp.boundaries().is_empty());
            assert!(sp.sizes().is_empty());
        }
    }

    #[test]
    fn constant_and_odd_inputs() {
        let flat = vec![0.7f32; 224 * 224];
        let sp = Superpixels::slic(&flat, 224, 224, params(64));
        assert_valid(&sp);
        assert_eq!(sp.count, 64, "a constant image should give the seed grid");

        let mut weird = textured(40, 30);
        weird[5] = f32::NAN;
        weird[77] = f32::INFINITY;
        weird[300] = f32::NEG_INFINITY;
        for compactness in [0.0, -2.0, f32::NAN, f32::INFINITY, 1e30] {
            let sp = Superpixels::slic(
                &weird,
                40,
                30,
                SlicParams {
                    segments: 12,
                    compactness,
                    iterations: 5,
                },
            );
            assert_valid(&sp);
        }
    }

    #[test]
    #[should_panic(expected = "split into several regions")]
    fn checker_rejects_split_label() {
        // Label 0 appears in two separate regions.
        let sp = Superpixels {
            width: 3,
            height: 1,
            labels: vec![0, 1, 0],
            count: 2,
        };
        assert_valid(&sp);
    }

    #[test]
    #[should_panic(expected = "pixels.len()")]
    fn wrong_length_panics() {
        let _ = Superpixels::slic(&[0.0; 5], 2, 3, SlicParams::default());
    }
}
