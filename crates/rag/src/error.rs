//! The errors of retrieval-augmented generation: each variant says what was wrong and
//! what to do. Knows nothing of HTTP; the serve adapter maps variants to status codes.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum RagError {
    /// The caller asked for something invalid (a 4xx at an API edge).
    #[error("{0}")]
    Invalid(String),
    #[error("collection {0:?} does not exist; ingest documents into it first (`hangar ingest PATH --collection {0}`)")]
    NoCollection(String),
    #[error("collection {collection:?} holds {have}-dimensional vectors but the embedding model {model} makes {want}-dimensional ones; use the model the collection was ingested with, or another collection")]
    WrongDimension {
        collection: String,
        model: String,
        have: usize,
        want: usize,
    },
    #[error("embedding failed: {0}")]
    Embed(#[from] hangar_engine::EmbedError),
    #[error("vector database: {0}")]
    Vector(#[from] hangar_vector::VectorError),
    #[error("prompt template {name}@{version}: {why}")]
    Template {
        name: String,
        version: u32,
        why: String,
    },
    #[error("cannot read {path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("evaluation: {0}")]
    Eval(#[from] hangar_eval::EvalError),
}

impl RagError {
    pub(crate) fn io(path: &std::path::Path, err: std::io::Error) -> Self {
        RagError::Io {
            path: path.display().to_string(),
            err,
        }
    }

    /// True when the request was at fault (map to a 4xx).
    pub fn is_client_error(&self) -> bool {
        match self {
            RagError::Invalid(_) | RagError::NoCollection(_) | RagError::WrongDimension { .. } => {
                true
            }
            RagError::Embed(e) => e.is_client_error(),
            RagError::Vector(e) => matches!(
                e,
                hangar_vector::VectorError::Invalid(_)
                    | hangar_vector::VectorError::CollectionNotFound(_)
                    | hangar_vector::VectorError::BadName(_)
                    | hangar_vector::VectorError::WrongDimension { .. }
            ),
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, RagError>;
