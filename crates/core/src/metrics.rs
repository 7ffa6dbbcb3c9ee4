//! Measures of a classifier (ROC-AUC, confusion matrix at a threshold) and of a segmentation
//! (Dice, `IoU` with an "ignore" label), and the paired comparison of two models on the same
//! images.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Area under the ROC curve: the probability that a random positive scores above a random
/// negative, ties counting one half (Mann-Whitney U). `None` without both classes.
#[must_use]
pub fn roc_auc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    let rank = average_ranks(scores);
    let n_pos = positive.iter().filter(|&&p| p).count() as f64;
    let n_neg = positive.len() as f64 - n_pos;
    if n_pos == 0.0 || n_neg == 0.0 {
        return None;
    }
    let rank_sum: f64 = rank
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(r, _)| r)
        .sum();
    Some((rank_sum - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))
}

/// 1-based ranks of `values` in ascending order; equal values share the average of their ranks.
#[must_use]
pub fn average_ranks(values: &[f32]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0f64; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && values[order[j + 1]] == values[order[i]] {
            j += 1;
        }
        let average = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = average;
        }
        i = j + 1;
    }
    ranks
}

/// Counts of a binary decision at a threshold (score >= threshold means positive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub true_positive: usize,
    pub false_negative: usize,
    pub false_positive: usize,
    pub true_negative: usize,
}

impl Confusion {
    #[must_use]
    pub fn at(scores: &[f32], positive: &[bool], threshold: f32) -> Self {
        let mut c = Self::default();
        for (&s, &p) in scores.iter().zip(positive) {
            match (p, s >= threshold) {
                (true, true) => c.true_positive += 1,
                (true, false) => c.false_negative += 1,
                (false, true) => c.false_positive += 1,
                (false, false) => c.true_negative += 1,
            }
        }
        c
    }

    #[must_use]
    pub fn accuracy(&self) -> f64 {
        let total =
            self.true_positive + self.false_negative + self.false_positive + self.true_negative;
        ratio(self.true_positive + self.true_negative, total)
    }

    /// Recall of the positive class.
    #[must_use]
    pub fn sensitivity(&self) -> f64 {
        ratio(self.true_positive, self.true_positive + self.false_negative)
    }

    /// Recall of the negative class.
    #[must_use]
    pub fn specificity(&self) -> f64 {
        ratio(self.true_negative, self.true_negative + self.false_positive)
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// The threshold maximising sensitivity + specificity (Youden's J) over the observed scores,
/// placed halfway between the best cut's score and the next lower score so that it does not sit
/// on a training example.
#[must_use]
pub fn youden_threshold(scores: &[f32], positive: &[bool]) -> f32 {
    let mut best = (f64::NEG_INFINITY, 0.5);
    let mut candidates = scores.to_vec();
    candidates.sort_by(f32::total_cmp);
    candidates.dedup();
    for (i, &t) in candidates.iter().enumerate() {
        let c = Confusion::at(scores, positive, t);
        let j = c.sensitivity() + c.specificity();
        if j > best.0 {
            let below = if i == 0 { 0.0 } else { candidates[i - 1] };
            best = (j, f32::midpoint(t, below));
        }
    }
    best.1
}

/// Pixel counts of a predicted mask against a reference, where the reference may mark pixels
/// to ignore.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlap {
    pub intersection: u64,
    pub predicted: u64,
    pub reference: u64,
}

impl Overlap {
    /// `predicted`: non-zero is lung. `reference`: 255 lung, 0 background, anything else ignored
    /// (the shared masks use 127 for devices).
    #[must_use]
    pub fn of(predicted: &[u8], reference: &[u8]) -> Self {
        let mut o = Self::default();
        for (&p, &r) in predicted.iter().zip(reference) {
            if r != 0 && r != 255 {
                continue;
            }
            let (p, r) = (p != 0, r == 255);
            o.intersection += u64::from(p && r);
            o.predicted += u64::from(p);
            o.reference += u64::from(r);
        }
        o
    }

    #[must_use]
    pub fn dice(&self) -> f64 {
        let denominator = self.predicted + self.reference;
        if denominator == 0 {
            1.0
        } else {
            2.0 * self.intersection as f64 / denominator as f64
        }
    }

    #[must_use]
    pub fn iou(&self) -> f64 {
        let union = self.predicted + self.reference - self.intersection;
        if union == 0 {
            1.0
        } else {
            self.intersection as f64 / union as f64
        }
    }
}

/// Resamples drawn by [`compare_paired`]: enough that the interval's ends move by well under
/// a thousandth of a Dice from one seed to another.
pub const BOOTSTRAP_RESAMPLES: usize = 4000;

/// Model A against model B on the same images: a statistic of each (a mean Dice, an AUC), A's
/// lead, and the 95% interval of that lead over bootstrap resamples of the images.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub images: usize,
    pub a: f64,
    pub b: f64,
    /// `a - b`: positive where A is ahead.
    pub difference: f64,
    /// 2.5th and 97.5th percentiles of the difference over the resamples.
    pub low: f64,
    pub high: f64,
}

/// Compares two models on `n` images through `statistic`, which gives (A's, B's) value on a
/// list of image indices, or `None` where it has no value there (an AUC without both classes).
/// The resamples are paired (each draws images, with replacement, and takes both models'
/// results for them), so what the images share does not widen the interval. `None` when the
/// whole set has no value, or fewer than half the resamples do. Seeded: the same inputs give the
/// same interval.
pub fn compare_paired(
    n: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> Option<(f64, f64)>,
) -> Option<Comparison> {
    let all: Vec<usize> = (0..n).collect();
    let (a, b) = statistic(&all)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut drawn = vec![0; n];
    let mut differences: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .filter_map(|_| {
            for i in &mut drawn {
                *i = rng.random_range(0..n);
            }
            statistic(&drawn).map(|(a, b)| a - b)
        })
        .collect();
    if differences.len() < BOOTSTRAP_RESAMPLES / 2 {
        return None;
    }
    differences.sort_by(f64::total_cmp);
    let at = |q: f64| differences[((differences.len() - 1) as f64 * q).round() as usize];
    Some(Comparison {
        images: n,
        a,
        b,
        difference: a - b,
        low: at(0.025),
        high: at(0.975),
    })
}

/// The means of two paired lists over the given indices: [`compare_paired`]'s statistic for a
/// per-image measure such as Dice.
#[must_use]
pub fn paired_means(a: &[f64], b: &[f64], indices: &[usize]) -> Option<(f64, f64)> {
    if indices.is_empty() {
        return None;
    }
    let n = indices.len() as f64;
    let sum = |v: &[f64]| indices.iter().map(|&i| v[i]).sum::<f64>() / n;
    Some((sum(a), sum(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_a_hand_count() {
        // Pairs (pos, neg): 0.9>0.3, 0.9>0.6, 0.5>0.3, 0.5<0.6, 0.6=0.6 (half) -> 3.5 / 6
        let scores = [0.9, 0.5, 0.6, 0.3, 0.6];
        let positive = [true, true, true, false, false];
        assert!((roc_auc(&scores, &positive).unwrap() - 4.5 / 6.0).abs() < 1e-12);
        assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
        assert!((roc_auc(&[0.1, 0.2], &[false, true]).unwrap() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn confusion_and_rates() {
        let c = Confusion::at(&[0.9, 0.4, 0.7, 0.1], &[true, true, false, false], 0.5);
        assert_eq!(
            (
                c.true_positive,
                c.false_negative,
                c.false_positive,
                c.true_negative
            ),
            (1, 1, 1, 1)
        );
        assert!((c.accuracy() - 0.5).abs() < 1e-12);
        assert!((c.sensitivity() - 0.5).abs() < 1e-12 && (c.specificity() - 0.5).abs() < 1e-12);
    }

    #[test]
    fn youden_separates_separable_scores() {
        let t = youden_threshold(&[0.2, 0.3, 0.8, 0.7], &[false, false, true, true]);
        assert!((t - 0.5).abs() < 1e-6, "{t}");
        let t = youden_threshold(
            &[0.1, 0.6, 0.4, 0.9, 0.8],
            &[false, false, true, true, true],
        );
        // Missing the positive at 0.4 (J = 2/3 + 1) beats flagging the negative at 0.6 (J = 1 + 1/2).
        assert!((t - 0.7).abs() < 1e-6, "{t}");
    }

    #[test]
    fn dice_and_iou_skip_ignored_pixels() {
        let predicted = [255, 255, 0, 0, 255];
        let reference = [255, 0, 255, 0, 127];
        let o = Overlap::of(&predicted, &reference);
        assert_eq!((o.intersection, o.predicted, o.reference), (1, 2, 2));
        assert!((o.dice() - 0.5).abs() < 1e-12);
        assert!((o.iou() - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn a_constant_lead_has_a_point_interval_and_a_tie_straddles_zero() {
        let b = [0.90, 0.95, 0.80, 0.97, 0.85];
        let a: Vec<f64> = b.iter().map(|v| v + 0.01).collect();
        let c = compare_paired(5, 7, |i| paired_means(&a, &b, i)).unwrap();
        assert!((c.difference - 0.01).abs() < 1e-12, "{c:?}");
        // Paired: every resample's lead is exactly 0.01, however different the images are.
        assert!(
            (c.low - 0.01).abs() < 1e-12 && (c.high - 0.01).abs() < 1e-12,
            "{c:?}"
        );

        // A ahead on half the images by as much as it is behind on the others: no verdict.
        let a = [0.91, 0.94, 0.81, 0.96, 0.86, 0.84];
        let b = [0.90, 0.95, 0.80, 0.97, 0.85, 0.85];
        let c = compare_paired(6, 7, |i| paired_means(&a, &b, i)).unwrap();
        assert!(
            c.difference.abs() < 1e-12 && c.low < 0.0 && c.high > 0.0,
            "{c:?}"
        );
    }

    #[test]
    fn a_model_behind_on_every_image_is_behind_and_the_seed_repeats() {
        let b: Vec<f64> = (0..30).map(|i| 0.9 + f64::from(i % 7) * 0.01).collect();
        let a: Vec<f64> = b
            .iter()
            .enumerate()
            .map(|(i, v)| v - 0.005 - 0.01 * (i % 3) as f64)
            .collect();
        let c = compare_paired(30, 1, |i| paired_means(&a, &b, i)).unwrap();
        assert!(c.low <= c.difference && c.difference <= c.high, "{c:?}");
        assert!(c.low >= -0.025 && c.high <= -0.005, "{c:?}");
        assert_eq!(Some(c), compare_paired(30, 1, |i| paired_means(&a, &b, i)));
        assert_ne!(Some(c), compare_paired(30, 2, |i| paired_means(&a, &b, i)));
    }

    #[test]
    fn an_auc_comparison_skips_resamples_with_one_class_and_refuses_without_both() {
        let positive = [true, false, true, false, true, false, true, false];
        let a = [0.9f32, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4];
        let b = [0.4f32, 0.6, 0.8, 0.2, 0.3, 0.7, 0.6, 0.4];
        let auc = |s: &[f32], i: &[usize]| {
            let (s, p): (Vec<f32>, Vec<bool>) = i.iter().map(|&k| (s[k], positive[k])).unzip();
            roc_auc(&s, &p)
        };
        let c = compare_paired(8, 3, |i| auc(&a, i).zip(auc(&b, i))).unwrap();
        let all: Vec<usize> = (0..8).collect();
        assert_eq!((c.a, c.b), (1.0, auc(&b, &all).unwrap()), "{c:?}");
        assert!(
            c.low <= c.difference && c.difference <= c.high && c.high <= 1.0,
            "{c:?}"
        );
        let one_class = [true; 8];
        let none = compare_paired(8, 3, |i| {
            let p: Vec<bool> = i.iter().map(|&k| one_class[k]).collect();
            roc_auc(&[0.5; 8][..i.len()], &p).map(|v| (v, v))
        });
        assert_eq!(none, None);
    }
}
