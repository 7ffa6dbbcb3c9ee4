//! How the radiograph is looked at: zoom (`z`, 1x/2x/4x around the lungs) and window/level
//! (`w`, presets), applied to the picture before it is encoded for the terminal. Pure functions
//! of the picture, so the snapshots see exactly what the terminal gets.

use image::{DynamicImage, GenericImageView, ImageBuffer, Luma};

/// Zoom factors `z` cycles through.
pub const ZOOMS: [u32; 3] = [1, 2, 4];

/// The picture's centre, as shares of its width and height: where zoom looks when the
/// segmenter found no lungs.
pub const CENTRE: (f32, f32) = (0.5, 0.5);

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

/// Zoom, pan and window/level of the radiograph pane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    pub zoom: u32,
    /// Where the zoomed crop sits, in quarters of its own width and height from the point it
    /// is centred on (`hjkl`/arrows while zoomed), kept within the picture.
    pub pan: (i32, i32),
    pub window: Window,
}

impl Default for View {
    fn default() -> Self {
        Self {
            zoom: 1,
            pan: (0, 0),
            window: Window::Full,
        }
    }
}

impl View {
    /// The next zoom factor (`z`): 1x, 2x, 4x, 1x... around the same point of the picture.
    #[must_use]
    pub fn next_zoom(self) -> Self {
        let i = ZOOMS.iter().position(|&z| z == self.zoom).unwrap_or(0);
        let zoom = ZOOMS[(i + 1) % ZOOMS.len()];
        // A quarter of the crop is half as much picture at twice the zoom.
        let scale = i32::try_from(zoom / self.zoom.max(1)).unwrap_or(1);
        Self {
            zoom,
            pan: (self.pan.0 * scale, self.pan.1 * scale),
            ..self
        }
        .panned(0, 0)
    }

    /// Moved by `dx`, `dy` quarters of the crop, no further than the picture's edges (at most
    /// `2 (zoom - 1)` quarters from the centre); nothing moves at 1x.
    #[must_use]
    pub fn panned(self, dx: i32, dy: i32) -> Self {
        let reach = 2 * (i32::try_from(self.zoom).unwrap_or(1) - 1).max(0);
        Self {
            pan: (
                (self.pan.0 + dx).clamp(-reach, reach),
                (self.pan.1 + dy).clamp(-reach, reach),
            ),
            ..self
        }
    }

    /// Words for the pane's title: "2x · lung window"; empty when nothing is changed.
    #[must_use]
    pub fn describe(self, with_window: bool) -> String {
        let mut parts = Vec::new();
        if self.zoom > 1 {
            parts.push(format!("{}x", self.zoom));
            if self.pan != (0, 0) {
                parts.push("panned (hjkl)".into());
            }
        }
        if with_window && self.window != Window::Full {
            parts.push(format!("{} window", self.window.name()));
        }
        parts.join(" · ")
    }

    /// The `1/zoom` of `picture` centred on `focus` (shares of its width and height: the
    /// lungs' centre, or [`CENTRE`]), moved by the pan, and kept inside the picture (the whole
    /// picture at 1x).
    #[must_use]
    pub fn zoomed(self, picture: &DynamicImage, focus: (f32, f32)) -> DynamicImage {
        if self.zoom <= 1 {
            return picture.clone();
        }
        let (w, h) = picture.dimensions();
        let (cw, ch) = ((w / self.zoom).max(1), (h / self.zoom).max(1));
        let origin = |size: u32, crop: u32, focus: f32, pan: i32| {
            let centred = (f64::from(size) * f64::from(focus.clamp(0.0, 1.0))
                - f64::from(crop) / 2.0)
                .round() as i64;
            let moved = centred + i64::from(pan) * i64::from(crop / 4);
            u32::try_from(moved.clamp(0, i64::from(size - crop))).unwrap_or(0)
        };
        picture.crop_imm(
            origin(w, cw, focus.0, self.pan.0),
            origin(h, ch, focus.1, self.pan.1),
            cw,
            ch,
        )
    }

    /// The radiograph as shown: zoomed on `focus`, then windowed (grey, 16-bit precision kept
    /// until the window is applied).
    #[must_use]
    pub fn radiograph(self, picture: &DynamicImage, focus: (f32, f32)) -> DynamicImage {
        let zoomed = self.zoomed(picture, focus);
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
        let two = View { zoom: 2, ..view }.radiograph(&ramp(), CENTRE);
        assert_eq!((two.width(), two.height()), (128, 50));
        // The centre: greys 64..192 of the ramp.
        let grey = two.to_luma8();
        assert_eq!(grey.get_pixel(0, 0).0[0], 64);
        assert_eq!(grey.get_pixel(127, 0).0[0], 191);
    }

    /// Panning moves the crop by quarters of it and stops at the picture's edge; zooming in
    /// keeps the same point in view.
    #[test]
    fn pan_moves_the_zoomed_crop_within_the_picture() {
        let two = View::default().next_zoom();
        assert_eq!(
            View::default().panned(1, 1).pan,
            (0, 0),
            "nothing moves at 1x"
        );
        // Right by a quarter of the 128-wide crop: greys 96..224.
        let right = two.panned(1, 0);
        assert_eq!(
            right.zoomed(&ramp(), CENTRE).to_luma8().get_pixel(0, 0).0[0],
            96
        );
        // As far right as the picture goes, however often asked: greys 128..256.
        let edge = (0..9).fold(two, |v, _| v.panned(1, 0));
        assert_eq!(edge.pan, (2, 0));
        let grey = edge.zoomed(&ramp(), CENTRE).to_luma8();
        assert_eq!(
            (grey.get_pixel(0, 0).0[0], grey.get_pixel(127, 0).0[0]),
            (128, 255)
        );
        // 4x around the same point (grey 160): the 64-wide crop starts at 128.
        let four = right.next_zoom();
        assert_eq!(four.pan, (2, 0));
        assert_eq!(
            four.zoomed(&ramp(), CENTRE).to_luma8().get_pixel(0, 0).0[0],
            128
        );
        assert_eq!(four.describe(false), "4x · panned (hjkl)");
        assert_eq!(four.next_zoom().pan, (0, 0), "back to 1x, centred");
    }

    /// Zoom looks at the lungs' centre when it is known, and still stays inside the picture.
    #[test]
    fn zoom_centres_on_the_lungs() {
        let two = View::default().next_zoom();
        // The 128-wide crop around 70% of the ramp's width (179): greys 115..243.
        let right = two.zoomed(&ramp(), (0.7, 0.5)).to_luma8();
        assert_eq!(right.get_pixel(0, 0).0[0], 115);
        // Around 10%, the crop would start left of the picture: it starts at its edge.
        let left = two.zoomed(&ramp(), (0.1, 0.5)).to_luma8();
        assert_eq!(left.get_pixel(0, 0).0[0], 0);
        // Panning moves from there.
        let panned = two.panned(1, 0).zoomed(&ramp(), (0.7, 0.5)).to_luma8();
        assert_eq!(
            panned.get_pixel(0, 0).0[0],
            128,
            "115 + 32, clamped to the edge"
        );
    }

    #[test]
    fn windows_stretch_their_range() {
        let ramp = ramp();
        let full = View::default().radiograph(&ramp, CENTRE).to_luma8();
        assert_eq!(full.get_pixel(100, 0).0[0], 100);
        let lung = View {
            window: Window::Lung,
            ..View::default()
        }
        .radiograph(&ramp, CENTRE)
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
        .radiograph(&ramp, CENTRE)
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
        .radiograph(&dull, CENTRE)
        .to_luma8();
        assert!(auto.get_pixel(1, 0).0[0] < 10);
        assert!(auto.get_pixel(198, 0).0[0] > 245);
        assert_eq!(Window::Full.next().next().next().next(), Window::Full);
    }
}
