//! What a model measures on the rows: its scores and pooled features, the flags it raises, the
//! per-source and held-out-source tables, and the familiarity (trust) model fitted from them.

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use super::dataset::{Dataset, acquisition_of};
use crate::Result;
use crate::evaluation::{HeldOutSource, Scored, SourceMetrics, by_source, held_out_of};
use crate::models::{Classifier, ResNetClassifier};
use crate::train::gather;
use crate::trust::{Flag, LungShape, TrustData, TrustModel};

/// What a model gives for some rows: pooled features `[rows * C]` and class probabilities
/// `[rows * classes]`, both row-major.
pub(super) struct Outputs {
    pub(super) features: Vec<f32>,
    pub(super) probabilities: Vec<f32>,
    classes: usize,
}

impl Outputs {
    /// Each row's probability of class `k`.
    pub(super) fn class(&self, k: usize) -> Vec<f32> {
        self.probabilities
            .chunks(self.classes)
            .map(|p| p[k])
            .collect()
    }

    /// Each row's probabilities.
    pub(super) fn rows(&self) -> std::slice::Chunks<'_, f32> {
        self.probabilities.chunks(self.classes)
    }
}

/// Positive-class probabilities of rows `ix`.
pub(super) fn scores(model: &ResNetClassifier, inputs: &Tensor, ix: &[usize]) -> Result<Vec<f32>> {
    Ok(outputs(model, inputs, ix)?.class(0))
}

/// Pooled features and class probabilities of rows `ix`.
pub(super) fn outputs(model: &ResNetClassifier, inputs: &Tensor, ix: &[usize]) -> Result<Outputs> {
    let (mut features, mut out) = (Vec::new(), Vec::with_capacity(ix.len()));
    for chunk in ix.chunks(64) {
        let (f, logits) = tch::no_grad(|| {
            let f = model
                .network()
                .features(&gather(inputs, chunk, model.device()), false);
            let logits = model.network().head(&f);
            (f.mean_dim([2i64, 3].as_slice(), false, Kind::Float), logits)
        });
        let p = logits
            .softmax(-1, Kind::Float)
            .to_device(tch::Device::Cpu)
            .view([-1]);
        out.extend(Vec::<f32>::try_from(p)?);
        features.extend(Vec::<f32>::try_from(
            f.to_device(tch::Device::Cpu).view([-1]),
        )?);
    }
    Ok(Outputs {
        features,
        probabilities: out,
        classes: model.meta.classes.len(),
    })
}

impl Dataset {
    /// Per-source metrics of `model` on rows `ix`.
    pub(super) fn table(
        &self,
        model: &ResNetClassifier,
        ix: &[usize],
    ) -> Result<BTreeMap<String, SourceMetrics>> {
        self.measure(model, ix, |scored| {
            by_source(scored, &model.meta.classes, model.meta.threshold)
        })
    }

    /// `measure` of `model`'s scores and flags on rows `ix`.
    fn measure<T>(
        &self,
        model: &ResNetClassifier,
        ix: &[usize],
        measure: impl FnOnce(&[Scored<'_>]) -> T,
    ) -> Result<T> {
        let out = outputs(model, &self.prepared.inputs, ix)?;
        let flags = self.flags(model, ix, &out.features);
        let scored: Vec<Scored<'_>> = ix
            .iter()
            .zip(out.rows())
            .zip(&flags)
            .map(|((&i, p), flags)| Scored {
                source: &self.rows[i].source,
                label: &self.rows[i].label,
                score: p[0],
                abnormal: 1.0 - p[1],
                flags,
            })
            .collect();
        Ok(measure(&scored))
    }

    /// The flags `model`'s trust model and the segmenter's shape model raise on rows `ix`
    /// (`features`: their pooled features, row-major), as the pipeline raises them.
    fn flags(&self, model: &ResNetClassifier, ix: &[usize], features: &[f32]) -> Vec<Vec<Flag>> {
        let Some(trust) = &model.meta.trust else {
            return vec![Vec::new(); ix.len()];
        };
        let side = (crate::trust::LAYOUT_SIDE * crate::trust::LAYOUT_SIDE) as usize;
        let dim = features.len() / ix.len().max(1);
        ix.iter()
            .zip(features.chunks(dim.max(1)))
            .map(|(&i, f)| {
                let p = &self.prepared;
                let checks = crate::trust::ImageChecks {
                    appearance: p.appearances[i],
                    layout: p.layouts[i * side..(i + 1) * side].to_vec(),
                    detail: p.details[i],
                    acquisition: acquisition_of(p, i).to_vec(),
                };
                let mut assessment = trust.assess(f, &checks, p.shapes[i]);
                if let (Some(shape), Some(measured)) = (&p.shape_model, &p.mask_shapes[i]) {
                    assessment.shape_verdict(shape.verdict(measured, trust.mask_shapes.as_ref()));
                }
                assessment.flags
            })
            .collect()
    }

    /// `model` (trained without `source`) on every image of `source`, and those images ranked
    /// against the test images of the class the source lacks.
    pub(super) fn held_out(
        &self,
        model: &ResNetClassifier,
        source: &str,
        test: &[usize],
    ) -> Result<HeldOutSource> {
        let ix: Vec<usize> = (0..self.from_manifest)
            .filter(|&i| self.rows[i].source == source)
            .chain(
                test.iter()
                    .copied()
                    .filter(|&i| self.rows[i].source != source),
            )
            .collect();
        self.measure(model, &ix, |scored| {
            held_out_of(source, scored, &model.meta.classes, model.meta.threshold)
        })
    }
}

/// The familiarity model of `model`, from the training rows' features, layouts and lung shapes
/// and the validation rows' features and layouts.
pub(super) fn fit_trust(
    model: &ResNetClassifier,
    data: &Dataset,
    train_ix: &[usize],
    val_ix: &[usize],
) -> Result<TrustModel> {
    let train_features = outputs(model, &data.prepared.inputs, train_ix)?.features;
    let val_features = outputs(model, &data.prepared.inputs, val_ix)?.features;
    let side = (crate::trust::LAYOUT_SIDE * crate::trust::LAYOUT_SIDE) as usize;
    let layouts = |ix: &[usize]| -> Vec<f32> {
        ix.iter()
            .flat_map(|&i| {
                data.prepared.layouts[i * side..(i + 1) * side]
                    .iter()
                    .copied()
            })
            .collect()
    };
    let shapes: Vec<LungShape> = train_ix.iter().map(|&i| data.prepared.shapes[i]).collect();
    let acquisitions = |ix: &[usize]| -> Vec<f32> {
        ix.iter()
            .flat_map(|&i| acquisition_of(&data.prepared, i).iter().copied())
            .collect()
    };
    let sources = |ix: &[usize]| -> Vec<&str> {
        ix.iter()
            .map(|&i| data.sources[data.source[i]].as_str())
            .collect()
    };
    TrustModel::fit(&TrustData {
        train_features: &train_features,
        validation_features: &val_features,
        dim: *model.meta.architecture.widths.last().unwrap_or(&128) as usize,
        train_layouts: &layouts(train_ix),
        validation_layouts: &layouts(val_ix),
        shapes: &shapes,
        details: &train_ix
            .iter()
            .map(|&i| data.prepared.details[i])
            .collect::<Vec<_>>(),
        train_acquisitions: &acquisitions(train_ix),
        validation_acquisitions: &acquisitions(val_ix),
        train_sources: &sources(train_ix),
        validation_sources: &sources(val_ix),
        mask_shapes: &train_ix
            .iter()
            .chain(val_ix)
            .filter_map(|&i| data.prepared.mask_shapes[i])
            .collect::<Vec<_>>(),
    })
}
