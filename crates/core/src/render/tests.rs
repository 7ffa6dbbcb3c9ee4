//! Tests of the rendering parts.

#![allow(clippy::wildcard_imports)] // every part, private helpers too

use super::colormap::*;
use super::edges::*;
use super::legend::*;
use super::text::*;
use super::*;
use image::Luma;

fn luma(c: [u8; 3]) -> f32 {
    0.299 * f32::from(c[0]) + 0.587 * f32::from(c[1]) + 0.114 * f32::from(c[2])
}

/// A gradient radiograph so that "unchanged" checks are not trivially satisfied.
fn gradient(width: u32, height: u32) -> GrayImage {
    GrayImage::from_fn(width, height, |x, y| Luma([((x * 7 + y * 3) % 256) as u8]))
}

fn in_rect((x0, y0, x1, y1): (u32, u32, u32, u32), x: u32, y: u32) -> bool {
    x >= x0 && x < x1 && y >= y0 && y < y1
}

fn in_legend(width: u32, height: u32, x: u32, y: u32) -> bool {
    legend_layout(width, height).is_some_and(|l| in_rect(l.backing, x, y))
}

#[test]
fn viridis_ends_and_order() {
    let top = Colormap::Viridis.rgb(1.0);
    assert!(
        top[0] > 200 && top[1] > 200 && top[2] < 80,
        "viridis(1) not yellow: {top:?}"
    );
    let bottom = Colormap::Viridis.rgb(0.0);
    assert!(bottom[2] > bottom[1], "viridis(0) not purple: {bottom:?}");
    assert!(
        bottom.iter().all(|&c| c < 100),
        "viridis(0) not dark: {bottom:?}"
    );
    assert_eq!(bottom, [68, 1, 84]);
    assert_eq!(top, [253, 231, 37]);
    // Middle is blue-green/teal: green and blue both well above red.
    let mid = Colormap::Viridis.rgb(0.5);
    assert!(
        mid[1] > mid[0] + 50 && mid[2] > mid[0] + 50,
        "viridis(0.5): {mid:?}"
    );
}

#[test]
fn viridis_luminance_increases() {
    let lumas: Vec<f32> = (0..=10)
        .map(|i| luma(Colormap::Viridis.rgb(i as f32 / 10.0)))
        .collect();
    for pair in lumas.windows(2) {
        assert!(
            pair[1] > pair[0],
            "viridis luminance not increasing: {lumas:?}"
        );
    }
    // And densely, allowing no decrease at all.
    let mut prev = -1.0f32;
    for i in 0..=1000 {
        let l = luma(Colormap::Viridis.rgb(i as f32 / 1000.0));
        assert!(
            l >= prev - 0.5,
            "luminance dropped at t={}",
            i as f32 / 1000.0
        );
        prev = l;
    }
}

#[test]
fn turbo_order() {
    let lo = Colormap::Turbo.rgb(0.0);
    assert!(
        lo[2] > lo[0] && lo[2] > lo[1],
        "turbo(0) not blue-ish: {lo:?}"
    );
    let cyanish = Colormap::Turbo.rgb(0.25);
    assert!(
        cyanish[1] > cyanish[0] && cyanish[2] > cyanish[0],
        "turbo(0.25): {cyanish:?}"
    );
    let mid = Colormap::Turbo.rgb(0.5);
    assert!(
        mid[1] > mid[0] && mid[1] > mid[2] && mid[1] > 200,
        "turbo(0.5) not green: {mid:?}"
    );
    let orange = Colormap::Turbo.rgb(0.75);
    assert!(
        orange[0] > orange[1] && orange[0] > orange[2],
        "turbo(0.75): {orange:?}"
    );
    let hi = Colormap::Turbo.rgb(1.0);
    assert!(
        hi[0] > hi[1] && hi[0] > hi[2],
        "turbo(1) not red-ish: {hi:?}"
    );
    assert!(hi[0] < 160, "turbo(1) should be dark red: {hi:?}");
}

#[test]
fn colormap_clamps_and_nan() {
    for cm in [Colormap::Viridis, Colormap::Turbo] {
        assert_eq!(cm.rgb(f32::NAN), cm.rgb(0.0));
        assert_eq!(cm.rgb(-3.0), cm.rgb(0.0));
        assert_eq!(cm.rgb(7.0), cm.rgb(1.0));
        assert_eq!(cm.rgb(f32::INFINITY), cm.rgb(1.0));
        assert_eq!(cm.rgb(f32::NEG_INFINITY), cm.rgb(0.0));
    }
}

#[test]
fn colormap_names_round_trip() {
    for cm in [Colormap::Viridis, Colormap::Turbo] {
        assert_eq!(Colormap::parse(cm.name()), Some(cm));
    }
    assert_eq!(Colormap::parse(" Turbo "), Some(Colormap::Turbo));
    assert_eq!(Colormap::parse("VIRIDIS"), Some(Colormap::Viridis));
    assert_eq!(Colormap::parse("jet"), None);
    assert_eq!(Colormap::default(), Colormap::Viridis);
    let style = OverlayStyle::default();
    assert_eq!(style.colormap, Colormap::Viridis);
    assert!((style.opacity - 0.6).abs() < 1e-6);
    assert!(style.legend);
}

#[test]
fn overlay_keeps_dimensions() {
    for (w, h) in [(1, 1), (10, 10), (64, 64), (130, 70), (513, 257)] {
        let base = gradient(w, h);
        let heat = vec![0.5; (w * h) as usize];
        let out = overlay(&base, &heat, &OverlayStyle::default(), &[]);
        assert_eq!(out.dimensions(), (w, h));
    }
}

#[test]
fn opacity_zero_is_the_radiograph() {
    let (w, h) = (200, 150);
    let base = gradient(w, h);
    let heat: Vec<f32> = (0..w * h).map(|i| (i % 97) as f32 / 96.0).collect();
    let style = OverlayStyle {
        opacity: 0.0,
        ..OverlayStyle::default()
    };
    let out = overlay(&base, &heat, &style, &[]);
    assert!(legend_layout(w, h).is_some());
    for (x, y, px) in out.enumerate_pixels() {
        if in_legend(w, h, x, y) {
            continue;
        }
        let g = base.get_pixel(x, y).0[0];
        assert_eq!(px.0, [g, g, g], "pixel ({x},{y})");
    }
}

#[test]
fn heat_changes_only_its_region() {
    let (w, h) = (160, 120);
    let base = gradient(w, h);
    // Hot in the top-left 40x30 block, cold elsewhere.
    let hot = |x: u32, y: u32| x < 40 && y < 30;
    let heat: Vec<f32> = (0..h)
        .flat_map(|y| (0..w).map(move |x| if hot(x, y) { 1.0 } else { 0.0 }))
        .collect();
    let out = overlay(&base, &heat, &OverlayStyle::default(), &[]);
    let mut changed = 0;
    for (x, y, px) in out.enumerate_pixels() {
        let g = base.get_pixel(x, y).0[0];
        if hot(x, y) {
            if px.0 != [g, g, g] {
                changed += 1;
            }
        } else if !in_legend(w, h, x, y) {
            assert_eq!(px.0, [g, g, g], "cold pixel ({x},{y}) changed");
        }
    }
    // Every hot pixel is tinted (viridis yellow is never gray).
    assert_eq!(changed, 40 * 30);
}

#[test]
fn full_heat_full_opacity_is_top_colour() {
    for cm in [Colormap::Viridis, Colormap::Turbo] {
        let base = gradient(32, 32);
        let heat = vec![1.0; 32 * 32];
        let style = OverlayStyle {
            colormap: cm,
            opacity: 1.0,
            legend: false,
        };
        let out = overlay(&base, &heat, &style, &[]);
        for px in out.pixels() {
            assert_eq!(px.0, cm.rgb(1.0));
        }
    }
}

#[test]
fn blending_is_linear_in_heat_and_opacity() {
    let base = GrayImage::from_pixel(2, 1, Luma([100]));
    let heat = [0.5, f32::NAN];
    let style = OverlayStyle {
        colormap: Colormap::Turbo,
        opacity: 0.8,
        legend: false,
    };
    let out = overlay(&base, &heat, &style, &[]);
    let c = Colormap::Turbo.rgb(0.5);
    let alpha = 0.4f32;
    for (got, want) in out.get_pixel(0, 0).0.into_iter().zip(c) {
        let want = (100.0 * (1.0 - alpha) + f32::from(want) * alpha).round() as u8;
        assert_eq!(got, want);
    }
    assert_eq!(
        out.get_pixel(1, 0).0,
        [100, 100, 100],
        "NaN heat must be cold"
    );
}

#[test]
fn lines_are_painted_on_top() {
    let (w, h) = (8, 6);
    let base = gradient(w, h);
    let heat = vec![0.7; (w * h) as usize];
    let mut a = vec![false; (w * h) as usize];
    let mut b = vec![false; (w * h) as usize];
    a[3] = true;
    a[10] = true;
    b[10] = true;
    let style = OverlayStyle::default();
    let out = overlay(
        &base,
        &heat,
        &style,
        &[
            Lines {
                pixels: &a,
                colour: [255, 0, 0],
            },
            Lines {
                pixels: &b,
                colour: [0, 0, 255],
            },
        ],
    );
    assert_eq!(out.get_pixel(3, 0).0, [255, 0, 0]);
    assert_eq!(out.get_pixel(2, 1).0, [0, 0, 255], "later layer wins");
    let plain = overlay(&base, &heat, &style, &[]);
    assert_eq!(out.get_pixel(0, 0), plain.get_pixel(0, 0));
}

#[test]
#[should_panic(expected = "heatmap has 99 values")]
fn overlay_panics_on_size_mismatch() {
    let base = gradient(10, 10);
    let _ = overlay(&base, &[0.0; 99], &OverlayStyle::default(), &[]);
}

#[test]
fn encode_png_round_trips() {
    let img = RgbImage::from_fn(37, 23, |x, y| {
        Rgb([(x * 6) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
    });
    let bytes = encode_png(&img).expect("encode");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let back = image::load_from_memory(&bytes).expect("decode").to_rgb8();
    assert_eq!(back.dimensions(), img.dimensions());
    assert_eq!(back.as_raw(), img.as_raw());
    // Channel order: a pure red pixel stays red.
    let red = RgbImage::from_pixel(1, 1, Rgb([255, 0, 0]));
    let back = image::load_from_memory(&encode_png(&red).expect("encode"))
        .expect("decode")
        .to_rgb8();
    assert_eq!(back.get_pixel(0, 0).0, [255, 0, 0]);
}

fn square_mask(width: u32, height: u32, x0: u32, y0: u32, side: u32) -> GrayImage {
    GrayImage::from_fn(width, height, |x, y| {
        let inside = x >= x0 && x < x0 + side && y >= y0 && y < y0 + side;
        Luma([if inside { 255 } else { 0 }])
    })
}

#[test]
fn mask_edges_of_square() {
    let (w, h) = (20, 16);
    let mask = square_mask(w, h, 5, 4, 8); // x in 5..13, y in 4..12
    let edges = mask_edges(&mask);
    assert_eq!(edges.len(), (w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let inside = (5..13).contains(&x) && (4..12).contains(&y);
            let border = inside && (x == 5 || x == 12 || y == 4 || y == 11);
            assert_eq!(edges[(y * w + x) as usize], border, "pixel ({x},{y})");
        }
    }
}

#[test]
fn mask_edges_off_image_counts_as_outside() {
    let mask = GrayImage::from_pixel(5, 4, Luma([200]));
    let edges = mask_edges(&mask);
    for y in 0..4u32 {
        for x in 0..5u32 {
            let border = x == 0 || x == 4 || y == 0 || y == 3;
            assert_eq!(edges[(y * 5 + x) as usize], border, "pixel ({x},{y})");
        }
    }
    // Threshold: 127 is outside.
    assert!(
        mask_edges(&GrayImage::from_pixel(3, 3, Luma([127])))
            .iter()
            .all(|&e| !e)
    );
}

#[test]
fn mask_edges_thick_on_wide_images() {
    let (w, h) = (420, 60);
    let mask = square_mask(w, h, 100, 10, 40); // x in 100..140, y in 10..50
    let edges = mask_edges(&mask);
    let at = |x: u32, y: u32| edges[(y * w + x) as usize];
    assert!(at(100, 30) && at(101, 30), "left border is 2 px");
    assert!(!at(102, 30), "3rd px is interior");
    assert!(at(139, 30) && at(138, 30) && !at(137, 30));
    assert!(at(120, 10) && at(120, 11) && !at(120, 12));
    assert!(
        !at(99, 30) && !at(140, 30) && !at(120, 9),
        "nothing outside the mask"
    );
    assert!(!at(120, 30), "interior");
}

#[test]
fn label_edges_with_keep() {
    // 6x4, labels: left half 1, right half 2, bottom row of the left half 3.
    let (w, h) = (6u32, 4u32);
    let labels: Vec<u32> = (0..h)
        .flat_map(|y| (0..w).map(move |x| if x < 3 { if y == 3 { 3 } else { 1 } } else { 2 }))
        .collect();
    let all = label_edges(&labels, w, h, |_| true);
    let at = |e: &[bool], x: u32, y: u32| e[(y * w + x) as usize];
    // Vertical boundary 1|2 (rows 0..3) and 3|2 (row 3): marked at x=2.
    for y in 0..h {
        assert!(at(&all, 2, y), "({},{y})", 2);
        assert!(!at(&all, 3, y));
    }
    // Horizontal boundary 1/3 at y=2 for x in 0..3.
    for x in 0..3 {
        assert!(at(&all, x, 2));
    }
    assert!(!at(&all, 0, 0) && !at(&all, 4, 1) && !at(&all, 0, 3));
    assert_eq!(all.iter().filter(|&&e| e).count(), 4 + 2);

    // Keep only label 3: its top border and its right border (3|2) remain.
    let only3 = label_edges(&labels, w, h, |l| l == 3);
    for x in 0..3 {
        assert!(at(&only3, x, 2));
    }
    assert!(at(&only3, 2, 3));
    for y in 0..2 {
        assert!(!at(&only3, 2, y), "1|2 boundary must be filtered out");
    }
    assert_eq!(only3.iter().filter(|&&e| e).count(), 4);

    // Keep nothing: no edges.
    assert!(label_edges(&labels, w, h, |_| false).iter().all(|&e| !e));
}

#[test]
fn legend_present_when_enabled() {
    for (w, h) in [(64, 64), (256, 256), (1024, 1024), (300, 90)] {
        let base = gradient(w, h);
        let heat = vec![0.0; (w * h) as usize];
        let with = overlay(
            &base,
            &heat,
            &OverlayStyle {
                legend: true,
                ..Default::default()
            },
            &[],
        );
        let without = overlay(
            &base,
            &heat,
            &OverlayStyle {
                legend: false,
                ..Default::default()
            },
            &[],
        );
        let layout = legend_layout(w, h).expect("legend fits");
        let (x0, y0, x1, y1) = layout.backing;
        assert!(x1 <= w && y1 <= h);
        assert!(
            x0 >= w / 2 && y0 >= h / 2,
            "legend in the bottom-right corner"
        );
        let mut differ = 0;
        for (x, y, px) in with.enumerate_pixels() {
            if px != without.get_pixel(x, y) {
                differ += 1;
                assert!(
                    in_rect(layout.backing, x, y),
                    "legend drew outside its box at ({x},{y})"
                );
            }
        }
        assert!(differ > 0);
        // Bar ends show the colormap's ends; glyph pixels are white.
        let (bx0, by0, bx1, _) = layout.bar;
        assert_eq!(with.get_pixel(bx0, by0).0, Colormap::Viridis.rgb(0.0));
        assert_eq!(with.get_pixel(bx1 - 1, by0).0, Colormap::Viridis.rgb(1.0));
        let (zx, zy) = layout.zero_at;
        assert_eq!(with.get_pixel(zx, zy).0, LEGEND_TEXT);
        // Without legend, bottom-right is the radiograph.
        let g = base.get_pixel(w - 3, h - 3).0[0];
        assert_eq!(without.get_pixel(w - 3, h - 3).0, [g, g, g]);
    }
}

#[test]
fn legend_proportions() {
    let l = legend_layout(1024, 1024).expect("fits");
    let (bx0, by0, bx1, by1) = l.bar;
    assert_eq!(bx1 - bx0, 256);
    assert_eq!(by1 - by0, 25);
    assert_eq!(l.scale, 5);
}

#[test]
fn small_images_do_not_panic() {
    assert!(legend_layout(63, 200).is_none());
    assert!(legend_layout(200, 63).is_none());
    for (w, h) in [(1, 1), (10, 10), (1, 100), (100, 1), (63, 63)] {
        let base = gradient(w, h);
        let heat = vec![1.0; (w * h) as usize];
        let out = overlay(
            &base,
            &heat,
            &OverlayStyle {
                opacity: 1.0,
                ..Default::default()
            },
            &[],
        );
        assert_eq!(out.dimensions(), (w, h));
        // No legend on tiny images: every pixel is the top colour.
        assert!(out.pixels().all(|p| p.0 == Colormap::Viridis.rgb(1.0)));
        let mask = GrayImage::from_pixel(w, h, Luma([255]));
        assert_eq!(mask_edges(&mask).len(), (w * h) as usize);
        let labels = vec![0u32; (w * h) as usize];
        assert!(label_edges(&labels, w, h, |_| true).iter().all(|&e| !e));
        assert!(encode_png(&out).is_ok());
    }
    let empty = GrayImage::new(0, 0);
    assert_eq!(
        overlay(&empty, &[], &OverlayStyle::default(), &[]).dimensions(),
        (0, 0)
    );
    assert!(mask_edges(&empty).is_empty());
}

#[test]
fn fade_outside_keeps_the_box_and_zeroes_beyond_the_margin() {
    let (w, h) = (40u32, 30u32);
    let mut heat = vec![1.0f32; (w * h) as usize];
    let lungs = crate::mask::LungBox {
        x0: 10,
        y0: 10,
        x1: 20,
        y1: 20,
    };
    fade_outside(&mut heat, w, h, lungs, 4);
    let at = |x: u32, y: u32| heat[(y * w + x) as usize];
    assert_eq!(at(10, 10), 1.0);
    assert_eq!(at(19, 19), 1.0);
    assert!(
        at(21, 15) > 0.0 && at(21, 15) < 1.0,
        "fading: {}",
        at(21, 15)
    );
    assert!(at(22, 15) < at(21, 15));
    assert_eq!(at(24, 15), 0.0);
    assert_eq!(at(0, 0), 0.0);
    assert_eq!(at(39, 29), 0.0);
}

#[test]
fn annotation_writes_a_header_band_and_a_caption_over_the_bar() {
    let (w, h) = (512u32, 512u32);
    let base = gradient(w, h);
    let mut out = overlay(
        &base,
        &vec![0.0; (w * h) as usize],
        &OverlayStyle::default(),
        &[],
    );
    let before = out.clone();
    let words = Annotation {
        header: "grad-cam  target COVID-19  p=0.91".into(),
        caption: "relative evidence for COVID-19".into(),
    };
    annotate(&mut out, &words, true);
    assert_eq!(out.dimensions(), (w, h));
    let band = header_height(w, h, &words.header);
    assert!((10..=40).contains(&band), "band {band}");
    let row_colours = |y: u32| (0..w).map(|x| out.get_pixel(x, y).0).collect::<Vec<_>>();
    // Text pixels inside the band, backing around them; the first row is all backing.
    assert!(row_colours(0).iter().all(|&p| p == HEADER_BACKING));
    let text: usize = (0..band)
        .map(|y| row_colours(y).iter().filter(|&&p| p == LEGEND_TEXT).count())
        .sum();
    assert!(text > 100, "{text} text pixels");
    // Below the band and above the legend, nothing changed.
    let layout = legend_layout(w, h).unwrap();
    let caption_top = layout.backing.1 - (8 + 2);
    for y in band..caption_top {
        assert_eq!(
            row_colours(y),
            (0..w).map(|x| before.get_pixel(x, y).0).collect::<Vec<_>>(),
            "row {y}"
        );
    }
    // The caption: light pixels just above the legend's backing, inside its columns.
    let caption_text = (caption_top..layout.backing.1)
        .flat_map(|y| (0..layout.backing.2).map(move |x| (x, y)))
        .filter(|&(x, y)| out.get_pixel(x, y).0 == LEGEND_TEXT)
        .count();
    assert!(caption_text > 50, "{caption_text} caption pixels");
}

#[test]
fn long_text_is_cut_with_an_ellipsis() {
    assert_eq!(fit_text("short", 80), "short");
    assert_eq!(fit_text("a much longer header", 80), "a much ...");
    assert_eq!(fit_text("abc", 16), "ab");
    assert_eq!(class_display_name("covid"), "COVID-19");
    assert_eq!(class_display_name("normal"), "no finding");
    assert_eq!(class_display_name("nodule"), "nodule");
}
