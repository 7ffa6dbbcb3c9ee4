//! The error of reading an input. Every variant names the file, so that a message printed by
//! the CLI, the viewer or the server tells the user which input was at fault.

use std::path::PathBuf;

/// Everything that can go wrong while reading and decoding a radiograph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
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

    /// The process-wide memory budget for decoded images (see [`crate::budget::MemoryBudget`])
    /// cannot hold this image now. Unlike [`Error::Refused`], retrying later may help.
    #[error("{}: {reason}", path.display())]
    MemoryBudget { path: PathBuf, reason: String },

    /// A setting that cannot be read (an unreadable `CXR_MEMORY_BUDGET`).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
