//! `NumPy` `.npy` files (format version 1.0): the raw arrays `cxr explain --raw` writes, so that
//! `numpy.load` (or any `.npy` reader) gets heatmaps, masks and superpixel labels as arrays.
//!
//! The format is a magic string, a little-endian header length, a Python dict literal naming
//! the element type and shape (padded so the data starts on a 64-byte boundary), then the
//! elements in C order. Writing it takes less code than the `ndarray` dependency would.

/// An element type numpy names by a `descr` string; stored little-endian.
pub trait Element: Copy {
    /// numpy's type string (`<f4`, `|u1`...).
    const DESCR: &'static str;
    fn extend_le(self, out: &mut Vec<u8>);
}

macro_rules! element {
    ($t:ty, $descr:literal) => {
        impl Element for $t {
            const DESCR: &'static str = $descr;
            fn extend_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    };
}

element!(f32, "<f4");
element!(f64, "<f8");
element!(i32, "<i4");
element!(u8, "|u1");

/// `data` (C order) as a `.npy` file of `shape`.
///
/// # Panics
/// When `shape`'s product is not `data.len()` (a caller's bug).
#[must_use]
pub fn encode<T: Element>(shape: &[usize], data: &[T]) -> Vec<u8> {
    assert_eq!(shape.iter().product::<usize>(), data.len(), "npy shape");
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    // A one-element tuple needs its trailing comma in Python.
    let shape = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        T::DESCR
    );
    // magic (6) + version (2) + length (2) + header + '\n', a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let length = u16::try_from(header.len()).expect("an npy header of a few dimensions");
    let mut out = Vec::with_capacity(10 + header.len() + std::mem::size_of_val(data));
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &value in data {
        value.extend_le(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_padded_to_64_bytes_and_data_follows_little_endian() {
        let bytes = encode(&[2, 3], &[0.0f32, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let length = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
        assert_eq!((10 + length) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + length]).unwrap();
        assert!(header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
        assert!(header.ends_with('\n'));
        let data = &bytes[10 + length..];
        assert_eq!(data.len(), 24);
        assert_eq!(&data[4..8], &1.0f32.to_le_bytes());
    }

    #[test]
    fn one_dimension_keeps_the_tuple_comma() {
        let bytes = encode(&[3], &[1u8, 2, 3]);
        let header = String::from_utf8_lossy(&bytes[10..]);
        assert!(header.contains("'descr': '|u1'") && header.contains("'shape': (3,)"));
    }
}
