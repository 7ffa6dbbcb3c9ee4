//! Naming inputs: which file names are radiographs, which extension a file's bytes deserve, and
//! the content hash that keys the cache, the queue and uploads.

use sha2::{Digest, Sha256};

use crate::dicom;

/// Extensions of radiograph files (lower case; matched without regard to case).
pub const EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "dcm", "dicom"];

/// Whether a file name has one of the [`EXTENSIONS`] after a non-empty stem.
#[must_use]
pub fn has_supported_extension(name: &str) -> bool {
    name.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty() && EXTENSIONS.contains(&ext.to_lowercase().as_str())
    })
}

/// The extension that `bytes` deserve by their content: `dcm`, `jpg`, else `png` (whatever
/// else is refused when decoded).
#[must_use]
pub fn extension_from_content(bytes: &[u8]) -> &'static str {
    if dicom::is_dicom(bytes) {
        "dcm"
    } else if bytes.starts_with(&[0xff, 0xd8]) {
        "jpg"
    } else {
        "png"
    }
}

/// SHA-256 of an input's bytes as 64 lower-case hex digits: the identity of an image.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_need_a_stem_and_ignore_case() {
        assert!(has_supported_extension("scan.DCM"));
        assert!(has_supported_extension("a.b.jpeg"));
        assert!(!has_supported_extension(".png"));
        assert!(!has_supported_extension("png"));
        assert!(!has_supported_extension("notes.csv"));
    }

    #[test]
    fn content_names_the_extension_and_the_hash() {
        assert_eq!(extension_from_content(&[0xff, 0xd8, 0xff]), "jpg");
        assert_eq!(extension_from_content(b"\x89PNG"), "png");
        let mut dicom = vec![0u8; 128];
        dicom.extend_from_slice(b"DICM");
        assert_eq!(extension_from_content(&dicom), "dcm");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
