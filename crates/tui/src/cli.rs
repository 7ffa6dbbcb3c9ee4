//! The command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cxr",
    version,
    about = "Explainable chest X-ray review: lung segmentation, COVID-19 vs no-finding classification"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Where models run: auto (CUDA if available), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// Folder holding segmenter.* and classifier.* [default: $`CXR_MODELS`, ./models, or the repository's models/]
    #[arg(long, global = true)]
    pub models: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment and classify radiographs: one JSON object per image on stdout.
    Classify {
        /// PNG or JPEG files (8- or 16-bit, gray, RGB or RGBA).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Write each image's lung mask as a PNG of the same size (255 lung, 0 background).
    Segment {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output folder (created if missing); masks are named STEM.mask.png.
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure the models on a manifest: classifier metrics for `path,label,patient` rows, Dice
    /// and `IoU` for `image,mask,patient` rows. One JSON object on stdout.
    Eval {
        manifest: PathBuf,
        /// Only the patients on this side of the project's patient split.
        #[arg(long, value_enum, default_value_t = SplitArg::All)]
        split: SplitArg,
        /// Seed of the patient split.
        #[arg(long, default_value_t = cxr_core::data::DEFAULT_SEED)]
        seed: u64,
        /// Also measure explanation quality for these explainers (comma-separated, or `all`),
        /// explaining each image's true class: mean deletion/insertion AUC, mass inside the lungs.
        #[arg(long, value_delimiter = ',')]
        explainers: Vec<String>,
        /// Explain at most this many images (the first of the selection).
        #[arg(long, default_value_t = 20)]
        explain_limit: usize,
        /// Add the model-randomisation sanity check to the explanation measures.
        #[arg(long)]
        sanity: bool,
    },
    /// List the registered explainers with their summaries and parameters.
    Explainers {
        /// One JSON object per explainer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Explain the classifier's decision on each image with one or more explainers: writes an
    /// overlay PNG per method and a JSON report per image into --out, and prints the reports.
    Explain {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Comma-separated explainer names (see `cxr explainers`).
        #[arg(long, short, value_delimiter = ',', default_value = "grad-cam")]
        method: Vec<String>,
        /// An explainer parameter, as METHOD:NAME=VALUE (repeatable), e.g. lime:samples=500.
        #[arg(long = "param", short = 'p')]
        params: Vec<String>,
        /// Class to explain: `predicted` or a class name.
        #[arg(long, default_value = "predicted")]
        target: String,
        /// Output folder for overlays and reports (created if missing).
        #[arg(long, default_value = "explanations")]
        out: PathBuf,
        #[command(flatten)]
        render: RenderArgs,
        #[command(flatten)]
        checks: QualityArgs,
    },
    /// Train a model on a manifest; writes NAME.safetensors, NAME.json and the model card NAME.md.
    Train {
        #[command(subcommand)]
        model: TrainCommand,
    },
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Colormap of the overlays: viridis or turbo.
    #[arg(long, default_value = "viridis")]
    pub colormap: String,
    /// Opacity of the heatmap where it is hottest (0..1).
    #[arg(long, default_value_t = 0.6)]
    pub opacity: f32,
    /// Do not outline the lungs on the overlays.
    #[arg(long)]
    pub no_outline: bool,
}

#[derive(Debug, Args)]
pub struct QualityArgs {
    /// Skip the deletion/insertion AUC (faster).
    #[arg(long)]
    pub no_faithfulness: bool,
    /// Also run the model-randomisation sanity check (runs each explainer twice).
    #[arg(long)]
    pub sanity: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    All,
    Train,
    Validation,
    Test,
}

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// The U-Net lung segmenter, on a lung-mask manifest.
    Segmenter {
        /// [default: ../shared/data/lungseg/manifest.csv]
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        common: TrainArgs,
        #[arg(long, default_value_t = 40)]
        epochs: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 2e-3)]
        learning_rate: f64,
    },
    /// The classifier, on a labelled manifest, using the segmenter in --models for lung masks.
    Classifier {
        /// [default: ../shared/data/cxr/manifest.csv]
        #[arg(long)]
        manifest: Option<PathBuf>,
        #[command(flatten)]
        common: TrainArgs,
        /// The positive class (listed first; the threshold applies to its probability).
        #[arg(long, default_value = "covid")]
        positive: String,
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, default_value_t = 1e-3)]
        learning_rate: f64,
    },
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder to write the model into [default: the models folder]. Writing into the shipped
    /// models folder replaces the shipped model: pass another folder to keep it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = cxr_core::data::DEFAULT_SEED)]
    pub seed: u64,
}
