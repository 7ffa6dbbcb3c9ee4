//! Stored values to display values: modality LUT (rescale), VOI (LUT table, window or the
//! image's own range), MONOCHROME1 inversion; colour images become luma.

use dicom_dictionary_std::tags;
use dicom_object::DefaultDicomObject;
use dicom_pixeldata::{WindowLevel, WindowLevelTransform};

use super::guard::Header;
use super::{Voi, WindowFunction, element, number, text};

/// Stored values to display values in [0, 1]: modality LUT, VOI, MONOCHROME1 inversion. Colour
/// images become luma (their values are already for display).
pub(super) fn to_display(
    object: &DefaultDicomObject,
    header: &Header,
    samples: &[i32],
) -> (Vec<f32>, Voi) {
    if header.samples == 3 {
        let top = f64::from((1u32 << header.bits_stored) - 1);
        let luma = samples
            .chunks_exact(3)
            .map(|c| {
                let y =
                    0.2126 * f64::from(c[0]) + 0.7152 * f64::from(c[1]) + 0.0722 * f64::from(c[2]);
                (y / top).clamp(0.0, 1.0) as f32
            })
            .collect();
        return (luma, Voi::MinMax { min: 0.0, max: top });
    }
    let modality = |v: i32| header.rescale.apply(f64::from(v));
    let voi = voi_table(object, header.signed)
        .or_else(|| window(object))
        .unwrap_or_else(|| {
            let (min, max) = samples
                .iter()
                .map(|&v| modality(v))
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v), hi.max(v))
                });
            VoiMap::MinMax { min, max }
        });
    let invert = header.photometric == "MONOCHROME1";
    let values = samples
        .iter()
        .map(|&v| {
            let y = voi.apply(modality(v)).clamp(0.0, 1.0);
            (if invert { 1.0 - y } else { y }) as f32
        })
        .collect();
    (values, voi.describe())
}

/// A VOI transformation ready to apply.
enum VoiMap {
    Table {
        first: i64,
        data: Vec<u16>,
        top: f64,
    },
    /// `LINEAR` and `LINEAR_EXACT` (PS3.3 C.11.2.1.2): dicom-pixeldata's functions; `center`,
    /// `width` and `function` describe it.
    Window {
        transform: WindowLevelTransform,
        center: f64,
        width: f64,
        function: WindowFunction,
    },
    /// `SIGMOID`, computed here: dicom-pixeldata widens a `SIGMOID` window narrower than 1 to 1,
    /// but the standard allows any width above 0, and a narrow one is meaningful when the
    /// rescale maps the image to a small range.
    Sigmoid {
        center: f64,
        width: f64,
    },
    MinMax {
        min: f64,
        max: f64,
    },
}

impl VoiMap {
    fn apply(&self, x: f64) -> f64 {
        match self {
            Self::Table { first, data, top } => {
                let i = (x.round() as i64 - first).clamp(0, data.len() as i64 - 1);
                f64::from(data[i as usize]) / top
            }
            Self::Window { transform, .. } => transform.apply(x, 1.0),
            Self::Sigmoid { center, width } => 1.0 / (1.0 + (-4.0 * (x - center) / width).exp()),
            Self::MinMax { min, max } => {
                if max > min {
                    (x - min) / (max - min)
                } else {
                    0.0
                }
            }
        }
    }

    fn describe(&self) -> Voi {
        match *self {
            Self::Table {
                first, ref data, ..
            } => Voi::Table {
                first,
                entries: data.len(),
            },
            Self::Window {
                center,
                width,
                function,
                ..
            } => Voi::Window {
                center,
                width,
                function,
            },
            Self::Sigmoid { center, width } => Voi::Window {
                center,
                width,
                function: WindowFunction::Sigmoid,
            },
            Self::MinMax { min, max } => Voi::MinMax { min, max },
        }
    }
}

/// The first Window Center/Width pair, when the standard allows it: finite (see `number`),
/// at least 1 wide for `LINEAR` and wider than 0 otherwise. dicom-pixeldata would instead
/// render a narrower `LINEAR` window as `LINEAR_EXACT` and a zero-width one as a threshold; such
/// a window is broken, and the image's own range shows more than a guess at its intent.
fn window(object: &DefaultDicomObject) -> Option<VoiMap> {
    let center = number(object, tags::WINDOW_CENTER)?;
    let width = number(object, tags::WINDOW_WIDTH)?;
    // Unknown names are `LINEAR`, the default (PS3.3 C.11.2.1.3).
    let function = text(object, tags::VOILUT_FUNCTION)
        .and_then(|name| WindowFunction::try_from(name.as_str()).ok())
        .unwrap_or_default();
    match function {
        WindowFunction::Sigmoid => (width > 0.0).then_some(VoiMap::Sigmoid { center, width }),
        WindowFunction::Linear if width < 1.0 => None,
        _ => (width > 0.0).then(|| VoiMap::Window {
            transform: WindowLevelTransform::new(function, WindowLevel { width, center }),
            center,
            width,
            function,
        }),
    }
}

/// The first item of the VOI LUT Sequence, when it is well formed. Not dicom-pixeldata's
/// `VoiLutTransform`: it panics on an empty table or one deeper than the image's Bits Stored
/// (both in reach of a hostile file), and scales its output to the image's bit depth with a
/// guess from the table's largest entry, where this maps the table's own declared range to
/// [0, 1].
fn voi_table(object: &DefaultDicomObject, signed: bool) -> Option<VoiMap> {
    let sequence = element(object, tags::VOILUT_SEQUENCE)?;
    let item = sequence.items()?.first()?;
    let descriptor: Vec<i64> = item
        .element(tags::LUT_DESCRIPTOR)
        .ok()?
        .to_multi_int::<i64>()
        .ok()?;
    let [entries, first, bits] = descriptor[..] else {
        return None;
    };
    let entries = if entries == 0 {
        65_536
    } else {
        entries as usize
    };
    // The first mapped value is signed when the pixels are (PS3.3 C.11.2.1.1).
    let first = if signed && first > 0x7FFF {
        first - 0x1_0000
    } else {
        first
    };
    if !(1..=16).contains(&bits) {
        return None;
    }
    let data: Vec<u16> = item
        .element(tags::LUT_DATA)
        .ok()?
        .to_multi_int::<u16>()
        .ok()?;
    if data.len() < entries {
        return None;
    }
    Some(VoiMap::Table {
        first,
        data: data[..entries].to_vec(),
        top: f64::from((1u32 << bits) - 1),
    })
}
