//! `cxr train segmenter|classifier`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::{Result, WrapErr, bail};
use cxr_core::card;
use cxr_core::compute::Compute;
use cxr_core::models::{ModelFiles, ResNetClassifier, UNetSegmenter};
use cxr_core::pipeline::{CLASSIFIER_NAME, SEGMENTER_NAME};
use cxr_core::preprocess::InputStyle;
use cxr_core::queue::Queue;
use cxr_core::train::classifier::{ClassifierPlan, Defences, TrainOnly};
use cxr_core::train::{self, EpochReport, TrainOptions};

use crate::cli::{DefenceArgs, InputArg, ModelArgs, TrainArgs, TrainCommand};

/// The models and device options of a training command.
pub fn model_args(command: &TrainCommand) -> &ModelArgs {
    match command {
        TrainCommand::Segmenter { common, .. }
        | TrainCommand::Classifier { common, .. }
        | TrainCommand::Trust { common, .. }
        | TrainCommand::Shape { common, .. } => &common.model,
    }
}

/// The labelled manifest the classifier trains on by default, under the data folder.
const CLASSIFIER_MANIFEST: &str = "cxr/manifest.csv";

fn print_epoch(report: &EpochReport) {
    if super::quiet() {
        return;
    }
    eprintln!(
        "epoch {:>3}/{}  loss {:.4}  validation {:.4}{}  ({:.1} s)",
        report.epoch,
        report.epochs,
        report.train_loss,
        report.validation,
        if report.best { "  best" } else { "" },
        report.seconds
    );
}

fn write_card(path: &Path, text: &str) -> Result<()> {
    cxr_core::fsutil::write_atomic(path, text.as_bytes())?;
    super::note(&format!("wrote {}", path.display()));
    Ok(())
}

/// The classifier's defences as the command line sets them.
fn defences(args: &DefenceArgs) -> Defences {
    if args.no_defences {
        return Defences::none();
    }
    Defences {
        input: match args.input {
            InputArg::Masked => InputStyle::Masked,
            InputArg::EqualisedFeathered => InputStyle::EqualisedFeathered,
        },
        style_augmentation: !args.no_style_augmentation,
        balance_sources: !args.no_balance_sources,
        adversarial: args.adversarial.max(0.0),
        lung_focus: args.lung_focus.max(0.0),
        framing: args.framing,
        balance_views: args.balance_views,
    }
}

#[allow(clippy::too_many_lines)] // one arm per kind of model, each a short recipe
pub fn run(command: TrainCommand, models: &Path, compute: Compute) -> Result<ExitCode> {
    compute.apply();
    let out_dir = |common: &TrainArgs| common.out.clone().unwrap_or_else(|| models.to_path_buf());
    // Both kinds of model train on the project's data and JSRT by default; the classifier also
    // reads NIH's pneumonia images where the data folder has them (neither class: measured
    // only, for the within-NIH disease contrast).
    let manifests_or = |given: Vec<PathBuf>, default: &str| -> Result<Vec<PathBuf>> {
        Ok(if given.is_empty() {
            let data = super::data_dir()?;
            let mut defaults = vec![data.join(default), data.join("jsrt/manifest.csv")];
            let pneumonia = data.join("nih-pneumonia/manifest.csv");
            if default == CLASSIFIER_MANIFEST && pneumonia.is_file() {
                defaults.push(pneumonia);
            }
            defaults
        } else {
            given
        })
    };
    match command {
        TrainCommand::Segmenter {
            manifests,
            common,
            epochs,
            batch_size,
            learning_rate,
            base,
            side,
            depth,
        } => {
            let options = TrainOptions {
                manifests: manifests_or(manifests, "lungseg/manifest.csv")?,
                epochs,
                batch_size,
                learning_rate,
                seed: common.seed,
                init_seed: common.init_seed,
                device: compute.device,
                init: common.init.clone(),
            };
            let plan = train::segmenter::SegmenterPlan { base, side, depth };
            let (model, record) = train::segmenter::train(&options, plan, &mut print_epoch)
                .wrap_err("training the segmenter")?;
            let files = ModelFiles::new(&out_dir(&common), SEGMENTER_NAME);
            model.save(&files)?;
            write_card(
                &files.card,
                &card::segmenter_card(&model.meta.architecture, model.meta.input_side, &record),
            )?;
            export_onnx(&out_dir(&common));
            super::print_json(&record)?;
        }
        TrainCommand::Classifier {
            manifests,
            common,
            positive,
            negative,
            extra_classes,
            defences: defence_args,
            hold_out_source,
            leave_one_source_out,
            epochs,
            batch_size,
            learning_rate,
            include_queue,
            watch,
        } => {
            let extra = reviewed_queue(
                include_queue,
                &watch.watch_dir,
                common.out.as_deref(),
                models,
            )?;
            let options = TrainOptions {
                manifests: manifests_or(manifests, CLASSIFIER_MANIFEST)?,
                epochs,
                batch_size,
                learning_rate,
                seed: common.seed,
                init_seed: common.init_seed,
                device: compute.device,
                init: common.init.clone(),
            };
            let segmenter =
                UNetSegmenter::load(&ModelFiles::new(models, SEGMENTER_NAME), compute.device)?;
            super::note(&format!(
                "segmenting and preprocessing every image of {}",
                options.manifest_list().display()
            ));
            let plan = ClassifierPlan {
                classes: classes(positive, negative, extra_classes, &options)?,
                defences: defences(&defence_args),
                hold_out: hold_out_source,
                leave_one_source_out,
            };
            let mut progress = |fold: &str, report: &EpochReport| {
                if !fold.is_empty() && !super::quiet() {
                    eprint!("[without {fold}] ");
                }
                print_epoch(report);
            };
            let train::classifier::Trained {
                model,
                record,
                folds,
            } = train::classifier::train(&options, &plan, &extra, &segmenter, &mut progress)
                .wrap_err("training the classifier")?;
            let out = out_dir(&common);
            let files = ModelFiles::new(&out, CLASSIFIER_NAME);
            model.save(&files)?;
            save_folds(&out, &folds)?;
            if include_queue {
                copy_model(models, &out, SEGMENTER_NAME)?;
            }
            write_card(
                &files.card,
                &card::classifier_card(&model.meta.architecture, &record),
            )?;
            export_onnx(&out);
            super::print_json(&record)?;
        }
        TrainCommand::Trust {
            manifests,
            common,
            include_queue,
            watch,
            leave_one_source_out,
        } => {
            let extra = reviewed_queue(
                include_queue,
                &watch.watch_dir,
                common.out.as_deref(),
                models,
            )?;
            let manifests = manifests_or(manifests, CLASSIFIER_MANIFEST)?;
            refit_trust(
                manifests,
                &extra,
                common.seed,
                compute,
                models,
                &out_dir(&common),
                leave_one_source_out.as_deref(),
            )?;
        }
        TrainCommand::Shape { manifests, common } => {
            let manifests = manifests_or(manifests, "lungseg/manifest.csv")?;
            refit_shape(&manifests, common.seed, models, &out_dir(&common))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The label a classifier learns besides its two classes when the manifests have it: disease
/// from the negative class's own hospital (NIH pneumonia beside NIH no finding), so that the
/// score has to answer to disease inside one hospital, not to the hospital.
const DEFAULT_EXTRA_CLASS: &str = "pneumonia";

/// The classes to train: positive, negative, then the extra ones (`none`: no extra; none
/// given: [`DEFAULT_EXTRA_CLASS`] where some manifest row carries it).
fn classes(
    positive: String,
    negative: String,
    extra: Vec<String>,
    options: &TrainOptions,
) -> Result<Vec<String>> {
    let extra = if extra.is_empty() {
        let rows = cxr_core::data::Manifest::read_all(&options.manifests)?.labels;
        if rows.iter().any(|r| r.label == DEFAULT_EXTRA_CLASS) {
            vec![DEFAULT_EXTRA_CLASS.to_owned()]
        } else {
            Vec::new()
        }
    } else {
        extra.into_iter().filter(|c| c != "none").collect()
    };
    let mut classes = vec![positive, negative];
    for class in extra {
        if classes.contains(&class) {
            bail!("class {class:?} is given twice");
        }
        classes.push(class);
    }
    Ok(classes)
}

/// Folder under a model folder holding one classifier per source trained without it.
const FOLDS_DIR: &str = "leave-one-source-out";

/// Writes each leave-one-source-out model to `out/leave-one-source-out/SOURCE/` (weights and
/// JSON, no export: `cxr eval --leave-one-source-out` runs them on libtorch), replacing the
/// folds of an earlier run.
fn save_folds(out: &Path, folds: &[train::classifier::FoldModel]) -> Result<()> {
    if folds.is_empty() {
        return Ok(());
    }
    let root = out.join(FOLDS_DIR);
    if root.exists() {
        std::fs::remove_dir_all(&root).wrap_err_with(|| format!("removing {}", root.display()))?;
    }
    for fold in folds {
        let dir = root.join(&fold.source);
        std::fs::create_dir_all(&dir).wrap_err_with(|| format!("creating {}", dir.display()))?;
        fold.model.save(&ModelFiles::new(&dir, CLASSIFIER_NAME))?;
    }
    super::note(&format!(
        "the {} leave-one-source-out models are in {} (measure them with cxr eval \
         --leave-one-source-out {})",
        folds.len(),
        root.display(),
        root.display()
    ));
    Ok(())
}

/// Fits the lung-shape model on the training patients' reference masks and writes it into the
/// segmenter's JSON in `out` (its weights, copied there when `out` is another folder, are
/// untouched). Prints how many reference masks of each split it judges implausible.
fn refit_shape(manifests: &[PathBuf], seed: u64, models: &Path, out: &Path) -> Result<()> {
    use cxr_core::data::{Manifest, Split, SplitShares};
    let mut masks: Vec<(Split, cxr_core::mask::LungMask)> = Vec::new();
    for row in Manifest::read_all(manifests)?.masks {
        let side = Split::of(&row.patient, seed, SplitShares::SEGMENTER);
        masks.push((side, train::segmenter::reference_lungs(&row)?));
    }
    let train_masks: Vec<_> = masks
        .iter()
        .filter(|(side, _)| *side == Split::Train)
        .map(|(_, mask)| mask.clone())
        .collect();
    let shape = cxr_core::shape::ShapeModel::fit(&train_masks)?;
    let mut flagged = std::collections::BTreeMap::<String, [usize; 2]>::default();
    for (side, mask) in &masks {
        let slot = flagged
            .entry(format!("{side:?}").to_lowercase())
            .or_default();
        slot[0] += usize::from(shape.judge(mask).is_some());
        slot[1] += 1;
    }
    let from = ModelFiles::new(models, SEGMENTER_NAME);
    let to = ModelFiles::new(out, SEGMENTER_NAME);
    if !same_folder(models, out) {
        std::fs::create_dir_all(out)?;
        let onnx = from.onnx();
        for source in from.parts()?.iter().chain(onnx.is_file().then_some(&onnx)) {
            let name = source.file_name().unwrap_or_default();
            std::fs::copy(source, out.join(name))?;
        }
    }
    let mut meta: cxr_core::models::ModelMeta<serde_json::Value> = to.read_meta()?;
    meta.shape = Some(shape);
    to.write_meta(&meta)?;
    super::note(&format!(
        "wrote the lung-shape model into {}",
        to.meta.display()
    ));
    super::print_json(&serde_json::json!({ "reference_masks_flagged": flagged }))?;
    Ok(())
}

/// The reviewed items of watch folder `dir` as training rows when `--include-queue` asked for
/// them (none otherwise). A model trained on them never lands in the models folder in use:
/// `--out` must name another folder.
fn reviewed_queue(
    include_queue: bool,
    dir: &Path,
    out: Option<&Path>,
    models: &Path,
) -> Result<TrainOnly> {
    if !include_queue {
        return Ok(TrainOnly::default());
    }
    let Some(out) = out else {
        bail!(
            "--include-queue needs --out DIR: a model trained on queue items is written to a new \
             folder, never over the models in use ({})",
            models.display()
        )
    };
    if same_folder(out, models) {
        bail!(
            "--out {}: that is the models folder in use; write the queue-trained model to \
             another folder and try it with --models",
            out.display()
        );
    }
    let queue = Queue::open(dir)?;
    let rows = queue.training_rows()?;
    if rows.is_empty() {
        bail!(
            "{}: no reviewed queue items labelled with a class (label some with `cxr queue label` \
             or in the viewer)",
            dir.display()
        );
    }
    super::note(&format!(
        "adding {} reviewed queue items from {} to the training split",
        rows.len(),
        dir.display()
    ));
    Ok(TrainOnly {
        source: dir.display().to_string(),
        rows,
    })
}

/// Whether `a` and `b` name the same folder (a folder that does not exist yet is no other).
fn same_folder(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `cxr train trust`: the classifier in `models` with its familiarity model fitted again,
/// written into `out` (with copies of both models when `out` is another folder); with `folds`,
/// also each leave-one-source-out model in `folds/SOURCE/`, in place.
fn refit_trust(
    manifests: Vec<PathBuf>,
    extra: &TrainOnly,
    seed: u64,
    compute: Compute,
    models: &Path,
    out: &Path,
    folds: Option<&Path>,
) -> Result<()> {
    let options = &TrainOptions {
        manifests,
        epochs: 0,
        batch_size: 64,
        learning_rate: 0.0,
        seed,
        init_seed: None,
        device: compute.device,
        init: None,
    };
    let segmenter = UNetSegmenter::load(&ModelFiles::new(models, SEGMENTER_NAME), compute.device)?;
    let load =
        |dir: &Path| ResNetClassifier::load(&ModelFiles::new(dir, CLASSIFIER_NAME), compute.device);
    let mut model = load(models)?;
    let mut fold_models = Vec::new();
    for (source, dir) in folds.map(super::fold_dirs).transpose()?.unwrap_or_default() {
        fold_models.push((source, dir.clone(), load(&dir)?));
    }
    super::note(&format!(
        "fitting the familiarity model{} on {}",
        if fold_models.is_empty() { "" } else { "s" },
        options.manifest_list().display()
    ));
    let threshold = model.meta.threshold;
    let mut refits: Vec<(&mut ResNetClassifier, Option<&str>)> = vec![(&mut model, None)];
    refits.extend(
        fold_models
            .iter_mut()
            .map(|(source, _, m)| (m, Some(source.as_str()))),
    );
    train::classifier::refit_trust(options, &mut refits, extra, &segmenter)
        .wrap_err("fitting the familiarity model")?;
    if !same_folder(out, models) {
        copy_model(models, out, SEGMENTER_NAME)?;
        copy_model(models, out, CLASSIFIER_NAME)?;
    }
    let files = ModelFiles::new(out, CLASSIFIER_NAME);
    files.write_meta(&model.meta)?;
    super::note(&format!("wrote {}", files.meta.display()));
    if !extra.rows.is_empty() {
        super::note(&format!(
            "decision threshold on P({}): {threshold:.4} -> {:.4}, chosen again on the \
             validation patients and the queue's reviewed images",
            model.meta.classes[0], model.meta.threshold
        ));
    }
    for (_, dir, fold) in &fold_models {
        let files = ModelFiles::new(dir, CLASSIFIER_NAME);
        files.write_meta(&fold.meta)?;
        super::note(&format!("wrote {}", files.meta.display()));
    }
    let acquisition = model
        .meta
        .trust
        .as_ref()
        .and_then(|t| t.acquisition.as_ref());
    let fitted: Vec<&str> = acquisition
        .map(|a| a.sources.iter().map(|s| s.source.as_str()).collect())
        .unwrap_or_default();
    super::note(&format!(
        "sources whose acquisition is familiar: {}{}",
        if fitted.is_empty() {
            "none".to_owned()
        } else {
            fitted.join(", ")
        },
        if extra.rows.is_empty() || fitted.contains(&"queue") {
            String::new()
        } else {
            format!(
                " (the queue's {} reviewed images are too few: a source needs {} training images)",
                extra.rows.len(),
                cxr_core::trust::acquisition::MIN_SOURCE_IMAGES
            )
        }
    ));
    Ok(())
}

/// Copies model `name` from `models` into `out` (unless one is there), so the new folder is a
/// complete models folder for `--models`.
/// Exports the native models in `dir` to ONNX for the ONNX Runtime backend, with the project's
/// `python/export_onnx.py` in its `.venv` (where `scripts/env.sh` put PyTorch). A model without
/// a current export runs on libtorch, so a failure here is a note, not an error.
fn export_onnx(dir: &Path) {
    // The exports there were made from the weights before training. `--backend auto` refuses a
    // stale export (it falls back to libtorch only for a missing one), so they go first, and a
    // failed export below leaves none rather than a stale one.
    for name in [SEGMENTER_NAME, CLASSIFIER_NAME] {
        let stale = ModelFiles::new(dir, name).onnx();
        if stale.exists()
            && let Err(e) = std::fs::remove_file(&stale)
        {
            super::note(&format!("could not remove {}: {e}", stale.display()));
        }
    }
    let Some(project) = super::beside_executable(|d| d.join("python/export_onnx.py").is_file())
    else {
        super::note("no ONNX export made: python/export_onnx.py is not beside this cxr binary");
        return;
    };
    let python = project.join(".venv/bin/python");
    let exported = std::process::Command::new(&python)
        .arg(project.join("python/export_onnx.py"))
        .arg(dir)
        .stdout(std::io::stderr())
        .status();
    match exported {
        Ok(status) if status.success() => {}
        Ok(status) => super::note(&format!(
            "no ONNX export made ({status}); forward passes will run on libtorch"
        )),
        Err(e) => super::note(&format!(
            "no ONNX export made ({}: {e}); forward passes will run on libtorch",
            python.display()
        )),
    }
}

fn copy_model(models: &Path, out: &Path, name: &str) -> Result<()> {
    let (from, to) = (ModelFiles::new(models, name), ModelFiles::new(out, name));
    if to.weights.exists() {
        return Ok(());
    }
    for (from, to) in [
        (&from.weights, &to.weights),
        (&from.meta, &to.meta),
        (&from.card, &to.card),
        (&from.onnx(), &to.onnx()),
    ] {
        if from.exists() {
            let bytes =
                std::fs::read(from).wrap_err_with(|| format!("reading {}", from.display()))?;
            cxr_core::fsutil::write_atomic(to, &bytes)?;
        }
    }
    super::note(&format!("copied the {name} into {}", out.display()));
    Ok(())
}
