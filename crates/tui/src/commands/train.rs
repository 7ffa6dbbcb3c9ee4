//! `cxr train segmenter|classifier`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use color_eyre::eyre::{Result, WrapErr};
use cxr_core::card;
use cxr_core::models::{ModelFiles, UNetSegmenter};
use cxr_core::pipeline::{CLASSIFIER_NAME, SEGMENTER_NAME};
use cxr_core::tch::Device;
use cxr_core::train::{self, EpochReport, TrainOptions};

use crate::cli::{TrainArgs, TrainCommand};

fn print_epoch(report: &EpochReport) {
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
    eprintln!("cxr: wrote {}", path.display());
    Ok(())
}

pub fn run(command: TrainCommand, models: &Path, device: Device) -> Result<ExitCode> {
    let out_dir = |common: &TrainArgs| common.out.clone().unwrap_or_else(|| models.to_path_buf());
    let manifest_or = |given: Option<PathBuf>, default: &str| {
        given.unwrap_or_else(|| super::data_dir().join(default))
    };
    match command {
        TrainCommand::Segmenter {
            manifest,
            common,
            epochs,
            batch_size,
            learning_rate,
        } => {
            let options = TrainOptions {
                manifest: manifest_or(manifest, "lungseg/manifest.csv"),
                epochs,
                batch_size,
                learning_rate,
                seed: common.seed,
                device,
            };
            let (model, record) = train::segmenter::train(&options, &mut print_epoch)
                .wrap_err("training the segmenter")?;
            let files = ModelFiles::new(&out_dir(&common), SEGMENTER_NAME);
            model.save(&files)?;
            write_card(
                &files.card,
                &card::segmenter_card(&model.meta.architecture, &record),
            )?;
            super::print_json(&record)?;
        }
        TrainCommand::Classifier {
            manifest,
            common,
            positive,
            epochs,
            batch_size,
            learning_rate,
        } => {
            let options = TrainOptions {
                manifest: manifest_or(manifest, "cxr/manifest.csv"),
                epochs,
                batch_size,
                learning_rate,
                seed: common.seed,
                device,
            };
            let segmenter = UNetSegmenter::load(&ModelFiles::new(models, SEGMENTER_NAME), device)?;
            eprintln!(
                "cxr: segmenting and preprocessing every image of {}",
                options.manifest.display()
            );
            let (model, record) =
                train::classifier::train(&options, &segmenter, &positive, &mut print_epoch)
                    .wrap_err("training the classifier")?;
            let files = ModelFiles::new(&out_dir(&common), CLASSIFIER_NAME);
            model.save(&files)?;
            write_card(
                &files.card,
                &card::classifier_card(&model.meta.architecture, &record),
            )?;
            super::print_json(&record)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
