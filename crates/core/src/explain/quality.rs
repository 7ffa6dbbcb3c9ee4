//! Measures of an explanation's quality, the same for every explainer:
//!
//! - **faithfulness**: deletion and insertion AUC (Petsiuk et al. 2018). Pixels are removed (set
//!   to 0, the lung mean of the standardised input) or revealed in order of relevance, and the
//!   target probability is followed; a faithful map makes it fall fast (low deletion AUC) and
//!   rise fast (high insertion AUC);
//! - **localisation**: the share of heatmap mass inside the lung mask. A low share warns that
//!   the model may read text markers, devices or the border rather than the lungs;
//! - **sanity**: the rank correlation between the heatmap for the trained model and for the same
//!   architecture with random weights (Adebayo et al. 2018). A map that barely changes does not
//!   depend on what the model learnt.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::Heatmap;
use crate::Result;
use crate::metrics::average_ranks;
use crate::models::Classifier;

/// The quality measures of one explanation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Deletion and insertion AUC; `None` when not computed (they cost 34 forward passes).
    pub deletion_auc: Option<f64>,
    pub insertion_auc: Option<f64>,
    /// Share of heatmap mass inside the lungs; `None` for an all-zero heatmap.
    pub lung_mass_share: Option<f64>,
    /// Spearman correlation with the map for a randomly initialised model; `None` if not run.
    pub randomisation_correlation: Option<f64>,
}

/// Steps of the deletion and insertion curves (each step is one forward pass, batched).
pub const CURVE_STEPS: usize = 16;

/// Share of the heatmap's mass where `lung_mask` > 0.5.
#[must_use]
pub fn lung_mass_share(heatmap: &Heatmap, lung_mask: &[f32]) -> Option<f64> {
    let total: f64 = heatmap.values.iter().map(|&v| f64::from(v)).sum();
    if total <= 0.0 {
        return None;
    }
    let inside: f64 = heatmap
        .values
        .iter()
        .zip(lung_mask)
        .filter(|(_, m)| **m > 0.5)
        .map(|(&v, _)| f64::from(v))
        .sum();
    Some(inside / total)
}

/// Deletion and insertion AUC of `heatmap` for class `target` on `input` `[1, 1, H, W]`.
pub fn deletion_insertion(
    model: &dyn Classifier,
    input: &Tensor,
    heatmap: &Heatmap,
    target: usize,
) -> Result<(f64, f64)> {
    let n = heatmap.values.len();
    let mut order: Vec<usize> = (0..n).collect();
    // Most relevant first; ties in index order so the curve is deterministic.
    order.sort_by(|&a, &b| {
        heatmap.values[b]
            .total_cmp(&heatmap.values[a])
            .then(a.cmp(&b))
    });
    let pixels = Vec::<f32>::try_from(input.f_to_device(tch::Device::Cpu)?.f_view([-1])?)?;
    let mut batch = Vec::with_capacity(2 * (CURVE_STEPS + 1) * n);
    for insertion in [false, true] {
        for step in 0..=CURVE_STEPS {
            let k = n * step / CURVE_STEPS;
            let mut image = if insertion {
                vec![0.0; n]
            } else {
                pixels.clone()
            };
            for &i in &order[..k] {
                image[i] = if insertion { pixels[i] } else { 0.0 };
            }
            batch.extend(image);
        }
    }
    let shape = input.size();
    let batch = Tensor::from_slice(&batch).view([
        2 * (CURVE_STEPS as i64 + 1),
        shape[1],
        shape[2],
        shape[3],
    ]);
    let probs = crate::models::target_probabilities(model, &batch, target)?
        .f_to_device(tch::Device::Cpu)?;
    let probs = Vec::<f32>::try_from(probs)?;
    let (deletion, insertion) = probs.split_at(CURVE_STEPS + 1);
    Ok((trapezoid(deletion), trapezoid(insertion)))
}

/// Area under equally spaced samples over [0, 1].
fn trapezoid(ys: &[f32]) -> f64 {
    let steps = (ys.len() - 1) as f64;
    ys.windows(2)
        .map(|w| f64::from(w[0] + w[1]) / 2.0)
        .sum::<f64>()
        / steps
}

/// Spearman rank correlation (ties get their average rank); 0 when either side is constant.
#[must_use]
pub fn spearman(a: &[f32], b: &[f32]) -> f64 {
    pearson(&average_ranks(a), &average_ranks(b))
}

/// Pearson correlation; 0 when either side is constant.
#[must_use]
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut cov, mut va, mut vb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        cov += (x - ma) * (y - mb);
        va += (x - ma).powi(2);
        vb += (y - mb).powi(2);
    }
    if va <= 0.0 || vb <= 0.0 {
        0.0
    } else {
        cov / (va * vb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lung_share_counts_mass_inside() {
        let h = Heatmap::from_relevance(vec![1.0, 1.0, 2.0, 0.0], 2, 2);
        let share = lung_mass_share(&h, &[1.0, 0.0, 1.0, 1.0]).unwrap();
        assert!((share - 0.75).abs() < 1e-6);
        assert_eq!(
            lung_mass_share(&Heatmap::from_relevance(vec![0.0; 4], 2, 2), &[1.0; 4]),
            None
        );
    }

    #[test]
    fn rank_correlation() {
        assert!((spearman(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]) - 1.0).abs() < 1e-12);
        assert!((spearman(&[1.0, 2.0, 3.0], &[3.0, 1.0, 0.0]) + 1.0).abs() < 1e-12);
        assert_eq!(spearman(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
    }

    #[test]
    fn trapezoid_of_a_line() {
        assert!((trapezoid(&[1.0, 0.5, 0.0]) - 0.5).abs() < 1e-12);
    }
}
