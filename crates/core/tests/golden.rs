//! Golden overlay images: a fixed heatmap and outline rendered over a real radiograph must match
//! the committed PNGs in tests/golden/ (within 1 level per channel). After an intended change to
//! the rendering, regenerate them with `scripts/test.sh --test golden -- --ignored` (the one
//! ignored test writes them, the checking test never does) and look at the new files before
//! committing them.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::{Path, PathBuf};

use cxr_core::render::{self, Colormap, Lines, OverlayStyle};
use image::{GrayImage, Luma, RgbImage};

fn here() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A Gaussian blob of heat and an elliptical "lung" over the NIH sample.
fn scene() -> (GrayImage, Vec<f32>, GrayImage) {
    let base = image::open(here().join("../../samples/nih_00001299_000.png"))
        .unwrap()
        .to_luma8();
    let (w, h) = base.dimensions();
    let heat = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x as f32, y as f32)))
        .map(|(x, y)| {
            (-((x - 180.0).powi(2) + (y - 260.0).powi(2)) / (2.0 * 60.0f32.powi(2))).exp()
        })
        .collect();
    let mask = GrayImage::from_fn(w, h, |x, y| {
        let inside =
            ((x as f32 - 170.0) / 90.0).powi(2) + ((y as f32 - 250.0) / 150.0).powi(2) <= 1.0;
        Luma([if inside { 255 } else { 0 }])
    });
    (base, heat, mask)
}

fn check(name: &str, picture: &RgbImage) {
    let path = here().join("tests/golden").join(name);
    let golden = image::open(&path).unwrap().to_rgb8();
    assert_eq!(golden.dimensions(), picture.dimensions(), "{name}");
    let worst = golden
        .as_raw()
        .iter()
        .zip(picture.as_raw())
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(
        worst <= 1,
        "{name} differs from its golden image by {worst} levels"
    );
}

/// Each golden image's name and the overlay it holds.
fn overlays() -> Vec<(String, RgbImage)> {
    let (base, heat, mask) = scene();
    let edges = render::mask_edges(&mask);
    let outline = [Lines {
        pixels: &edges,
        colour: [0, 200, 255],
    }];
    [Colormap::Viridis, Colormap::Turbo]
        .into_iter()
        .map(|colormap| {
            let style = OverlayStyle {
                colormap,
                opacity: 0.6,
                legend: true,
            };
            let picture = render::overlay(&base, &heat, &style, &outline);
            assert_eq!(picture.dimensions(), base.dimensions());
            (format!("overlay_{}.png", colormap.name()), picture)
        })
        .collect()
}

#[test]
fn overlays_match_their_golden_images() {
    for (name, picture) in overlays() {
        check(&name, &picture);
    }
}

/// Writes the golden images anew (after an intended change to the rendering). Ignored, so that
/// the checking test above can never pass by writing what it compares against.
#[test]
#[ignore = "writes tests/golden/: run with --ignored after an intended rendering change"]
fn regenerate_golden_images() {
    for (name, picture) in overlays() {
        let path = here().join("tests/golden").join(name);
        std::fs::write(&path, render::encode_png(&picture).unwrap()).unwrap();
    }
}
