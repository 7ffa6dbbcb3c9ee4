//! Rendering of explanation heatmaps over chest radiographs.
//!
//! Everything here works on plain pixel buffers: a grayscale radiograph, a row-major heatmap in
//! `[0, 1]`, optional line layers (mask outlines, superpixel borders) and an optional colour-bar
//! legend. The result is an [`RgbImage`] of exactly the radiograph's size, which [`encode_png`]
//! turns into PNG bytes.

use std::io::Cursor;

use image::{GrayImage, ImageFormat, Rgb, RgbImage};

mod colormap;
mod edges;
mod fade;
mod legend;
mod text;

#[allow(clippy::wildcard_imports)] // the parts' helpers, shared between them
use self::{colormap::*, legend::*};

pub use colormap::Colormap;
pub use edges::{label_edges, mask_edges};
pub use fade::fade_outside;
pub use text::{Annotation, annotate, class_display_name, header_height};

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
// Encoding
// ---------------------------------------------------------------------------------------------

/// PNG bytes of an RGB image (for callers that write files atomically).
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests;
