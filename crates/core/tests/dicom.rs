//! DICOM input through the models: each of the four real files in `../shared/data/dicom`
//! classifies like the 16-bit PNG of its decoded image. (Decoding itself is tested in cxr-io.)

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use cxr_core::pipeline::Pipeline;
use cxr_core::xray::Xray;
use image::{DynamicImage, ImageBuffer, ImageFormat, Luma};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn data(name: &str) -> PathBuf {
    repo().join("../shared/data/dicom").join(name)
}

const ALL: [&str; 4] = [
    "pydicom-data_RG1_UNCR.dcm",
    "pydicom-data_RG1_J2KI.dcm",
    "torchxrayvision_1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
    "torchxrayvision_Fake_MONOHR1.dcm",
];

/// Classifies each DICOM file and the 16-bit PNG of its decoded image: same probabilities.
#[test]
fn every_dicom_classifies_like_its_png_equivalent() {
    let pipeline = Pipeline::load(&repo().join("models"), tch::Device::Cpu).unwrap();
    for name in ALL {
        let dicom = pipeline.analyse_file(&data(name)).unwrap();
        let gray = &dicom.xray.gray;
        let sixteen = ImageBuffer::from_fn(gray.width(), gray.height(), |x, y| {
            Luma([(gray.get_pixel(x, y).0[0] * 65535.0).round() as u16])
        });
        let mut png = Vec::new();
        DynamicImage::ImageLuma16(sixteen)
            .write_to(&mut std::io::Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let from_png = pipeline
            .analyse(Xray::decode(&png, format!("{name}.png")).unwrap())
            .unwrap();
        let (a, b) = (dicom.report(), from_png.report());
        println!(
            "{name}: {} {:?} lung fraction {:.3}",
            a.label, a.probabilities, a.lung_fraction
        );
        assert_eq!(a.label, b.label, "{name}");
        assert!((a.lung_fraction - b.lung_fraction).abs() < 1e-3, "{name}");
        for (class, p) in &a.probabilities {
            let q = b.probabilities[class];
            assert!((p - q).abs() < 1e-3, "{name} {class}: {p} vs {q}");
        }
        assert!(a.lung_fraction > 0.05, "{name}: no lungs found");
        // Identifiers only on request.
        assert!(a.identifiers.is_none());
        let with = dicom.report_with_identifiers(true);
        assert!(with.identifiers.is_some(), "{name}");
        let json = serde_json::to_string(&a).unwrap();
        assert!(!json.contains("identifiers"), "{json}");
    }
}
