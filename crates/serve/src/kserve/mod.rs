//! KServe V2 / Open Inference Protocol over HTTP: model metadata and readiness, `infer`
//! with a BYTES `text_input` tensor (JSON or the binary tensor extension), and the
//! `generate` / `generate_stream` extension.
//!
//! A thin adapter: tensors are decoded by `codec`, prompts go through the engine's
//! request API (via `gen`), answers are `types`; no sampling logic here.

pub mod codec;
mod options;
pub mod text_infer;
pub mod types;

use crate::error::{ApiError, KsError};
use crate::gen::{self, merge, read_body, submit_all};
use crate::InferenceState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use hangar_engine::{Prompt, TokenEvent};
use options::{options_from, set_option};
use serde_json::Value;
use std::convert::Infallible;
use text_infer::TextInfer;
use types::{
    BinaryDataSize, ErrorBody, GenerateRequest, GenerateResponse, InferRequest, InferResponse,
    ModelMetadata, ModelReady, OutputTensor,
};

const BINARY_HEADER: &str = "inference-header-content-length";
/// The version KServe answers name: the registry version, "1" for a plain file.
pub(crate) fn model_version(state: &InferenceState) -> String {
    state
        .service
        .version
        .as_ref()
        .map_or_else(|| "1".to_string(), |v| v.version.to_string())
}

/// The KServe inference routes (`/v2`, health and readiness are mounted with health).
pub(crate) fn routes(state: crate::InferenceRoutes) -> Router {
    Router::new()
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_versioned),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_versioned),
        )
        .route("/v2/models/{name}/generate", post(generate))
        .route("/v2/models/{name}/generate_stream", post(generate_stream))
        .with_state(state)
}

pub(crate) fn check_model(state: &InferenceState, name: &str) -> Result<(), KsError> {
    if name == state.model_name() {
        Ok(())
    } else {
        Err(KsError(ApiError::model_not_found(name, state.model_name())))
    }
}

/// `GET /v2/models/{name}` (and `/versions/{v}`)
pub async fn model_metadata(
    State(state): State<InferenceState>,
    Path(name): Path<String>,
) -> Result<Json<ModelMetadata>, KsError> {
    check_model(&state, &name)?;
    let (inputs, outputs) = text_infer::signature();
    Ok(Json(ModelMetadata {
        name,
        versions: vec![model_version(&state)],
        platform: "hangar",
        registry_reference: state.service.version.as_ref().map(|v| v.reference()),
        sha256: state
            .service
            .version
            .as_ref()
            .and_then(|v| v.sha256.clone()),
        device: state.engine().info().device.clone(),
        inputs,
        outputs,
    }))
}

async fn model_metadata_versioned(
    st: State<InferenceState>,
    Path((name, _v)): Path<(String, String)>,
) -> Result<Json<ModelMetadata>, KsError> {
    model_metadata(st, Path(name)).await
}

/// `GET /v2/models/{name}/ready`
pub async fn model_ready(
    State(state): State<InferenceState>,
    Path(name): Path<String>,
) -> Result<Json<ModelReady>, KsError> {
    check_model(&state, &name)?;
    Ok(Json(ModelReady {
        name,
        ready: state.app.is_ready(),
    }))
}

/// Whether the client asked for `text_output` in the binary tensor form.
fn wants_binary(req: &InferRequest) -> bool {
    let flag = |m: &serde_json::Map<String, Value>, k: &str| {
        m.get(k).and_then(Value::as_bool).unwrap_or(false)
    };
    flag(&req.parameters, "binary_data_output")
        || req.outputs.as_ref().is_some_and(|o| {
            o.iter()
                .any(|r| r.name == "text_output" && flag(&r.parameters, "binary_data"))
        })
}

/// `POST /v2/models/{name}/infer`
pub async fn infer(
    State(state): State<InferenceState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, KsError> {
    check_model(&state, &name)?;
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let header_len = match headers.get(BINARY_HEADER) {
        None => None,
        Some(h) => Some(h.to_str().map_err(|_| {
            ApiError::bad_request("Inference-Header-Content-Length must be an integer")
        })?),
    };
    let (json_part, mut binary) =
        codec::split_body(&bytes, header_len).map_err(ApiError::bad_request)?;
    let req: InferRequest = gen::parse_json(json_part)?;
    let mut text = TextInfer::new(&req.parameters)?;
    for input in &req.inputs {
        let t = codec::decode_input(input, &mut binary)
            .map_err(|e| ApiError::param(&input.name, e.to_string()))?;
        text.input(t, &input.datatype)?;
    }
    let done = text.run(&state).await?;
    let binary_out = wants_binary(&req);
    let blob = binary_out.then(|| codec::encode_bytes(&done.texts));
    let resp = InferResponse {
        model_name: name,
        model_version: model_version(&state),
        outputs: vec![OutputTensor {
            name: "text_output",
            datatype: "BYTES",
            shape: done.shape.clone(),
            parameters: blob.as_ref().map(|b| BinaryDataSize {
                binary_data_size: b.len(),
            }),
            data: None,
        }],
        parameters: done.parameters(),
        id: req.id,
    };
    let Some(blob) = blob else {
        let mut resp = resp;
        resp.outputs[0].data = Some(done.texts);
        return Ok(Json(resp).into_response());
    };
    let mut body =
        serde_json::to_vec(&resp).map_err(|e| ApiError::internal(format!("encoding: {e}")))?;
    let head_len = body.len();
    body.extend_from_slice(&blob);
    let mut r = Response::new(Body::from(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    r.headers_mut()
        .insert(BINARY_HEADER, HeaderValue::from(head_len));
    Ok(r)
}

async fn infer_versioned(
    st: State<InferenceState>,
    Path((name, _v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, KsError> {
    infer(st, Path(name), headers, body).await
}

/// Parses a generate-extension body: `text_input` plus options at the top level or in
/// `parameters`.
fn generate_request(
    state: &InferenceState,
    bytes: &[u8],
) -> Result<hangar_engine::GenerateRequest, ApiError> {
    let body: GenerateRequest = gen::parse_json(bytes)?;
    let text = match body.text_input.or(body.prompt) {
        Some(Value::String(s)) => s,
        Some(other) => {
            return Err(ApiError::param(
                "text_input",
                format!("text_input must be a string, got {other}"),
            ))
        }
        None => return Err(ApiError::param("text_input", "text_input is required")),
    };
    let mut opts = options_from(&body.options)?;
    match body.parameters {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            for (k, v) in &p {
                set_option(&mut opts, k, v)?;
            }
        }
        Some(_) => {
            return Err(ApiError::param(
                "parameters",
                "parameters must be an object",
            ))
        }
    }
    let v = opts.validate(state.engine().info())?;
    let prompt = gen::encode(state, Prompt::Text(text))?;
    v.request(prompt, 0, Some(64), state.engine().info())
}

/// `POST /v2/models/{name}/generate`
pub async fn generate(
    State(state): State<InferenceState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<GenerateResponse>, KsError> {
    check_model(&state, &name)?;
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req = generate_request(&state, &bytes)?;
    let c = gen::collect(submit_all(&state, vec![req])?, false)
        .await?
        .pop()
        .ok_or_else(|| ApiError::internal("no result"))?;
    Ok(Json(GenerateResponse {
        model_name: name,
        model_version: model_version(&state),
        text_output: c.text,
        finish_reason: Some(gen::finish_reason(c.finish)),
    }))
}

/// `POST /v2/models/{name}/generate_stream`: SSE, one event per piece of text.
pub async fn generate_stream(
    State(state): State<InferenceState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, KsError> {
    check_model(&state, &name)?;
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req = generate_request(&state, &bytes)?;
    let merged = merge(submit_all(&state, vec![req])?);
    let version = model_version(&state);
    let events = stream::unfold(
        (merged, (name, version), false),
        |(mut m, name, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let (_, ev) = m.next().await?;
                let piece = |text: String, finish| GenerateResponse {
                    model_name: name.0.clone(),
                    model_version: name.1.clone(),
                    text_output: text,
                    finish_reason: finish,
                };
                let (data, end) = match ev {
                    TokenEvent::PromptLogprobs(_) => continue,
                    TokenEvent::Token(t) if t.text.is_empty() => continue,
                    TokenEvent::Token(t) => (serde_json::to_string(&piece(t.text, None)), false),
                    TokenEvent::Done { text, finish, .. } => (
                        serde_json::to_string(&piece(text, Some(gen::finish_reason(finish)))),
                        true,
                    ),
                    TokenEvent::Error(e) => (serde_json::to_string(&ErrorBody { error: e }), true),
                };
                let ev = Event::default().data(data.unwrap_or_default());
                return Some((Ok::<Event, Infallible>(ev), (m, name, end)));
            }
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
