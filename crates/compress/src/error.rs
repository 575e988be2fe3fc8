//! The one error type of hangar-compress.

use hangar_formats::{GgmlType, GgufError, GgufWriteError};
use std::path::PathBuf;

/// What can go wrong compressing or evaluating a model.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Write(#[from] GgufWriteError),
    #[error(transparent)]
    Model(#[from] hangar_models::ModelError),
    #[error(transparent)]
    Engine(#[from] hangar_engine::EngineError),
    #[error(transparent)]
    Tokenizer(#[from] hangar_tokenizer::TokenizerError),
    /// The cause is part of the message (not a `source`, so it is not printed twice).
    #[error("cannot read {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{path}: {msg}")]
    BadInput { path: PathBuf, msg: String },
    #[error(
        "tensor {tensor:?} has type {ty}, which this build cannot convert (pin it with --keep)"
    )]
    UnsupportedType { tensor: String, ty: GgmlType },
    #[error("{0}")]
    Invalid(String),
}

impl CompressError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |cause| CompressError::Io { path, cause }
    }
    pub(crate) fn bad(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        CompressError::BadInput {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, CompressError>;
