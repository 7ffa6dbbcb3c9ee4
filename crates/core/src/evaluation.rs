//! How a classifier is measured on held-out images: ROC-AUC and the confusion at a threshold
//! ([`ClassifierMetrics`]), per source with flags and silent errors ([`by_source`]), and a
//! source the model never saw ([`held_out_of`]). Training reports them; `cxr eval` and the
//! model cards use the same functions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::{Confusion, roc_auc};
use crate::trust::Flag;

/// Held-out measurements of a classifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifierMetrics {
    pub images: usize,
    pub roc_auc: Option<f64>,
    pub threshold: f32,
    pub accuracy: f64,
    pub sensitivity: f64,
    pub specificity: f64,
    pub confusion: Confusion,
}

impl ClassifierMetrics {
    /// Metrics of positive-class probabilities `scores` against `positive` at `threshold`.
    #[must_use]
    pub fn measure(scores: &[f32], positive: &[bool], threshold: f32) -> Self {
        let confusion = Confusion::at(scores, positive, threshold);
        Self {
            images: scores.len(),
            roc_auc: roc_auc(scores, positive),
            threshold,
            accuracy: confusion.accuracy(),
            sensitivity: confusion.sensitivity(),
            specificity: confusion.specificity(),
            confusion,
        }
    }
}

/// Measures of a classifier on the images of one source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceMetrics {
    pub images: usize,
    pub positives: usize,
    pub negatives: usize,
    /// Images whose label is neither the positive nor the negative class (`pneumonia`, even
    /// when the model learnt it as a third class, or `lung nodule`).
    #[serde(default)]
    pub others: usize,
    /// Accuracy over the images of the two classes at the threshold.
    pub accuracy: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub specificity: Option<f64>,
    /// Only when the source has images of both classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roc_auc: Option<f64>,
    /// Mean probability of the positive class.
    pub mean_positive_probability: f64,
    /// Share of the other-label images called positive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub others_called_positive: Option<f64>,
    /// How many images carried each flag.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flags: BTreeMap<String, usize>,
    /// Images with at least one flag.
    #[serde(default)]
    pub flagged: usize,
    /// Images of the two classes called wrong at the threshold without any flag: the errors a
    /// reviewer is not warned of.
    #[serde(default)]
    pub silent_wrong: usize,
    /// ROC-AUC of the other-label images against the negatives by 1 - P(negative class), where
    /// a source has both: within one hospital, does the score respond to disease (NIH
    /// pneumonia against NIH no finding)?
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others_vs_negatives_auc: Option<f64>,
}

/// One scored image, for [`by_source`].
pub struct Scored<'a> {
    pub source: &'a str,
    pub label: &'a str,
    /// Probability of the positive class.
    pub score: f32,
    /// 1 - probability of the negative class (`normal`): for a two-class model, `score`.
    pub abnormal: f32,
    pub flags: &'a [Flag],
}

/// Metrics per source at `threshold`: the table that tells a hospital from a disease.
#[must_use]
pub fn by_source(
    scored: &[Scored<'_>],
    classes: &[String],
    threshold: f32,
) -> BTreeMap<String, SourceMetrics> {
    let mut groups: BTreeMap<&str, Vec<&Scored<'_>>> = BTreeMap::new();
    for s in scored {
        groups.entry(s.source).or_default().push(s);
    }
    groups
        .into_iter()
        .map(|(source, rows)| {
            let of = |class: usize| -> Vec<f32> {
                rows.iter()
                    .filter(|r| r.label == classes[class])
                    .map(|r| r.score)
                    .collect()
            };
            let (pos, neg) = (of(0), of(1));
            let is_other = |label: &str| !classes.iter().take(2).any(|c| c == label);
            let others: Vec<f32> = rows
                .iter()
                .filter(|r| is_other(r.label))
                .map(|r| r.score)
                .collect();
            let called = |v: &[f32]| v.iter().filter(|&&s| s >= threshold).count();
            let share = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
            let correct = called(&pos) + neg.len() - called(&neg);
            let mut flags = BTreeMap::new();
            for flag in rows.iter().flat_map(|r| r.flags) {
                *flags.entry(flag.name().to_owned()).or_default() += 1;
            }
            let wrong = |r: &&&Scored<'_>| {
                (r.label == classes[0] && r.score < threshold)
                    || (r.label == classes[1] && r.score >= threshold)
            };
            let silent_wrong = rows
                .iter()
                .filter(wrong)
                .filter(|r| r.flags.is_empty())
                .count();
            // The other-label images against the negatives, ranked by 1 - P(negative): does
            // the score respond to disease of any kind?
            let (contrast, contrast_other): (Vec<f32>, Vec<bool>) = rows
                .iter()
                .filter(|r| is_other(r.label) || r.label == classes[1])
                .map(|r| (r.abnormal, is_other(r.label)))
                .unzip();
            let scores: Vec<f32> = pos.iter().chain(&neg).copied().collect();
            let truth: Vec<bool> = (0..scores.len()).map(|i| i < pos.len()).collect();
            let metrics = SourceMetrics {
                images: rows.len(),
                positives: pos.len(),
                negatives: neg.len(),
                others: others.len(),
                accuracy: share(correct, pos.len() + neg.len()).unwrap_or(0.0),
                sensitivity: share(called(&pos), pos.len()),
                specificity: share(neg.len() - called(&neg), neg.len()),
                roc_auc: roc_auc(&scores, &truth),
                mean_positive_probability: rows.iter().map(|r| f64::from(r.score)).sum::<f64>()
                    / rows.len().max(1) as f64,
                others_called_positive: share(called(&others), others.len()),
                flags,
                flagged: rows.iter().filter(|r| !r.flags.is_empty()).count(),
                silent_wrong,
                others_vs_negatives_auc: roc_auc(&contrast, &contrast_other),
            };
            (source.to_owned(), metrics)
        })
        .collect()
}

/// The source whose images the classifier gets most wrong (lowest accuracy over the two
/// classes), with that accuracy.
#[must_use]
pub fn worst_source(table: &BTreeMap<String, SourceMetrics>) -> Option<(&str, f64)> {
    table
        .iter()
        .filter(|(_, m)| m.positives + m.negatives > 0)
        .map(|(s, m)| (s.as_str(), m.accuracy))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// A model trained without `source`, measured at `threshold` on `scored`: every image of the
/// source, and the other sources' test patients, against whose images of the class the
/// source lacks its own are ranked, and whose flags are what the fold's trust model costs the
/// sources it was fitted on. Training and `cxr eval --leave-one-source-out` both measure so.
#[must_use]
pub fn held_out_of(
    source: &str,
    scored: &[Scored<'_>],
    classes: &[String],
    threshold: f32,
) -> HeldOutSource {
    let mut seen = by_source(scored, classes, threshold);
    let metrics = seen.remove(source).unwrap_or_default();
    let lacking = match (metrics.positives > 0, metrics.negatives > 0) {
        (true, false) => Some(&classes[1]),
        (false, true) => Some(&classes[0]),
        _ => None,
    };
    let auc_against_other_class = lacking.and_then(|lacking| {
        let ranked: Vec<&Scored<'_>> = scored
            .iter()
            .filter(|r| {
                if r.source == source {
                    classes.iter().any(|c| c == r.label)
                } else {
                    r.label == lacking
                }
            })
            .collect();
        roc_auc(
            &ranked.iter().map(|r| r.score).collect::<Vec<_>>(),
            &ranked
                .iter()
                .map(|r| r.label == classes[0])
                .collect::<Vec<_>>(),
        )
    });
    HeldOutSource {
        source: source.to_owned(),
        threshold,
        metrics,
        auc_against_other_class,
        seen,
    }
}

/// A model trained without one source, measured on that source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldOutSource {
    pub source: String,
    /// Its threshold, chosen on its own validation patients (other sources).
    pub threshold: f32,
    #[serde(flatten)]
    pub metrics: SourceMetrics,
    /// ROC-AUC of the held-out source's images against the fold's test images of the class
    /// the source lacks (from the other sources): how well unseen-source images rank.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auc_against_other_class: Option<f64>,
    /// The other sources' test patients, per source, measured by the same model: their flag
    /// rates are what its trust model costs the sources it was fitted on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub seen: BTreeMap<String, SourceMetrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within one source, the disease contrast ranks the other-label images (a learnt third
    /// class too) against the negatives by 1 - P(negative), not by P(positive).
    #[test]
    fn the_disease_contrast_ranks_by_one_minus_p_normal() {
        let classes = ["covid", "normal", "pneumonia"].map(str::to_owned);
        // P(covid) ranks the pneumonia images below the normals; 1 - P(normal) above them.
        let rows = [
            ("pneumonia", 0.01, 0.9),
            ("pneumonia", 0.02, 0.8),
            ("normal", 0.05, 0.3),
            ("normal", 0.04, 0.2),
        ]
        .map(|(label, score, abnormal)| Scored {
            source: "nih",
            label,
            score,
            abnormal,
            flags: &[],
        });
        let nih = &by_source(&rows, &classes, 0.5)["nih"];
        assert_eq!((nih.negatives, nih.others), (2, 2));
        assert_eq!(nih.others_vs_negatives_auc, Some(1.0));
        assert_eq!(nih.specificity, Some(1.0));
    }

    /// The held-out source is measured on its own; the class it lacks comes from the other
    /// sources, whose flags are counted apart.
    #[test]
    fn a_held_out_source_is_measured_against_the_others() {
        const FLAGGED: &[Flag] = &[Flag::Unfamiliar];
        let classes = ["covid".to_owned(), "normal".to_owned()];
        let row = |source, label, score, flags: &'static [Flag]| Scored {
            source,
            label,
            score,
            abnormal: score,
            flags,
        };
        let rows = [
            // The held-out COVID-19 source: one called right, one wrong and flagged, one wrong
            // and silent; its pneumonia-like other label is not ranked.
            row("far", "covid", 0.9, &[]),
            row("far", "covid", 0.2, FLAGGED),
            row("far", "covid", 0.4, &[]),
            row("far", "pneumonia", 0.95, &[]),
            // The seen sources' test images: normals ranked against the held-out covid ones.
            row("near", "normal", 0.1, &[]),
            row("near", "normal", 0.3, FLAGGED),
            row("near", "covid", 0.99, &[]),
            row("other", "normal", 0.5, &[]),
        ];
        let h = held_out_of("far", &rows, &classes, 0.5);
        assert_eq!(h.source, "far");
        assert_eq!(
            (h.metrics.images, h.metrics.positives, h.metrics.others),
            (4, 3, 1)
        );
        assert!((h.metrics.accuracy - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!((h.metrics.flagged, h.metrics.silent_wrong), (1, 1));
        // Covid scores 0.9, 0.2, 0.4 against normals 0.1, 0.3, 0.5: 6 of 9 pairs in order (the
        // seen source's covid image is not ranked).
        let auc = h.auc_against_other_class.unwrap();
        assert!((auc - 6.0 / 9.0).abs() < 1e-9, "{auc}");
        assert_eq!(h.seen.keys().collect::<Vec<_>>(), ["near", "other"]);
        assert_eq!((h.seen["near"].images, h.seen["near"].flagged), (3, 1));
        assert_eq!(h.seen["other"].flagged, 0);
    }
}
