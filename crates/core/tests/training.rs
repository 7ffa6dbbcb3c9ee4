//! Training runs are reproducible, and `init_seed` gives another run on the same patient split.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::fmt::Write as _;
use std::path::Path;

use cxr_core::card;
use cxr_core::tch::{Device, Kind, Tensor};
use cxr_core::train::TrainOptions;
use cxr_core::train::segmenter::{self, SegmenterPlan};
use image::{GrayImage, Luma};

/// 24 patients' 64x64 radiographs with two dark "lungs" of varied size and place on a brighter,
/// textured background, and their masks, in a lung-mask manifest (image,mask,patient) under `dir`.
fn synthetic_masks(dir: &Path) -> std::path::PathBuf {
    let mut csv = String::from("image,mask,patient\n");
    for p in 0..24u32 {
        let (rx, ry, cy) = (8 + p % 5, 16 + p % 7, 30 + p % 4);
        let inside = |x: u32, y: u32, cx: u32| {
            let (dx, dy) = (f64::from(x) - f64::from(cx), f64::from(y) - f64::from(cy));
            (dx / f64::from(rx)).powi(2) + (dy / f64::from(ry)).powi(2) <= 1.0
        };
        let lung = |x, y| inside(x, y, 20) || inside(x, y, 44);
        let image = GrayImage::from_fn(64, 64, |x, y| {
            Luma([if lung(x, y) {
                60
            } else {
                170 + ((x * 7 + y * 3 + p) % 40) as u8
            }])
        });
        let mask = GrayImage::from_fn(64, 64, |x, y| Luma([if lung(x, y) { 255 } else { 0 }]));
        image.save(dir.join(format!("i{p}.png"))).unwrap();
        mask.save(dir.join(format!("m{p}.png"))).unwrap();
        writeln!(csv, "i{p}.png,m{p}.png,p{p}").unwrap();
    }
    let manifest = dir.join("manifest.csv");
    std::fs::write(&manifest, csv).unwrap();
    manifest
}

#[test]
fn init_seed_changes_the_run_but_not_the_split() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = synthetic_masks(dir.path());
    let plan = SegmenterPlan {
        base: 4,
        side: 64,
        depth: 2,
    };
    let train = |init_seed| {
        let options = TrainOptions {
            manifests: vec![manifest.clone()],
            epochs: 1,
            batch_size: 4,
            learning_rate: 1e-3,
            seed: 2026,
            init_seed,
            device: Device::Cpu,
            init: None,
        };
        segmenter::train(&options, plan, &mut |_| {}).unwrap()
    };
    let x = Tensor::randn([1, 1, 64, 64], (Kind::Float, Device::Cpu));
    let logits = |model: &cxr_core::models::UNetSegmenter| model.forward_t(&x, false);
    let (first, first_record) = train(Some(1));
    let (again, _) = train(Some(1));
    let (other, other_record) = train(Some(2));
    let (default, default_record) = train(None);
    let diff = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        diff(&logits(&first), &logits(&again)) < 1e-6,
        "a run repeats"
    );
    assert!(
        diff(&logits(&first), &logits(&other)) > 1e-4,
        "another init seed, another run"
    );
    assert!(diff(&logits(&first), &logits(&default)) > 1e-4);
    // The patient split is the seed's alone.
    for record in [&other_record, &default_record] {
        assert_eq!(
            serde_json::to_value(&record.training.split).unwrap(),
            serde_json::to_value(&first_record.training.split).unwrap()
        );
    }
    assert_eq!(first_record.training.init_seed, Some(1));
    assert_eq!(default_record.training.init_seed, None);
    let card = card::segmenter_card(&first.meta.architecture, 64, &first_record);
    assert!(
        card.contains("augmentation and batch order from seed 1"),
        "{card}"
    );
    let card = card::segmenter_card(&default.meta.architecture, 64, &default_record);
    assert!(!card.contains("from seed"), "{card}");
}
