//! The command line.

// Doc comments here are the `--help` text users read, not rustdoc: no Markdown backticks.
#![allow(clippy::doc_markdown)]

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "cxr",
    version,
    about = "Explainable chest X-ray review: lung segmentation, COVID-19 vs no-finding classification",
    after_help = "Without a command, the viewer opens on the watch queue or the current folder \
                  (as `cxr tui`). Environment: CXR_MODELS (models folder), CXR_DATA (data folder \
                  of `train`), CXR_WATCH_DIR (watch folder), CXR_DEVICE (device)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// Without a command, the viewer opens (as `cxr tui`).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// When to show progress on stderr: auto (bars on a terminal only), always (plain lines
    /// when stderr is not a terminal), never.
    #[arg(long, global = true, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Print only results (stdout) and errors (stderr): no progress, notes or tables.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// The old spelling, before the command (`cxr --device cpu classify`); see the command's
    /// own --device.
    #[arg(long, hide = true, value_parser = DeviceParser)]
    pub device: Option<DeviceArg>,
    /// The old spelling, before the command; see the command's own --models.
    #[arg(long, hide = true)]
    pub models: Option<PathBuf>,
}

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ProgressArg {
    /// Progress bars when stderr is a terminal, nothing otherwise.
    #[default]
    Auto,
    /// Bars on a terminal, plain lines (at most one a second) otherwise.
    Always,
    /// No progress at all.
    Never,
}

/// The models and where they run: on the commands that load models.
#[derive(Debug, Clone, Default, Args)]
pub struct ModelArgs {
    /// Where models run: auto (CUDA if available), cpu, cuda or cuda:N [default: auto].
    #[arg(long, value_name = "DEVICE", env = "CXR_DEVICE", value_parser = DeviceParser)]
    pub device: Option<DeviceArg>,
    /// Folder holding segmenter.* and classifier.* [default: ./models when it holds a
    /// classifier, else the models/ folder of the project the cxr binary was built in].
    #[arg(long, value_name = "DIR", env = "CXR_MODELS")]
    pub models: Option<PathBuf>,
    /// What runs the forward passes: auto (ONNX Runtime when the models have ONNX exports and
    /// the device is the CPU, else libtorch), torch or onnx. Gradient explainers always use
    /// libtorch.
    #[arg(long, value_enum, env = "CXR_BACKEND", default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
    /// Number format on ONNX Runtime: auto (INT8 where an INT8 export passed its check
    /// against FP32, else FP32), fp32, or int8 (every INT8 export there is, checked or not;
    /// an error when there is none). python/quantise_onnx.py makes and checks the INT8 files.
    #[arg(long, value_enum, env = "CXR_PRECISION", default_value_t = PrecisionArg::Auto)]
    pub precision: PrecisionArg,
    /// Threads each model worker uses [default: the cores, shared between --jobs workers].
    #[arg(long, value_name = "N", env = "CXR_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

/// A `--precision` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PrecisionArg {
    /// INT8 where an INT8 export passed its check against FP32, else FP32.
    #[default]
    Auto,
    /// 32-bit floats, the weights as trained.
    Fp32,
    /// Every INT8 export there is, checked or not (an error when there is none; ONNX Runtime).
    Int8,
}

impl From<PrecisionArg> for cxr_core::compute::Precision {
    fn from(arg: PrecisionArg) -> Self {
        match arg {
            PrecisionArg::Auto => Self::Auto,
            PrecisionArg::Fp32 => Self::Fp32,
            PrecisionArg::Int8 => Self::Int8,
        }
    }
}

/// A `--backend` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum BackendArg {
    /// ONNX Runtime when the models have current ONNX exports and run on the CPU, else libtorch.
    #[default]
    Auto,
    /// libtorch for everything.
    Torch,
    /// ONNX Runtime for forward passes (an error when it cannot be used).
    Onnx,
}

impl From<BackendArg> for cxr_core::compute::Backend {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Auto => Self::Auto,
            BackendArg::Torch => Self::Torch,
            BackendArg::Onnx => Self::Onnx,
        }
    }
}

/// A `--device` value, checked for its form (whether CUDA is there is checked when models load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceArg(pub String);

/// Parses `--device`: auto, cpu, cuda or cuda:N (listed for help and shell completion).
#[derive(Debug, Clone, Copy)]
pub struct DeviceParser;

impl clap::builder::TypedValueParser for DeviceParser {
    type Value = DeviceArg;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<DeviceArg, clap::Error> {
        let text = value.to_string_lossy();
        let valid = matches!(text.as_ref(), "auto" | "cpu" | "cuda")
            || text
                .strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if valid {
            return Ok(DeviceArg(text.into_owned()));
        }
        let name = arg.map_or_else(|| "--device".to_owned(), ToString::to_string);
        Err(clap::Error::raw(
            clap::error::ErrorKind::InvalidValue,
            format!("invalid value '{text}' for '{name}': expected auto, cpu, cuda or cuda:N\n"),
        )
        .with_cmd(cmd))
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        use clap::builder::PossibleValue;
        Some(Box::new(
            [
                PossibleValue::new("auto").help("CUDA when libtorch sees a GPU, else the CPU"),
                PossibleValue::new("cpu").help("The CPU"),
                PossibleValue::new("cuda").help("The first GPU (cuda:N for another)"),
            ]
            .into_iter(),
        ))
    }
}

/// The watch folder, one spelling on every command that uses it.
#[derive(Debug, Clone, Args)]
pub struct WatchDirArg {
    /// The watch folder: DIR/inbox (drop radiographs there), DIR/queue (review entries),
    /// DIR/rejected.
    #[arg(
        long = "watch-dir",
        value_name = "DIR",
        env = "CXR_WATCH_DIR",
        default_value = "watch",
        alias = "dir"
    )]
    pub watch_dir: PathBuf,
}

impl Default for WatchDirArg {
    fn default() -> Self {
        Self {
            watch_dir: std::env::var_os("CXR_WATCH_DIR").map_or_else(|| "watch".into(), Into::into),
        }
    }
}

/// The result cache, one spelling on every command that keeps results (viewer, worker, server).
#[derive(Debug, Clone, Default, Args)]
pub struct CacheArgs {
    /// Result cache folder [default: $XDG_CACHE_HOME/cxr or ~/.cache/cxr, this user's].
    #[arg(long = "cache-dir", visible_alias = "cache", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the result cache.
    #[arg(long, conflicts_with_all = ["cache_dir", "cache_max_age_hours"])]
    pub no_cache: bool,
    /// Ignore cached results older than this many hours.
    #[arg(long, value_name = "HOURS", value_parser = parse_hours)]
    pub cache_max_age_hours: Option<f64>,
}

impl CacheArgs {
    /// The cache these options choose.
    #[must_use]
    pub fn cache(&self) -> cxr_core::cache::Cache {
        use cxr_core::cache::{Cache, default_dir};
        if self.no_cache {
            return Cache::disabled();
        }
        let cache = Cache::new(self.cache_dir.clone().unwrap_or_else(default_dir));
        match self.cache_max_age_hours {
            Some(hours) => cache.with_max_age(std::time::Duration::from_secs_f64(hours * 3600.0)),
            None => cache,
        }
    }
}

/// A number of hours: finite and not negative.
fn parse_hours(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(hours) if hours.is_finite() && hours >= 0.0 => Ok(hours),
        _ => Err(format!("{text}: expected a number of hours >= 0")),
    }
}

/// How the viewer draws images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ImageProtocolArg {
    /// Ask the terminal (briefly; halfblocks if it does not answer).
    #[default]
    Auto,
    /// Coloured half blocks: any terminal, also over plain SSH.
    Halfblocks,
    /// Sixel graphics (xterm -ti vt340, foot, WezTerm, mlterm...).
    Sixel,
    /// The kitty graphics protocol (kitty, Ghostty, WezTerm).
    Kitty,
    /// iTerm2's inline images (iTerm2, WezTerm).
    Iterm2,
}

impl ImageProtocolArg {
    /// The name the viewer takes.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Halfblocks => "halfblocks",
            Self::Sixel => "sixel",
            Self::Kitty => "kitty",
            Self::Iterm2 => "iterm2",
        }
    }
}

/// Colormap of the overlays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ColormapArg {
    /// Perceptually uniform, dark blue to yellow; readable in grey and by colour-blind people.
    #[default]
    Viridis,
    /// Rainbow-like, more contrast in the middle.
    Turbo,
}

impl From<ColormapArg> for cxr_core::render::Colormap {
    fn from(arg: ColormapArg) -> Self {
        match arg {
            ColormapArg::Viridis => Self::Viridis,
            ColormapArg::Turbo => Self::Turbo,
        }
    }
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
        #[command(flatten)]
        model: ModelArgs,
        /// Add DICOM patient and study identifiers to the JSON (personal data: off by default).
        #[arg(long)]
        identifiers: bool,
    },
    /// Write each image's lung mask as a PNG of the same size (255 lung, 0 background).
    Segment {
        /// Radiographs (PNG, JPEG or DICOM).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Output folder (created if missing); masks are named STEM.mask.png.
        #[arg(long)]
        out: PathBuf,
        /// Also write each network input, exactly as the models see it, into this folder as
        /// NumPy arrays: STEM.segmenter.npy and STEM.classifier.npy (calibration data for
        /// python/quantise_onnx.py).
        #[arg(long, value_name = "DIR")]
        inputs_out: Option<PathBuf>,
    },
    /// Measure the models on manifests: classifier metrics for `path,label,patient,source`
    /// rows (pooled and per source), Dice and IoU for `image,mask,patient` rows (pooled and per
    /// source). One JSON object per kind on stdout, tables on stderr.
    Eval {
        /// Manifest CSV files, read as one (e.g. cxr/manifest.csv jsrt/manifest.csv).
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
        /// Write one CSV row per image to this file, to find the false positives and the bad
        /// masks: for labelled images file, source, truth, probability, label, familiarity,
        /// flags and each class's probability (p_CLASS); for lung-mask images file, source,
        /// dice, iou, implausible, error (into FILE.masks.csv when the manifests hold both).
        #[arg(long, value_name = "FILE.csv")]
        per_image: Option<PathBuf>,
        /// Draw the classifier's evaluation into this folder, as SVG and PNG: ROC pooled and
        /// per source, reliability diagram, confusion matrix, flag and silent-wrong rates.
        #[arg(long, value_name = "DIR")]
        plots: Option<PathBuf>,
        /// Only the patients on this side of the project's patient split.
        #[arg(long, value_enum, default_value_t = SplitArg::All)]
        split: SplitArg,
        /// Seed of the patient split (and of --against's resamples).
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
        /// Measure the leave-one-source-out models in this folder instead (one per source,
        /// DIR/SOURCE/classifier.*, written by `cxr train classifier --leave-one-source-out`;
        /// the shipped ones are in models/leave-one-source-out): each on every image of its
        /// source, and on the other sources' images on the --split side, with the flags of
        /// its own trust model. The segmenter is the one of --models.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["explainers", "per_image", "plots"])]
        leave_one_source_out: Option<PathBuf>,
        /// Compare the models of --models (A) with the models in this folder (B) on the same
        /// images instead: per source, lung-mask Dice (and pooled) or the classifier's accuracy,
        /// within-source contrast, ROC-AUC and flagged and silent-wrong shares, each as A - B
        /// with its 95% paired-bootstrap interval (4,000 resamples of the images, seeded by
        /// --seed). A model change is worse somewhere when an interval lies wholly on the
        /// wrong side of zero.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["explainers", "per_image", "plots", "leave_one_source_out"])]
        against: Option<PathBuf>,
    },
    /// Shortcut audit: linear probes on the classifier's frozen features (source, class, and
    /// source within each class; test patients) and the share of Grad-CAM mass inside the lungs
    /// per source. One JSON object on stdout, tables on stderr.
    Audit {
        /// Labelled manifest CSV files, read as one (e.g. cxr/manifest.csv jsrt/manifest.csv).
        #[arg(required = true)]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
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
        /// Radiographs (PNG, JPEG or DICOM).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        model: ModelArgs,
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
        /// Also write the raw arrays into DIR as NumPy .npy files: each heatmap at the
        /// radiograph's resolution and on the classifier's grid, LIME's superpixel labels and
        /// weights, the lung mask, and an index STEM.raw.json (see docs/raw-outputs.md).
        #[arg(long, value_name = "DIR")]
        raw: Option<PathBuf>,
    },
    /// Classify (and explain) the images of a CSV or JSON lines manifest with a `path` column,
    /// or one shard of them, into DIR/shard-I-of-N.jsonl and .parquet (each written whole or
    /// not at all). Resumable: a re-run reuses every image already done (same file content,
    /// same models), so a retried task never repeats or loses a row. A summary JSON line on
    /// stdout at the end. See docs/scale-out.md.
    Batch {
        /// CSV (with a header) or JSON lines (.jsonl/.ndjson) with a `path` column; other
        /// columns are carried into the results. Relative paths: from the manifest's folder,
        /// else its parent.
        manifest: PathBuf,
        /// Output folder (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// This run's shard, I/N (0-based): the rows whose path hashes to I. Without it, the
        /// index comes from JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or
        /// SLURM_ARRAY_TASK_ID (Slurm job array), else the whole manifest is one shard.
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// The number of shards when the index comes from the environment (Slurm's default:
        /// SLURM_ARRAY_TASK_COUNT).
        #[arg(long, value_name = "N", conflicts_with = "shard")]
        shards: Option<u64>,
        /// Also explain each image with these explainers (comma-separated, see `cxr
        /// explainers`); overlays go to DIR/overlays/.
        #[arg(long, value_delimiter = ',', value_name = "METHODS")]
        explain: Vec<String>,
        /// Images analysed at once (each worker loads its own models).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Serve requests on stdin (`classify ID`, `explain_NAME ID`, for files in --dir; ID may
    /// leave out the extension: ID.png, else the one ID.*), one reply line per request on
    /// stdout: `COMMAND ID RESULT` or `error COMMAND ID MESSAGE`.
    Worker {
        /// The folder whose files the requests name (any folder of radiographs; not a watch
        /// folder).
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
        /// Requests run at once (each worker loads its own models).
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Where overlays go [default: DIR/.cxr-worker].
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        cache: CacheArgs,
        /// Reply shape: native (label, probabilities, threshold, heatmap, quality) or seed (the
        /// old system's: classify gives {"COVID-19": p, "NO FINDING": q}, explain_NAME the
        /// overlay PNG's path).
        #[arg(long, value_enum, default_value_t = CompatArg::Native)]
        compat: CompatArg,
        /// IDs may name files in subfolders of --dir (FOLDER/NAME): each part is checked like
        /// an ID, and the file must still lie inside --dir (how the Spark job sends manifest
        /// paths, see docs/scale-out.md).
        #[arg(long)]
        subfolders: bool,
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
    /// The review queue of a watch folder: list it, label entries, export the session.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Print a shell completion script: e.g. `cxr completions bash > ~/.local/share/bash-completion/completions/cxr`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout, or write cxr.1 and one page per command
    /// (cxr-tui.1, ...) into a folder: `cxr man | man -l -`.
    Man {
        /// Folder to write the pages into (created if missing) instead of stdout.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
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
    /// The watch folder whose review queue receives labels (created on the first label).
    #[command(flatten)]
    pub watch: WatchDirArg,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Model workers, each with its own models (requests run at once).
    #[arg(long, short, default_value_t = 2)]
    pub jobs: usize,
    /// Requests that may wait for a worker; more are answered 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub backlog: usize,
    #[command(flatten)]
    pub cache: CacheArgs,
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
    /// MiB of request bodies received at once (all uploads together); requests beyond wait up
    /// to 30 s for their turn, then get 503 with Retry-After.
    #[arg(long, value_name = "MIB", default_value_t = 256)]
    pub body_budget_mib: usize,
    /// MiB the uploads folder may hold; the oldest uploads are removed first, never one in the
    /// review queue.
    #[arg(long, value_name = "MIB", default_value_t = 1024)]
    pub uploads_max_mib: u64,
}

#[derive(Debug, Args, Default)]
pub struct TuiArgs {
    /// A folder of radiographs, one file, or a watch folder's queue [default: the watch queue
    /// if there is one, else the current folder].
    pub path: Option<PathBuf>,
    /// How to draw images.
    #[arg(long, value_enum, default_value_t = ImageProtocolArg::Auto)]
    pub image_protocol: ImageProtocolArg,
    /// The watch folder whose queue the viewer opens by default and where labels go.
    #[command(flatten)]
    pub watch: WatchDirArg,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Log file [default: $XDG_STATE_HOME/cxr/cxr.log or ~/.local/state/cxr/cxr.log].
    #[arg(long)]
    pub log: Option<PathBuf>,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Who labels, recorded with each label [default: $CXR_REVIEWER, else the login name].
    #[arg(long)]
    pub reviewer: Option<String>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// Colormap of the overlays.
    #[arg(long, value_enum, default_value_t = ColormapArg::Viridis)]
    pub colormap: ColormapArg,
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
    /// Every row.
    All,
    /// The training patients.
    Train,
    /// The validation patients.
    Validation,
    /// The test patients.
    Test,
    /// The validation and test patients: every image no model was fitted on, for comparisons
    /// that need more images than the test patients have.
    HeldOut,
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
        /// Passes over the training images.
        #[arg(long, default_value_t = 40)]
        epochs: usize,
        /// Images per optimisation step.
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        /// Adam's learning rate.
        #[arg(long, default_value_t = 2e-3)]
        learning_rate: f64,
        /// Channels of the U-Net's first stage (each down-step doubles them). 8 costs a
        /// quarter of the FLOPs of 16.
        #[arg(long, default_value_t = 8)]
        base: i64,
        /// The U-Net's 2x down-steps, 1 to 5 (--side must be divisible by 2^depth). A fifth
        /// adds a 7x7 level at 224 px: +24% FLOPs (see the segmenter's card).
        #[arg(long, default_value_t = 4)]
        depth: usize,
        /// Side of the square the segmenter sees, a multiple of 16 from 64 to 512 [default: 224]
        #[arg(long, default_value_t = cxr_core::preprocess::SEGMENTER_SIDE, hide_default_value = true)]
        side: u32,
    },
    /// The classifier, on labelled manifests, using the segmenter in --models for lung masks.
    Classifier {
        /// Labelled manifests, read as one (repeatable) [default: cxr/manifest.csv,
        /// jsrt/manifest.csv and, where present, nih-pneumonia/manifest.csv in the data folder:
        /// $CXR_DATA or ../shared/data]
        #[arg(long = "manifest")]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        common: TrainArgs,
        /// The positive class (listed first; the threshold applies to its probability).
        #[arg(long, default_value = "covid")]
        positive: String,
        /// The negative class; rows with a label of no class (lung nodule) are only reported.
        #[arg(long, default_value = "normal")]
        negative: String,
        /// A further class to train on (repeatable), e.g. disease from the negative class's
        /// own hospital, so that the score cannot stand for the hospital; `none` trains on the
        /// two classes only [default: pneumonia, where the manifests have it]
        #[arg(long = "extra-class", value_name = "LABEL")]
        extra_classes: Vec<String>,
        #[command(flatten)]
        defences: DefenceArgs,
        /// Leave this source (e.g. jsrt) out of training and validation, and report on it.
        #[arg(long, value_name = "SOURCE")]
        hold_out_source: Option<String>,
        /// Also train one model per source without it and put the leave-one-source-out table
        /// into the card (one more training per source).
        #[arg(long)]
        leave_one_source_out: bool,
        /// Passes over the training images.
        #[arg(long, default_value_t = 30)]
        epochs: usize,
        /// Images per optimisation step.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// Adam's learning rate.
        #[arg(long, default_value_t = 1e-3)]
        learning_rate: f64,
        /// Also train on the reviewed queue items of --watch-dir (labelled covid or normal,
        /// not skip), always in the training split. Needs --out, another folder than the
        /// models in use: the shipped model is never replaced by a queue-trained one silently.
        #[arg(long)]
        include_queue: bool,
        /// The watch folder whose queue --include-queue reads.
        #[command(flatten)]
        watch: WatchDirArg,
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
        /// Also fit on the reviewed queue items of --watch-dir, as one more source ("queue"):
        /// with 30 or more, a site's own radiographs stop being flagged as acquired unlike
        /// every source; and choose the decision threshold again on the validation patients
        /// and the reviewed items together (the weights never saw them). Needs --out, another
        /// folder than the models in use.
        #[arg(long)]
        include_queue: bool,
        /// The watch folder whose queue --include-queue reads.
        #[command(flatten)]
        watch: WatchDirArg,
        /// Also refit the leave-one-source-out models in DIR/SOURCE/ (as `cxr train classifier
        /// --leave-one-source-out` writes them), each without its source, in place
        #[arg(long, value_name = "DIR", conflicts_with = "include_queue")]
        leave_one_source_out: Option<PathBuf>,
    },
    /// Fit the segmenter's lung-shape model (implausible-lungs) again on the training patients'
    /// reference masks of lung-mask manifests, without touching its weights, and write it into
    /// the segmenter's JSON in --out
    Shape {
        /// Lung-mask manifests (repeatable) [default: lungseg/manifest.csv and
        /// jsrt/manifest.csv in the data folder]
        #[arg(long = "manifest")]
        manifests: Vec<PathBuf>,
        #[command(flatten)]
        common: TrainArgs,
    },
}

/// How the classifier resists learning the source instead of the disease.
#[derive(Debug, Args)]
#[allow(clippy::struct_excessive_bools)] // one flag per defence switch
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
    /// Framing augmentation: zoom +-30% and shift +-15% (crops that cut the lungs at the
    /// border, zoom-out with padding) instead of +-10%.
    #[arg(long)]
    pub framing: bool,
    /// Balance the views (AP, PA) within each class's source, as sources are within a class.
    #[arg(long)]
    pub balance_views: bool,
    /// No defence at all: the first shipped models' recipe, for comparison.
    #[arg(long, conflicts_with_all = ["no_style_augmentation", "no_balance_sources", "framing", "balance_views"])]
    pub no_defences: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputArg {
    /// The lungs standardised, hard mask edge (the first models).
    Masked,
    /// Lung histogram equalised, soft mask edge.
    EqualisedFeathered,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Folder to write the model into [default: the models folder]. Writing into the shipped
    /// models folder replaces the shipped model: pass another folder to keep it.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Seed of the patient split, and (without --init-seed) of the initial weights, the
    /// augmentation and the batch order.
    #[arg(long, default_value_t = cxr_core::data::DEFAULT_SEED)]
    pub seed: u64,
    /// Seed of the initial weights, the augmentation and the batch order only, the patient
    /// split staying --seed's: another run on the same split [default: --seed]
    #[arg(long, value_name = "N")]
    pub init_seed: Option<u64>,
    /// Start from these weights (a .safetensors file of the same architecture) and fine-tune.
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
}

// Independent on/off switches of one command: flags are the natural form.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The watch folder (created if missing).
    #[command(flatten)]
    pub watch: WatchDirArg,
    /// The old spelling of --watch-dir (`cxr watch DIR`).
    #[arg(hide = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
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
    /// Also receive DICOM instances sent with C-STORE (a Storage SCP) at ADDR, e.g.
    /// 127.0.0.1:11112; each goes into the inbox like a dropped file.
    #[arg(long, value_name = "ADDR")]
    pub dicom_listen: Option<std::net::SocketAddr>,
    /// Our AE title: the listener rejects associations calling another one; --send-to calls
    /// as it.
    #[arg(long, default_value = "CXR")]
    pub ae_title: String,
    /// Largest DICOM instance the listener accepts, in bytes (default and upper bound: the
    /// 256 MiB input limit); larger ones are refused with an out-of-resources status.
    #[arg(long, value_name = "BYTES", requires = "dicom_listen")]
    pub dicom_max_bytes: Option<u64>,
    /// Send each DICOM input's results (Secondary Captures and SR) to this Storage SCP with
    /// C-STORE, as --ae-title; failed sends are kept in the entry and retried.
    #[arg(long, value_name = "AE@HOST:PORT")]
    pub send_to: Option<String>,
    /// Also compute deletion/insertion AUC for each explanation (34 more forward passes).
    #[arg(long)]
    pub faithfulness: bool,
    #[command(flatten)]
    pub render: RenderArgs,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List the entries: most uncertain first (probability closest to the decision threshold),
    /// or oldest first.
    List {
        #[command(flatten)]
        watch: WatchDirArg,
        /// The old spelling of --watch-dir (`cxr queue list DIR`).
        #[arg(hide = true, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Order of the entries.
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
        /// One of the model's classes (covid, normal, pneumonia), or skip.
        label: String,
        #[command(flatten)]
        watch: WatchDirArg,
        /// Who reviewed it [default: $CXR_REVIEWER, else the login name].
        #[arg(long)]
        reviewer: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Take back an entry's current review (it stays in the entry's history, marked undone; the
    /// review before it, if any, is current again).
    Undo {
        /// Queue id (16 hex digits, or a unique prefix).
        id: String,
        #[command(flatten)]
        watch: WatchDirArg,
        /// Who undoes it [default: $CXR_REVIEWER, else the login name].
        #[arg(long)]
        reviewer: Option<String>,
    },
    /// Send entries' DICOM results (Secondary Captures and SR) to a Storage SCP with C-STORE,
    /// now: the entries named, or with --unsent every entry whose results were never all
    /// stored (queued while `cxr watch` ran without --send-to, or whose send failed). One JSON
    /// line per instance; each entry records the outcome as `cxr watch --send-to` does
    /// (dicom-sent.txt, or dicom-send-failed.txt, which the watcher retries).
    Send {
        /// Queue ids (16 hex digits, or unique prefixes).
        #[arg(required_unless_present = "unsent", conflicts_with = "unsent")]
        ids: Vec<String>,
        /// Every entry with DICOM results that were never all stored.
        #[arg(long)]
        unsent: bool,
        /// The receiver.
        #[arg(long, value_name = "AE@HOST:PORT")]
        to: String,
        /// Our AE title, as the receiver sees it.
        #[arg(long, default_value = "CXR")]
        ae_title: String,
        #[command(flatten)]
        watch: WatchDirArg,
    },
    /// Export the review session: every entry with its prediction, flags, label and reviewer,
    /// as CSV or as one self-contained HTML report (thumbnails and overlays embedded).
    Export {
        #[command(flatten)]
        watch: WatchDirArg,
        /// csv: one row per entry; html: a report to open in a browser.
        #[arg(long, value_enum, default_value_t = ExportFormat::Csv)]
        format: ExportFormat,
        /// Write here instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Only reviewed entries.
        #[arg(long)]
        reviewed: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueOrder {
    /// Most uncertain first (probability closest to the threshold; flagged entries first).
    Uncertainty,
    /// Oldest first.
    Time,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// Comma-separated values, one row per entry.
    Csv,
    /// A self-contained HTML report.
    Html,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// Every argument and subcommand a user can see, with what is missing: help text.
    fn undocumented(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in command.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if arg.is_hide_set() || builtin {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in command.get_subcommands() {
            let path = format!("{path} {}", sub.get_name());
            if sub.get_name() != "help" && sub.get_about().is_none() {
                missing.push(path.clone());
            }
            undocumented(sub, &path, missing);
        }
    }

    #[test]
    fn every_argument_and_subcommand_has_help() {
        Cli::command().debug_assert();
        let mut missing = Vec::new();
        undocumented(&Cli::command(), "cxr", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:#?}");
    }

    #[test]
    fn the_help_check_finds_an_undocumented_argument() {
        let command = clap::Command::new("x")
            .about("x")
            .arg(clap::Arg::new("documented").long("a").help("yes"))
            .subcommand(clap::Command::new("sub").arg(clap::Arg::new("bare").long("b")));
        let mut missing = Vec::new();
        undocumented(&command, "x", &mut missing);
        assert_eq!(missing, ["x sub", "x sub bare"]);
    }

    /// The watch folder is `--watch-dir` on every command that uses it, and only there.
    #[test]
    fn one_spelling_for_the_watch_folder() {
        fn walk(command: &clap::Command, path: &str, with: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub
                    .get_arguments()
                    .any(|a| a.get_long() == Some("watch-dir"))
                {
                    with.push(path.clone());
                }
                walk(sub, &path, with);
            }
        }
        let cli = Cli::command();
        let mut with = Vec::new();
        walk(&cli, "cxr", &mut with);
        assert_eq!(
            with,
            [
                "cxr tui",
                "cxr train classifier",
                "cxr train trust",
                "cxr watch",
                "cxr queue list",
                "cxr queue label",
                "cxr queue undo",
                "cxr queue send",
                "cxr queue export",
                "cxr serve"
            ]
        );
    }

    /// `--device` and `--models` only where models are loaded.
    #[test]
    fn model_options_only_where_models_load() {
        let cli = Cli::command();
        let has = |path: &[&str]| {
            let mut command = &cli;
            for name in path {
                command = command
                    .find_subcommand(name)
                    .unwrap_or_else(|| panic!("{name}"));
            }
            command
                .get_arguments()
                .any(|a| a.get_long() == Some("device") && !a.is_hide_set())
        };
        for path in [
            &["classify"][..],
            &["tui"],
            &["explain"],
            &["eval"],
            &["audit"],
            &["segment"],
            &["worker"],
            &["serve"],
            &["watch"],
            &["queue", "label"],
            &["train", "classifier"],
        ] {
            assert!(has(path), "{path:?} lacks --device");
        }
        for path in [
            &["explainers"][..],
            &["queue", "list"],
            &["queue", "export"],
            &["completions"],
            &["man"],
        ] {
            assert!(!has(path), "{path:?} has --device");
        }
    }

    /// README's command table and `--help` agree: every command (and queue/train subcommand)
    /// is in the README, and every long option the README names exists.
    #[test]
    fn the_readme_names_every_command_and_only_real_options() {
        fn collect(command: &clap::Command, longs: &mut std::collections::BTreeSet<String>) {
            for arg in command.get_arguments() {
                longs.extend(arg.get_long().map(str::to_owned));
                longs.extend(
                    arg.get_all_aliases()
                        .into_iter()
                        .flatten()
                        .map(str::to_owned),
                );
            }
            for sub in command.get_subcommands() {
                collect(sub, longs);
            }
        }
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"),
        )
        .expect("README.md");
        let cli = Cli::command();
        let mut longs = std::collections::BTreeSet::new();
        collect(&cli, &mut longs);
        for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = sub.get_name();
            assert!(
                readme.contains(&format!("cxr {name}")),
                "README lacks `cxr {name}`"
            );
            for inner in sub.get_subcommands().filter(|s| s.get_name() != "help") {
                let both = format!("{name} {}", inner.get_name());
                let listed = readme.contains(&format!("cxr {both}"))
                    || readme.contains(&format!("{name} list\\|label"))
                        && ["list", "label"].contains(&inner.get_name());
                assert!(listed, "README lacks `cxr {both}`");
            }
        }
        // Options the README mentions in code spans, like `--watch-dir DIR`.
        for word in readme.split(|c: char| c.is_whitespace() || "`()[],|;".contains(c)) {
            let Some(option) = word.strip_prefix("--") else {
                continue;
            };
            let option = option.split('=').next().unwrap_or_default();
            let word_like = option.starts_with(|c: char| c.is_ascii_lowercase())
                && option.chars().all(|c| c.is_ascii_lowercase() || c == '-');
            if !word_like {
                continue;
            }
            // Options of cargo and of the example programs the README also shows.
            let elsewhere = [
                "all",
                "all-targets",
                "bench",
                "check",
                "example",
                "ignored",
                "release",
                "seconds",
                "test",
                "workspace",
            ];
            assert!(
                longs.contains(option) || elsewhere.contains(&option),
                "README names --{option}, which cxr lacks"
            );
        }
    }
}
