//! Errors of the planner. Every message says what was wrong and what to pass instead.

use std::path::PathBuf;

/// What can go wrong while planning or profiling.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A number the user typed could not be read (`--params abc`).
    #[error("cannot read {what} {input:?}: {hint}")]
    BadNumber {
        what: &'static str,
        input: String,
        hint: &'static str,
    },
    /// A name that is not in one of the built-in lists.
    #[error("unknown {what} {input:?}; known: {known}")]
    Unknown {
        what: &'static str,
        input: String,
        known: String,
    },
    /// The model file could not be opened or lacks a key the planner needs.
    #[error("cannot read model {path}: {source}")]
    Model {
        path: PathBuf,
        #[source]
        source: hangar_formats::GgufError,
    },
    /// The model file opened but its shape is incomplete or inconsistent.
    #[error("model shape is incomplete: {0}")]
    Shape(String),
    /// Options that do not go together, or a value out of range.
    #[error("{0}")]
    Invalid(String),
    /// A file other than the model (bench JSON, /proc/meminfo) could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bench JSON file that is not JSON or has no throughput numbers.
    #[error("cannot use bench results {path}: {why}")]
    Bench { path: PathBuf, why: String },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, PlanError>;
