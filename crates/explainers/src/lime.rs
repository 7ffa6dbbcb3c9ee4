//! LIME for images (Ribeiro et al. 2016), done properly: superpixels, 1000 perturbations
//! evaluated in batches, an exponential kernel, weighted ridge regression, a reported fit.

use cxr_core::explain::{
    ExplainInput, Explainer, ExplainerConfig, Explanation, Heatmap, Param, Segments,
};
use cxr_core::models::{Classifier, target_probabilities};
use cxr_core::{CoreError, Result};
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use tch::{Kind, Tensor};

use crate::superpixels::{SlicParams, Superpixels};

/// LIME: explain the target probability by a weighted linear model over superpixels.
///
/// - Superpixels: SLIC on the preprocessed input (`segments`, `compactness`).
/// - Perturbations: `samples` binary vectors; the first keeps every superpixel, each other one
///   hides a uniformly drawn number of them, chosen at random (as the `lime` package does).
///   A hidden superpixel is set to 0, the lung mean of the standardised input.
/// - Weights: exponential kernel `sqrt(exp(-d^2 / width^2))` on the cosine distance `d` to the
///   unperturbed vector, `width` = `kernel_width` (0.25, the package's default).
/// - Local model: ridge regression (`alpha` 1) with intercept; its weighted R^2 is reported
///   with every superpixel's weight. The heatmap paints each superpixel with its positive
///   weight; the `top` most positive superpixels are marked as selected.
/// - A fixed `seed` makes the result reproducible.
pub struct Lime {
    samples: usize,
    segments: usize,
    compactness: f32,
    kernel_width: f64,
    alpha: f64,
    top: usize,
    batch: usize,
    seed: u64,
}

impl Lime {
    pub fn from_config(config: &ExplainerConfig) -> Result<Box<dyn Explainer>> {
        let lime = Self {
            samples: config.get("samples")?,
            segments: config.get("segments")?,
            compactness: config.get("compactness")?,
            kernel_width: config.get("kernel_width")?,
            alpha: config.get("alpha")?,
            top: config.get("top")?,
            batch: config.get("batch")?,
            seed: config.get("seed")?,
        };
        if lime.samples < 2 || lime.batch == 0 || lime.kernel_width <= 0.0 {
            return Err(config.error("lime: needs samples >= 2, batch >= 1, kernel_width > 0"));
        }
        Ok(Box::new(lime))
    }

    /// The perturbation matrix, `samples` rows of `features` on/off values.
    fn perturbations(&self, features: usize) -> Vec<Vec<f32>> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut rows = vec![vec![1.0; features]];
        for _ in 1..self.samples {
            let mut row = vec![1.0; features];
            let hidden = rng.random_range(1..=features);
            for i in sample(&mut rng, features, hidden) {
                row[i] = 0.0;
            }
            rows.push(row);
        }
        rows
    }
}

impl Explainer for Lime {
    fn explain(&self, model: &dyn Classifier, input: &ExplainInput<'_>) -> Result<Explanation> {
        let size = input.input.size();
        let (h, w) = (size[2] as usize, size[3] as usize);
        let device = model.device();
        let x = input.input.f_to_device(tch::Device::Cpu)?;
        let pixels = Vec::<f32>::try_from(x.f_view([-1])?)?;
        let params = SlicParams {
            segments: self.segments,
            compactness: self.compactness,
            iterations: 10,
        };
        let superpixels = Superpixels::slic(&pixels, w, h, params);
        let features = superpixels.count;
        let rows = self.perturbations(features);

        // Each batch: every pixel times its superpixel's on/off value. Built here rather than
        // with libtorch operators, whose OpenMP threads would go on spinning against the
        // forward pass on the ONNX backend.
        let mut target = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(self.batch) {
            let mut batch = Vec::with_capacity(chunk.len() * pixels.len());
            for on in chunk {
                let pixel_on = superpixels.labels.iter().map(|&l| on[l as usize]);
                batch.extend(pixels.iter().zip(pixel_on).map(|(p, on)| p * on));
            }
            let images = Tensor::from_slice(&batch)
                .f_view([chunk.len() as i64, 1, h as i64, w as i64])?
                .f_to_device(device)?;
            let probs = target_probabilities(model, &images, input.target)?
                .f_to_device(tch::Device::Cpu)?;
            target.extend(Vec::<f32>::try_from(probs)?.into_iter().map(f64::from));
            input.report_progress(target.len(), rows.len())?;
        }

        let kernel: Vec<f64> = rows
            .iter()
            .map(|row| {
                let d = cosine_distance_to_ones(row);
                (-(d * d) / (self.kernel_width * self.kernel_width))
                    .exp()
                    .sqrt()
            })
            .collect();
        let fit = weighted_ridge(&rows, &target, &kernel, self.alpha)?;

        let relevance = superpixels
            .labels
            .iter()
            .map(|&l| fit.coefficients[l as usize] as f32)
            .collect();
        let mut ranked: Vec<u32> = (0..features as u32)
            .filter(|&l| fit.coefficients[l as usize] > 0.0)
            .collect();
        ranked.sort_by(|&a, &b| {
            fit.coefficients[b as usize].total_cmp(&fit.coefficients[a as usize])
        });
        ranked.truncate(self.top);
        let mut details = serde_json::Map::new();
        details.insert("samples".into(), self.samples.into());
        details.insert("superpixels".into(), features.into());
        details.insert(
            "fill".into(),
            "0 (lung mean of the standardised input)".into(),
        );
        details.insert("r2".into(), fit.r2.into());
        details.insert("intercept".into(), fit.intercept.into());
        details.insert("weights".into(), fit.coefficients.clone().into());
        details.insert("seed".into(), self.seed.into());
        Ok(Explanation {
            heatmap: Heatmap::from_relevance(relevance, w, h),
            details,
            segments: Some(Segments {
                labels: superpixels.labels,
                selected: ranked,
                weights: fit.coefficients,
            }),
        })
    }
}

/// Cosine distance between a 0/1 vector and the all-ones vector.
fn cosine_distance_to_ones(row: &[f32]) -> f64 {
    let on = row.iter().filter(|&&v| v > 0.5).count() as f64;
    if on == 0.0 {
        1.0
    } else {
        1.0 - on / (on.sqrt() * (row.len() as f64).sqrt())
    }
}

/// A fitted local linear model.
#[derive(Debug, Clone)]
pub struct RidgeFit {
    /// One weight per feature (superpixel).
    pub coefficients: Vec<f64>,
    pub intercept: f64,
    /// Weighted coefficient of determination on the perturbations.
    pub r2: f64,
}

/// Minimises `sum_i` `k_i` (`y_i` - b - `x_i.beta)^2` + alpha |beta|^2 (intercept not penalised):
/// centred on the weighted means, the normal equations `(Xc' K Xc + alpha I) beta = Xc' K yc` are
/// formed and solved by libtorch in f64 (Cholesky, as the matrix is symmetric positive definite
/// for alpha > 0; a matrix that is not is reported as a singular local model).
/// Public so that the benchmarks can time the local model alone.
pub fn weighted_ridge(x: &[Vec<f32>], y: &[f64], k: &[f64], alpha: f64) -> Result<RidgeFit> {
    let samples = x.len() as i64;
    let features = x.first().map_or(0, Vec::len) as i64;
    let flat: Vec<f64> = x.iter().flatten().map(|&v| f64::from(v)).collect();
    let x = Tensor::from_slice(&flat).f_view([samples, features])?;
    let y = Tensor::from_slice(y).f_view([samples, 1])?;
    let k = Tensor::from_slice(k).f_view([samples, 1])?;

    let total = k.f_sum(Kind::Double)?;
    let mean_x = (&x * &k).f_sum_dim_intlist(0, true, Kind::Double)? / &total;
    let mean_y = (&y * &k).f_sum(Kind::Double)? / &total;
    // Rows scaled by sqrt(k), so that the weighted Gram matrix is a plain Xc' Xc.
    let root_k = k.f_sqrt()?;
    let xc = (&x - &mean_x) * &root_k;
    let yc = (&y - &mean_y) * &root_k;
    let xct = xc.f_tr()?;
    let penalty = Tensor::f_eye(features, (Kind::Double, tch::Device::Cpu))? * alpha;
    let gram = xct.f_matmul(&xc)? + penalty;
    let (factor, info) = gram.f_linalg_cholesky_ex(false, false)?;
    if info.f_int64_value(&[])? != 0 {
        return Err(CoreError::Internal("lime: local model is singular".into()));
    }
    let beta = xct.f_matmul(&yc)?.f_cholesky_solve(&factor, false)?;

    let intercept = &mean_y - mean_x.f_matmul(&beta)?.f_view([])?;
    let residual = &y - x.f_matmul(&beta)? - &intercept;
    let residual = (&k * residual.f_square()?)
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    let spread = (&k * (&y - &mean_y).f_square()?)
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    let r2 = if spread > 0.0 {
        1.0 - residual / spread
    } else {
        1.0
    };
    Ok(RidgeFit {
        coefficients: Vec::<f64>::try_from(beta.f_view([-1])?)?,
        intercept: intercept.f_double_value(&[])?,
        r2,
    })
}

cxr_core::register_explainer! {
    name: "lime",
    summary: "LIME: weighted ridge regression of the class probability on hidden superpixels",
    needs: cxr_core::models::Gradients::None,
    params: &[
        Param { name: "samples", default: "1000", help: "perturbed images (the first is the original)" },
        Param { name: "segments", default: "64", help: "SLIC superpixels wanted" },
        Param { name: "compactness", default: "0.5", help: "SLIC compactness (standardised intensities)" },
        Param { name: "kernel_width", default: "0.25", help: "width of the exponential kernel on cosine distance" },
        Param { name: "alpha", default: "1", help: "ridge penalty" },
        Param { name: "top", default: "5", help: "superpixels outlined as selected" },
        Param { name: "batch", default: "100", help: "perturbed images per forward pass" },
        Param { name: "seed", default: "0", help: "random seed of the perturbations" },
    ],
    ctor: Lime::from_config,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_function() {
        // y = 0.2 + 0.5 a - 0.3 b, exactly, with a tiny penalty.
        let x: Vec<Vec<f32>> = (0..16)
            .map(|i| vec![(i & 1) as f32, ((i >> 1) & 1) as f32, ((i >> 2) & 1) as f32])
            .collect();
        let y: Vec<f64> = x
            .iter()
            .map(|r| 0.2 + 0.5 * f64::from(r[0]) - 0.3 * f64::from(r[1]))
            .collect();
        let fit = weighted_ridge(&x, &y, &[1.0; 16], 1e-9).unwrap();
        assert!((fit.coefficients[0] - 0.5).abs() < 1e-6);
        assert!((fit.coefficients[1] + 0.3).abs() < 1e-6);
        assert!(fit.coefficients[2].abs() < 1e-6);
        assert!((fit.intercept - 0.2).abs() < 1e-6);
        assert!((fit.r2 - 1.0).abs() < 1e-9);
    }

    #[test]
    fn ridge_shrinks_and_weights_matter() {
        let x: Vec<Vec<f32>> = vec![vec![0.0], vec![1.0], vec![0.0], vec![1.0]];
        let y = [0.0, 1.0, 0.0, 3.0];
        let plain = weighted_ridge(&x, &y, &[1.0; 4], 1e-9)
            .unwrap()
            .coefficients[0];
        let weighted = weighted_ridge(&x, &y, &[1.0, 1.0, 1.0, 0.01], 1e-9)
            .unwrap()
            .coefficients[0];
        let shrunk = weighted_ridge(&x, &y, &[1.0; 4], 10.0)
            .unwrap()
            .coefficients[0];
        assert!((plain - 2.0).abs() < 1e-6 && weighted < 1.1 && shrunk < plain / 2.0);
    }

    #[test]
    fn ridge_solves_the_normal_equations_at_lime_size() {
        // LIME's real size (1000 perturbations of 100 superpixels), its kernel and its penalty;
        // each row hides a uniformly drawn number of superpixels, as LIME's rows do.
        let (samples, features, alpha) = (1000, 100, 1.0);
        let mut rng = StdRng::seed_from_u64(11);
        let x: Vec<Vec<f32>> = (0..samples)
            .map(|_| {
                let hidden = rng.random_range(1..=features);
                let hidden = sample(&mut rng, features, hidden).into_vec();
                (0..features)
                    .map(|i| if hidden.contains(&i) { 0.0 } else { 1.0 })
                    .collect()
            })
            .collect();
        let y: Vec<f64> = x
            .iter()
            .map(|row| 0.4 * f64::from(row[3]) + 0.1 * rng.random::<f64>())
            .collect();
        let k: Vec<f64> = x
            .iter()
            .map(|row| {
                let d = cosine_distance_to_ones(row);
                (-(d * d) / 0.0625).exp().sqrt()
            })
            .collect();
        let fit = weighted_ridge(&x, &y, &k, alpha).unwrap();

        // The objective's gradient, summed directly in f64, vanishes at the minimum.
        let residuals: Vec<f64> = x
            .iter()
            .zip(&y)
            .map(|(row, yi)| {
                let predicted: f64 = row
                    .iter()
                    .zip(&fit.coefficients)
                    .map(|(v, c)| f64::from(*v) * c)
                    .sum();
                yi - fit.intercept - predicted
            })
            .collect();
        let intercept_equation: f64 = residuals.iter().zip(&k).map(|(r, w)| w * r).sum();
        assert!(intercept_equation.abs() < 1e-9, "{intercept_equation:e}");
        for j in 0..features {
            let equation = residuals
                .iter()
                .zip(&k)
                .zip(&x)
                .map(|((r, w), row)| w * r * f64::from(row[j]))
                .sum::<f64>()
                - alpha * fit.coefficients[j];
            assert!(equation.abs() < 1e-9, "normal equation {j}: {equation:e}");
        }
        assert!(fit.coefficients[3] > 0.3, "the signal is found");
    }

    #[test]
    fn cosine_distance() {
        assert!(cosine_distance_to_ones(&[1.0, 1.0, 1.0, 1.0]).abs() < 1e-12);
        assert!((cosine_distance_to_ones(&[1.0, 0.0, 0.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!((cosine_distance_to_ones(&[0.0, 0.0]) - 1.0).abs() < 1e-12);
    }
}
