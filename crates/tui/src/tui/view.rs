//! How the radiograph is looked at: zoom (`z`, 1x/2x/4x around the centre) and window/level
//! (`w`, presets), applied to the picture before it is encoded for the terminal. Pure functions
//! of the picture, so the snapshots see exactly what the terminal gets.

use image::{DynamicImage, GenericImageView, ImageBuffer, Luma};

/// Zoom factors `z` cycles through.
pub const ZOOMS: [u32; 3] = [1, 2, 4];

/// A window/level preset on the radiograph's grey values, as fractions of the full range (a
/// radiograph's pixel values are not calibrated like CT's Hounsfield units, so the presets are
/// relative).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Window {
    /// Every grey as stored.
    #[default]
    Full,
    /// Stretched between the 1st and 99th percentile of the picture (auto contrast).
    Auto,
    /// The dark half stretched: lung fields, vessels, small opacities.
    Lung,
    /// The bright half stretched: mediastinum, heart border, bone, lines and tubes.
    SoftTissue,
}

impl Window {
    /// The next preset (`w`).
    #[must_use]
    pub fn next(self) -> Self {
        match self {
            Self::Full => Self::Auto,
            Self::Auto => Self::Lung,
            Self::Lung => Self::SoftTissue,
            Self::SoftTissue => Self::Full,
        }
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Auto => "auto",
            Self::Lung => "lung",
            Self::SoftTissue => "soft tissue",
        }
    }

    /// `(low, high)` in [0, 1]: greys below `low` turn black, above `high` white.
    fn range(self, picture: &ImageBuffer<Luma<u16>, Vec<u16>>) -> (f32, f32) {
        match self {
            Self::Full => (0.0, 1.0),
            Self::Lung => (0.05, 0.6),
            Self::SoftTissue => (0.4, 0.95),
            Self::Auto => {
                let mut histogram = vec![0u32; 1024];
                for p in picture.pixels() {
                    histogram[usize::from(p.0[0] >> 6)] += 1;
                }
                let total: u32 = histogram.iter().sum();
                let at = |share: f32| {
                    let goal = (total as f32 * share) as u32;
                    let mut seen = 0;
                    for (i, n) in histogram.iter().enumerate() {
                        seen += n;
                        if seen > goal {
                            return i as f32 / 1023.0;
                        }
                    }
                    1.0
                };
                let (low, high) = (at(0.01), at(0.99));
                if high - low < 0.02 {
                    (0.0, 1.0)
                } else {
                    (low, high)
                }
            }
        }
    }
}

/// Zoom and window/level of the radiograph pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub zoom: u32,
    pub window: Window,
}

impl Default for View {
    fn default() -> Self {
        Self {
            zoom: 1,
            window: Window::Full,
        }
    }
}

impl View {
    /// The next zoom factor (`z`): 1x, 2x, 4x, 1x...
    #[must_use]
    pub fn next_zoom(self) -> Self {
        let i = ZOOMS.iter().position(|&z| z == self.zoom).unwrap_or(0);
        Self {
            zoom: ZOOMS[(i + 1) % ZOOMS.len()],
            ..self
        }
    }

    /// Words for the pane's title: "2x · lung window"; empty when nothing is changed.
    #[must_use]
    pub fn describe(self, with_window: bool) -> String {
        let mut parts = Vec::new();
        if self.zoom > 1 {
            parts.push(format!("{}x", self.zoom));
        }
        if with_window && self.window != Window::Full {
            parts.push(format!("{} window", self.window.name()));
        }
        parts.join(" · ")
    }

    /// The centre `1/zoom` of `picture` (the whole picture at 1x).
    #[must_use]
    pub fn zoomed(self, picture: &DynamicImage) -> DynamicImage {
        if self.zoom <= 1 {
            return picture.clone();
        }
        let (w, h) = picture.dimensions();
        let (cw, ch) = ((w / self.zoom).max(1), (h / self.zoom).max(1));
        picture.crop_imm((w - cw) / 2, (h - ch) / 2, cw, ch)
    }

    /// The radiograph as shown: zoomed, then windowed (grey, 16-bit precision kept until the
    /// window is applied).
    #[must_use]
    pub fn radiograph(self, picture: &DynamicImage) -> DynamicImage {
        let zoomed = self.zoomed(picture);
        if self.window == Window::Full {
            return zoomed;
        }
        let grey = zoomed.to_luma16();
        let (low, high) = self.window.range(&grey);
        let scale = 1.0 / (high - low).max(1e-3);
        let out = ImageBuffer::from_fn(grey.width(), grey.height(), |x, y| {
            let v = f32::from(grey.get_pixel(x, y).0[0]) / 65535.0;
            Luma([(((v - low) * scale).clamp(0.0, 1.0) * 255.0).round() as u8])
        });
        DynamicImage::ImageLuma8(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> DynamicImage {
        DynamicImage::ImageLuma8(ImageBuffer::from_fn(256, 100, |x, _| Luma([x as u8])))
    }

    #[test]
    fn zoom_cycles_and_crops_the_centre() {
        let view = View::default();
        assert_eq!(view.next_zoom().zoom, 2);
        assert_eq!(view.next_zoom().next_zoom().zoom, 4);
        assert_eq!(view.next_zoom().next_zoom().next_zoom().zoom, 1);
        let two = View { zoom: 2, ..view }.radiograph(&ramp());
        assert_eq!((two.width(), two.height()), (128, 50));
        // The centre: greys 64..192 of the ramp.
        let grey = two.to_luma8();
        assert_eq!(grey.get_pixel(0, 0).0[0], 64);
        assert_eq!(grey.get_pixel(127, 0).0[0], 191);
    }

    #[test]
    fn windows_stretch_their_range() {
        let ramp = ramp();
        let full = View::default().radiograph(&ramp).to_luma8();
        assert_eq!(full.get_pixel(100, 0).0[0], 100);
        let lung = View {
            window: Window::Lung,
            ..View::default()
        }
        .radiograph(&ramp)
        .to_luma8();
        // Below 5% black, above 60% white, stretched between.
        assert_eq!(lung.get_pixel(10, 0).0[0], 0);
        assert_eq!(lung.get_pixel(200, 0).0[0], 255);
        let mid = lung.get_pixel(85, 0).0[0];
        assert!(mid > 100 && mid < 160, "{mid}");
        let soft = View {
            window: Window::SoftTissue,
            ..View::default()
        }
        .radiograph(&ramp)
        .to_luma8();
        assert_eq!(soft.get_pixel(90, 0).0[0], 0);
        assert_eq!(soft.get_pixel(250, 0).0[0], 255);
        // Auto contrast on a low-contrast picture spreads it over the whole range.
        let dull = DynamicImage::ImageLuma8(ImageBuffer::from_fn(200, 10, |x, _| {
            Luma([100 + (x / 4) as u8])
        }));
        let auto = View {
            window: Window::Auto,
            ..View::default()
        }
        .radiograph(&dull)
        .to_luma8();
        assert!(auto.get_pixel(1, 0).0[0] < 10);
        assert!(auto.get_pixel(198, 0).0[0] > 245);
        assert_eq!(Window::Full.next().next().next().next(), Window::Full);
    }
}
