//! Text on overlays: the header band and the colour bar's caption.

#[allow(clippy::wildcard_imports)] // the render module's parts share their helpers
use super::*;

/// Background of the header band and of the caption.
pub(super) const HEADER_BACKING: [u8; 3] = [16, 16, 16];
/// Largest integer scale of the 8x8 font (64 px tall letters read well on any screen).
pub(super) const MAX_TEXT_SCALE: u32 = 8;

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
pub(super) fn text_width(text: &str, scale: u32) -> u32 {
    text.chars().count() as u32 * 8 * scale
}

/// `text` shortened with "..." until it is at most `width` pixels wide at scale 1.
pub(super) fn fit_text(text: &str, width: u32) -> String {
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
pub(super) fn draw_text(
    image: &mut RgbImage,
    text: &str,
    (x, y): (u32, u32),
    scale: u32,
    colour: [u8; 3],
) {
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

pub(super) fn header_scale(width: u32, height: u32, header: &str) -> u32 {
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
