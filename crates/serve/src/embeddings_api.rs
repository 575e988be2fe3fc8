//! Embedding routes: OpenAI's `POST /v1/embeddings` and text-embeddings-inference's
//! `POST /embed`. A thin adapter: wire structs in, an `EmbedRequest` to the engine's
//! [`Embedder`] queue, wire structs out; batching and limits are the engine's.

use crate::error::ApiError;
use crate::gen::{parse_json, read_body};
use crate::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use hangar_engine::{EmbedError, EmbedInput, EmbedRequest, Embedder, InputKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What embedding handlers see.
#[derive(Clone)]
pub(crate) struct EmbeddingState {
    pub app: Arc<AppState>,
    pub embedder: Embedder,
}

/// The embedding routes, merged into the router when an embedding model is served.
pub(crate) fn routes(state: EmbeddingState) -> Router {
    Router::new()
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/embed", post(tei_embed))
        .with_state(state)
}

/// One input or several: text, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingsInput {
    One(String),
    Many(Vec<String>),
    Ids(Vec<u32>),
    ManyIds(Vec<Vec<u32>>),
}

/// `POST /v1/embeddings` body.
#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    pub input: EmbeddingsInput,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<u64>,
    #[serde(default)]
    pub user: Option<String>,
    /// Hangar extension: cut inputs longer than the model's limit instead of a 400.
    #[serde(default)]
    pub truncate: bool,
    /// Hangar extension: `"query"` prefixes the model's query prompt.
    #[serde(default)]
    pub input_type: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct EmbeddingItem {
    pub object: &'static str,
    pub index: usize,
    pub embedding: EmbeddingValue,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct EmbeddingsResponse {
    pub object: &'static str,
    pub data: Vec<EmbeddingItem>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}

/// `POST /embed` body (text-embeddings-inference).
#[derive(Debug, Deserialize)]
pub struct TeiRequest {
    pub inputs: TeiInputs,
    #[serde(default = "yes")]
    pub normalize: bool,
    #[serde(default)]
    pub truncate: bool,
    /// `"query"` prefixes the model's query prompt.
    #[serde(default)]
    pub prompt_name: Option<String>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum TeiInputs {
    One(String),
    Many(Vec<String>),
}

/// The one mapping of embedding errors to API errors.
fn api_error(e: EmbedError) -> ApiError {
    match e {
        EmbedError::TooLong { .. } => ApiError {
            param: Some("input".into()),
            ..ApiError::context_length(e.to_string())
        },
        EmbedError::BadToken { .. } | EmbedError::Invalid(_) => {
            ApiError::param("input", e.to_string())
        }
        EmbedError::Closed => ApiError::unavailable(e.to_string()),
        EmbedError::Load(_) | EmbedError::Model(_) => ApiError::internal(e.to_string()),
    }
}

fn kind_of(name: Option<&str>) -> Result<InputKind, ApiError> {
    match name {
        None | Some("document") | Some("passage") => Ok(InputKind::Document),
        Some("query") => Ok(InputKind::Query),
        Some(o) => Err(ApiError::param(
            "input_type",
            format!("{o:?} is not a prompt name; use \"query\" or \"document\""),
        )),
    }
}

async fn openai_embeddings(
    State(st): State<EmbeddingState>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match openai_inner(&st, &headers, body).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn openai_inner(
    st: &EmbeddingState,
    headers: &HeaderMap,
    body: Body,
) -> Result<EmbeddingsResponse, ApiError> {
    let bytes = read_body(headers, body, st.app.cfg.max_body_bytes).await?;
    let req: EmbeddingsRequest = parse_json(&bytes)?;
    let model = st.embedder.model();
    if let Some(m) = &req.model {
        if m != model.name() {
            return Err(ApiError::model_not_found(m, model.name()));
        }
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(o) => {
            return Err(ApiError::param(
                "encoding_format",
                format!("{o:?} is not supported; use \"float\" or \"base64\""),
            ))
        }
    };
    if let Some(d) = req.dimensions {
        if d as usize != model.dim() {
            return Err(ApiError::param(
                "dimensions",
                format!(
                    "this model returns {}-dimensional vectors and cannot shorten them to {d}; leave `dimensions` out",
                    model.dim()
                ),
            ));
        }
    }
    let inputs = match req.input {
        EmbeddingsInput::One(s) => vec![EmbedInput::Text(s)],
        EmbeddingsInput::Many(v) => v.into_iter().map(EmbedInput::Text).collect(),
        EmbeddingsInput::Ids(ids) => vec![EmbedInput::Ids(ids)],
        EmbeddingsInput::ManyIds(v) => v.into_iter().map(EmbedInput::Ids).collect(),
    };
    let out = st
        .embedder
        .embed(EmbedRequest {
            inputs,
            normalize: None,
            truncate: req.truncate,
            kind: kind_of(req.input_type.as_deref())?,
        })
        .await
        .map_err(api_error)?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingValue::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingValue::Float(v)
            },
        })
        .collect();
    Ok(EmbeddingsResponse {
        object: "list",
        data,
        model: model.name().to_string(),
        usage: EmbeddingsUsage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    })
}

/// TEI's error body: `{"error": "...", "error_type": "Validation"}`.
#[derive(Debug, Serialize)]
struct TeiError {
    error: String,
    error_type: &'static str,
}

fn tei_error(e: ApiError, too_long: bool) -> Response {
    // TEI answers validation failures (inputs over the limit included) with 413.
    let status = if too_long {
        StatusCode::PAYLOAD_TOO_LARGE
    } else {
        e.status
    };
    let error_type = match status.as_u16() {
        400..=499 => "Validation",
        503 => "Overloaded",
        _ => "Backend",
    };
    (
        status,
        Json(TeiError {
            error: e.message,
            error_type,
        }),
    )
        .into_response()
}

async fn tei_embed(State(st): State<EmbeddingState>, headers: HeaderMap, body: Body) -> Response {
    let bytes = match read_body(&headers, body, st.app.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return tei_error(e, false),
    };
    let req: TeiRequest = match parse_json(&bytes) {
        Ok(r) => r,
        Err(e) => return tei_error(e, false),
    };
    let kind = match kind_of(req.prompt_name.as_deref()) {
        Ok(k) => k,
        Err(e) => return tei_error(e, false),
    };
    let inputs = match req.inputs {
        TeiInputs::One(s) => vec![EmbedInput::Text(s)],
        TeiInputs::Many(v) => v.into_iter().map(EmbedInput::Text).collect(),
    };
    let r = st
        .embedder
        .embed(EmbedRequest {
            inputs,
            normalize: Some(req.normalize),
            truncate: req.truncate,
            kind,
        })
        .await;
    match r {
        Ok(out) => Json(out.vectors).into_response(),
        Err(e) => {
            let too_long = matches!(e, EmbedError::TooLong { .. });
            tei_error(api_error(e), too_long)
        }
    }
}
