//! `cxr queue export --format csv|html`: the review session as a table and as a report, from a
//! watch folder written by hand (state.json as the watcher and the viewer write it), and the
//! report rendered by headless Chromium when it is installed.

#![allow(clippy::unwrap_used)] // tests may unwrap: a panic is a failure with its message

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine as _;

mod support;
use support::{CHROMIUM_FLAGS, sample};

/// One queue entry: `predicted` is `(label, confidence, flags)`, `review` `(label, reviewer,
/// time)`; the entry holds `sample` as its image and as a `grad-cam` overlay.
fn entry(
    dir: &Path,
    id: &str,
    source_name: &str,
    created: &str,
    predicted: Option<(&str, f32, &[&str])>,
    review: Option<(&str, &str, &str)>,
) {
    let entry = dir.join("queue").join(id);
    std::fs::create_dir_all(&entry).unwrap();
    std::fs::copy(sample("nih_00001299_000.png"), entry.join("image.png")).unwrap();
    std::fs::copy(sample("hannover_e1446fe8.png"), entry.join("grad-cam.png")).unwrap();
    let predicted = predicted.map(|(label, confidence, flags)| {
        let covid = if label == "covid" {
            confidence
        } else {
            1.0 - confidence
        };
        serde_json::json!({
            "label": label, "confidence": confidence, "positive": "covid",
            "probabilities": {"covid": covid, "normal": 1.0 - covid},
            "threshold": 0.5, "flags": flags,
        })
    });
    let review = review.map(|(label, reviewer, time)| {
        serde_json::json!({"label": label, "reviewer": reviewer, "time": time})
    });
    let state = serde_json::json!({
        "schema": 1, "id": id, "sha256": format!("{id}{}", "0".repeat(48)),
        "state": if review.is_some() { "reviewed" } else { "pending_review" },
        "image": "image.png", "source_name": source_name, "created": created,
        "predicted": predicted, "model": null, "methods": ["grad-cam"], "review": review,
    });
    std::fs::write(entry.join("state.json"), state.to_string()).unwrap();
}

/// A watch folder with three entries: a flagged COVID-19 call confirmed by alice, a normal one
/// corrected by bob (its original name has a comma and markup), and one pending.
fn session() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    entry(
        dir.path(),
        "00000000000000aa",
        "scan-1.png",
        "2026-05-01T10:00:00.000Z",
        Some(("covid", 0.93251, &["unfamiliar"])),
        Some(("covid", "alice", "2026-05-01T11:00:00.000Z")),
    );
    entry(
        dir.path(),
        "00000000000000bb",
        "ward 3, <bed 4>.png",
        "2026-05-01T10:05:00.000Z",
        Some(("normal", 0.61, &[])),
        Some(("covid", "bob", "2026-05-01T11:30:00.000Z")),
    );
    entry(
        dir.path(),
        "00000000000000cc",
        "scan-3.png",
        "2026-05-01T10:10:00.000Z",
        Some(("normal", 0.99, &[])),
        None,
    );
    dir
}

fn export(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cxr"))
        .args(["queue", "export", "--watch-dir"])
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn csv_has_one_row_per_entry_in_time_order() {
    let dir = session();
    let out = export(dir.path(), &["--format", "csv"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let q = dir.path().join("queue");
    let file = |id: &str| q.join(id).join("image.png").display().to_string();
    let expected = format!(
        "id,file,original_name,prediction,probability,flags,label,reviewer,time\n\
         00000000000000aa,{},scan-1.png,covid,0.9325,unfamiliar,covid,alice,2026-05-01T11:00:00.000Z\n\
         00000000000000bb,{},\"ward 3, <bed 4>.png\",normal,0.6100,,covid,bob,2026-05-01T11:30:00.000Z\n\
         00000000000000cc,{},scan-3.png,normal,0.9900,,,,\n",
        file("00000000000000aa"),
        file("00000000000000bb"),
        file("00000000000000cc"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);

    // --reviewed leaves the pending entry out; -o writes a file instead of stdout.
    let path = dir.path().join("session.csv");
    let out = export(
        dir.path(),
        &["--reviewed", "-o", path.to_str().unwrap(), "--quiet"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written.lines().count(), 3, "{written}");
    assert!(!written.contains("00000000000000cc"));
}

/// The `src` of every `<img>` in `html`.
fn images(html: &str) -> Vec<&str> {
    html.split("<img src=\"")
        .skip(1)
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect()
}

#[test]
fn html_report_embeds_each_entry_with_its_pictures_and_review() {
    let dir = session();
    let out = export(dir.path(), &["--format", "html"]);
    assert_eq!(out.status.code(), Some(0));
    let html = String::from_utf8(out.stdout).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<section class=\"entry\"").count(), 3);
    assert!(
        html.contains("<td id=\"reviewed\">2</td>") && html.contains("<td id=\"pending\">1</td>")
    );
    // The session's charts first: the two reviewed entries (both labelled covid, one called
    // normal without a flag: a silent error) as eval draws them, embedded SVG.
    assert!(
        html.contains("The session's measures: 2 reviewed entries"),
        "{html}"
    );
    let (charts, pictures): (Vec<&str>, Vec<&str>) = images(&html)
        .into_iter()
        .partition(|src| src.starts_with("data:image/svg+xml;base64,"));
    assert_eq!(charts.len(), 4);
    let words = [
        "ROC",
        "eliability",
        "Confusion matrix at threshold 0.500",
        "reviewed",
    ];
    for (src, words) in charts.into_iter().zip(words) {
        let b64 = src.strip_prefix("data:image/svg+xml;base64,").unwrap();
        let svg = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let svg = String::from_utf8(svg).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(words), "{words}: {svg}");
    }
    // Self-contained: two pictures per entry, each an embedded PNG that decodes.
    assert_eq!(pictures.len(), 6);
    for src in pictures {
        let b64 = src.strip_prefix("data:image/png;base64,").unwrap();

        let png = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let picture = image::load_from_memory(&png).unwrap();
        assert_eq!(picture.width(), 320);
    }
    assert!(!html.contains("file://") && !html.contains("src=\"/"));
    // Prediction, flags, label and reviewer of each entry; names are escaped.
    let a = &html[html.find("entry-00000000000000aa").unwrap()..];
    let a = &a[..a.find("</section>").unwrap()];
    assert!(a.contains("COVID-19 (93.3%)") && a.contains("<span class=\"flag\">unfamiliar</span>"));
    assert!(a.contains("<dd class=\"reviewer\">alice</dd>"));
    assert!(html.contains("ward 3, &lt;bed 4&gt;.png") && !html.contains("<bed 4>"));
    let c = &html[html.find("entry-00000000000000cc").unwrap()..];
    assert!(c[..c.find("</section>").unwrap()].contains("not reviewed"));
}

/// Renders the report with headless Chromium and checks the screenshot shows it: several
/// distinct colours (the radiographs' greys, the overlays' colours, the text). Skipped, with
/// the reason printed, where Chromium is not installed.
#[test]
#[ignore = "needs /usr/bin/chromium; scripts/test.sh runs it when installed"]
fn html_report_renders_in_chromium() {
    let chromium = Path::new("/usr/bin/chromium");
    let dir = session();
    let report = dir.path().join("session.html");
    let out = export(
        dir.path(),
        &["--format", "html", "-o", report.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0));
    let profile = tempfile::tempdir().unwrap();
    let shot = dir.path().join("shot.png");
    let out = Command::new(chromium)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    assert!(
        shot.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let picture = image::open(&shot).unwrap().to_rgb8();
    assert_eq!(picture.dimensions(), (1200, 900));
    let colours: std::collections::BTreeSet<[u8; 3]> = picture.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 200,
        "{} colours: a blank page?",
        colours.len()
    );
    // The radiograph thumbnails: many grey pixels that are neither the page's background nor
    // white.
    let greys = picture
        .pixels()
        .filter(|p| {
            let [r, g, b] = p.0;
            r == g && g == b && (30..200).contains(&r)
        })
        .count();
    assert!(greys > 20_000, "{greys} grey pixels: no radiographs drawn?");
}
