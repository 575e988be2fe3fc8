//! The proxy handler: reads a request (body buffered up to a limit so it can be
//! replayed), picks a replica by policy among the healthy ones that serve the model,
//! sends it, and retries on another replica while nothing has reached the client yet.
//! A response is committed on its first body byte and then relayed as it comes.

use crate::backend::Backend;
use crate::policy::RouteKey;
use crate::prefix::{block_hashes, prompt_text};
use crate::relay::Relay;
use crate::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::stream::StreamExt;
use std::sync::Arc;
use std::time::Instant;

/// Headers that belong to one connection and are not forwarded (RFC 9110 §7.6.1).
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

/// An error the router answers itself, in the API's own error shape: OpenAI's
/// `{"error": {...}}` object, or KServe V2's `{"error": "..."}` under `/v2`.
pub fn error_response(path: &str, status: StatusCode, code: &str, message: String) -> Response {
    let body = if path.starts_with("/v2") {
        serde_json::json!({ "error": message })
    } else {
        serde_json::json!({"error": {
            "message": message,
            "type": if status.is_server_error() { "server_error" } else { "invalid_request_error" },
            "param": null,
            "code": code,
        }})
    };
    (status, axum::Json(body)).into_response()
}

/// What the router reads of a request to route it.
struct RequestInfo {
    model: Option<String>,
    session: Option<String>,
    prefix: Vec<u64>,
}

impl RequestInfo {
    fn read(r: &Router, parts: &Parts, body: &[u8]) -> Self {
        let path = parts.uri.path();
        let session = parts
            .headers
            .get(r.cfg.session_header.as_str())
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let json: Option<serde_json::Value> = if body.is_empty() {
            None
        } else {
            serde_json::from_slice(body).ok()
        };
        let model = path
            .strip_prefix("/v2/models/")
            .and_then(|rest| rest.split('/').next())
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .or_else(|| {
                json.as_ref()
                    .and_then(|j| j.get("model"))
                    .and_then(|m| m.as_str())
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
            });
        let prefix = match (&json, r.picker.policy) {
            (Some(j), crate::Policy::Prefix) => prompt_text(j)
                .map(|t| block_hashes(model.as_deref().unwrap_or(""), &t, r.cfg.blocks))
                .unwrap_or_default(),
            _ => Vec::new(),
        };
        RequestInfo {
            model,
            session,
            prefix,
        }
    }
}

/// Why one attempt did not produce a response.
struct AttemptError {
    message: String,
    timed_out: bool,
}

/// Every request that is not the router's own: relayed to a replica.
pub async fn proxy(State(r): State<Arc<Router>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let body = match axum::body::to_bytes(body, r.cfg.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => {
            r.metrics.answered(413);
            return error_response(
                &path,
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the request body could not be read whole ({e}); the router buffers bodies up to {} bytes (--max-body-bytes) so it can retry them",
                    r.cfg.max_body_bytes
                ),
            );
        }
    };
    let info = RequestInfo::read(&r, &parts, &body);
    let all = r.pool.all();
    let healthy: Vec<Arc<Backend>> = all.iter().filter(|b| b.is_healthy()).cloned().collect();
    if healthy.is_empty() {
        r.metrics.answered(503);
        let why = all
            .iter()
            .map(|b| {
                format!(
                    "{}: {}",
                    b.url,
                    b.last_error().unwrap_or_else(|| "not probed yet".into())
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        return error_response(
            &path,
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_replica",
            format!(
                "no healthy replica to send the request to ({} known{}{why}); check that the `hangar serve` replicas are up and their /v2/health/ready answers 200",
                all.len(),
                if all.is_empty() { "" } else { ": " }
            ),
        );
    }
    let eligible: Vec<Arc<Backend>> = match &info.model {
        Some(m) => healthy.iter().filter(|b| b.serves(m)).cloned().collect(),
        None => healthy.clone(),
    };
    if eligible.is_empty() {
        r.metrics.answered(404);
        let mut served: Vec<String> = healthy.iter().flat_map(|b| b.models()).collect();
        served.sort();
        served.dedup();
        return error_response(
            &path,
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "no healthy replica serves the model {:?}; the replicas serve: {}",
                info.model.as_deref().unwrap_or(""),
                served.join(", ")
            ),
        );
    }
    let key = RouteKey {
        session: info.session.as_deref(),
        prefix: &info.prefix,
    };
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last: Option<AttemptError> = None;
    for attempt in 0..=r.cfg.retries {
        let candidates: Vec<Arc<Backend>> = eligible
            .iter()
            .filter(|b| b.is_healthy() && !tried.contains(&b.url))
            .cloned()
            .collect();
        let Some((backend, reason)) = r.picker.pick(&candidates, key) else {
            break;
        };
        r.metrics.decision(reason);
        if attempt > 0 {
            r.metrics
                .retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        r.picker.record(&info.prefix, &backend);
        tried.push(backend.url.clone());
        let can_retry = attempt < r.cfg.retries && candidates.len() > 1;
        match send(&r, &backend, &parts, body.clone(), can_retry).await {
            Ok(resp) => return resp,
            Err(e) => {
                tracing::info!("attempt {} failed: {}", attempt + 1, e.message);
                last = Some(e);
            }
        }
    }
    let (status, code, message) = match last {
        Some(e) if e.timed_out => (StatusCode::GATEWAY_TIMEOUT, "replica_timeout", e.message),
        Some(e) => (StatusCode::BAD_GATEWAY, "replica_failed", e.message),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no_healthy_replica",
            "every replica was ejected while the request waited".to_string(),
        ),
    };
    r.metrics.answered(status.as_u16());
    error_response(
        &path,
        status,
        code,
        format!(
            "no replica answered after {} attempt(s): {message}",
            tried.len()
        ),
    )
}

/// `GET /v1/models`: one replica's answer (so its authentication applies), with the
/// models only other healthy replicas serve added, so clients see every model they
/// can call through the router.
pub async fn models(State(r): State<Arc<Router>>, req: Request) -> Response {
    let resp = proxy(State(r.clone()), req).await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, 4 << 20).await {
        Ok(b) => b,
        Err(e) => {
            return error_response(
                "/v1/models",
                StatusCode::BAD_GATEWAY,
                "replica_failed",
                format!("the replica's model list broke off: {e}"),
            )
        }
    };
    let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    if let Some(data) = list.get_mut("data").and_then(|d| d.as_array_mut()) {
        let mut known: Vec<String> = data
            .iter()
            .filter_map(|m| m.get("id").and_then(|i| i.as_str()).map(str::to_string))
            .collect();
        for b in r.pool.all().iter().filter(|b| b.is_healthy()) {
            for m in b.models() {
                if !known.contains(&m) {
                    data.push(serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "hangar"}));
                    known.push(m);
                }
            }
        }
    }
    (parts.status, axum::Json(list)).into_response()
}

/// Ejects `b` after a failure that shows it is down, and forgets its prefixes.
fn eject(r: &Router, b: &Backend, why: &str) {
    if b.eject(why.to_string()) {
        r.picker.forget(b);
        tracing::warn!("replica {} ejected: {why}", b.url);
    }
}

/// One attempt on one replica, up to its first body byte.
async fn send(
    r: &Arc<Router>,
    backend: &Arc<Backend>,
    parts: &Parts,
    body: Bytes,
    can_retry: bool,
) -> Result<Response, AttemptError> {
    let guard = backend.start_request();
    let started = Instant::now();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let url = format!("{}{}", backend.url, path);
    let mut rb = r.client.request(parts.method.clone(), &url).body(body);
    for (name, value) in &parts.headers {
        if !hop_by_hop(name) {
            rb = rb.header(name, value);
        }
    }
    let timeout = r.cfg.first_byte_timeout;
    let fail = |outcome: &'static str, message: String, timed_out: bool| {
        backend.stats.count(outcome);
        AttemptError { message, timed_out }
    };
    let resp = match tokio::time::timeout(timeout, rb.send()).await {
        Err(_) => {
            return Err(fail(
                "timeout",
                format!(
                    "{url}: no response within {:.1} s (--first-byte-timeout)",
                    timeout.as_secs_f64()
                ),
                true,
            ))
        }
        Ok(Err(e)) => {
            let connect = e.is_connect();
            let message = format!("{url}: {e}");
            if connect {
                eject(r, backend, &message);
            }
            return Err(fail(
                if connect { "connect" } else { "send_error" },
                message,
                false,
            ));
        }
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    if can_retry && matches!(status.as_u16(), 502..=504) {
        return Err(fail("status_5xx", format!("{url}: status {status}"), false));
    }
    let headers = resp.headers().clone();
    let mut upstream = resp.bytes_stream().boxed();
    let left = timeout.saturating_sub(started.elapsed());
    let first = match tokio::time::timeout(left, upstream.next()).await {
        Err(_) => {
            return Err(fail(
                "timeout",
                format!(
                    "{url}: no response body within {:.1} s (--first-byte-timeout)",
                    timeout.as_secs_f64()
                ),
                true,
            ))
        }
        Ok(Some(Err(e))) => {
            let message = format!("{url}: the response broke off before its first byte ({e})");
            eject(r, backend, &message);
            return Err(fail("stream_error", message, false));
        }
        Ok(Some(Ok(b))) => Some(b),
        Ok(None) => None,
    };
    backend
        .stats
        .first_byte
        .observe(started.elapsed().as_secs_f64());
    backend.stats.count(if status.is_server_error() {
        "status_5xx"
    } else {
        "ok"
    });
    let is_sse = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let router = r.clone();
    let relay = Relay {
        upstream,
        first,
        sse: is_sse.then(bytes::BytesMut::new),
        idle: r.cfg.idle_timeout,
        guard,
        on_cut: Box::new(move |b, message| {
            b.stats.count("stream_cut");
            eject(&router, b, message);
        }),
        done: false,
    };
    let mut out = Response::new(Body::from_stream(relay.into_stream()));
    *out.status_mut() = status;
    copy_headers(&headers, out.headers_mut());
    Ok(out)
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !hop_by_hop(name) {
            to.append(name.clone(), value.clone());
        }
    }
}
