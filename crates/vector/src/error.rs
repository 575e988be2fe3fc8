//! The errors of the vector database: each variant says what was wrong and what to do.
//! Knows nothing of HTTP; the serve adapter maps variants to status codes.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum VectorError {
    #[error("collection {0:?} does not exist; create it first (PUT /collections/{0} or `hangar vector create`)")]
    CollectionNotFound(String),
    #[error("collection {0:?} already exists; delete it first or pick another name")]
    CollectionExists(String),
    #[error("invalid collection name {0:?}: use 1-255 characters of letters, digits, '-', '_' and '.' (not starting with '.')")]
    BadName(String),
    #[error("vector dimension error: expected dim: {expected}, got {got}")]
    WrongDimension { expected: usize, got: usize },
    #[error("point {0} not found")]
    PointNotFound(String),
    #[error("snapshot {0:?} does not exist; list the collection's snapshots to see what there is")]
    SnapshotNotFound(String),
    #[error("bad request: {0}")]
    Invalid(String),
    #[error("storage error at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the vector store at {0} is open in another process (a running `hangar serve`?); stop it, use another --home, or write through that server's Qdrant API (/collections/...)")]
    InUse(String),
    #[error("corrupt storage at {path}: {why}; restore a snapshot or delete the collection")]
    Corrupt { path: String, why: String },
}

impl VectorError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        VectorError::Io {
            path: path.display().to_string(),
            source,
        }
    }
    pub(crate) fn corrupt(path: &std::path::Path, why: impl Into<String>) -> Self {
        VectorError::Corrupt {
            path: path.display().to_string(),
            why: why.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, VectorError>;
