//! What can go wrong reading logs. Bad lines are not errors (they are skipped and counted);
//! a path that cannot be read is, and names the path.

use std::{io, path::PathBuf};

/// An input could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A file (or a path given on the command line) cannot be opened.
    #[error("cannot read {}: {source}", path.display())]
    Open {
        /// The path as given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A folder cannot be listed.
    #[error("cannot list the folder {}: {source}", path.display())]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A folder holds no `*.log` or `*.json` file.
    #[error("no *.log or *.json file in the folder {}", path.display())]
    NoLogs {
        /// The folder.
        path: PathBuf,
    },
    /// Reading failed part way (an I/O error, not a bad line).
    #[error("cannot read {name}: {source}")]
    Read {
        /// The source's name (a path, or `-` for stdin).
        name: String,
        /// Why.
        source: io::Error,
    },
}

/// A report could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// An input could not be read.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The report could not be serialised as JSON.
    #[error("cannot write JSON: {0}")]
    Json(#[from] serde_json::Error),
}
