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
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
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
        move |source| CompressError::Io { path, source }
    }
    pub(crate) fn bad(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        CompressError::BadInput {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, CompressError>;
