//! Rendering of explanation heatmaps over chest radiographs.
//!
//! Everything here works on plain pixel buffers: a grayscale radiograph, a row-major heatmap in
//! `[0, 1]`, optional line layers (mask outlines, superpixel borders) and an optional colour-bar
//! legend. The result is an [`RgbImage`] of exactly the radiograph's size, which [`encode_png`]
//! turns into PNG bytes.

use std::io::Cursor;

use image::{GrayImage, ImageFormat, Rgb, RgbImage};

// ---------------------------------------------------------------------------------------------
// Colormaps
// ---------------------------------------------------------------------------------------------

/// A perceptual colormap for heatmaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Colormap {
    /// Dark purple -> blue -> green -> yellow; luminance increases monotonically.
    #[default]
    Viridis,
    /// Dark blue -> cyan -> green -> yellow -> red -> dark red.
    Turbo,
}

/// Turbo as 10 evenly spaced anchors (t = 0, 1/9, ..., 1) of Google's 256-entry table,
/// linearly interpolated in RGB. colorous has Turbo too, but as d3's polynomial fit, which is
/// further from Google's table than these anchors (measured over 256 samples: at most 32 levels
/// per channel, 6.2 on average, and near-black at 0; the anchors: 19 and 3.7, exact at both ends).
const TURBO_ANCHORS: [[u8; 3]; 10] = [
    [48, 18, 59],
    [70, 98, 215],
    [54, 170, 249],
    [26, 228, 182],
    [114, 254, 94],
    [199, 239, 52],
    [250, 186, 57],
    [246, 107, 25],
    [203, 42, 4],
    [122, 4, 3],
];

/// Linear interpolation through evenly spaced anchors; `t` must already be in `[0, 1]`.
fn interpolate(anchors: &[[u8; 3]], t: f32) -> [u8; 3] {
    let Some(last) = anchors.len().checked_sub(1) else {
        return [0, 0, 0];
    };
    if last == 0 {
        return anchors[0];
    }
    let pos = t * last as f32;
    // `pos` is finite and in [0, last]; the cast truncates towards zero.
    let i = (pos.floor() as usize).min(last - 1);
    let frac = (pos - i as f32).clamp(0.0, 1.0);
    let (a, b) = (anchors[i], anchors[i + 1]);
    let mut out = [0u8; 3];
    for c in 0..3 {
        let v = f32::from(a[c]) + (f32::from(b[c]) - f32::from(a[c])) * frac;
        out[c] = v.round().clamp(0.0, 255.0) as u8;
    }
    out
}

/// Clamp to `[0, 1]`, mapping NaN to 0.
fn unit(t: f32) -> f32 {
    if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) }
}

impl Colormap {
    /// Colour of t in [0,1] (clamped; NaN treated as 0), as [r, g, b].
    #[must_use]
    pub fn rgb(self, t: f32) -> [u8; 3] {
        let t = unit(t);
        match self {
            // matplotlib's 256-entry table (through d3), spline-interpolated.
            Colormap::Viridis => {
                let colour = colorous::VIRIDIS.eval_continuous(f64::from(t));
                [colour.r, colour.g, colour.b]
            }
            Colormap::Turbo => interpolate(&TURBO_ANCHORS, t),
        }
    }

    /// Lower-case name, as accepted by [`Colormap::parse`].
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Colormap::Viridis => "viridis",
            Colormap::Turbo => "turbo",
        }
    }

    /// Parses a colormap name (case-insensitive, surrounding whitespace ignored).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim();
        [Colormap::Viridis, Colormap::Turbo]
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }
}

// ---------------------------------------------------------------------------------------------
// Overlay
// ---------------------------------------------------------------------------------------------

/// A line layer drawn over the overlay: one flag per pixel (row-major, same size as the image).
pub struct Lines<'a> {
    pub pixels: &'a [bool],
    pub colour: [u8; 3],
}

/// How [`overlay`] blends and decorates the heatmap.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OverlayStyle {
    pub colormap: Colormap,
    /// Opacity of the heatmap where it is 1; it fades linearly to 0 opacity where the heat is 0,
    /// so cold regions show the radiograph untouched. 0 = radiograph only.
    pub opacity: f32,
    /// Draw a colour bar with "0" and "1" labels in the bottom-right corner.
    pub legend: bool,
}

impl Default for OverlayStyle {
    fn default() -> Self {
        Self {
            colormap: Colormap::Viridis,
            opacity: 0.6,
            legend: true,
        }
    }
}

/// Heatmap (row-major, values in [0,1], same size as `base`) blended over the grayscale
/// radiograph; output has exactly `base`'s dimensions. Panics (assert) only if sizes disagree.
///
/// Per pixel, with `h` the heat clamped to `[0, 1]` (NaN as 0) and `o` the opacity clamped the
/// same way: `alpha = o * h`, `out = (1 - alpha) * gray + alpha * colormap(h)` per channel.
/// Line layers are then painted in order (later layers on top), and the legend last.
#[must_use]
pub fn overlay(
    base: &GrayImage,
    heatmap: &[f32],
    style: &OverlayStyle,
    lines: &[Lines<'_>],
) -> RgbImage {
    let (width, height) = base.dimensions();
    let n = width as usize * height as usize;
    assert_eq!(
        heatmap.len(),
        n,
        "heatmap has {} values but the radiograph is {width}x{height}",
        heatmap.len()
    );
    for (i, layer) in lines.iter().enumerate() {
        assert_eq!(
            layer.pixels.len(),
            n,
            "line layer {i} has {} flags but the radiograph is {width}x{height}",
            layer.pixels.len()
        );
    }

    let opacity = unit(style.opacity);
    let mut out = RgbImage::new(width, height);
    for ((dst, src), &heat) in out.pixels_mut().zip(base.pixels()).zip(heatmap) {
        let gray = f32::from(src.0[0]);
        let h = unit(heat);
        let alpha = opacity * h;
        if alpha <= 0.0 {
            *dst = Rgb([src.0[0]; 3]);
            continue;
        }
        let colour = style.colormap.rgb(h);
        let mut px = [0u8; 3];
        for c in 0..3 {
            let v = gray * (1.0 - alpha) + f32::from(colour[c]) * alpha;
            px[c] = v.round().clamp(0.0, 255.0) as u8;
        }
        *dst = Rgb(px);
    }

    for layer in lines {
        for (dst, &on) in out.pixels_mut().zip(layer.pixels) {
            if on {
                *dst = Rgb(layer.colour);
            }
        }
    }

    if style.legend {
        draw_legend(&mut out, style.colormap);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Legend
// ---------------------------------------------------------------------------------------------

/// Images smaller than this on either side get no legend.
const LEGEND_MIN_SIDE: u32 = 64;

/// 3x5 bitmap glyphs, one row per entry, bit 2 = leftmost column.
const GLYPH_0: [u8; 5] = [0b111, 0b101, 0b101, 0b101, 0b111];
const GLYPH_1: [u8; 5] = [0b010, 0b110, 0b010, 0b010, 0b111];
const GLYPH_W: u32 = 3;
const GLYPH_H: u32 = 5;

const LEGEND_BACKING: [u8; 3] = [16, 16, 16];
const LEGEND_TEXT: [u8; 3] = [255, 255, 255];

/// Geometry of the legend, all in image pixel coordinates (half-open ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LegendLayout {
    /// Dark backing rectangle: x in [x0, x1), y in [y0, y1).
    backing: (u32, u32, u32, u32),
    /// The colour bar itself, same convention.
    bar: (u32, u32, u32, u32),
    /// Top-left corners of the "0" and "1" glyphs.
    zero_at: (u32, u32),
    one_at: (u32, u32),
    /// Integer scale of the 3x5 glyphs.
    scale: u32,
}

/// Layout of the legend for an image of this size, or `None` if it does not fit.
///
/// `[pad "0" gap ====bar==== gap "1" pad]` on a dark backing, anchored at the bottom-right with
/// a small margin. The bar is ~1/4 of the width and ~1/40 of the height (at least 4 px); the
/// glyphs are scaled so that they are about as tall as the bar.
fn legend_layout(width: u32, height: u32) -> Option<LegendLayout> {
    if width < LEGEND_MIN_SIDE || height < LEGEND_MIN_SIDE {
        return None;
    }
    let bar_w = (width / 4).max(8);
    let bar_h = (height / 40).max(4);
    let scale = (bar_h / GLYPH_H).max(1);
    let glyph_w = GLYPH_W * scale;
    let glyph_h = GLYPH_H * scale;
    let pad = scale.max(2);
    let margin = (width.min(height) / 64).max(2);

    let inner_h = bar_h.max(glyph_h);
    let back_w = pad + glyph_w + pad + bar_w + pad + glyph_w + pad;
    let back_h = pad + inner_h + pad;
    if back_w + margin > width || back_h + margin > height {
        return None;
    }
    let x0 = width - margin - back_w;
    let y0 = height - margin - back_h;
    let inner_y = y0 + pad;

    let zero_x = x0 + pad;
    let bar_x = zero_x + glyph_w + pad;
    let one_x = bar_x + bar_w + pad;
    let bar_y = inner_y + (inner_h - bar_h) / 2;
    let glyph_y = inner_y + (inner_h - glyph_h) / 2;

    Some(LegendLayout {
        backing: (x0, y0, x0 + back_w, y0 + back_h),
        bar: (bar_x, bar_y, bar_x + bar_w, bar_y + bar_h),
        zero_at: (zero_x, glyph_y),
        one_at: (one_x, glyph_y),
        scale,
    })
}

/// Sets a pixel if it lies inside the image.
fn put(image: &mut RgbImage, x: u32, y: u32, colour: [u8; 3]) {
    if x < image.width() && y < image.height() {
        image.put_pixel(x, y, Rgb(colour));
    }
}

fn fill_rect(image: &mut RgbImage, (x0, y0, x1, y1): (u32, u32, u32, u32), colour: [u8; 3]) {
    for y in y0..y1.min(image.height()) {
        for x in x0..x1.min(image.width()) {
            image.put_pixel(x, y, Rgb(colour));
        }
    }
}

fn draw_glyph(image: &mut RgbImage, glyph: [u8; 5], (gx, gy): (u32, u32), scale: u32) {
    for (row, bits) in (0u32..).zip(glyph) {
        for col in 0..GLYPH_W {
            if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                continue;
            }
            for dy in 0..scale {
                for dx in 0..scale {
                    put(
                        image,
                        gx + col * scale + dx,
                        gy + row * scale + dy,
                        LEGEND_TEXT,
                    );
                }
            }
        }
    }
}

fn draw_legend(image: &mut RgbImage, colormap: Colormap) {
    let Some(layout) = legend_layout(image.width(), image.height()) else {
        return;
    };
    fill_rect(image, layout.backing, LEGEND_BACKING);

    let (bx0, by0, bx1, by1) = layout.bar;
    let span = (bx1 - bx0).saturating_sub(1).max(1) as f32;
    for x in bx0..bx1 {
        let colour = colormap.rgb((x - bx0) as f32 / span);
        for y in by0..by1 {
            put(image, x, y, colour);
        }
    }

    draw_glyph(image, GLYPH_0, layout.zero_at, layout.scale);
    draw_glyph(image, GLYPH_1, layout.one_at, layout.scale);
}

// ---------------------------------------------------------------------------------------------
// Text: header band and colour-bar caption
// ---------------------------------------------------------------------------------------------

/// Background of the header band and of the caption.
const HEADER_BACKING: [u8; 3] = [16, 16, 16];
/// Largest integer scale of the 8x8 font (64 px tall letters read well on any screen).
const MAX_TEXT_SCALE: u32 = 8;

/// The words written on an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// One line across the top: method, target class, probability.
    pub header: String,
    /// What the colour bar means, written above it ("relative evidence for COVID-19").
    pub caption: String,
}

/// How people name a class: `covid` is "COVID-19", `normal` "no finding", others as they are.
#[must_use]
pub fn class_display_name(class: &str) -> &str {
    match class {
        "covid" => "COVID-19",
        "normal" => "no finding",
        other => other,
    }
}

/// Width in pixels of `text` in the 8x8 font at `scale`.
fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 8 * scale
}

/// `text` shortened with "..." until it is at most `width` pixels wide at scale 1.
fn fit_text(text: &str, width: u32) -> String {
    let max = (width / 8) as usize;
    if text.chars().count() <= max {
        return text.to_owned();
    }
    if max < 4 {
        return text.chars().take(max).collect();
    }
    let mut out: String = text.chars().take(max - 3).collect();
    out.push_str("...");
    out
}

/// Draws `text` (ASCII; other characters as `?`) with its top-left corner at (x, y).
fn draw_text(image: &mut RgbImage, text: &str, (x, y): (u32, u32), scale: u32, colour: [u8; 3]) {
    for (i, c) in (0u32..).zip(text.chars()) {
        let code = if c.is_ascii() {
            c as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        for (row, bits) in (0u32..).zip(glyph) {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        put(
                            image,
                            x + (i * 8 + col) * scale + dx,
                            y + row * scale + dy,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

/// Height of the header band for an image this size: the text is about 1/32 of the height
/// (at least 8 px) plus padding. Kept small so the band covers only the neck above the lungs.
#[must_use]
pub fn header_height(width: u32, height: u32, header: &str) -> u32 {
    let scale = header_scale(width, height, header);
    8 * scale + 2 * scale.max(2)
}

fn header_scale(width: u32, height: u32, header: &str) -> u32 {
    let by_height = (height / 256).max(1);
    let by_width = (width.saturating_sub(8) / text_width(header, 1).max(1)).max(1);
    by_height.min(by_width).min(MAX_TEXT_SCALE)
}

/// Writes `annotation` on an overlay: a dark band across the top with the header (the picture
/// keeps its size; the band covers the top rows, above the lungs), and the caption on a dark
/// backing just above the colour bar when the image has a legend.
pub fn annotate(image: &mut RgbImage, annotation: &Annotation, legend: bool) {
    let (width, height) = image.dimensions();
    if width < LEGEND_MIN_SIDE || height < LEGEND_MIN_SIDE {
        return;
    }
    let scale = header_scale(width, height, &annotation.header);
    let pad = scale.max(2);
    let band = header_height(width, height, &annotation.header);
    fill_rect(image, (0, 0, width, band), HEADER_BACKING);
    let header = fit_text(&annotation.header, (width - 2 * pad) / scale);
    draw_text(image, &header, (pad, pad), scale, LEGEND_TEXT);

    if !legend {
        return;
    }
    let Some(layout) = legend_layout(width, height) else {
        return;
    };
    let (_, y0, x1, _) = layout.backing;
    let scale = (layout.scale / 2).max(1);
    let pad = scale.max(2);
    // Right-aligned with the legend, as wide as the words need (up to the image's left edge).
    let caption = fit_text(&annotation.caption, x1.saturating_sub(3 * pad) / scale);
    let caption_w = text_width(&caption, scale) + 2 * pad;
    let caption_h = 8 * scale + pad;
    let top = y0.saturating_sub(caption_h);
    fill_rect(image, (x1 - caption_w, top, x1, y0), LEGEND_BACKING);
    draw_text(
        image,
        &caption,
        (x1 - caption_w + pad, top + pad),
        scale,
        LEGEND_TEXT,
    );
}

/// Heat faded to zero outside the box `(x0, y0, x1, y1)` (half-open, image pixels): 1 inside,
/// falling linearly to 0 over `margin` pixels outside, exactly 0 beyond. An explainer's map
/// covers the classifier's whole square crop; without this its low values would show the crop
/// as a pale rectangle around the lungs.
pub fn fade_outside(
    heat: &mut [f32],
    width: u32,
    height: u32,
    (x0, y0, x1, y1): (u32, u32, u32, u32),
    margin: u32,
) {
    assert_eq!(heat.len(), width as usize * height as usize, "heat size");
    let margin = margin.max(1) as f32;
    for y in 0..height {
        let dy = if y < y0 {
            y0 - y
        } else if y >= y1 {
            y + 1 - y1
        } else {
            0
        };
        for x in 0..width {
            let dx = if x < x0 {
                x0 - x
            } else if x >= x1 {
                x + 1 - x1
            } else {
                0
            };
            if dx == 0 && dy == 0 {
                continue;
            }
            let d = (dx as f32).hypot(dy as f32);
            let weight = (1.0 - d / margin).max(0.0);
            heat[y as usize * width as usize + x as usize] *= weight;
        }
    }
}

/// Bounding box (half-open) of the pixels >= 128 of a mask, or `None` when there are none.
#[must_use]
pub fn mask_box(mask: &GrayImage) -> Option<(u32, u32, u32, u32)> {
    let mut bounds: Option<(u32, u32, u32, u32)> = None;
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] >= 128 {
            bounds = Some(match bounds {
                None => (x, y, x + 1, y + 1),
                Some((x0, y0, x1, y1)) => (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)),
            });
        }
    }
    bounds
}

// ---------------------------------------------------------------------------------------------
// Line layers
// ---------------------------------------------------------------------------------------------

/// Images wider than this get 2 px mask outlines.
const THICK_EDGE_WIDTH: u32 = 400;

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

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// PNG bytes of an RGB image (for callers that write files atomically).
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use image::Luma;

    fn luma(c: [u8; 3]) -> f32 {
        0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
    }

    /// A gradient radiograph so that "unchanged" checks are not trivially satisfied.
    fn gradient(width: u32, height: u32) -> GrayImage {
        GrayImage::from_fn(width, height, |x, y| Luma([((x * 7 + y * 3) % 256) as u8]))
    }

    fn in_rect((x0, y0, x1, y1): (u32, u32, u32, u32), x: u32, y: u32) -> bool {
        x >= x0 && x < x1 && y >= y0 && y < y1
    }

    fn in_legend(width: u32, height: u32, x: u32, y: u32) -> bool {
        legend_layout(width, height).is_some_and(|l| in_rect(l.backing, x, y))
    }

    #[test]
    fn viridis_ends_and_order() {
        let top = Colormap::Viridis.rgb(1.0);
        assert!(
            top[0] > 200 && top[1] > 200 && top[2] < 80,
            "viridis(1) not yellow: {top:?}"
        );
        let bottom = Colormap::Viridis.rgb(0.0);
        assert!(bottom[2] > bottom[1], "viridis(0) not purple: {bottom:?}");
        assert!(
            bottom.iter().all(|&c| c < 100),
            "viridis(0) not dark: {bottom:?}"
        );
        assert_eq!(bottom, [68, 1, 84]);
        assert_eq!(top, [253, 231, 37]);
        // Middle is blue-green/teal: green and blue both well above red.
        let mid = Colormap::Viridis.rgb(0.5);
        assert!(
            mid[1] > mid[0] + 50 && mid[2] > mid[0] + 50,
            "viridis(0.5): {mid:?}"
        );
    }

    #[test]
    fn viridis_luminance_increases() {
        let lumas: Vec<f32> = (0..=10)
            .map(|i| luma(Colormap::Viridis.rgb(i as f32 / 10.0)))
            .collect();
        for pair in lumas.windows(2) {
            assert!(
                pair[1] > pair[0],
                "viridis luminance not increasing: {lumas:?}"
            );
        }
        // And densely, allowing no decrease at all.
        let mut prev = -1.0f32;
        for i in 0..=1000 {
            let l = luma(Colormap::Viridis.rgb(i as f32 / 1000.0));
            assert!(
                l >= prev - 0.5,
                "luminance dropped at t={}",
                i as f32 / 1000.0
            );
            prev = l;
        }
    }

    #[test]
    fn turbo_order() {
        let lo = Colormap::Turbo.rgb(0.0);
        assert!(
            lo[2] > lo[0] && lo[2] > lo[1],
            "turbo(0) not blue-ish: {lo:?}"
        );
        let cyanish = Colormap::Turbo.rgb(0.25);
        assert!(
            cyanish[1] > cyanish[0] && cyanish[2] > cyanish[0],
            "turbo(0.25): {cyanish:?}"
        );
        let mid = Colormap::Turbo.rgb(0.5);
        assert!(
            mid[1] > mid[0] && mid[1] > mid[2] && mid[1] > 200,
            "turbo(0.5) not green: {mid:?}"
        );
        let orange = Colormap::Turbo.rgb(0.75);
        assert!(
            orange[0] > orange[1] && orange[0] > orange[2],
            "turbo(0.75): {orange:?}"
        );
        let hi = Colormap::Turbo.rgb(1.0);
        assert!(
            hi[0] > hi[1] && hi[0] > hi[2],
            "turbo(1) not red-ish: {hi:?}"
        );
        assert!(hi[0] < 160, "turbo(1) should be dark red: {hi:?}");
    }

    #[test]
    fn colormap_clamps_and_nan() {
        for cm in [Colormap::Viridis, Colormap::Turbo] {
            assert_eq!(cm.rgb(f32::NAN), cm.rgb(0.0));
            assert_eq!(cm.rgb(-3.0), cm.rgb(0.0));
            assert_eq!(cm.rgb(7.0), cm.rgb(1.0));
            assert_eq!(cm.rgb(f32::INFINITY), cm.rgb(1.0));
            assert_eq!(cm.rgb(f32::NEG_INFINITY), cm.rgb(0.0));
        }
    }

    #[test]
    fn colormap_names_round_trip() {
        for cm in [Colormap::Viridis, Colormap::Turbo] {
            assert_eq!(Colormap::parse(cm.name()), Some(cm));
        }
        assert_eq!(Colormap::parse(" Turbo "), Some(Colormap::Turbo));
        assert_eq!(Colormap::parse("VIRIDIS"), Some(Colormap::Viridis));
        assert_eq!(Colormap::parse("jet"), None);
        assert_eq!(Colormap::default(), Colormap::Viridis);
        let style = OverlayStyle::default();
        assert_eq!(style.colormap, Colormap::Viridis);
        assert!((style.opacity - 0.6).abs() < 1e-6);
        assert!(style.legend);
    }

    #[test]
    fn overlay_keeps_dimensions() {
        for (w, h) in [(1, 1), (10, 10), (64, 64), (130, 70), (513, 257)] {
            let base = gradient(w, h);
            let heat = vec![0.5; (w * h) as usize];
            let out = overlay(&base, &heat, &OverlayStyle::default(), &[]);
            assert_eq!(out.dimensions(), (w, h));
        }
    }

    #[test]
    fn opacity_zero_is_the_radiograph() {
        let (w, h) = (200, 150);
        let base = gradient(w, h);
        let heat: Vec<f32> = (0..w * h).map(|i| (i % 97) as f32 / 96.0).collect();
        let style = OverlayStyle {
            opacity: 0.0,
            ..OverlayStyle::default()
        };
        let out = overlay(&base, &heat, &style, &[]);
        assert!(legend_layout(w, h).is_some());
        for (x, y, px) in out.enumerate_pixels() {
            if in_legend(w, h, x, y) {
                continue;
            }
            let g = base.get_pixel(x, y).0[0];
            assert_eq!(px.0, [g, g, g], "pixel ({x},{y})");
        }
    }

    #[test]
    fn heat_changes_only_its_region() {
        let (w, h) = (160, 120);
        let base = gradient(w, h);
        // Hot in the top-left 40x30 block, cold elsewhere.
        let hot = |x: u32, y: u32| x < 40 && y < 30;
        let heat: Vec<f32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| if hot(x, y) { 1.0 } else { 0.0 }))
            .collect();
        let out = overlay(&base, &heat, &OverlayStyle::default(), &[]);
        let mut changed = 0;
        for (x, y, px) in out.enumerate_pixels() {
            let g = base.get_pixel(x, y).0[0];
            if hot(x, y) {
                if px.0 != [g, g, g] {
                    changed += 1;
                }
            } else if !in_legend(w, h, x, y) {
                assert_eq!(px.0, [g, g, g], "cold pixel ({x},{y}) changed");
            }
        }
        // Every hot pixel is tinted (viridis yellow is never gray).
        assert_eq!(changed, 40 * 30);
    }

    #[test]
    fn full_heat_full_opacity_is_top_colour() {
        for cm in [Colormap::Viridis, Colormap::Turbo] {
            let base = gradient(32, 32);
            let heat = vec![1.0; 32 * 32];
            let style = OverlayStyle {
                colormap: cm,
                opacity: 1.0,
                legend: false,
            };
            let out = overlay(&base, &heat, &style, &[]);
            for px in out.pixels() {
                assert_eq!(px.0, cm.rgb(1.0));
            }
        }
    }

    #[test]
    fn blending_is_linear_in_heat_and_opacity() {
        let base = GrayImage::from_pixel(2, 1, Luma([100]));
        let heat = [0.5, f32::NAN];
        let style = OverlayStyle {
            colormap: Colormap::Turbo,
            opacity: 0.8,
            legend: false,
        };
        let out = overlay(&base, &heat, &style, &[]);
        let c = Colormap::Turbo.rgb(0.5);
        let alpha = 0.4f32;
        for (got, want) in out.get_pixel(0, 0).0.into_iter().zip(c) {
            let want = (100.0 * (1.0 - alpha) + f32::from(want) * alpha).round() as u8;
            assert_eq!(got, want);
        }
        assert_eq!(
            out.get_pixel(1, 0).0,
            [100, 100, 100],
            "NaN heat must be cold"
        );
    }

    #[test]
    fn lines_are_painted_on_top() {
        let (w, h) = (8, 6);
        let base = gradient(w, h);
        let heat = vec![0.7; (w * h) as usize];
        let mut a = vec![false; (w * h) as usize];
        let mut b = vec![false; (w * h) as usize];
        a[3] = true;
        a[10] = true;
        b[10] = true;
        let style = OverlayStyle::default();
        let out = overlay(
            &base,
            &heat,
            &style,
            &[
                Lines {
                    pixels: &a,
                    colour: [255, 0, 0],
                },
                Lines {
                    pixels: &b,
                    colour: [0, 0, 255],
                },
            ],
        );
        assert_eq!(out.get_pixel(3, 0).0, [255, 0, 0]);
        assert_eq!(out.get_pixel(2, 1).0, [0, 0, 255], "later layer wins");
        let plain = overlay(&base, &heat, &style, &[]);
        assert_eq!(out.get_pixel(0, 0), plain.get_pixel(0, 0));
    }

    #[test]
    #[should_panic(expected = "heatmap has 99 values")]
    fn overlay_panics_on_size_mismatch() {
        let base = gradient(10, 10);
        let _ = overlay(&base, &[0.0; 99], &OverlayStyle::default(), &[]);
    }

    #[test]
    fn encode_png_round_trips() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            Rgb([(x * 6) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
        });
        let bytes = encode_png(&img).expect("encode");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let back = image::load_from_memory(&bytes).expect("decode").to_rgb8();
        assert_eq!(back.dimensions(), img.dimensions());
        assert_eq!(back.as_raw(), img.as_raw());
        // Channel order: a pure red pixel stays red.
        let red = RgbImage::from_pixel(1, 1, Rgb([255, 0, 0]));
        let back = image::load_from_memory(&encode_png(&red).expect("encode"))
            .expect("decode")
            .to_rgb8();
        assert_eq!(back.get_pixel(0, 0).0, [255, 0, 0]);
    }

    fn square_mask(width: u32, height: u32, x0: u32, y0: u32, side: u32) -> GrayImage {
        GrayImage::from_fn(width, height, |x, y| {
            let inside = x >= x0 && x < x0 + side && y >= y0 && y < y0 + side;
            Luma([if inside { 255 } else { 0 }])
        })
    }

    #[test]
    fn mask_edges_of_square() {
        let (w, h) = (20, 16);
        let mask = square_mask(w, h, 5, 4, 8); // x in 5..13, y in 4..12
        let edges = mask_edges(&mask);
        assert_eq!(edges.len(), (w * h) as usize);
        for y in 0..h {
            for x in 0..w {
                let inside = (5..13).contains(&x) && (4..12).contains(&y);
                let border = inside && (x == 5 || x == 12 || y == 4 || y == 11);
                assert_eq!(edges[(y * w + x) as usize], border, "pixel ({x},{y})");
            }
        }
    }

    #[test]
    fn mask_edges_off_image_counts_as_outside() {
        let mask = GrayImage::from_pixel(5, 4, Luma([200]));
        let edges = mask_edges(&mask);
        for y in 0..4u32 {
            for x in 0..5u32 {
                let border = x == 0 || x == 4 || y == 0 || y == 3;
                assert_eq!(edges[(y * 5 + x) as usize], border, "pixel ({x},{y})");
            }
        }
        // Threshold: 127 is outside.
        assert!(
            mask_edges(&GrayImage::from_pixel(3, 3, Luma([127])))
                .iter()
                .all(|&e| !e)
        );
    }

    #[test]
    fn mask_edges_thick_on_wide_images() {
        let (w, h) = (420, 60);
        let mask = square_mask(w, h, 100, 10, 40); // x in 100..140, y in 10..50
        let edges = mask_edges(&mask);
        let at = |x: u32, y: u32| edges[(y * w + x) as usize];
        assert!(at(100, 30) && at(101, 30), "left border is 2 px");
        assert!(!at(102, 30), "3rd px is interior");
        assert!(at(139, 30) && at(138, 30) && !at(137, 30));
        assert!(at(120, 10) && at(120, 11) && !at(120, 12));
        assert!(
            !at(99, 30) && !at(140, 30) && !at(120, 9),
            "nothing outside the mask"
        );
        assert!(!at(120, 30), "interior");
    }

    #[test]
    fn label_edges_with_keep() {
        // 6x4, labels: left half 1, right half 2, bottom row of the left half 3.
        let (w, h) = (6u32, 4u32);
        let labels: Vec<u32> = (0..h)
            .flat_map(|y| (0..w).map(move |x| if x < 3 { if y == 3 { 3 } else { 1 } } else { 2 }))
            .collect();
        let all = label_edges(&labels, w, h, |_| true);
        let at = |e: &[bool], x: u32, y: u32| e[(y * w + x) as usize];
        // Vertical boundary 1|2 (rows 0..3) and 3|2 (row 3): marked at x=2.
        for y in 0..h {
            assert!(at(&all, 2, y), "({},{y})", 2);
            assert!(!at(&all, 3, y));
        }
        // Horizontal boundary 1/3 at y=2 for x in 0..3.
        for x in 0..3 {
            assert!(at(&all, x, 2));
        }
        assert!(!at(&all, 0, 0) && !at(&all, 4, 1) && !at(&all, 0, 3));
        assert_eq!(all.iter().filter(|&&e| e).count(), 4 + 2);

        // Keep only label 3: its top border and its right border (3|2) remain.
        let only3 = label_edges(&labels, w, h, |l| l == 3);
        for x in 0..3 {
            assert!(at(&only3, x, 2));
        }
        assert!(at(&only3, 2, 3));
        for y in 0..2 {
            assert!(!at(&only3, 2, y), "1|2 boundary must be filtered out");
        }
        assert_eq!(only3.iter().filter(|&&e| e).count(), 4);

        // Keep nothing: no edges.
        assert!(label_edges(&labels, w, h, |_| false).iter().all(|&e| !e));
    }

    #[test]
    fn legend_present_when_enabled() {
        for (w, h) in [(64, 64), (256, 256), (1024, 1024), (300, 90)] {
            let base = gradient(w, h);
            let heat = vec![0.0; (w * h) as usize];
            let with = overlay(
                &base,
                &heat,
                &OverlayStyle {
                    legend: true,
                    ..Default::default()
                },
                &[],
            );
            let without = overlay(
                &base,
                &heat,
                &OverlayStyle {
                    legend: false,
                    ..Default::default()
                },
                &[],
            );
            let layout = legend_layout(w, h).expect("legend fits");
            let (x0, y0, x1, y1) = layout.backing;
            assert!(x1 <= w && y1 <= h);
            assert!(
                x0 >= w / 2 && y0 >= h / 2,
                "legend in the bottom-right corner"
            );
            let mut differ = 0;
            for (x, y, px) in with.enumerate_pixels() {
                if px != without.get_pixel(x, y) {
                    differ += 1;
                    assert!(
                        in_rect(layout.backing, x, y),
                        "legend drew outside its box at ({x},{y})"
                    );
                }
            }
            assert!(differ > 0);
            // Bar ends show the colormap's ends; glyph pixels are white.
            let (bx0, by0, bx1, _) = layout.bar;
            assert_eq!(with.get_pixel(bx0, by0).0, Colormap::Viridis.rgb(0.0));
            assert_eq!(with.get_pixel(bx1 - 1, by0).0, Colormap::Viridis.rgb(1.0));
            let (zx, zy) = layout.zero_at;
            assert_eq!(with.get_pixel(zx, zy).0, LEGEND_TEXT);
            // Without legend, bottom-right is the radiograph.
            let g = base.get_pixel(w - 3, h - 3).0[0];
            assert_eq!(without.get_pixel(w - 3, h - 3).0, [g, g, g]);
        }
    }

    #[test]
    fn legend_proportions() {
        let l = legend_layout(1024, 1024).expect("fits");
        let (bx0, by0, bx1, by1) = l.bar;
        assert_eq!(bx1 - bx0, 256);
        assert_eq!(by1 - by0, 25);
        assert_eq!(l.scale, 5);
    }

    #[test]
    fn small_images_do_not_panic() {
        assert!(legend_layout(63, 200).is_none());
        assert!(legend_layout(200, 63).is_none());
        for (w, h) in [(1, 1), (10, 10), (1, 100), (100, 1), (63, 63)] {
            let base = gradient(w, h);
            let heat = vec![1.0; (w * h) as usize];
            let out = overlay(
                &base,
                &heat,
                &OverlayStyle {
                    opacity: 1.0,
                    ..Default::default()
                },
                &[],
            );
            assert_eq!(out.dimensions(), (w, h));
            // No legend on tiny images: every pixel is the top colour.
            assert!(out.pixels().all(|p| p.0 == Colormap::Viridis.rgb(1.0)));
            let mask = GrayImage::from_pixel(w, h, Luma([255]));
            assert_eq!(mask_edges(&mask).len(), (w * h) as usize);
            let labels = vec![0u32; (w * h) as usize];
            assert!(label_edges(&labels, w, h, |_| true).iter().all(|&e| !e));
            assert!(encode_png(&out).is_ok());
        }
        let empty = GrayImage::new(0, 0);
        assert_eq!(
            overlay(&empty, &[], &OverlayStyle::default(), &[]).dimensions(),
            (0, 0)
        );
        assert!(mask_edges(&empty).is_empty());
    }

    #[test]
    fn fade_outside_keeps_the_box_and_zeroes_beyond_the_margin() {
        let (w, h) = (40u32, 30u32);
        let mut heat = vec![1.0f32; (w * h) as usize];
        fade_outside(&mut heat, w, h, (10, 10, 20, 20), 4);
        let at = |x: u32, y: u32| heat[(y * w + x) as usize];
        assert_eq!(at(10, 10), 1.0);
        assert_eq!(at(19, 19), 1.0);
        assert!(
            at(21, 15) > 0.0 && at(21, 15) < 1.0,
            "fading: {}",
            at(21, 15)
        );
        assert!(at(22, 15) < at(21, 15));
        assert_eq!(at(24, 15), 0.0);
        assert_eq!(at(0, 0), 0.0);
        assert_eq!(at(39, 29), 0.0);
    }

    #[test]
    fn mask_box_is_the_bounding_box_of_the_lungs() {
        let mut mask = GrayImage::new(20, 10);
        assert_eq!(mask_box(&mask), None);
        mask.put_pixel(3, 4, Luma([255]));
        mask.put_pixel(12, 7, Luma([200]));
        mask.put_pixel(15, 1, Luma([100])); // below one half: not lung
        assert_eq!(mask_box(&mask), Some((3, 4, 13, 8)));
    }

    #[test]
    fn annotation_writes_a_header_band_and_a_caption_over_the_bar() {
        let (w, h) = (512u32, 512u32);
        let base = gradient(w, h);
        let mut out = overlay(
            &base,
            &vec![0.0; (w * h) as usize],
            &OverlayStyle::default(),
            &[],
        );
        let before = out.clone();
        let words = Annotation {
            header: "grad-cam  target COVID-19  p=0.91".into(),
            caption: "relative evidence for COVID-19".into(),
        };
        annotate(&mut out, &words, true);
        assert_eq!(out.dimensions(), (w, h));
        let band = header_height(w, h, &words.header);
        assert!((10..=40).contains(&band), "band {band}");
        let row_colours = |y: u32| (0..w).map(|x| out.get_pixel(x, y).0).collect::<Vec<_>>();
        // Text pixels inside the band, backing around them; the first row is all backing.
        assert!(row_colours(0).iter().all(|&p| p == HEADER_BACKING));
        let text: usize = (0..band)
            .map(|y| row_colours(y).iter().filter(|&&p| p == LEGEND_TEXT).count())
            .sum();
        assert!(text > 100, "{text} text pixels");
        // Below the band and above the legend, nothing changed.
        let layout = legend_layout(w, h).unwrap();
        let caption_top = layout.backing.1 - (8 + 2);
        for y in band..caption_top {
            assert_eq!(
                row_colours(y),
                (0..w).map(|x| before.get_pixel(x, y).0).collect::<Vec<_>>(),
                "row {y}"
            );
        }
        // The caption: light pixels just above the legend's backing, inside its columns.
        let caption_text = (caption_top..layout.backing.1)
            .flat_map(|y| (0..layout.backing.2).map(move |x| (x, y)))
            .filter(|&(x, y)| out.get_pixel(x, y).0 == LEGEND_TEXT)
            .count();
        assert!(caption_text > 50, "{caption_text} caption pixels");
    }

    #[test]
    fn long_text_is_cut_with_an_ellipsis() {
        assert_eq!(fit_text("short", 80), "short");
        assert_eq!(fit_text("a much longer header", 80), "a much ...");
        assert_eq!(fit_text("abc", 16), "ab");
        assert_eq!(class_display_name("covid"), "COVID-19");
        assert_eq!(class_display_name("normal"), "no finding");
        assert_eq!(class_display_name("nodule"), "nodule");
    }
}
