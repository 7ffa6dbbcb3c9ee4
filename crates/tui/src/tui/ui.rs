//! Drawing: pure functions of the app state (and the clock, for the busy timer).

use std::time::Instant;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect, Size};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui_image::Image;

use super::app::{App, ItemState, LABELS, PromptKind, Shown};

/// Where everything goes on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    pub list: Rect,
    /// Picture panes (original, overlay), outer rectangles; `None` when not shown.
    pub panes: [Option<Rect>; 2],
    pub panel: Rect,
    pub status: Rect,
}

/// Rows of the prediction panel when it sits under the list.
const PANEL_ROWS: u16 = 16;

/// Splits the screen; usable from 80x24 up. Two arrangements are measured and the one giving
/// the radiographs more cells wins: list, pictures and panel side by side, or the list above
/// the panel in one column, which gives the pictures the panel's width (at 80x24 and 160x48
/// that column roughly doubles the picture area). The choice depends only on the terminal's
/// size and the font, never on the picture, so the layout does not jump when one arrives.
#[must_use]
pub fn areas(area: Rect, app: &App) -> Areas {
    let [main, status] = Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
    let wide = area.width >= 120;
    let (list_w, panel_w) = if wide { (30, 34) } else { (22, 26) };
    let [list, pictures, panel] = Layout::horizontal([
        Constraint::Length(list_w),
        Constraint::Min(10),
        Constraint::Length(panel_w),
    ])
    .areas(main);
    let beside = Areas {
        list,
        panes: panes(pictures, app),
        panel,
        status,
    };
    if main.height < PANEL_ROWS + 6 {
        return beside;
    }
    let [column, pictures] =
        Layout::horizontal([Constraint::Length(list_w.max(panel_w)), Constraint::Min(10)])
            .areas(main);
    let [list, panel] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(PANEL_ROWS)]).areas(column);
    let stacked = Areas {
        list,
        panes: panes(pictures, app),
        panel,
        status,
    };
    if square_cells(&stacked, app.font) > square_cells(&beside, app.font) {
        stacked
    } else {
        beside
    }
}

/// The picture panes inside `pictures`: side by side when there is room, else one.
fn panes(pictures: Rect, app: &App) -> [Option<Rect>; 2] {
    if app.side_by_side && pictures.width >= 56 {
        let [left, right] =
            Layout::horizontal([Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)]).areas(pictures);
        [Some(left), Some(right)]
    } else if app.pictures[1].is_some() || app.pictures[0].is_none() {
        [None, Some(pictures)]
    } else {
        [Some(pictures), None]
    }
}

/// Cells a square picture covers in the smallest pane of `areas`, scaled to fit (font in
/// pixels per cell).
fn square_cells(areas: &Areas, font: (u16, u16)) -> u32 {
    let (fw, fh) = (u32::from(font.0.max(1)), u32::from(font.1.max(1)));
    areas
        .panes
        .iter()
        .flatten()
        .map(|pane| {
            let cells = picture_size(*pane);
            let side = (u32::from(cells.width) * fw).min(u32::from(cells.height) * fh);
            (side / fw) * (side / fh)
        })
        .min()
        .unwrap_or(0)
}

/// The size in cells available to a picture inside its pane's border.
#[must_use]
pub fn picture_size(pane: Rect) -> Size {
    Size::new(pane.width.saturating_sub(2), pane.height.saturating_sub(2))
}

pub fn view(frame: &mut Frame, app: &App, now: Instant) {
    let a = areas(frame.area(), app);
    draw_list(frame, app, a.list);
    for (i, pane) in a.panes.iter().enumerate() {
        if let Some(rect) = pane {
            draw_picture(frame, app, i, *rect);
        }
    }
    draw_panel(frame, app, a.panel);
    draw_status(frame, app, a.status, now);
    if app
        .prompt
        .as_ref()
        .is_some_and(|p| p.kind == PromptKind::Params)
    {
        draw_params(frame, app, a.status);
    }
    if app.help {
        draw_help(frame);
    }
}

fn draw_list(frame: &mut Frame, app: &App, area: Rect) {
    let items: Vec<ListItem> = app
        .items
        .iter()
        .map(|item| {
            let (mark, style) = match &item.state {
                ItemState::Pending => ("  ·".to_owned(), Style::new().dark_gray()),
                ItemState::Processing => ("  …".to_owned(), Style::new().yellow()),
                ItemState::Predicted { label, probability } => {
                    let colour = if label == "covid" {
                        Color::LightRed
                    } else {
                        Color::LightGreen
                    };
                    (
                        format!(
                            " {} {:>3.0}%",
                            &label[..1.min(label.len())],
                            probability * 100.0
                        ),
                        Style::new().fg(colour),
                    )
                }
                ItemState::Failed(_) => ("  ✗".to_owned(), Style::new().red()),
            };
            let reviewed = item
                .reviewed
                .as_deref()
                .map_or_else(String::new, |r| format!(" ✔{r}"));
            let name_width = usize::from(area.width.saturating_sub(2))
                .saturating_sub(mark.chars().count() + reviewed.chars().count() + 1);
            let mut name = item.name.clone();
            if name.chars().count() > name_width {
                name = name
                    .chars()
                    .take(name_width.saturating_sub(1))
                    .collect::<String>()
                    + "…";
            }
            ListItem::new(Line::from(vec![
                Span::raw(format!("{name:<name_width$}")),
                Span::styled(mark, style),
                Span::styled(reviewed, Style::new().cyan()),
            ]))
        })
        .collect();
    let title = format!(
        " images {}/{} ",
        (app.selected + 1).min(app.items.len()),
        app.items.len()
    );
    let list = List::new(items)
        .block(Block::bordered().title(title))
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state =
        ListState::default().with_selected((!app.items.is_empty()).then_some(app.selected));
    frame.render_stateful_widget(list, area, &mut state);
}

fn draw_picture(frame: &mut Frame, app: &App, pane: usize, area: Rect) {
    let view = app.view.describe(pane == 0);
    let view = if view.is_empty() {
        String::new()
    } else {
        format!(" · {view}")
    };
    let title = if pane == 0 {
        format!(" radiograph{view} ")
    } else {
        format!(
            " {} · opacity {:.1}{}{view} ",
            app.method(),
            app.opacity,
            if app.outline { " · lungs" } else { "" }
        )
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if let Some((_, protocol)) = &app.protocols[pane] {
        // Scaled to fill one side of the pane; centred along the other.
        let size = protocol.size();
        let (width, height) = (size.width.min(inner.width), size.height.min(inner.height));
        let centred = Rect::new(
            inner.x + (inner.width - width) / 2,
            inner.y + (inner.height - height) / 2,
            width,
            height,
        );
        frame.render_widget(Image::new(protocol), centred);
    } else {
        let text = if app.items.is_empty() {
            "no images: press O to open a file or folder"
        } else if app.pictures[pane].is_some() {
            "drawing…"
        } else if matches!(
            app.items.get(app.selected).map(|i| &i.state),
            Some(ItemState::Failed(_))
        ) {
            "could not be analysed (see the status bar)"
        } else if pane == 1 && app.explain_error.is_some() {
            "no explanation: it failed (see the panel)"
        } else {
            "working…"
        };
        frame.render_widget(
            Paragraph::new(text).dark_gray().wrap(Wrap { trim: true }),
            inner,
        );
    }
}

/// A text bar of `width` cells for a value in [0, 1].
fn bar(value: f32, width: usize) -> String {
    let filled = ((value.clamp(0.0, 1.0) * width as f32).round() as usize).min(width);
    "█".repeat(filled) + &"░".repeat(width - filled)
}

/// How much a panel line matters when the panel is too short for all of them: the least
/// important go first, so that the prediction, its flags, the explanation's metrics or progress
/// and the review state show at any terminal size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Blank lines between groups.
    Spacer,
    /// Threshold, familiarity score, the model card's headline, timings.
    Detail,
    /// A flag's reason (the flag's name stays).
    Reason,
    Always,
}

/// The familiarity score, and each flag with its reason in yellow: when not to trust the label.
fn trust_lines(trust: &cxr_core::trust::Assessment) -> Vec<(Keep, Line<'static>)> {
    let mut lines = Vec::new();
    if let Some(distance) = trust.familiarity {
        let line = Line::from(format!("familiarity {distance:.1} (distance)")).dark_gray();
        lines.push((Keep::Detail, line));
    }
    if trust.flags.is_empty() && trust.familiarity.is_some() {
        lines.push((Keep::Detail, Line::from("no trust flags").green()));
    }
    for (i, flag) in trust.flags.iter().enumerate() {
        let name = Line::from(format!("⚠ {}", flag.name())).yellow().bold();
        lines.push((Keep::Always, name));
        if let Some(reason) = trust.reasons.get(i) {
            lines.push((Keep::Reason, Line::from(reason.clone()).yellow()));
        }
    }
    lines
}

/// The explanation's part of the panel: its metrics, or its progress, or its error.
fn explanation_lines(app: &App, shown: &Shown) -> Vec<(Keep, Line<'static>)> {
    let mut lines = Vec::new();
    match &shown.report {
        None if app.explain_error.is_some() => {
            let error = app.explain_error.as_deref().unwrap_or_default();
            let failed = Line::from(format!("{} failed:", app.method())).red().bold();
            lines.push((Keep::Always, failed));
            lines.push((Keep::Always, Line::from(error.to_owned()).red()));
            let next = match (&app.progress, &app.busy) {
                (Some(progress), _) => progress.text(app.method()),
                (None, Some(_)) => "retrying…".to_owned(),
                (None, None) => "p parameters · r retry".to_owned(),
            };
            lines.push((Keep::Always, Line::from(next).dark_gray()));
        }
        None => {
            let working = match &app.progress {
                Some(progress) => progress.text(app.method()),
                None => format!("{}: working…", app.method()),
            };
            lines.push((Keep::Always, Line::from(working).dark_gray()));
        }
        Some(r) => {
            let title = Line::from(format!("{} ({:.0} ms)", r.method, r.explain_ms)).bold();
            lines.push((Keep::Always, title));
            let q = &r.quality;
            for (name, value) in [
                ("deletion AUC ", q.deletion_auc),
                ("insertion AUC", q.insertion_auc),
            ] {
                lines.extend(value.map(|v| (Keep::Always, Line::from(format!("{name} {v:.3}")))));
            }
            if let Some(share) = q.lung_mass_share {
                let line = Line::from(format!("in lungs      {:.0}%", share * 100.0));
                // Little evidence inside the lungs: the model may read something else.
                lines.push((Keep::Always, if share < 0.5 { line.yellow() } else { line }));
            }
            if let Some(r2) = r.details.get("r2").and_then(serde_json::Value::as_f64) {
                lines.push((Keep::Always, Line::from(format!("local fit R²  {r2:.3}"))));
            }
        }
    }
    lines
}

/// The lines that fit `rows` rows of `width` cells once wrapped: spacers go first, then the
/// details (the last one first), then the flags' reasons.
fn fit(mut lines: Vec<(Keep, Line<'static>)>, width: u16, rows: u16) -> Vec<Line<'static>> {
    let rows_needed = |lines: &[(Keep, Line<'static>)]| {
        let text: Vec<Line> = lines.iter().map(|(_, l)| l.clone()).collect();
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .line_count(width)
    };
    for level in [Keep::Spacer, Keep::Detail, Keep::Reason] {
        while rows_needed(&lines) > usize::from(rows) {
            let Some(i) = lines.iter().rposition(|(keep, _)| *keep == level) else {
                break;
            };
            lines.remove(i);
        }
    }
    lines.into_iter().map(|(_, line)| line).collect()
}

fn draw_panel(frame: &mut Frame, app: &App, area: Rect) {
    let mut lines: Vec<(Keep, Line<'static>)> = Vec::new();
    match &app.shown {
        None => lines.push((Keep::Always, Line::from("no result yet").dark_gray())),
        Some(shown) => {
            let p = &shown.prediction;
            lines.push((
                Keep::Always,
                Line::from(vec![
                    Span::raw("label "),
                    Span::styled(p.label.clone(), Style::new().bold()),
                ]),
            ));
            // Names in one column (`pneumonia` is longer than `covid`), bars filling the rest.
            let name_width = p
                .probabilities
                .keys()
                .map(String::len)
                .max()
                .unwrap_or(0)
                .max(6)
                + 1;
            let bar_width = usize::from(area.width)
                .saturating_sub(name_width + 9)
                .max(4);
            for (class, prob) in &p.probabilities {
                let line = Line::from(format!(
                    "{class:<name_width$}{} {prob:.2}",
                    bar(*prob, bar_width)
                ));
                lines.push((Keep::Always, line));
            }
            let threshold = Line::from(format!("threshold {:.2}", p.threshold)).dark_gray();
            lines.push((Keep::Detail, threshold));
            lines.extend(trust_lines(&p.trust));
            if let Some(card) = &app.card {
                lines.push((
                    Keep::Detail,
                    Line::from(format!("model: {card}")).dark_gray(),
                ));
            }
            let t = &shown.timings;
            let timings = format!("seg {:.0} ms  cls {:.0} ms", t.segment_ms, t.classify_ms);
            lines.push((Keep::Detail, Line::from(timings).dark_gray()));
            lines.push((Keep::Spacer, Line::default()));
            lines.extend(explanation_lines(app, shown));
        }
    }
    if let Some(item) = app.items.get(app.selected) {
        lines.push((Keep::Spacer, Line::default()));
        let reviewed = item.reviewed.as_deref().unwrap_or("not reviewed");
        lines.push((
            Keep::Always,
            Line::from(format!("review: {reviewed}")).cyan(),
        ));
    }
    let lines = fit(
        lines,
        area.width.saturating_sub(2),
        area.height.saturating_sub(2),
    );
    let panel = Paragraph::new(lines)
        .block(Block::bordered().title(" prediction "))
        .wrap(Wrap { trim: false });
    frame.render_widget(panel, area);
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect, now: Instant) {
    let line = if let Some(prompt) = &app.prompt {
        let label = match prompt.kind {
            PromptKind::Params => format!("{} parameters (name=value,...): ", app.method()),
            PromptKind::Open => "open file or folder: ".to_owned(),
        };
        let (before, after) = prompt.split();
        Line::from(vec![
            Span::styled(label, Style::new().bold()),
            Span::raw(before.to_owned()),
            Span::raw("▏"),
            Span::raw(after.to_owned()),
        ])
    } else {
        let left = match &app.busy {
            _ if app.quit => Span::styled(
                "closing: stopping background work… ".to_owned(),
                Style::new().yellow(),
            ),
            Some((what, since)) => {
                let spinner = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
                let elapsed = now.saturating_duration_since(*since).as_secs_f32();
                let frame_index = (elapsed * 10.0) as usize % spinner.len();
                Span::styled(
                    format!("{} {what} {elapsed:.1}s ", spinner[frame_index]),
                    Style::new().yellow(),
                )
            }
            None if app.status.starts_with("error") => {
                Span::styled(format!("{} ", app.status), Style::new().red())
            }
            None => Span::raw(format!("{} ", app.status)),
        };
        let keys = LABELS
            .iter()
            .map(|(k, l)| format!("{k} {l}"))
            .collect::<Vec<_>>()
            .join(" · ");
        Line::from(vec![
            left,
            Span::styled(
                format!("↑↓ move · e explainer · {keys} · u undo · ? help · q quit"),
                Style::new().dark_gray(),
            ),
        ])
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// The type of a parameter, read from its default value.
#[must_use]
pub fn param_type(default: &str) -> &'static str {
    if default.parse::<i64>().is_ok() {
        "integer"
    } else if default.parse::<f64>().is_ok() {
        "number"
    } else {
        "text"
    }
}

/// Above the parameter prompt: what the current explainer accepts, with types and defaults.
fn draw_params(frame: &mut Frame, app: &App, status: Rect) {
    let specs = app
        .param_specs
        .get(app.method())
        .copied()
        .unwrap_or_default();
    let mut lines: Vec<Line> = specs
        .iter()
        .map(|p| {
            Line::from(vec![
                Span::styled(format!("{:<13}", p.name), Style::new().bold()),
                Span::raw(format!("{:<8}", param_type(p.default))),
                Span::styled(format!("{:<6} ", p.default), Style::new().cyan()),
                Span::styled(p.help, Style::new().dark_gray()),
            ])
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from(format!("{} takes no parameters", app.method())).dark_gray());
    }
    lines.push(
        Line::from("Enter run · Esc cancel · ←/→ move · Ctrl-U clear · Ctrl-W delete word")
            .dark_gray(),
    );
    let area = frame.area();
    let height = (lines.len() as u16 + 2).min(status.y);
    let rect = Rect::new(area.x, status.y - height, area.width, height);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered().title(format!(" {} parameters (name type default) ", app.method())),
        ),
        rect,
    );
}

fn draw_help(frame: &mut Frame) {
    let rows = [
        ("↑/↓ j/k, PgUp/PgDn, g/G", "move through the images"),
        ("e / E (Tab / Shift-Tab)", "next / previous explainer"),
        ("p", "explainer parameters, then Enter to rerun"),
        ("r", "rerun the explanation"),
        ("m", "lung outline on / off"),
        ("+ / -", "overlay opacity"),
        ("o", "radiograph beside the overlay / overlay only"),
        ("z", "zoom 1x / 2x / 4x (then hjkl / arrows move it)"),
        ("w", "window: full / auto / lung / soft tissue"),
        ("c / n / s", "label covid / normal / skip (then next)"),
        ("u", "undo this session's last label (back on its image)"),
        ("O", "open a file or folder"),
        ("q, Esc", "quit"),
    ];
    let lines: Vec<Line> = rows
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<26}"), Style::new().bold()),
                Span::raw(*what),
            ])
        })
        .collect();
    let area = frame.area();
    let width = 72.min(area.width);
    let height = (rows.len() as u16 + 2).min(area.height);
    let rect = Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    );
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" keys ")),
        rect,
    );
}
