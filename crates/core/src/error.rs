//! The one error type of `cxr-core`. Every variant that concerns a file names it, so that a
//! message printed by the CLI or the viewer tells the user which input was at fault.

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

    #[error("{}: {reason}", path.display())]
    Decode { path: PathBuf, reason: String },

    #[error(
        "{}: image is {width}x{height} pixels, more than the {limit} px per side this tool decodes",
        path.display()
    )]
    TooLarge {
        path: PathBuf,
        width: u32,
        height: u32,
        limit: u32,
    },

    /// Refused by the input gate (see [`crate::input`]): not a regular file, a symbolic link
    /// where none are followed, or over a size limit. Retrying does not help.
    #[error("{}: refused: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },

    /// The process-wide memory budget for decoded images (see [`crate::input::MemoryBudget`])
    /// cannot hold this image now. Unlike [`CoreError::Refused`], retrying later may help.
    #[error("{}: {reason}", path.display())]
    MemoryBudget { path: PathBuf, reason: String },

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
    #[error("no explainer called {name:?}; registered: {}", known.join(", "))]
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

    pub(crate) fn data(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Data {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
