//! The colour-bar legend and the pixel helpers the text shares.

#[allow(clippy::wildcard_imports)] // the render module's parts share their helpers
use super::*;

/// Images smaller than this on either side get no legend.
pub(super) const LEGEND_MIN_SIDE: u32 = 64;

/// 3x5 bitmap glyphs, one row per entry, bit 2 = leftmost column.
pub(super) const GLYPH_0: [u8; 5] = [0b111, 0b101, 0b101, 0b101, 0b111];
pub(super) const GLYPH_1: [u8; 5] = [0b010, 0b110, 0b010, 0b010, 0b111];
pub(super) const GLYPH_W: u32 = 3;
pub(super) const GLYPH_H: u32 = 5;

pub(super) const LEGEND_BACKING: [u8; 3] = [16, 16, 16];
pub(super) const LEGEND_TEXT: [u8; 3] = [255, 255, 255];

/// Geometry of the legend, all in image pixel coordinates (half-open ranges).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LegendLayout {
    /// Dark backing rectangle: x in [x0, x1), y in [y0, y1).
    pub(super) backing: (u32, u32, u32, u32),
    /// The colour bar itself, same convention.
    pub(super) bar: (u32, u32, u32, u32),
    /// Top-left corners of the "0" and "1" glyphs.
    pub(super) zero_at: (u32, u32),
    pub(super) one_at: (u32, u32),
    /// Integer scale of the 3x5 glyphs.
    pub(super) scale: u32,
}

/// Layout of the legend for an image of this size, or `None` if it does not fit.
///
/// `[pad "0" gap ====bar==== gap "1" pad]` on a dark backing, anchored at the bottom-right with
/// a small margin. The bar is ~1/4 of the width and ~1/40 of the height (at least 4 px); the
/// glyphs are scaled so that they are about as tall as the bar.
pub(super) fn legend_layout(width: u32, height: u32) -> Option<LegendLayout> {
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
pub(super) fn put(image: &mut RgbImage, x: u32, y: u32, colour: [u8; 3]) {
    if x < image.width() && y < image.height() {
        image.put_pixel(x, y, Rgb(colour));
    }
}

pub(super) fn fill_rect(
    image: &mut RgbImage,
    (x0, y0, x1, y1): (u32, u32, u32, u32),
    colour: [u8; 3],
) {
    for y in y0..y1.min(image.height()) {
        for x in x0..x1.min(image.width()) {
            image.put_pixel(x, y, Rgb(colour));
        }
    }
}

pub(super) fn draw_glyph(image: &mut RgbImage, glyph: [u8; 5], (gx, gy): (u32, u32), scale: u32) {
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

pub(super) fn draw_legend(image: &mut RgbImage, colormap: Colormap) {
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
