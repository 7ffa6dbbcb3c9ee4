//! The one error type of `cxr-core`. Every variant that concerns a file names it, so that a
//! message printed by the CLI or the viewer tells the user which input was at fault. Errors of
//! reading inputs come from `cxr-io` and are wrapped whole ([`CoreError::Input`]).

use std::path::PathBuf;

/// Everything that can go wrong in decoding, models, data and training.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Reading or decoding an input failed ([`crate::InputError`]), with its message as is.
    #[error(transparent)]
    Input(#[from] cxr_io::Error),

    /// A folder or file this tool keeps for itself (the cache) is not safe to use.
    #[error("{}: refused: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },

    #[error("{}: cannot load model: {source}", path.display())]
    ModelLoad {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("{}: {reason}", path.display())]
    Data { path: PathBuf, reason: String },

    #[error("two explainers are called {name:?}: registered at {first} and at {second}")]
    DuplicateExplainer {
        name: String,
        first: String,
        second: String,
    },

    /// The input is refused: it is no chest radiograph (see [`crate::trust`]).
    #[error("{}: not a chest radiograph: {reason}", path.display())]
    NotARadiograph { path: PathBuf, reason: String },

    /// No explainer of that name is registered.
    #[error(
        "no explainer called {name:?}{}; registered: {}",
        did_you_mean(name, known),
        known.join(", ")
    )]
    UnknownExplainer { name: String, known: Vec<String> },

    /// An explainer parameter that is unknown, malformed or out of range; `reason` says which
    /// and what is expected.
    #[error("{reason}")]
    BadParameter { method: String, reason: String },

    /// The model cannot do what was asked (an explainer needing a feature map on a model that
    /// exposes none, re-initialising a model cxr did not define).
    #[error("{reason}")]
    Unsupported { reason: String },

    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),

    /// A model runtime failed while running a model (ONNX Runtime, a TorchScript module that
    /// answers something else than a tensor): a fault of the model files or the runtime.
    #[error("{backend}: {reason}")]
    Backend {
        backend: &'static str,
        reason: String,
    },

    /// The caller asked the work to stop (the viewer moved on or is closing).
    #[error("cancelled")]
    Cancelled,

    /// A fault of this tool or its models, never of the caller's input (a classifier that
    /// answers NaN, say): the HTTP server answers 500 for it.
    #[error("{0}")]
    Internal(String),

    /// The caller's request is malformed: an option's value, a label, a queue id, an
    /// explanation target. The HTTP server answers 400 for it; never use it for a fault of
    /// this tool ([`CoreError::Internal`]) or its models ([`CoreError::Backend`]).
    #[error("{0}")]
    Invalid(String),
}

impl CoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// A fault of this tool: `what` failed with `error`.
    pub fn internal(what: &str, error: impl std::fmt::Display) -> Self {
        Self::Internal(format!("{what}: {error}"))
    }

    pub(crate) fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Data {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// `; did you mean NAME?` for the known name closest to `name` when it is close (at most a
/// third of its letters different), else nothing.
fn did_you_mean(name: &str, known: &[String]) -> String {
    let name = name.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&name, k), k))
        .filter(|(distance, k)| *distance > 0 && *distance * 3 <= k.len().max(3))
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, k)| format!(" (did you mean {k}?)"))
        .unwrap_or_default()
}
