//! `cxr queue export --format csv|html`: a review session as a table for spreadsheets, or as
//! one self-contained HTML report (pictures embedded as base64 PNG data URLs) to open in a
//! browser, mail or archive.

use std::path::Path;
use std::process::ExitCode;

use base64::Engine as _;
use color_eyre::eyre::{Result, WrapErr};
use cxr_core::evaluation::{self, Scored};
use cxr_core::queue::{Label, Order, Predicted, Queue, QueueItem};
use cxr_core::render::class_display_name;
use cxr_core::xray::Xray;
use maud::{DOCTYPE, Markup, PreEscaped, html};

use crate::cli::ExportFormat;
use crate::plots;

/// Width of the pictures in the HTML report, in pixels.
const THUMBNAIL: u32 = 320;

/// The CSV columns.
pub const CSV_HEADER: [&str; 9] = [
    "id",
    "file",
    "original_name",
    "prediction",
    "probability",
    "flags",
    "label",
    "reviewer",
    "time",
];

pub fn run(
    dir: &Path,
    format: ExportFormat,
    out: Option<&Path>,
    reviewed: bool,
) -> Result<ExitCode> {
    let queue = Queue::open(dir)?;
    let (items, problems) = queue.list_checked(Order::Time)?;
    for problem in &problems {
        eprintln!("cxr: {problem}");
    }
    let items: Vec<&QueueItem> = items
        .iter()
        .filter(|i| !reviewed || i.is_reviewed())
        .collect();
    let bytes = match format {
        ExportFormat::Csv => csv(&items)?,
        ExportFormat::Html => html(dir, &items).into_bytes(),
    };
    match out {
        Some(path) => {
            cxr_core::fsutil::write_atomic(path, &bytes)
                .wrap_err_with(|| format!("writing {}", path.display()))?;
            super::note(&format!(
                "wrote {} entries to {}",
                items.len(),
                path.display()
            ));
        }
        None => super::write_stdout(&bytes)?,
    }
    Ok(super::exit_code(problems.len()))
}

/// One row's cells, in [`CSV_HEADER`] order.
fn row(item: &QueueItem) -> [String; 9] {
    let s = &item.state;
    let (prediction, probability, flags) = s.predicted.as_ref().map_or_else(
        || (String::new(), String::new(), String::new()),
        |p| {
            let flags: Vec<&str> = p.flags.iter().map(|f| f.name()).collect();
            (
                p.label.clone(),
                format!("{:.4}", p.confidence),
                flags.join(";"),
            )
        },
    );
    let (label, reviewer, time) = s.review.as_ref().map_or_else(
        || (String::new(), String::new(), String::new()),
        |r| {
            (
                r.label.as_str().to_owned(),
                r.reviewer.clone(),
                r.time.clone(),
            )
        },
    );
    [
        item.id.clone(),
        item.image_path().display().to_string(),
        s.source_name.clone(),
        prediction,
        probability,
        flags,
        label,
        reviewer,
        time,
    ]
}

fn csv(items: &[&QueueItem]) -> Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_HEADER)?;
    for item in items {
        writer.write_record(row(item).map(|cell| inert(&cell)))?;
    }
    Ok(writer
        .into_inner()
        .map_err(csv::IntoInnerError::into_error)?)
}

/// A cell that a spreadsheet shows as text, never evaluates: one starting with `=`, `+`, `-`,
/// `@`, a tab or a carriage return (a file name or an older entry's reviewer can) gets a
/// leading `'`, as OWASP's rule for CSV injection says.
fn inert(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_owned()
    }
}

/// A picture scaled to [`THUMBNAIL`] pixels wide as a `data:` URL, or why it could not be made.
fn data_url(image: &image::DynamicImage) -> Result<String, String> {
    let (w, h) = (image.width().max(1), image.height().max(1));
    let width = THUMBNAIL.min(w);
    let height = (u64::from(h) * u64::from(width) / u64::from(w)).max(1) as u32;
    let small = image.thumbnail_exact(width, height).to_rgb8();
    let png = cxr_core::render::encode_png(&small).map_err(|e| e.to_string())?;
    Ok(format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    ))
}

/// A picture with its caption, or the caption and why the picture is missing.
fn figure(caption: &str, picture: Result<String, String>) -> Markup {
    match picture {
        Ok(url) => html! {
            figure { img src=(url) alt=(caption); figcaption { (caption) } }
        },
        Err(e) => html! {
            figure.missing { figcaption { (caption) ": " (e) } }
        },
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;background:#f4f4f4;color:#111}\
h1{font-size:1.4em}table.summary td{padding:0 1em 0 0}\
section.charts figure img{width:480px}\
section.entry{background:#fff;border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:1em}\
section.entry h2{font-size:1.1em;margin:0 0 .5em 0}\
.pictures{display:flex;flex-wrap:wrap;gap:1em}\
figure{margin:0}figure img{width:320px;display:block;border:1px solid #999}\
figcaption{font-size:.85em;color:#444}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}\
.flag{background:#c62828;color:#fff;border-radius:3px;padding:0 .4em;margin-right:.3em}\
.covid{color:#b71c1c}.normal{color:#1b5e20}.pending{color:#777;font-style:italic}";

/// The report: maud escapes every text and attribute value spliced in (file names, reviewer
/// names and error messages are not ours); only the constant [`STYLE`] goes in as it is.
fn html(dir: &Path, items: &[&QueueItem]) -> String {
    let reviewed = items.iter().filter(|i| i.is_reviewed()).count();
    let folder = dir.display().to_string();
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "cxr review: " (folder) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { "cxr review session: " (folder) }
                table.summary {
                    tr { td { "entries" } td #entries { (items.len()) } }
                    tr { td { "reviewed" } td #reviewed { (reviewed) } }
                    tr { td { "pending" } td #pending { (items.len() - reviewed) } }
                }
                (review_charts(items))
                @for item in items {
                    (entry(item))
                }
            }
        }
    };
    let mut page = page.into_string();
    page.push('\n');
    page
}

/// The session's charts, as `cxr eval --plots` draws them (ROC, reliability, confusion,
/// flag and silent-wrong rates), with the reviewers' labels as the truth and the predictions
/// the queue kept: an entry labelled the positive class or `normal` counts, another class
/// (`pneumonia`) only in the contrast against `normal`; skips and entries without a
/// prediction are left out. Nothing when no entry counts.
fn review_charts(items: &[&QueueItem]) -> Markup {
    const SOURCE: &str = "reviewed";
    let negative = Label::Normal.as_str();
    let reviewed: Vec<(&str, &Predicted)> = items
        .iter()
        .filter_map(|item| {
            let label = item.state.review.as_ref()?.label.as_str();
            Some((label, item.state.predicted.as_ref()?))
        })
        .filter(|(label, _)| *label != Label::Skip.as_str())
        .collect();
    let Some((_, first)) = reviewed.first() else {
        return html! {};
    };
    let positive = first.positive.as_str();
    let probability = |p: &Predicted, class: &str| p.probabilities.get(class).copied();
    let scored: Vec<Scored<'_>> = reviewed
        .iter()
        .filter(|(_, p)| p.positive == positive)
        .filter_map(|(label, p)| {
            Some(Scored {
                source: SOURCE,
                label,
                score: probability(p, positive)?,
                abnormal: 1.0 - probability(p, negative)?,
                flags: &p.flags,
            })
        })
        .collect();
    if !scored
        .iter()
        .any(|s| s.label == positive || s.label == negative)
    {
        return html! {};
    }
    let classes = [positive.to_owned(), negative.to_owned()];
    let by_source = evaluation::by_source(&scored, &classes, first.threshold);
    let charts = plots::Evaluation::of(&scored, (positive, negative), first.threshold, &by_source);
    html! {
        section.charts {
            h2 { "The session's measures: " (scored.len()) " reviewed entries, the reviewers' labels as truth" }
            .pictures {
                @for name in plots::CHARTS {
                    @let picture = plots::svg(name, &charts)
                        .map(|svg| format!(
                            "data:image/svg+xml;base64,{}",
                            base64::engine::general_purpose::STANDARD.encode(svg)
                        ))
                        .map_err(|e| e.to_string());
                    (figure(name, picture))
                }
            }
        }
    }
}

/// One queue entry's section: its pictures (decoded and scaled here), prediction and review.
fn entry(item: &QueueItem) -> Markup {
    let s = &item.state;
    let radiograph = Xray::open(item.image_path())
        .map_err(|e| e.to_string())
        .and_then(|x| data_url(&x.original));
    let overlays = item.overlays().into_iter().map(|(method, path)| {
        let overlay = image::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|image| data_url(&image));
        figure(&format!("{method} overlay"), overlay)
    });
    html! {
        section.entry id={ "entry-" (item.id) } {
            h2 { (s.source_name) " " small { "(" (item.id) ")" } }
            div.pictures {
                (figure("radiograph", radiograph))
                @for overlay in overlays { (overlay) }
            }
            dl {
                dt { "prediction" }
                @if let Some(p) = &s.predicted {
                    dd class={ "prediction " (p.label) } {
                        (class_display_name(&p.label))
                        " (" (format!("{:.1}", p.confidence * 100.0)) "%)"
                    }
                    dt { "flags" }
                    dd.flags {
                        @if p.flags.is_empty() { "none" }
                        @for flag in &p.flags { span.flag { (flag.name()) } }
                    }
                } @else {
                    dd.prediction { "none" }
                }
                dt { "label" }
                @if let Some(r) = &s.review {
                    dd class={ "label " (r.label.as_str()) } {
                        (class_display_name(r.label.as_str()))
                    }
                    dt { "reviewer" }
                    dd.reviewer { (r.reviewer) }
                    dt { "reviewed" }
                    dd { (r.time) }
                } @else {
                    dd.label.pending { "not reviewed" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "<b>\"a\" & 'b'</b>";
    const ESCAPED: &str = "&lt;b&gt;&quot;a&quot; &amp; 'b'&lt;/b&gt;";

    /// An entry whose folder does not exist (so no picture can be read), with `HOSTILE` in its
    /// original name, predicted label, reviewer and review time.
    fn hostile_entry() -> QueueItem {
        let state = serde_json::json!({
            "schema": 1, "id": "00000000000000dd", "sha256": "0".repeat(64),
            "state": "reviewed", "image": "image.png", "source_name": format!("{HOSTILE}.png"),
            "created": "2026-05-01T10:00:00.000Z",
            "predicted": {
                "label": HOSTILE, "confidence": 0.5, "positive": "covid",
                "probabilities": {"covid": 0.5}, "threshold": 0.5, "flags": [],
            },
            "model": null, "methods": [],
            "review": {"label": "normal", "reviewer": HOSTILE, "time": HOSTILE},
        });
        QueueItem {
            id: "00000000000000dd".into(),
            dir: Path::new("/nonexistent/cxr-export-test").join(HOSTILE),
            state: serde_json::from_value(state).unwrap(),
        }
    }

    #[test]
    fn hostile_text_is_escaped_in_the_page() {
        let item = hostile_entry();
        let page = html(&Path::new("/watch").join(HOSTILE), &[&item]);
        assert!(!page.contains("<b>") && !page.contains("\"a\""), "{page}");
        // The folder in the title and heading, the original name, the predicted label in its
        // class attribute and as text, the reviewer and the time.
        let expected = [
            format!("<title>cxr review: /watch/{ESCAPED}</title>"),
            format!("<h1>cxr review session: /watch/{ESCAPED}</h1>"),
            format!("<h2>{ESCAPED}.png <small>(00000000000000dd)</small></h2>"),
            format!("<dd class=\"prediction {ESCAPED}\">{ESCAPED} (50.0%)</dd>"),
            format!("<dd class=\"reviewer\">{ESCAPED}</dd>"),
            format!("<dt>reviewed</dt><dd>{ESCAPED}</dd>"),
        ];
        for text in expected {
            assert!(page.contains(&text), "{text} not in {page}");
        }
        // The missing radiograph's error (it names the hostile folder) is escaped too.
        let missing = &page[page
            .find("<figure class=\"missing\"><figcaption>radiograph: ")
            .unwrap()..];
        let missing = &missing[..missing.find("</figure>").unwrap()];
        assert!(missing.contains(ESCAPED), "{missing}");
    }

    #[test]
    fn the_page_has_the_summary_and_one_section_per_entry() {
        let mut pending = hostile_entry();
        pending.id = "00000000000000ee".into();
        pending.state.review = None;
        pending.state.predicted = None;
        pending.state.state = cxr_core::queue::ReviewState::PendingReview;
        let reviewed = hostile_entry();
        let page = html(Path::new("/watch"), &[&reviewed, &pending]);
        assert!(
            page.starts_with("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">")
        );
        assert!(page.ends_with("</body></html>\n"), "{page}");
        for cell in [
            "<td id=\"entries\">2</td>",
            "<td id=\"reviewed\">1</td>",
            "<td id=\"pending\">1</td>",
        ] {
            assert!(page.contains(cell), "{cell} not in {page}");
        }
        assert_eq!(page.matches("<section class=\"entry\"").count(), 2);
        let pending = &page[page.find("id=\"entry-00000000000000ee\"").unwrap()..];
        assert!(pending.contains(
            "<dt>prediction</dt><dd class=\"prediction\">none</dd><dt>label</dt>\
             <dd class=\"label pending\">not reviewed</dd>"
        ));
        assert!(
            page.contains("<dd class=\"label normal\">no finding</dd>"),
            "{page}"
        );
        assert!(page.contains("<dd class=\"flags\">none</dd>"));
    }
}
