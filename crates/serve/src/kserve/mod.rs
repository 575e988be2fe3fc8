//! KServe V2 / Open Inference Protocol over HTTP: server and model metadata, health,
//! `infer` with a BYTES `text_input` tensor (JSON or the binary tensor extension),
//! and the `generate` / `generate_stream` extension.
//!
//! Shapes tensors into engine requests and back; no sampling logic here.

pub mod types;

use crate::error::{ApiError, KsError};
use crate::gen::{self, merge, read_body, submit_all, SamplingOptions, MAX_CHOICES};
use crate::InferenceState;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use hangar_engine::TokenEvent;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::convert::Infallible;

const BINARY_HEADER: &str = "inference-header-content-length";

/// The KServe inference routes (`/v2`, health and readiness are mounted with health).
pub(crate) fn routes(state: InferenceState) -> Router {
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

async fn model_metadata_versioned(
    st: State<InferenceState>,
    Path((name, _v)): Path<(String, String)>,
) -> Result<Json<Value>, KsError> {
    model_metadata(st, Path(name)).await
}

async fn infer_versioned(
    st: State<InferenceState>,
    Path((name, _v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, KsError> {
    infer(st, Path(name), headers, body).await
}

fn check_model(state: &InferenceState, name: &str) -> Result<(), KsError> {
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
) -> Result<Json<Value>, KsError> {
    check_model(&state, &name)?;
    Ok(Json(json!({
        "name": name,
        "versions": ["1"],
        "platform": "hangar",
        "inputs": [
            { "name": "text_input", "datatype": "BYTES", "shape": [-1] },
            { "name": "max_tokens", "datatype": "INT32", "shape": [1], "optional": true },
            { "name": "temperature", "datatype": "FP32", "shape": [1], "optional": true },
            { "name": "top_p", "datatype": "FP32", "shape": [1], "optional": true },
            { "name": "top_k", "datatype": "INT32", "shape": [1], "optional": true },
            { "name": "seed", "datatype": "INT64", "shape": [1], "optional": true },
        ],
        "outputs": [{ "name": "text_output", "datatype": "BYTES", "shape": [-1] }],
    })))
}

/// `GET /v2/models/{name}/ready`
pub async fn model_ready(
    State(state): State<InferenceState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, KsError> {
    check_model(&state, &name)?;
    Ok(Json(json!({ "name": name, "ready": state.app.is_ready() })))
}

#[derive(Debug, Deserialize)]
pub struct InferInput {
    pub name: String,
    #[serde(default)]
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
pub struct InferRequest {
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferInput>,
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// A decoded tensor: its elements as JSON values (BYTES as strings).
fn tensor_values(input: &InferInput, binary: &mut &[u8]) -> Result<Vec<Value>, ApiError> {
    let name = &input.name;
    if let Some(size) = input.parameters.get("binary_data_size") {
        let size = size.as_u64().ok_or_else(|| {
            ApiError::bad_request(format!(
                "input {name}: binary_data_size must be a non-negative integer"
            ))
        })? as usize;
        if size > binary.len() {
            return Err(ApiError::bad_request(format!(
                "input {name}: binary_data_size {size} exceeds the {} binary bytes sent",
                binary.len()
            )));
        }
        let (mine, rest) = binary.split_at(size);
        *binary = rest;
        return decode_binary(name, &input.datatype, mine);
    }
    let data = input.data.as_ref().ok_or_else(|| {
        ApiError::bad_request(format!(
            "input {name} has neither data nor binary_data_size"
        ))
    })?;
    let mut out = Vec::new();
    flatten(data, &mut out, 0).map_err(|m| ApiError::bad_request(format!("input {name}: {m}")))?;
    Ok(out)
}

fn flatten(v: &Value, out: &mut Vec<Value>, depth: usize) -> Result<(), String> {
    if depth > 8 {
        return Err("data is nested too deeply".into());
    }
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| flatten(x, out, depth + 1)),
        other => {
            out.push(other.clone());
            Ok(())
        }
    }
}

fn decode_binary(name: &str, datatype: &str, mut b: &[u8]) -> Result<Vec<Value>, ApiError> {
    let bad = |m: &str| ApiError::bad_request(format!("input {name}: {m}"));
    let mut out = Vec::new();
    match datatype {
        "BYTES" => {
            while !b.is_empty() {
                if b.len() < 4 {
                    return Err(bad("truncated BYTES element length"));
                }
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
                b = &b[4..];
                if n > b.len() {
                    return Err(bad("BYTES element longer than the data sent"));
                }
                let s = std::str::from_utf8(&b[..n])
                    .map_err(|_| bad("BYTES element is not UTF-8 text"))?;
                out.push(Value::String(s.to_string()));
                b = &b[n..];
            }
        }
        "INT32" | "INT64" | "UINT32" | "UINT64" | "FP32" | "FP64" | "BOOL" | "INT8" | "UINT8" => {
            let w = match datatype {
                "INT64" | "UINT64" | "FP64" => 8,
                "BOOL" | "INT8" | "UINT8" => 1,
                _ => 4,
            };
            if !b.len().is_multiple_of(w) {
                return Err(bad("binary size is not a multiple of the element size"));
            }
            for c in b.chunks_exact(w) {
                let v = match datatype {
                    "INT32" => json!(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    "UINT32" => json!(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    "FP32" => json!(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                    "INT64" => json!(i64::from_le_bytes(
                        c.try_into().map_err(|_| bad("bad INT64"))?
                    )),
                    "UINT64" => json!(u64::from_le_bytes(
                        c.try_into().map_err(|_| bad("bad UINT64"))?
                    )),
                    "FP64" => json!(f64::from_le_bytes(
                        c.try_into().map_err(|_| bad("bad FP64"))?
                    )),
                    "BOOL" => json!(c[0] != 0),
                    "INT8" => json!(c[0] as i8),
                    _ => json!(c[0]),
                };
                out.push(v);
            }
        }
        other => return Err(bad(&format!("datatype {other} is not supported"))),
    }
    Ok(out)
}

fn as_f32(name: &str, v: &Value) -> Result<f32, ApiError> {
    v.as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| ApiError::param(name, format!("{name} must be a number, got {v}")))
}

fn as_i64(name: &str, v: &Value) -> Result<i64, ApiError> {
    v.as_i64()
        .or_else(|| {
            v.as_f64()
                .filter(|x| x.fract() == 0.0 && x.abs() < 9e15)
                .map(|x| x as i64)
        })
        .ok_or_else(|| ApiError::param(name, format!("{name} must be an integer, got {v}")))
}

/// Reads one sampling option by name; unknown names are ignored (as KServe servers do).
fn set_option(o: &mut SamplingOptions, name: &str, v: &Value) -> Result<(), ApiError> {
    match name {
        "max_tokens" | "max_new_tokens" => o.max_tokens = Some(as_i64(name, v)?),
        "temperature" => o.temperature = Some(as_f32(name, v)?),
        "top_p" => o.top_p = Some(as_f32(name, v)?),
        "top_k" => o.top_k = Some(as_i64(name, v)?),
        "min_p" => o.min_p = Some(as_f32(name, v)?),
        "presence_penalty" => o.presence_penalty = Some(as_f32(name, v)?),
        "frequency_penalty" => o.frequency_penalty = Some(as_f32(name, v)?),
        "repetition_penalty" => o.repetition_penalty = Some(as_f32(name, v)?),
        "seed" | "random_seed" => o.seed = Some(as_i64(name, v)?),
        "ignore_eos" => {
            o.ignore_eos = v
                .as_bool()
                .ok_or_else(|| ApiError::param(name, "ignore_eos must be a boolean"))?
        }
        "stop" | "stop_words" => match v {
            Value::String(s) if s.is_empty() => {}
            Value::String(s) => o.stop.push(s.clone()),
            Value::Array(a) => {
                for x in a {
                    let s = x.as_str().ok_or_else(|| {
                        ApiError::param(name, "stop must be a string or a list of strings")
                    })?;
                    if !s.is_empty() {
                        o.stop.push(s.to_string());
                    }
                }
            }
            _ => {
                return Err(ApiError::param(
                    name,
                    "stop must be a string or a list of strings",
                ))
            }
        },
        _ => {}
    }
    Ok(())
}

fn options_from(params: &Map<String, Value>) -> Result<SamplingOptions, ApiError> {
    let mut o = SamplingOptions {
        skip_special_tokens: true,
        ..Default::default()
    };
    for (k, v) in params {
        set_option(&mut o, k, v)?;
    }
    Ok(o)
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
    let (json_part, mut binary): (&[u8], &[u8]) = match headers.get(BINARY_HEADER) {
        Some(h) => {
            let n: usize = h
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("Inference-Header-Content-Length must be an integer")
                })?;
            if n > bytes.len() {
                return Err(ApiError::bad_request(
                    "Inference-Header-Content-Length is larger than the body",
                )
                .into());
            }
            bytes.split_at(n)
        }
        None => (&bytes[..], &[]),
    };
    let req: InferRequest = gen::parse_json(json_part)?;
    let mut opts = options_from(&req.parameters)?;
    let mut texts: Option<(Vec<String>, Vec<i64>)> = None;
    for input in &req.inputs {
        let values = tensor_values(input, &mut binary)?;
        if input.name == "text_input" || input.name == "prompt" {
            if input.datatype != "BYTES" {
                return Err(ApiError::param(
                    "text_input",
                    format!("text_input must be BYTES, got {}", input.datatype),
                )
                .into());
            }
            let t = values
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(ApiError::param(
                        "text_input",
                        format!("text_input elements must be strings, got {other}"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            texts = Some((t, input.shape.clone()));
        } else if let Some(v) = values.first() {
            set_option(&mut opts, &input.name, v)?;
        }
    }
    let Some((texts, shape)) = texts else {
        return Err(ApiError::param("inputs", "a BYTES input named text_input is required").into());
    };
    if texts.is_empty() || texts.len() > MAX_CHOICES {
        return Err(ApiError::param(
            "text_input",
            format!("text_input must hold 1 to {MAX_CHOICES} strings"),
        )
        .into());
    }
    let v = opts.validate(state.engine().info())?;
    let tok = state.engine().tokenizer();
    let info = state.engine().info();
    let reqs = texts
        .iter()
        .enumerate()
        .map(|(i, t)| v.request(tok.encode(t, true, true), i, Some(64), info))
        .collect::<Result<Vec<_>, _>>()?;
    let k = reqs.len();
    let choices = submit_all(&state, reqs)?;
    let mut outs = vec![String::new(); k];
    let mut merged = merge(choices);
    while let Some((i, ev)) = merged.next().await {
        match ev {
            TokenEvent::Token(t) => outs[i].push_str(&t.text),
            TokenEvent::Done { text, .. } => outs[i].push_str(&text),
            TokenEvent::Error(e) => return Err(ApiError::internal(e).into()),
        }
    }
    let out_shape: Vec<i64> = if shape.iter().product::<i64>() == k as i64 && !shape.is_empty() {
        shape
    } else {
        vec![k as i64]
    };
    let binary_out = req
        .parameters
        .get("binary_data_output")
        .and_then(Value::as_bool)
        .unwrap_or(false)
        || req.outputs.as_ref().is_some_and(|o| {
            o.iter().any(|r| {
                r.name == "text_output"
                    && r.parameters
                        .get("binary_data")
                        .and_then(Value::as_bool)
                        .unwrap_or(false)
            })
        });
    let mut resp = json!({
        "model_name": name,
        "model_version": "1",
        "outputs": [{ "name": "text_output", "datatype": "BYTES", "shape": out_shape }],
    });
    if let Some(id) = req.id {
        resp["id"] = json!(id);
    }
    if !binary_out {
        resp["outputs"][0]["data"] = json!(outs);
        return Ok(Json(resp).into_response());
    }
    let mut blob = Vec::new();
    for s in &outs {
        blob.extend_from_slice(&(s.len() as u32).to_le_bytes());
        blob.extend_from_slice(s.as_bytes());
    }
    resp["outputs"][0]["parameters"] = json!({ "binary_data_size": blob.len() });
    let head = resp.to_string().into_bytes();
    let head_len = head.len();
    let mut body = head;
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

/// Parses a generate-extension body: `text_input` plus options at the top level or in
/// `parameters`.
fn generate_request(
    state: &InferenceState,
    bytes: &[u8],
) -> Result<hangar_engine::GenerateRequest, ApiError> {
    let body: Map<String, Value> = gen::parse_json(bytes)?;
    let text = match body.get("text_input").or_else(|| body.get("prompt")) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(ApiError::param(
                "text_input",
                format!("text_input must be a string, got {other}"),
            ))
        }
        None => return Err(ApiError::param("text_input", "text_input is required")),
    };
    let mut opts = options_from(&body)?;
    match body.get("parameters") {
        None | Some(Value::Null) => {}
        Some(Value::Object(p)) => {
            for (k, v) in p {
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
    let prompt = state.engine().tokenizer().encode(&text, true, true);
    v.request(prompt, 0, Some(64), state.engine().info())
}

/// `POST /v2/models/{name}/generate`
pub async fn generate(
    State(state): State<InferenceState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, KsError> {
    check_model(&state, &name)?;
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req = generate_request(&state, &bytes)?;
    let mut choices = submit_all(&state, vec![req])?;
    let mut c = choices
        .pop()
        .ok_or_else(|| ApiError::internal("no stream"))?;
    let mut text = String::new();
    let mut finish = None;
    while let Some(ev) = c.next().await {
        match ev {
            TokenEvent::Token(t) => text.push_str(&t.text),
            TokenEvent::Done {
                text: tail,
                finish: f,
                ..
            } => {
                text.push_str(&tail);
                finish = Some(f);
            }
            TokenEvent::Error(e) => return Err(ApiError::internal(e).into()),
        }
    }
    let finish = finish.map(|f| format!("{f:?}").to_lowercase());
    Ok(Json(json!({ "model_name": name, "model_version": "1", "text_output": text, "finish_reason": finish })).into_response())
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
    let choices = submit_all(&state, vec![req])?;
    let merged = merge(choices);
    let events = stream::unfold((merged, name, false), |(mut m, name, ended)| async move {
        if ended {
            return None;
        }
        loop {
            let (_, ev) = m.next().await?;
            let (data, end) = match ev {
                TokenEvent::Token(t) if t.text.is_empty() => continue,
                TokenEvent::Token(t) => (
                    json!({ "model_name": name, "model_version": "1", "text_output": t.text }),
                    false,
                ),
                TokenEvent::Done { text, finish, .. } => (
                    json!({ "model_name": name, "model_version": "1", "text_output": text, "finish_reason": format!("{finish:?}").to_lowercase() }),
                    true,
                ),
                TokenEvent::Error(e) => (json!({ "error": e }), true),
            };
            let ev = Event::default().data(data.to_string());
            return Some((Ok::<Event, Infallible>(ev), (m, name, end)));
        }
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}
