//! `cxr queue export --format csv|html`: a review session as a table for spreadsheets, or as
//! one self-contained HTML report (pictures embedded as base64 PNG data URLs) to open in a
//! browser, mail or archive.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use base64::Engine as _;
use color_eyre::eyre::{Result, WrapErr};
use cxr_core::queue::{Order, Queue, QueueItem};
use cxr_core::render::class_display_name;
use cxr_core::xray::Xray;

use crate::cli::ExportFormat;

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

/// `<`, `>`, `&` and quotes escaped for HTML text and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
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

fn figure(html: &mut String, caption: &str, picture: Result<String, String>) {
    match picture {
        Ok(url) => {
            let _ = write!(
                html,
                "<figure><img src=\"{url}\" alt=\"{0}\"><figcaption>{0}</figcaption></figure>",
                escape(caption)
            );
        }
        Err(e) => {
            let _ = write!(
                html,
                "<figure class=\"missing\"><figcaption>{}: {}</figcaption></figure>",
                escape(caption),
                escape(&e)
            );
        }
    }
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1.5em;background:#f4f4f4;color:#111}\
h1{font-size:1.4em}table.summary td{padding:0 1em 0 0}\
section.entry{background:#fff;border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:1em}\
section.entry h2{font-size:1.1em;margin:0 0 .5em 0}\
.pictures{display:flex;flex-wrap:wrap;gap:1em}\
figure{margin:0}figure img{width:320px;display:block;border:1px solid #999}\
figcaption{font-size:.85em;color:#444}\
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:600}\
.flag{background:#c62828;color:#fff;border-radius:3px;padding:0 .4em;margin-right:.3em}\
.covid{color:#b71c1c}.normal{color:#1b5e20}.pending{color:#777;font-style:italic}";

fn html(dir: &Path, items: &[&QueueItem]) -> String {
    let reviewed = items.iter().filter(|i| i.is_reviewed()).count();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>cxr review: {0}</title><style>{STYLE}</style></head><body>\n\
         <h1>cxr review session: {0}</h1>\n<table class=\"summary\"><tr><td>entries</td>\
         <td id=\"entries\">{1}</td></tr><tr><td>reviewed</td><td id=\"reviewed\">{2}</td></tr>\
         <tr><td>pending</td><td id=\"pending\">{3}</td></tr></table>\n",
        escape(&dir.display().to_string()),
        items.len(),
        reviewed,
        items.len() - reviewed
    );
    for item in items {
        let s = &item.state;
        let _ = write!(
            html,
            "<section class=\"entry\" id=\"entry-{0}\"><h2>{1} <small>({0})</small></h2>\
             <div class=\"pictures\">",
            escape(&item.id),
            escape(&s.source_name)
        );
        let radiograph = Xray::open(item.image_path())
            .map_err(|e| e.to_string())
            .and_then(|x| data_url(&x.original));
        figure(&mut html, "radiograph", radiograph);
        for (method, path) in item.overlays() {
            let overlay = image::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|image| data_url(&image));
            figure(&mut html, &format!("{method} overlay"), overlay);
        }
        html.push_str("</div><dl>");
        match &s.predicted {
            Some(p) => {
                let _ = write!(
                    html,
                    "<dt>prediction</dt><dd class=\"prediction {0}\">{1} ({2:.1}%)</dd>\
                     <dt>flags</dt><dd class=\"flags\">",
                    escape(&p.label),
                    escape(class_display_name(&p.label)),
                    p.confidence * 100.0
                );
                if p.flags.is_empty() {
                    html.push_str("none");
                }
                for flag in &p.flags {
                    let _ = write!(html, "<span class=\"flag\">{}</span>", flag.name());
                }
                html.push_str("</dd>");
            }
            None => html.push_str("<dt>prediction</dt><dd class=\"prediction\">none</dd>"),
        }
        match &s.review {
            Some(r) => {
                let _ = write!(
                    html,
                    "<dt>label</dt><dd class=\"label {0}\">{1}</dd><dt>reviewer</dt>\
                     <dd class=\"reviewer\">{2}</dd><dt>reviewed</dt><dd>{3}</dd>",
                    escape(r.label.as_str()),
                    escape(class_display_name(r.label.as_str())),
                    escape(&r.reviewer),
                    escape(&r.time)
                );
            }
            None => html.push_str("<dt>label</dt><dd class=\"label pending\">not reviewed</dd>"),
        }
        html.push_str("</dl></section>\n");
    }
    html.push_str("</body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_text_is_escaped() {
        assert_eq!(
            escape("<b>\"a\" & 'b'</b>"),
            "&lt;b&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/b&gt;"
        );
    }
}
