//! The one error type of the evaluation harness: what went wrong, and what to do.

use std::path::{Path, PathBuf};

/// Errors of the harness; every message names the file, item or endpoint at fault.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("endpoint {url}: {message}")]
    Endpoint { url: String, message: String },
    #[error(transparent)]
    Engine(#[from] hangar_engine::EngineError),
}

impl EvalError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EvalError + '_ {
        move |source| EvalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn bad(path: &Path, message: impl Into<String>) -> EvalError {
        EvalError::BadFile {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;
