//! `cxr eval --plots DIR`: the evaluation drawn, each chart as SVG and PNG: ROC curves (pooled
//! and per source with both classes), a reliability diagram, the confusion matrix, and the flag
//! and silent-wrong rates per source.
//!
//! PNG text: plotters' bitmap backend draws text only with a font file (its `ttf`/`ab_glyph`
//! features); [`Font8x8`] draws it with the public-domain 8x8 bitmap font the overlays use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use color_eyre::eyre::{Result, eyre};
use cxr_core::evaluation::{Scored, SourceMetrics};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters_backend::text_anchor::{HPos, Pos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendTextStyle, DrawingErrorKind};

/// One image as the charts see it.
pub struct Point<'a> {
    pub source: &'a str,
    /// Probability of the positive class.
    pub score: f32,
    /// 1 - probability of the negative class: ranks other labels (pneumonia) against it.
    pub abnormal: f32,
    /// Truth: positive class (`Some(true)`), negative (`Some(false)`), another label (`None`).
    pub positive: Option<bool>,
}

/// What the charts draw.
pub struct Evaluation<'a> {
    pub points: Vec<Point<'a>>,
    pub threshold: f32,
    /// Positive and negative class names.
    pub classes: (&'a str, &'a str),
    /// The per-source measures eval's table shows (the rates chart draws them).
    pub by_source: &'a BTreeMap<String, SourceMetrics>,
}

impl<'a> Evaluation<'a> {
    /// The charts of `scored` images: each label is the truth against `classes` (positive,
    /// negative); another label (`pneumonia`) enters only the contrast against the negatives.
    #[must_use]
    pub fn of(
        scored: &[Scored<'a>],
        classes: (&'a str, &'a str),
        threshold: f32,
        by_source: &'a BTreeMap<String, SourceMetrics>,
    ) -> Self {
        let points = scored
            .iter()
            .map(|s| Point {
                source: s.source,
                score: s.score,
                abnormal: s.abnormal,
                positive: [classes.0, classes.1]
                    .iter()
                    .position(|c| *c == s.label)
                    .map(|i| i == 0),
            })
            .collect();
        Self {
            points,
            threshold,
            classes,
            by_source,
        }
    }
}

const SIZE: (u32, u32) = (800, 600);
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// The charts by file stem, in the order eval lists them.
pub const CHARTS: [&str; 4] = ["roc", "reliability", "confusion", "rates"];

/// Writes every chart into `dir` as `NAME.svg` and `NAME.png`; returns the SVG paths.
pub fn write(dir: &Path, evaluation: &Evaluation<'_>) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| eyre!("creating {}: {e}", dir.display()))?;
    let mut written = Vec::new();
    for name in CHARTS {
        let svg = svg(name, evaluation)?;
        let mut rgb = vec![0u8; (SIZE.0 * SIZE.1 * 3) as usize];
        {
            let bitmap = BitMapBackend::with_buffer(&mut rgb, SIZE);
            let root = Font8x8(bitmap).into_drawing_area();
            draw(name, &root, evaluation).map_err(|e| eyre!("drawing {name}.png: {e}"))?;
        }
        let picture = image::RgbImage::from_raw(SIZE.0, SIZE.1, rgb)
            .ok_or_else(|| eyre!("{name}.png: buffer size"))?;
        let svg_path = dir.join(format!("{name}.svg"));
        cxr_core::fsutil::write_atomic(&svg_path, svg.as_bytes())?;
        let png = cxr_core::render::encode_png(&picture).map_err(|e| eyre!("{name}.png: {e}"))?;
        cxr_core::fsutil::write_atomic(&dir.join(format!("{name}.png")), &png)?;
        written.push(svg_path);
    }
    Ok(written)
}

/// Chart `name` (one of [`CHARTS`]) as SVG text, as [`write`] writes it to `NAME.svg`.
pub fn svg(name: &str, evaluation: &Evaluation<'_>) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        draw(name, &root, evaluation).map_err(|e| eyre!("drawing {name}.svg: {e}"))?;
    }
    Ok(svg)
}

type Drawn<DB> = std::result::Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

fn draw<DB: DrawingBackend>(
    name: &str,
    root: &DrawingArea<DB, Shift>,
    evaluation: &Evaluation<'_>,
) -> Drawn<DB> {
    root.fill(&WHITE)?;
    match name {
        "roc" => roc(root, evaluation)?,
        "reliability" => reliability(root, evaluation)?,
        "confusion" => confusion(root, evaluation)?,
        _ => rates(root, evaluation)?,
    }
    root.present()
}

/// Images of the two classes (`(score, positive)`), pooled or of one source.
fn labelled<'a>(
    evaluation: &'a Evaluation<'_>,
    source: Option<&'a str>,
) -> impl Iterator<Item = (f32, bool)> + 'a {
    evaluation
        .points
        .iter()
        .filter(move |p| source.is_none_or(|s| p.source == s))
        .filter_map(|p| p.positive.map(|positive| (p.score, positive)))
}

fn sources<'a>(evaluation: &Evaluation<'a>) -> Vec<&'a str> {
    let mut names: Vec<&str> = evaluation.points.iter().map(|p| p.source).collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The ROC curve's points (false positive rate, true positive rate), thresholds falling.
fn roc_curve(mut scored: Vec<(f32, bool)>) -> Option<Vec<(f64, f64)>> {
    let positives = scored.iter().filter(|s| s.1).count() as f64;
    let negatives = scored.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut curve = vec![(0.0, 0.0)];
    for (i, &(score, positive)) in scored.iter().enumerate() {
        if positive {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        // Tied scores are one step.
        if scored.get(i + 1).is_none_or(|next| next.0 != score) {
            curve.push((fp / negatives, tp / positives));
        }
    }
    Some(curve)
}

/// Area under a curve by the trapezoidal rule.
fn area(curve: &[(f64, f64)]) -> f64 {
    curve
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0)
        .sum()
}

fn roc<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    evaluation: &Evaluation<'_>,
) -> Drawn<DB> {
    let (positive, negative) = evaluation.classes;
    let mut chart = ChartBuilder::on(root)
        .caption("ROC, pooled and per source", ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc("false positive rate")
        .y_desc("true positive rate")
        .label_style(("sans-serif", 18))
        .draw()?;
    chart.draw_series(LineSeries::new(
        [(0.0, 0.0), (1.0, 1.0)],
        ShapeStyle::from(&BLACK.mix(0.3)),
    ))?;
    let mut curves = Vec::new();
    if let Some(curve) = roc_curve(labelled(evaluation, None).collect()) {
        curves.push(("pooled".to_owned(), curve));
    }
    for source in sources(evaluation) {
        if let Some(curve) = roc_curve(labelled(evaluation, Some(source)).collect()) {
            curves.push((source.to_owned(), curve));
        }
    }
    // Where a source has other labels and negatives (NIH pneumonia and no finding): the same
    // hospital's disease contrast, as in eval's "AUC other vs" column.
    for source in sources(evaluation) {
        let contrast = evaluation
            .points
            .iter()
            .filter(|p| p.source == source && p.positive != Some(true))
            .map(|p| (p.abnormal, p.positive.is_none()))
            .collect();
        if let Some(curve) = roc_curve(contrast) {
            curves.push((format!("{source}: other labels vs {negative}"), curve));
        }
    }
    for (i, (name, curve)) in curves.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let label = format!("{name} (AUC {:.2})", area(curve));
        chart
            .draw_series(LineSeries::new(
                curve.iter().copied(),
                colour.stroke_width(if i == 0 { 3 } else { 2 }),
            ))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
    }
    let one_class: Vec<&str> = sources(evaluation)
        .into_iter()
        .filter(|s| roc_curve(labelled(evaluation, Some(s)).collect()).is_none())
        .collect();
    if !one_class.is_empty() {
        // A source with one of the two classes has no ROC of its own: say so, not leave it out.
        chart
            .draw_series(std::iter::empty::<PathElement<(f64, f64)>>())?
            .label(format!(
                "no own {positive} vs {negative} ROC: {}",
                one_class.join(", ")
            ))
            .legend(|(x, y)| PathElement::new([(x, y), (x, y)], WHITE));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font(("sans-serif", 18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
}

const BINS: usize = 10;

/// Per probability bin: (mean predicted probability, share positive, images).
fn reliability_bins(scored: impl Iterator<Item = (f32, bool)>) -> Vec<(f64, f64, usize)> {
    let mut sums = [(0.0f64, 0usize, 0usize); BINS];
    for (score, positive) in scored {
        let bin = ((score * BINS as f32) as usize).min(BINS - 1);
        sums[bin].0 += f64::from(score);
        sums[bin].1 += usize::from(positive);
        sums[bin].2 += 1;
    }
    sums.iter()
        .filter(|s| s.2 > 0)
        .map(|&(sum, positives, n)| (sum / n as f64, positives as f64 / n as f64, n))
        .collect()
}

fn reliability<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    evaluation: &Evaluation<'_>,
) -> Drawn<DB> {
    let positive = evaluation.classes.0;
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Reliability: P({positive}) vs observed"),
            ("sans-serif", 28),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..1f64, 0f64..1f64)?;
    chart
        .configure_mesh()
        .x_desc(format!("predicted probability of {positive} ({BINS} bins)"))
        .y_desc(format!("share that is {positive}"))
        .label_style(("sans-serif", 18))
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            [(0.0, 0.0), (1.0, 1.0)],
            ShapeStyle::from(&BLACK.mix(0.3)),
        ))?
        .label("perfectly calibrated")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLACK.mix(0.3)));
    let mut groups = vec![("pooled".to_owned(), None)];
    groups.extend(
        sources(evaluation)
            .into_iter()
            .map(|s| (s.to_owned(), Some(s))),
    );
    for (i, (name, source)) in groups.iter().enumerate() {
        let bins = reliability_bins(labelled(evaluation, *source));
        if bins.is_empty() {
            continue;
        }
        let colour = PALETTE[i % PALETTE.len()];
        let images: usize = bins.iter().map(|b| b.2).sum();
        let points: Vec<(f64, f64)> = bins.iter().map(|b| (b.0, b.1)).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))?
            .label(format!("{name} ({images} images)"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(3)));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, colour.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(("sans-serif", 18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
}

fn confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    evaluation: &Evaluation<'_>,
) -> Drawn<DB> {
    let (positive, negative) = evaluation.classes;
    let mut counts = [[0usize; 2]; 2]; // [truth][called], positive first
    for (score, truth) in labelled(evaluation, None) {
        let called = score >= evaluation.threshold;
        counts[usize::from(!truth)][usize::from(!called)] += 1;
    }
    let total = counts.iter().flatten().sum::<usize>().max(1);
    let names = [positive, negative];
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("Confusion matrix at threshold {:.3}", evaluation.threshold),
            ("sans-serif", 28),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(0f64..2f64, 0f64..2f64)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(format!("predicted (left {positive}, right {negative})"))
        .y_desc(format!("truth (top {positive}, bottom {negative})"))
        .x_labels(0)
        .y_labels(0)
        .label_style(("sans-serif", 18))
        .draw()?;
    for (truth, row) in counts.iter().enumerate() {
        for (called, &n) in row.iter().enumerate() {
            let (x, y) = (called as f64, 1.0 - truth as f64);
            let share = n as f64 / total as f64;
            let shade = (255.0 * (1.0 - 0.7 * share)) as u8;
            chart.draw_series([Rectangle::new(
                [(x, y), (x + 1.0, y + 1.0)],
                RGBColor(shade, shade, 255).filled(),
            )])?;
            chart.draw_series([Rectangle::new([(x, y), (x + 1.0, y + 1.0)], BLACK)])?;
            let centred = |size| {
                ("sans-serif", size)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Center))
            };
            let cell = format!("{} called {}", names[truth], names[called]);
            chart.draw_series([
                Text::new(cell, (x + 0.5, y + 0.62), centred(18)),
                Text::new(
                    format!("{n} ({:.0}%)", share * 100.0),
                    (x + 0.5, y + 0.45),
                    centred(28),
                ),
            ])?;
        }
    }
    Ok(())
}

fn rates<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    evaluation: &Evaluation<'_>,
) -> Drawn<DB> {
    let (positive, negative) = evaluation.classes;
    let table = evaluation.by_source;
    let n = table.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption("Flagged and silently wrong, per source", ("sans-serif", 28))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..n as f64, 0f64..1.1f64)?;
    let names: Vec<String> = table
        .iter()
        .map(|(name, m)| format!("{name} ({})", m.images))
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("source (images)")
        .y_desc("share")
        .x_labels(2 * n + 1)
        .x_label_formatter(&|v| {
            let half = (v * 2.0).round() as usize;
            if half % 2 == 1 {
                names.get(half / 2).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .label_style(("sans-serif", 18))
        .draw()?;
    // The table's shares: flagged of all images, silently wrong of the two classes' images.
    let share = |k: usize, m: &SourceMetrics| match k {
        0 => (m.flagged, m.images),
        _ => (m.silent_wrong, m.positives + m.negatives),
    };
    let bars = [
        ("flagged (of all images)".to_owned(), PALETTE[1]),
        (
            format!("silently wrong: wrong, no flag (of {positive} + {negative})"),
            PALETTE[3],
        ),
    ];
    for (k, (label, colour)) in bars.into_iter().enumerate() {
        let x = |i: usize| i as f64 + 0.15 + 0.35 * k as f64;
        let values: Vec<(f64, String)> = table
            .values()
            .map(|m| {
                let (count, of) = share(k, m);
                if of == 0 {
                    (0.0, "-".to_owned())
                } else {
                    let value = count as f64 / of as f64;
                    (value, format!("{:.0}% ({count})", value * 100.0))
                }
            })
            .collect();
        chart.draw_series(values.iter().enumerate().map(|(i, (value, text))| {
            Text::new(
                text.clone(),
                (x(i) + 0.175, *value),
                ("sans-serif", 18)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            )
        }))?;
        chart
            .draw_series(values.iter().enumerate().map(|(i, (value, _))| {
                Rectangle::new([(x(i), 0.0), (x(i) + 0.35, *value)], colour.filled())
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], colour.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 18))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
}

/// A drawing backend whose text is drawn with font8x8's glyphs (scaled by whole pixels: 8 px
/// below size 24, 16 px from it) and everything else by the wrapped backend.
pub struct Font8x8<B>(pub B);

fn glyph_scale(size: f64) -> i32 {
    if size >= 24.0 { 2 } else { 1 }
}

impl<B: DrawingBackend> DrawingBackend for Font8x8<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: plotters_backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: plotters_backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_path(path, style)
    }

    fn draw_circle<S: plotters_backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: plotters_backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vertices: I,
        style: &S,
    ) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        self.0.fill_polygon(vertices, style)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> std::result::Result<(u32, u32), DrawingErrorKind<B::ErrorType>> {
        let scale = glyph_scale(style.size()) as u32;
        Ok((8 * scale * text.chars().count() as u32, 8 * scale))
    }

    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> std::result::Result<(), DrawingErrorKind<B::ErrorType>> {
        let scale = glyph_scale(style.size());
        let (width, height) = (8 * scale * text.chars().count() as i32, 8 * scale);
        let anchor = style.anchor();
        let dx = match anchor.h_pos {
            HPos::Left => 0,
            HPos::Center => -width / 2,
            HPos::Right => -width,
        };
        let dy = match anchor.v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let color = style.color();
        let (w, h) = self.get_size();
        for (i, c) in text.chars().enumerate() {
            let code = if c.is_ascii() {
                c as usize
            } else {
                usize::from(b'?')
            };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            for (row, bits) in glyph.iter().enumerate() {
                for column in 0..8 {
                    if bits >> column & 1 == 0 {
                        continue;
                    }
                    for (sx, sy) in (0..scale).flat_map(|sx| (0..scale).map(move |sy| (sx, sy))) {
                        let x = dx + (i as i32 * 8 + column) * scale + sx;
                        let y = dy + row as i32 * scale + sy;
                        let (x, y) = transform.transform(x, y);
                        let (x, y) = (pos.0 + x, pos.1 + y);
                        if x >= 0 && y >= 0 && x < w as i32 && y < h as i32 {
                            self.0.draw_pixel((x, y), color)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_of_a_perfect_ranking_has_area_one_and_of_ties_one_half() {
        let perfect = roc_curve(vec![(0.9, true), (0.8, true), (0.2, false)]).unwrap();
        assert!((area(&perfect) - 1.0).abs() < 1e-12);
        let tied = roc_curve(vec![(0.5, true), (0.5, false)]).unwrap();
        assert!((area(&tied) - 0.5).abs() < 1e-12);
        assert!(roc_curve(vec![(0.5, true)]).is_none());
    }

    #[test]
    fn reliability_bins_average_what_falls_in_them() {
        let bins = reliability_bins(
            [(0.05, false), (0.15, true), (0.95, true), (0.91, false)].into_iter(),
        );
        assert_eq!(bins.len(), 3);
        assert!((bins[2].0 - 0.93).abs() < 1e-6 && (bins[2].1 - 0.5).abs() < 1e-12);
        assert_eq!(bins[2].2, 2);
    }
}
