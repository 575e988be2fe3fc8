//! Retrieval: a question's vector (the embedder's query prompt) searched in a
//! collection with an optional payload filter, hits turned into [`Passage`]s with their
//! source, chunk, offsets and text. No HTTP; the async embedding call is the caller's.

use crate::error::{RagError, Result};
use hangar_engine::{EmbedInput, EmbedRequest, Embedder, InputKind};
use hangar_vector::{Filter, PointId, SearchRequest, VectorDb, WithPayload};
use serde::Serialize;

/// What to retrieve.
#[derive(Debug, Clone)]
pub struct RetrievalOptions {
    pub top_k: usize,
    /// A Qdrant-style payload filter (keys: `source`, `chunk`, `start`, `end`,
    /// `doc_sha256`, `text`).
    pub filter: Option<Filter>,
    /// Lowest cosine similarity kept.
    pub score_threshold: Option<f32>,
}

impl Default for RetrievalOptions {
    fn default() -> Self {
        RetrievalOptions {
            top_k: 4,
            filter: None,
            score_threshold: None,
        }
    }
}

/// Most passages one retrieval may ask for.
pub const MAX_TOP_K: usize = 100;

/// A retrieved chunk: where it is from and how close it is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    pub id: PointId,
    pub source: String,
    pub chunk: u64,
    pub start: usize,
    pub end: usize,
    pub score: f32,
    pub text: String,
}

/// The embedding request for a question (the model's query prompt, cut to its limit).
pub fn query_request(question: &str) -> EmbedRequest {
    EmbedRequest {
        inputs: vec![EmbedInput::Text(question.to_string())],
        normalize: None,
        truncate: true,
        kind: InputKind::Query,
    }
}

/// Checks a question and options before any work.
pub fn check(question: &str, opts: &RetrievalOptions) -> Result<()> {
    if question.trim().is_empty() {
        return Err(RagError::Invalid(
            "the question is empty: the last user message must have text to retrieve for".into(),
        ));
    }
    if opts.top_k == 0 || opts.top_k > MAX_TOP_K {
        return Err(RagError::Invalid(format!(
            "top_k must be between 1 and {MAX_TOP_K}, got {}",
            opts.top_k
        )));
    }
    Ok(())
}

/// Searches `collection` for the nearest chunks to `vector`.
pub fn search(
    db: &VectorDb,
    collection: &str,
    vector: Vec<f32>,
    opts: &RetrievalOptions,
) -> Result<Vec<Passage>> {
    let c = match db.get(collection) {
        Ok(c) => c,
        Err(hangar_vector::VectorError::CollectionNotFound(_)) => {
            return Err(RagError::NoCollection(collection.to_string()))
        }
        Err(e) => return Err(e.into()),
    };
    let c = c.read().unwrap_or_else(|e| e.into_inner());
    let have = c.config().dim;
    if have != vector.len() {
        return Err(RagError::WrongDimension {
            collection: collection.to_string(),
            model: "in use".into(),
            have,
            want: vector.len(),
        });
    }
    let hits = c.search(&SearchRequest {
        vector,
        limit: opts.top_k,
        filter: opts.filter.clone(),
        score_threshold: opts.score_threshold,
        with_payload: WithPayload::All,
        ..SearchRequest::default()
    })?;
    Ok(hits
        .into_iter()
        .map(|h| {
            let p = h.payload.unwrap_or_default();
            let num = |k: &str| p.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let text = |k: &str| {
                p.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            Passage {
                id: h.id,
                source: text("source"),
                chunk: num("chunk"),
                start: num("start") as usize,
                end: num("end") as usize,
                score: h.score,
                text: text("text"),
            }
        })
        .collect())
}

/// Embeds `question` and searches (for synchronous callers: the CLI, evaluation).
pub fn retrieve_blocking(
    db: &VectorDb,
    collection: &str,
    embedder: &Embedder,
    question: &str,
    opts: &RetrievalOptions,
) -> Result<Vec<Passage>> {
    check(question, opts)?;
    if !db.exists(collection) {
        return Err(RagError::NoCollection(collection.to_string()));
    }
    let v = embedder
        .embed_blocking(query_request(question))?
        .vectors
        .pop()
        .ok_or_else(|| RagError::Invalid("the embedder returned no vector".into()))?;
    search(db, collection, v, opts).map_err(|e| name_model(e, embedder))
}

/// Puts the embedding model's name into a dimension mismatch.
pub fn name_model(e: RagError, embedder: &Embedder) -> RagError {
    match e {
        RagError::WrongDimension {
            collection,
            have,
            want,
            ..
        } => RagError::WrongDimension {
            collection,
            model: embedder.model().name().to_string(),
            have,
            want,
        },
        e => e,
    }
}
