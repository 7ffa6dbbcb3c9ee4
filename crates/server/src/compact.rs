//! The radiograph without what a sender may pad it with: a PNG without its ancillary chunks
//! (text, EXIF, ICC profiles, private chunks, bytes after `IEND`), a JPEG without comments and
//! application segments other than JFIF and Adobe's. Only the chunks and segments are dropped;
//! everything kept is copied byte for byte. A PNG decoder's output depends only on the chunks
//! kept (the critical ones, transparency and animation frames), so its pixels do not change;
//! for a JPEG the caller checks that they decode the same. DICOM files are kept as sent.

/// Ancillary bytes below this are left alone: the upload is stored as sent.
pub const WORTH_REMOVING: usize = 1 << 20;

/// Ancillary PNG chunks that change what a decoder produces (transparency, animation frames),
/// kept with the critical ones.
const PNG_KEPT: [&[u8; 4]; 4] = [b"tRNS", b"acTL", b"fcTL", b"fdAT"];

const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Whether `bytes` start as a PNG does.
#[must_use]
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(PNG_SIGNATURE)
}

/// The upload without its padding, when at least [`WORTH_REMOVING`] bytes of it can go; `None`
/// for anything else (small padding, DICOM, bytes that are not a well-formed PNG or JPEG: the
/// decoder says what is wrong with those).
#[must_use]
pub fn without_padding(bytes: &[u8]) -> Option<Vec<u8>> {
    let slim = if is_png(bytes) {
        png(bytes)?
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        jpeg(bytes)?
    } else {
        return None;
    };
    (bytes.len() - slim.len() >= WORTH_REMOVING).then_some(slim)
}

/// The signature, the critical chunks and [`PNG_KEPT`], up to and including `IEND`.
fn png(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = PNG_SIGNATURE.to_vec();
    let mut at = PNG_SIGNATURE.len();
    loop {
        let length = u32::from_be_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize;
        let kind: &[u8; 4] = bytes.get(at + 4..at + 8)?.try_into().ok()?;
        let end = at.checked_add(12)?.checked_add(length)?;
        let chunk = bytes.get(at..end)?;
        let critical = kind[0].is_ascii_uppercase();
        if critical || PNG_KEPT.contains(&kind) {
            out.extend_from_slice(chunk);
        }
        if kind == b"IEND" {
            return Some(out);
        }
        at = end;
    }
}

/// `SOI`, every marker segment but comments and application segments other than `APP0`
/// (JFIF) and `APP14` (Adobe: the colour transform), then everything from the first scan on.
fn jpeg(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0xff, 0xd8];
    let mut at = 2;
    loop {
        if *bytes.get(at)? != 0xff {
            return None;
        }
        let marker = *bytes.get(at + 1)?;
        match marker {
            // Fill bytes before a marker.
            0xff => {
                at += 1;
                continue;
            }
            // Start of scan: the entropy-coded data and what follows are kept as they are.
            0xda => {
                out.extend_from_slice(&bytes[at..]);
                return Some(out);
            }
            // Markers without a length (TEM, RSTn) or the end before any scan.
            0x01 | 0xd0..=0xd9 => return None,
            _ => {}
        }
        let length = usize::from(u16::from_be_bytes(
            bytes.get(at + 2..at + 4)?.try_into().ok()?,
        ));
        if length < 2 {
            return None;
        }
        let end = at + 2 + length;
        let segment = bytes.get(at..end)?;
        let dropped = marker == 0xfe || ((0xe1..=0xef).contains(&marker) && marker != 0xee);
        if !dropped {
            out.extend_from_slice(segment);
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: [u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0; 4]); // the CRC is copied, not checked, here
        out
    }

    #[test]
    fn png_ancillary_chunks_go_and_the_rest_is_copied() {
        let mut png = PNG_SIGNATURE.to_vec();
        let ihdr = chunk(*b"IHDR", &[1; 13]);
        let trns = chunk(*b"tRNS", &[2; 2]);
        let idat = chunk(*b"IDAT", &[3; 100]);
        let iend = chunk(*b"IEND", &[]);
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&chunk(*b"tEXt", &vec![b'x'; WORTH_REMOVING]));
        png.extend_from_slice(&trns);
        png.extend_from_slice(&chunk(*b"prVt", &[4; 10]));
        png.extend_from_slice(&idat);
        png.extend_from_slice(&iend);
        png.extend_from_slice(b"trailing bytes");
        let slim = without_padding(&png).unwrap();
        let expected = [&PNG_SIGNATURE[..], &ihdr, &trns, &idat, &iend].concat();
        assert_eq!(slim, expected);
        // Small padding: stored as sent.
        let small = [
            &PNG_SIGNATURE[..],
            &ihdr,
            &chunk(*b"tEXt", b"hi"),
            &idat,
            &iend,
        ]
        .concat();
        assert_eq!(without_padding(&small), None);
        // Malformed (a length past the end, no IEND): left to the decoder.
        assert_eq!(without_padding(&png[..png.len() / 2]), None);
        assert_eq!(without_padding(b"DICM and more"), None);
    }

    #[test]
    fn jpeg_comments_and_application_segments_go() {
        let segment = |marker: u8, data: &[u8]| {
            let mut out = vec![0xff, marker];
            out.extend_from_slice(&((data.len() + 2) as u16).to_be_bytes());
            out.extend_from_slice(data);
            out
        };
        let app0 = segment(0xe0, b"JFIF\0");
        let app14 = segment(0xee, b"Adobe");
        let dqt = segment(0xdb, &[5; 65]);
        let scan = [&segment(0xda, &[6; 10])[..], &[7; 50], &[0xff, 0xd9]].concat();
        let mut jpeg = vec![0xff, 0xd8];
        jpeg.extend_from_slice(&app0);
        for _ in 0..20 {
            jpeg.extend_from_slice(&segment(0xfe, &vec![b'c'; 60_000]));
            jpeg.extend_from_slice(&segment(0xe1, &vec![b'e'; 60_000]));
        }
        jpeg.extend_from_slice(&app14);
        jpeg.extend_from_slice(&dqt);
        jpeg.extend_from_slice(&scan);
        let slim = without_padding(&jpeg).unwrap();
        assert_eq!(
            slim,
            [&[0xff, 0xd8][..], &app0, &app14, &dqt, &scan].concat()
        );
        assert_eq!(without_padding(&jpeg[..1000]), None);
    }
}
