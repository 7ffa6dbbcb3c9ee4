//! Colormaps for heatmaps: perceptual (viridis) and rainbow-like (turbo).

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
pub(super) const TURBO_ANCHORS: [[u8; 3]; 10] = [
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
pub(super) fn interpolate(anchors: &[[u8; 3]], t: f32) -> [u8; 3] {
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
pub(super) fn unit(t: f32) -> f32 {
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
