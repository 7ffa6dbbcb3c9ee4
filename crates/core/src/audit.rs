//! The shortcut audit: what the classifier's frozen features know. A linear probe trained on
//! the pooled features to predict the *source* of an image, beside one that predicts the
//! *class*, and one that tells the sources of one class apart (where the class cannot help):
//! when the last is far above chance, the features carry the hospital, and a model can use it.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn, nn::Module, nn::OptimizerConfig};

use crate::Result;

/// How well a linear probe predicts one target from the features, on held-out patients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// What the probe predicts, e.g. `source` or `class`.
    pub target: String,
    /// The values it tells apart.
    pub classes: Vec<String>,
    pub train_images: usize,
    pub test_images: usize,
    /// Accuracy on the test images.
    pub accuracy: f64,
    /// Accuracy of always answering the test images' most frequent value.
    pub majority_baseline: f64,
    /// Mean of the per-value recalls: 1/classes means chance, whatever the balance.
    pub balanced_accuracy: f64,
}

/// Fits a multinomial logistic regression on `train` rows of `features` (`[n, dim]`,
/// row-major) to predict `labels` (indices into `classes`), standardising the features on the
/// training rows, and measures it on `test` rows. Deterministic for a given `seed`.
pub fn probe(
    target: &str,
    features: &[f32],
    dim: usize,
    labels: &[usize],
    classes: &[String],
    (train, test): (&[usize], &[usize]),
    seed: u64,
) -> Result<ProbeResult> {
    tch::manual_seed(seed as i64);
    let rows = |ix: &[usize]| -> Tensor {
        let flat: Vec<f32> = ix
            .iter()
            .flat_map(|&i| features[i * dim..(i + 1) * dim].iter().copied())
            .collect();
        Tensor::from_slice(&flat).view([ix.len() as i64, dim as i64])
    };
    let targets = |ix: &[usize]| -> Tensor {
        Tensor::from_slice(&ix.iter().map(|&i| labels[i] as i64).collect::<Vec<_>>())
    };
    let (xt, xs) = (rows(train), rows(test));
    let mean = xt.mean_dim(0, true, Kind::Float);
    let std = xt.std_dim(0, false, true) + 1e-6;
    let (xt, xs) = ((&xt - &mean) / &std, (&xs - &mean) / &std);
    let (yt, ys) = (targets(train), targets(test));
    let vs = nn::VarStore::new(Device::Cpu);
    let linear = nn::linear(
        vs.root(),
        dim as i64,
        classes.len() as i64,
        nn::LinearConfig::default(),
    );
    let mut opt = nn::Adam::default().build(&vs, 0.05)?;
    opt.set_weight_decay(1e-3);
    for _ in 0..300 {
        let loss = linear.forward(&xt).cross_entropy_for_logits(&yt);
        opt.backward_step(&loss);
    }
    let predicted = tch::no_grad(|| linear.forward(&xs).argmax(-1, false));
    let predicted = Vec::<i64>::try_from(predicted)?;
    let truth = Vec::<i64>::try_from(ys)?;
    let correct = predicted.iter().zip(&truth).filter(|(p, t)| p == t).count();
    let n = truth.len().max(1) as f64;
    let mut counts = vec![0usize; classes.len()];
    let mut hits = vec![0usize; classes.len()];
    for (&p, &t) in predicted.iter().zip(&truth) {
        counts[t as usize] += 1;
        hits[t as usize] += usize::from(p == t);
    }
    let present: Vec<usize> = (0..classes.len()).filter(|&c| counts[c] > 0).collect();
    let balanced = present
        .iter()
        .map(|&c| hits[c] as f64 / counts[c] as f64)
        .sum::<f64>()
        / present.len().max(1) as f64;
    Ok(ProbeResult {
        target: target.to_owned(),
        classes: classes.to_vec(),
        train_images: train.len(),
        test_images: test.len(),
        accuracy: correct as f64 / n,
        majority_baseline: counts.iter().copied().max().unwrap_or(0) as f64 / n,
        balanced_accuracy: balanced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn probe_finds_a_linear_signal_and_not_noise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let (n, dim) = (400, 16);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        // Feature 0 carries the label; the rest is noise.
        let features: Vec<f32> = (0..n * dim)
            .map(|k| {
                let noise = rng.random_range(-1.0f32..1.0);
                if k % dim == 0 {
                    noise + 2.0 * labels[k / dim] as f32
                } else {
                    noise
                }
            })
            .collect();
        let classes = vec!["a".to_owned(), "b".to_owned()];
        let train: Vec<usize> = (0..300).collect();
        let test: Vec<usize> = (300..n).collect();
        let found = probe("x", &features, dim, &labels, &classes, (&train, &test), 1).unwrap();
        assert!(found.accuracy > 0.8, "{found:?}");
        assert!((found.majority_baseline - 0.5).abs() < 1e-9);
        // Labels unrelated to the features: near chance.
        let random: Vec<usize> = (0..n).map(|_| rng.random_range(0..2)).collect();
        let chance = probe("y", &features, dim, &random, &classes, (&train, &test), 1).unwrap();
        assert!(chance.balanced_accuracy < 0.65, "{chance:?}");
    }
}
