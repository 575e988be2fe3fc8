//! Retrieval-augmented chat: `POST /v1/rag/chat` and the `retrieval` field (OpenAI
//! client: `extra_body={"retrieval": {...}}`) of `POST /v1/chat/completions`. A thin
//! adapter: parses `retrieval`, embeds the last user message with the served embedding
//! model, searches the vector database (`hangar_rag`), renders the built-in prompt
//! template into that message, and hands the chat to the OpenAI handler, which adds the
//! citations to its answer (whole, or the first streamed chunk).

use crate::error::ApiError;
use crate::InferenceState;
use hangar_engine::chat::ChatMessage;
use hangar_rag::{Passage, PromptTemplate, RagError, RetrievalOptions};
use hangar_vector::{Filter, PointId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `retrieval` object of a chat request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetrievalBody {
    collection: String,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    score_threshold: Option<f32>,
}

/// One citation of an answer: the passage numbered `[index]` in the prompt.
#[derive(Debug, Clone, Serialize)]
pub struct Citation {
    pub index: usize,
    pub id: PointId,
    pub source: String,
    pub chunk: u64,
    pub start: usize,
    pub end: usize,
    pub score: f32,
    pub text: String,
}

fn rag_error(e: RagError) -> ApiError {
    if e.is_client_error() {
        ApiError::param("retrieval", e.to_string())
    } else {
        ApiError::internal(e.to_string())
    }
}

/// Parses `retrieval`, retrieves for the last user message and rewrites it with the
/// built-in prompt template (`hangar-rag@1`). Errors are 400s naming what to fix (no collection, no embedder).
pub(crate) async fn augment(
    state: &InferenceState,
    retrieval: Value,
    messages: &mut [ChatMessage],
) -> Result<Vec<Citation>, ApiError> {
    let body: RetrievalBody = serde_json::from_value(retrieval).map_err(|e| {
        ApiError::param(
            "retrieval",
            format!("retrieval must be {{\"collection\": str, \"top_k\": int, \"filter\": {{...}}, \"score_threshold\": float}}: {e}"),
        )
    })?;
    let Some(db) = state.app.vector.clone() else {
        return Err(ApiError::param(
            "retrieval",
            "this server has no vector database (started with --no-vector-api); retrieval needs one",
        ));
    };
    let Some(embedder) = state.app.embeddings.clone() else {
        return Err(ApiError::param(
            "retrieval",
            "this server serves no embedding model, so it cannot retrieve; start it with \
             `hangar serve --model ... --embedding-model all-minilm-l6-v2` (the model the \
             collection was ingested with)",
        ));
    };
    let top_k = match body.top_k {
        None => RetrievalOptions::default().top_k,
        Some(k) if k >= 1 && k as usize <= hangar_rag::MAX_TOP_K => k as usize,
        Some(k) => {
            return Err(ApiError::param(
                "retrieval",
                format!(
                    "retrieval.top_k must be between 1 and {}, got {k}",
                    hangar_rag::MAX_TOP_K
                ),
            ))
        }
    };
    let filter = match &body.filter {
        None | Some(Value::Null) => None,
        Some(f) => Some(
            Filter::from_json(f)
                .map_err(|e| ApiError::param("retrieval", format!("retrieval.filter: {e}")))?,
        ),
    };
    let opts = RetrievalOptions {
        top_k,
        filter,
        score_threshold: body.score_threshold,
    };
    let Some(last) = messages.iter_mut().rev().find(|m| m.role == "user") else {
        return Err(ApiError::param(
            "messages",
            "retrieval needs a user message: the last one is the question",
        ));
    };
    hangar_rag::check(&last.content, &opts).map_err(rag_error)?;
    if !db.exists(&body.collection) {
        return Err(rag_error(RagError::NoCollection(body.collection)));
    }
    let vector = embedder
        .embed(hangar_rag::query_request(&last.content))
        .await
        .map_err(|e| rag_error(e.into()))?
        .vectors
        .pop()
        .ok_or_else(|| ApiError::internal("the embedder returned no vector"))?;
    let collection = body.collection.clone();
    let passages: Vec<Passage> =
        tokio::task::spawn_blocking(move || hangar_rag::search(&db, &collection, vector, &opts))
            .await
            .map_err(|e| ApiError::internal(format!("retrieval failed: {e}")))?
            .map_err(|e| rag_error(hangar_rag::name_model(e, &embedder)))?;
    let template = PromptTemplate::builtin();
    last.content = template
        .render(&last.content, &passages)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(passages
        .into_iter()
        .enumerate()
        .map(|(i, p)| Citation {
            index: i + 1,
            id: p.id,
            source: p.source,
            chunk: p.chunk,
            start: p.start,
            end: p.end,
            score: p.score,
            text: p.text,
        })
        .collect())
}
