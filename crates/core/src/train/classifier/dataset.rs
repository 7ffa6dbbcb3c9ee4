//! The rows of a training run: every image read, segmented and preprocessed once, its class,
//! source and split side, and the order an epoch draws them in.

use std::collections::{BTreeMap, HashSet};

use rand::distr::Distribution;
use rand::rngs::StdRng;
use sha2::{Digest, Sha256};
use tch::Tensor;

use super::{ClassifierPlan, TrainOnly};
use crate::data::{LabelledImage, Manifest, Split, SplitShares};
use crate::models::Segmenter;
use crate::preprocess::{CLASSIFIER_SIDE, InputStyle, classifier_input};
use crate::shape::{ShapeMeasures, ShapeModel};
use crate::train::{SplitSizes, TrainOnlyRecord, TrainOptions};
use crate::trust::LungShape;
use crate::xray::Xray;
use crate::{CoreError, Result};

/// Every image, segmented and preprocessed once; folds and epochs index into it.
pub(super) struct Prepared {
    /// What the classifier sees, `[N, 1, 224, 224]`.
    pub(super) inputs: Tensor,
    /// The crop before masking, and the binary lung mask, for augmentation.
    pub(super) unmasked: Tensor,
    pub(super) masks: Tensor,
    pub(super) shapes: Vec<LungShape>,
    /// Each image's whole-image layout ([`crate::trust::layout`]), `[N * 64]`, and detail.
    pub(super) layouts: Vec<f32>,
    pub(super) details: Vec<f32>,
    /// Each image's acquisition measures, `[N * acquisition::DIM]`.
    acquisitions: Vec<f32>,
    /// Each image's appearance, and its mask's measures against the segmenter's lung-shape
    /// model, when it has one (for the trust model and the flags the held-out tables count).
    pub(super) appearances: Vec<crate::trust::Appearance>,
    pub(super) mask_shapes: Vec<Option<ShapeMeasures>>,
    pub(super) shape_model: Option<ShapeModel>,
    /// Hash of each image's decoded pixels (a copy re-encoded has the same hash).
    hashes: Vec<String>,
}

impl Prepared {
    pub(super) fn of(
        rows: &[LabelledImage],
        segmenter: &dyn Segmenter,
        style: InputStyle,
    ) -> Result<Self> {
        let side = i64::from(CLASSIFIER_SIDE);
        let n = (side * side) as usize;
        let (mut inputs, mut unmasked, mut masks) = (
            Vec::with_capacity(rows.len() * n),
            Vec::with_capacity(rows.len() * n),
            Vec::with_capacity(rows.len() * n),
        );
        let (mut shapes, mut hashes) = (Vec::new(), Vec::new());
        let (mut layouts, mut details, mut acquisitions) = (Vec::new(), Vec::new(), Vec::new());
        let (mut appearances, mut mask_shapes) = (Vec::new(), Vec::new());
        for row in rows {
            let xray = Xray::open(&row.path)?;
            let mask = segmenter.segment(&xray.gray)?;
            shapes.push(LungShape::of(&mask));
            appearances.push(crate::trust::Appearance::of(&xray));
            mask_shapes.push(segmenter.shape().and_then(|s| s.measure(&mask)));
            layouts.extend(crate::trust::layout(&xray.gray));
            details.push(crate::trust::detail(&xray.gray));
            acquisitions.extend(crate::trust::acquisition::measures(&xray.gray));
            let input = classifier_input(&xray.gray, &mask, style);
            inputs.extend(input.pixels);
            unmasked.extend(input.unmasked);
            masks.extend(input.mask);
            let mut hasher = Sha256::new();
            hasher.update(xray.width().to_le_bytes());
            hasher.update(xray.height().to_le_bytes());
            for v in xray.gray.as_raw() {
                hasher.update(v.to_le_bytes());
            }
            hashes.push(format!("{:x}", hasher.finalize()));
        }
        let shape = [rows.len() as i64, 1, side, side];
        Ok(Self {
            inputs: Tensor::from_slice(&inputs).view(shape),
            unmasked: Tensor::from_slice(&unmasked).view(shape),
            masks: Tensor::from_slice(&masks).view(shape),
            shapes,
            layouts,
            details,
            acquisitions,
            appearances,
            mask_shapes,
            shape_model: segmenter.shape().cloned(),
            hashes,
        })
    }
}

/// The rows of a training run and what each is for.
pub(super) struct Dataset {
    pub(super) rows: Vec<LabelledImage>,
    pub(super) prepared: Prepared,
    /// The positive class, the negative class and any further ones (the plan's).
    pub(super) classes: Vec<String>,
    /// Index of each row's label in `classes`; `classes.len()` for any other label (never
    /// trained on).
    pub(super) class: Vec<i64>,
    /// Index of each row's source in `sources`.
    pub(super) source: Vec<usize>,
    pub(super) sources: Vec<String>,
    /// Split side; `None` for a row left out (a queue image identical to a manifest image).
    side: Vec<Option<Split>>,
    pub(super) from_manifest: usize,
    pub(super) train_only: Option<TrainOnlyRecord>,
}

impl Dataset {
    /// Reads, segments and preprocesses the manifests' rows and `extra`; `required`: the
    /// classes that must have manifest rows, checked before any image is read (all of them to
    /// train; the positive and the negative one to fit a trust model, whose manifests may lack
    /// a further class).
    pub(super) fn assemble(
        options: &TrainOptions,
        plan: &ClassifierPlan,
        required: &[String],
        extra: &TrainOnly,
        segmenter: &dyn Segmenter,
    ) -> Result<Self> {
        let mut rows = Manifest::read_all(&options.manifests)?.labels;
        let list = options.manifest_list();
        if plan.classes.len() < 2 {
            return Err(CoreError::Invalid(format!(
                "a classifier needs a positive and a negative class, not {:?}",
                plan.classes
            )));
        }
        for class in required {
            if !rows.iter().any(|r| &r.label == class) {
                return Err(CoreError::data(
                    &list,
                    format!("no image labelled {class:?} (classes: {:?})", plan.classes),
                ));
            }
        }
        let from_manifest = rows.len();
        let is_class = |r: &LabelledImage| plan.classes.contains(&r.label);
        rows.extend(extra.rows.iter().filter(|r| is_class(r)).cloned());
        let prepared = Prepared::of(&rows, segmenter, plan.defences.input)?;
        // A queue image that is also a manifest image (the same pixels, whatever the file)
        // would leak into training if the manifest holds it for validation or test: such rows
        // are left out entirely.
        let known: HashSet<&str> = prepared.hashes[..from_manifest]
            .iter()
            .map(String::as_str)
            .collect();
        let duplicate: Vec<bool> = prepared.hashes[from_manifest..]
            .iter()
            .map(|h| known.contains(h.as_str()))
            .collect();
        let side = (0..rows.len())
            .map(|i| {
                if i < from_manifest {
                    Some(Split::of(
                        &rows[i].patient,
                        options.seed,
                        SplitShares::CLASSIFIER,
                    ))
                } else {
                    (!duplicate[i - from_manifest]).then_some(Split::Train)
                }
            })
            .collect();
        let mut sources: Vec<String> = rows.iter().map(|r| r.source.clone()).collect();
        sources.sort();
        sources.dedup();
        let train_only = (!extra.rows.is_empty())
            .then(|| train_only_record(extra, &rows[from_manifest..], &duplicate));
        Ok(Self {
            class: rows
                .iter()
                .map(|r| {
                    plan.classes
                        .iter()
                        .position(|c| c == &r.label)
                        .map_or(plan.classes.len() as i64, |i| i as i64)
                })
                .collect(),
            source: rows
                .iter()
                .map(|r| sources.iter().position(|s| s == &r.source).unwrap_or(0))
                .collect(),
            sources,
            side,
            from_manifest,
            train_only,
            classes: plan.classes.clone(),
            rows,
            prepared,
        })
    }

    /// Whether row `i` is of a class trained on.
    pub(super) fn trained(&self, i: usize) -> bool {
        (self.class[i] as usize) < self.classes.len()
    }

    /// Train, validation and test rows of the classes, leaving `held_out` out entirely.
    pub(super) fn split(
        &self,
        held_out: Option<&str>,
        list: &std::path::Path,
    ) -> Result<[Vec<usize>; 3]> {
        crate::train::split_indices(
            (0..self.rows.len()).map(|i| {
                let excluded = !self.trained(i) || held_out == Some(self.rows[i].source.as_str());
                if excluded { None } else { self.side[i] }
            }),
            list,
        )
    }

    /// The extra (train-only) rows trained on or fitted to: of a class, and no copy of a
    /// manifest image.
    pub(super) fn extra_rows(&self) -> Vec<usize> {
        (self.from_manifest..self.rows.len())
            .filter(|&i| self.side[i].is_some() && self.trained(i))
            .collect()
    }

    pub(super) fn split_sizes(&self, ix: &[Vec<usize>; 3]) -> SplitSizes {
        let sides = [Split::Train, Split::Validation, Split::Test];
        SplitSizes::count(
            ix.iter()
                .zip(sides)
                .flat_map(|(ix, side)| ix.iter().map(move |&i| (side, i)))
                .map(|(side, i)| (side, self.rows[i].patient.as_str())),
        )
    }

    pub(super) fn positive(&self, ix: &[usize]) -> Vec<bool> {
        ix.iter().map(|&i| self.class[i] == 0).collect()
    }
}

/// What the card says about the extra rows: `added` were trained on unless `duplicate`.
fn train_only_record(
    extra: &TrainOnly,
    added: &[LabelledImage],
    duplicate: &[bool],
) -> TrainOnlyRecord {
    let mut record = TrainOnlyRecord {
        source: extra.source.clone(),
        other_labels: extra.rows.len() - added.len(),
        ..TrainOnlyRecord::default()
    };
    for (row, &dup) in added.iter().zip(duplicate) {
        if dup {
            record.in_manifest += 1;
        } else {
            *record.classes.entry(row.label.clone()).or_default() += 1;
        }
    }
    record
}

/// Image `i`'s acquisition measures.
pub(super) fn acquisition_of(prepared: &Prepared, i: usize) -> &[f32] {
    let dim = crate::trust::acquisition::DIM;
    &prepared.acquisitions[i * dim..(i + 1) * dim]
}

/// The order of one epoch's training rows: shuffled, or with sources balanced within each
/// class and/or views within each class's source (drawn with replacement, as many as there are
/// rows).
pub(super) fn epoch_order(
    data: &Dataset,
    train: &[usize],
    defences: &super::Defences,
    rng: &mut StdRng,
) -> Vec<usize> {
    if !defences.balance_sources && !defences.balance_views {
        return train.to_vec();
    }
    // Each row's class, source (one for all when sources are not balanced) and view (likewise).
    let key = |i: usize| {
        let source = if defences.balance_sources {
            data.source[i]
        } else {
            0
        };
        let view = if defences.balance_views {
            data.rows[i].view.as_deref()
        } else {
            None
        };
        (data.class[i], source, view)
    };
    let mut groups: BTreeMap<(i64, usize, Option<&str>), usize> = BTreeMap::new();
    let mut per_class: BTreeMap<i64, usize> = BTreeMap::new();
    for &i in train {
        *groups.entry(key(i)).or_default() += 1;
        *per_class.entry(data.class[i]).or_default() += 1;
    }
    // Every row of a group weighs 1 / (group size x sources in the class x views in the
    // source), so each class keeps its share, each of its sources an equal part of it, and each
    // view an equal part of its source's.
    let sources_in = |class: i64| {
        let mut sources: Vec<usize> = groups
            .keys()
            .filter(|(c, _, _)| *c == class)
            .map(|k| k.1)
            .collect();
        sources.dedup();
        sources.len() as f64
    };
    let views_in = |class: i64, source: usize| {
        groups
            .keys()
            .filter(|(c, s, _)| *c == class && *s == source)
            .count() as f64
    };
    let weights: Vec<f64> = train
        .iter()
        .map(|&i| {
            let k = key(i);
            per_class[&k.0] as f64 / (groups[&k] as f64 * sources_in(k.0) * views_in(k.0, k.1))
        })
        .collect();
    let Ok(dist) = rand::distr::weighted::WeightedIndex::new(&weights) else {
        return train.to_vec();
    };
    (0..train.len()).map(|_| train[dist.sample(rng)]).collect()
}
