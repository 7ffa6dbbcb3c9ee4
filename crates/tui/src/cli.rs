//! The command line.

// Doc comments here are the `--help` text users read, not rustdoc: no Markdown backticks.
#![allow(clippy::doc_markdown)]

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
    /// Without a command, the viewer opens (as `cxr tui`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Where models run: auto (CUDA if available), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    pub device: String,
    /// Folder holding segmenter.* and classifier.* [default: $CXR_MODELS, ./models, or the repository's models/]
    #[arg(long, global = true)]
    pub models: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The terminal viewer: review radiographs, their explanations and metrics, and label them.
    Tui(TuiArgs),
    /// Segment and classify radiographs: one JSON object per image on stdout.
    Classify {
        /// PNG, JPEG (8- or 16-bit, gray, RGB or RGBA) or DICOM files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Add DICOM patient and study identifiers to the JSON (personal data: off by default).
        #[arg(long)]
        identifiers: bool,
    },
    /// Write each image's lung mask as a PNG of the same size (255 lung, 0 background).
    Segment {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output folder (created if missing); masks are named STEM.mask.png.
        #[arg(long)]
        out: PathBuf,
    },
    /// Measure the models on manifests: classifier metrics for `path,label,patient,source`
    /// rows (pooled and per source), Dice and IoU for `image,mask,patient` rows (pooled and per
    /// source). One JSON object per kind on stdout, tables on stderr.
    Eval {
        /// Manifest CSV files, read as one (e.g. cxr/manifest.csv jsrt/manifest.csv).
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        /// Write one CSV row per image (file, source, truth, probability, label, familiarity,
        /// flags) to this file, to find the false positives.
        #[arg(long, value_name = "FILE.csv")]
        per_image: Option<PathBuf>,
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
    /// Shortcut audit: linear probes on the classifier's frozen features (source, class, and
    /// source within each class; test patients) and the share of Grad-CAM mass inside the lungs
    /// per source. One JSON object on stdout, tables on stderr.
    Audit {
        /// Labelled manifest CSV files, read as one (e.g. cxr/manifest.csv jsrt/manifest.csv).
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        /// Seed of the patient split (probes train on train+validation, test on test patients).
        #[arg(long, default_value_t = cxr_core::data::DEFAULT_SEED)]
        seed: u64,
        /// Run Grad-CAM on at most this many test images per source.
        #[arg(long, default_value_t = 30)]
        gradcam_per_source: usize,
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
        /// Add DICOM patient and study identifiers to the reports (personal data: off by default).
        #[arg(long)]
        identifiers: bool,
    },
    /// Serve requests on stdin (`classify ID`, `explain_NAME ID`, for files in --dir; ID may
    /// leave out the extension: ID.png, else the one ID.*), one reply line per request on
    /// stdout: `COMMAND ID RESULT` or `error COMMAND ID MESSAGE`.
    Worker {
        /// The folder whose files the requests name.
        #[arg(long)]
        dir: PathBuf,
        /// Requests run at once (each worker loads its own models).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Where overlays go [default: DIR/.cxr-worker].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Result cache folder [default: DIR/.cxr-cache].
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Neither read nor write the result cache.
        #[arg(long)]
        no_cache: bool,
        /// Ignore cached results older than this many hours.
        #[arg(long)]
        cache_max_age_hours: Option<f64>,
        /// Reply shape: native (label, probabilities, threshold, heatmap, quality) or seed (the
        /// old system's: classify gives {"COVID-19": p, "NO FINDING": q}, explain_NAME the
        /// overlay PNG's path).
        #[arg(long, value_enum, default_value_t = CompatArg::Native)]
        compat: CompatArg,
    },
    /// Train a model on a manifest; writes NAME.safetensors, NAME.json and the model card NAME.md.
    Train {
        #[command(subcommand)]
        model: TrainCommand,
    },
    /// Watch a drop folder: every radiograph put into DIR/inbox/ is classified and explained
    /// into a review queue entry DIR/queue/<id>/ (unreadable files go to DIR/rejected/ with the
    /// reason). One JSON object per event on stdout. Safe to kill at any moment: a restart
    /// resumes without losing or double-processing a file. Write files under a temporary or
    /// hidden name and rename them into the inbox when complete (plain copies work too).
    Watch(WatchArgs),
    /// The review queue of a watch folder: list it, label entries.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// The HTTP API and web page (the seed's routes: /v1/classifier, /v1/explainer/NAME/ID,
    /// /v1/training/queue; see docs/http-api.md). Prints `cxr serve: listening on
    /// http://ADDR` on stdout once bound; /readyz answers 200 once the models are loaded.
    Serve(ServeArgs),
}

/// `cxr serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port. Anything but a loopback address exposes
    /// an unauthenticated API: put it behind a proxy that authenticates.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:3005")]
    pub addr: std::net::SocketAddr,
    /// The watch folder whose review queue receives labels (DIR/queue, as `cxr watch` and the
    /// viewer use it; created on the first label).
    #[arg(
        long = "watch-dir",
        value_name = "DIR",
        env = "CXR_WATCH_DIR",
        default_value = "watch"
    )]
    pub watch_dir: PathBuf,
    /// Model workers, each with its own models (requests run at once).
    #[arg(long, short, default_value_t = 2)]
    pub jobs: usize,
    /// Requests that may wait for a worker; more are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub backlog: usize,
    /// Result cache folder [default: $XDG_CACHE_HOME/cxr or ~/.cache/cxr].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the result cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,
    /// Where uploads are kept, by content hash, in DIR/uploads (mode 700) [default:
    /// $XDG_DATA_HOME/cxr/serve or ~/.local/share/cxr/serve].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seconds a request waits for its result before it is answered 503 (the work goes on and
    /// its result is cached).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// Largest request body, in MiB; larger uploads are refused with 413 before they are read.
    #[arg(long, value_name = "MIB", default_value_t = 32)]
    pub max_upload_mib: usize,
}

#[derive(Debug, Args, Default)]
pub struct TuiArgs {
    /// A folder of radiographs, one file, or a watch folder's queue [default: the watch queue
    /// if there is one, else the current folder].
    pub path: Option<PathBuf>,
    /// How to draw images: auto (ask the terminal), halfblocks (any terminal, also over plain
    /// SSH), sixel, kitty or iterm2.
    #[arg(long, default_value = "auto")]
    pub image_protocol: String,
    /// The watch folder whose queue receives labels.
    #[arg(long, default_value = "watch")]
    pub watch_dir: PathBuf,
    /// Log file [default: $XDG_STATE_HOME/cxr/cxr.log or ~/.local/state/cxr/cxr.log].
    #[arg(long)]
    pub log: Option<PathBuf>,
    /// Cache folder for predictions and explanations [default: $XDG_CACHE_HOME/cxr or ~/.cache/cxr].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Ignore cached results older than this many hours.
    #[arg(long)]
    pub cache_max_age_hours: Option<f64>,
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
pub enum CompatArg {
    Native,
    Seed,
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
    /// The U-Net lung segmenter, on lung-mask manifests.
    Segmenter {
        /// Lung-mask manifests, read as one (repeatable) [default: lungseg/manifest.csv and
        /// jsrt/manifest.csv in the data folder: $CXR_DATA or ../shared/data]
        #[arg(long = "manifest")]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        common: TrainArgs,
        #[arg(long, default_value_t = 40)]
        epochs: usize,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 2e-3)]
        learning_rate: f64,
    },
    /// The classifier, on labelled manifests, using the segmenter in --models for lung masks.
    Classifier {
        /// Labelled manifests, read as one (repeatable) [default: cxr/manifest.csv and
        /// jsrt/manifest.csv in the data folder: $CXR_DATA or ../shared/data]
        #[arg(long = "manifest")]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        common: TrainArgs,
        /// The positive class (listed first; the threshold applies to its probability).
        #[arg(long, default_value = "covid")]
        positive: String,
        /// The negative class; rows with any other label (lung nodule) are only reported.
        #[arg(long, default_value = "normal")]
        negative: String,
        #[command(flatten)]
        defences: DefenceArgs,
        /// Leave this source (e.g. jsrt) out of training and validation, and report on it.
        #[arg(long, value_name = "SOURCE")]
        hold_out_source: Option<String>,
        /// Also train one model per source without it and put the leave-one-source-out table
        /// into the card (one more training per source).
        #[arg(long)]
        leave_one_source_out: bool,
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        #[arg(long, default_value_t = 1e-3)]
        learning_rate: f64,
        /// Also train on this watch folder's reviewed queue items (labelled covid or normal,
        /// not skip), always in the training split. Needs --out, another folder than the
        /// models in use: the shipped model is never replaced by a queue-trained one silently.
        #[arg(long, value_name = "DIR")]
        include_queue: Option<PathBuf>,
    },
    /// Fit the classifier's familiarity model (trust flags) again on labelled manifests,
    /// without touching its weights, and write it into the classifier's JSON in --out.
    Trust {
        /// Labelled manifests (repeatable) [default: cxr/manifest.csv and jsrt/manifest.csv in
        /// the data folder]
        #[arg(long = "manifest")]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        common: TrainArgs,
    },
}

/// How the classifier resists learning the source instead of the disease.
#[derive(Debug, Args)]
pub struct DefenceArgs {
    /// How the input is made: equalised-feathered (lung histogram equalised, soft mask edge)
    /// or masked (the first models' hard-edged standardised lungs).
    #[arg(long, value_enum, default_value_t = InputArg::EqualisedFeathered)]
    pub input: InputArg,
    /// Turn off the scanner-style augmentation (blur, noise, mask dilation/erosion).
    #[arg(long)]
    pub no_style_augmentation: bool,
    /// Turn off source balancing within each class.
    #[arg(long)]
    pub no_balance_sources: bool,
    /// Weight of the domain-adversarial source head (0 turns it off).
    #[arg(long, default_value_t = 0.3)]
    pub adversarial: f64,
    /// Weight of the penalty on class-activation mass outside the lungs (0 turns it off).
    #[arg(long, default_value_t = 1.0)]
    pub lung_focus: f64,
    /// No defence at all: the first shipped models' recipe, for comparison.
    #[arg(long, conflicts_with_all = ["no_style_augmentation", "no_balance_sources"])]
    pub no_defences: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputArg {
    Masked,
    EqualisedFeathered,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder to write the model into [default: the models folder]. Writing into the shipped
    /// models folder replaces the shipped model: pass another folder to keep it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = cxr_core::data::DEFAULT_SEED)]
    pub seed: u64,
    /// Start from these weights (a .safetensors file of the same architecture) and fine-tune.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
}

// Independent on/off switches of one command: flags are the natural form.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The watch folder (created if missing): DIR/inbox, DIR/queue, DIR/rejected.
    #[arg(default_value = "watch")]
    pub dir: PathBuf,
    /// Comma-separated explainers to run on every file (see `cxr explainers`), or `none` for
    /// classification only.
    #[arg(long, short, value_delimiter = ',', default_value = "grad-cam")]
    pub method: Vec<String>,
    /// An explainer parameter, as METHOD:NAME=VALUE (repeatable).
    #[arg(long = "param", short = 'p')]
    pub params: Vec<String>,
    /// Files processed at once, each worker with its own models [default: one per core, up
    /// to 8].
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Poll the inbox instead of using native file events (network mounts; chosen
    /// automatically when native events are unavailable).
    #[arg(long)]
    pub poll: bool,
    /// Also take files from sub-folders of the inbox.
    #[arg(long)]
    pub recursive: bool,
    /// Quiet time in milliseconds before a changed file is read.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(300..=5000))]
    pub debounce_ms: u64,
    /// Process what is in the inbox, then exit (exit code 1 if any file was rejected or stuck).
    #[arg(long)]
    pub once: bool,
    /// Also compute deletion/insertion AUC for each explanation (34 more forward passes).
    #[arg(long)]
    pub faithfulness: bool,
    #[command(flatten)]
    pub render: RenderArgs,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List the entries: most uncertain first (probability closest to the decision threshold),
    /// or oldest first.
    List {
        /// The watch folder.
        #[arg(default_value = "watch")]
        dir: PathBuf,
        #[arg(long, value_enum, default_value_t = QueueOrder::Uncertainty)]
        order: QueueOrder,
        /// Only entries waiting for review.
        #[arg(long)]
        pending: bool,
        /// One JSON object per entry instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Label an entry (or a file not yet in the queue, which is then added as reviewed).
    Label {
        /// Queue id (16 hex digits, or a unique prefix), or the path of a radiograph.
        id: String,
        /// One of the model's classes (covid, normal), or skip.
        label: String,
        /// The watch folder.
        #[arg(long, default_value = "watch")]
        dir: PathBuf,
        /// Who reviewed it [default: $USER].
        #[arg(long)]
        reviewer: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueOrder {
    Uncertainty,
    Time,
}
