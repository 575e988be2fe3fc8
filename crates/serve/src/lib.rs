//! hangar-serve: the HTTP edge of `hangar serve` — OpenAI-compatible API, KServe V2 /
//! Open Inference Protocol, health, Prometheus metrics, API keys and request limits.
//!
//! Parses and validates requests into `hangar_engine` requests and streams the
//! engine's token events back; never touches kernels or model internals.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use hangar_engine::{Engine, EngineConfig, LoadedModel};
//! use hangar_serve::{AppState, ServeConfig};
//! let engine = Engine::start(LoadedModel::load("model.gguf", 2).unwrap(), EngineConfig::default()).unwrap();
//! let state = AppState::new(engine, ServeConfig::new("gemma"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! hangar_serve::serve(listener, state, hangar_serve::shutdown_signal()).await
//! # }
//! ```

pub mod error;
pub mod gen;
pub mod kserve;
pub mod metrics;
pub mod openai;
mod sampling;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::ApiError;
use hangar_engine::Engine;
use metrics::Metrics;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Server options.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The name clients use for the model (`model` field, `/v2/models/{name}`).
    pub model_name: String,
    /// Accepted bearer tokens; empty = no authentication.
    pub api_keys: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests waiting for admission beyond which new ones get 503.
    pub max_queue: usize,
}

impl ServeConfig {
    pub fn new(model_name: impl Into<String>) -> Self {
        ServeConfig {
            model_name: model_name.into(),
            api_keys: Vec::new(),
            max_body_bytes: 2 << 20,
            max_queue: 1024,
        }
    }
}

/// Shared by every handler.
pub struct AppState {
    pub engine: Engine,
    pub cfg: ServeConfig,
    pub metrics: Metrics,
    /// False once shutdown has begun (readiness probes then fail).
    pub ready: AtomicBool,
    /// Unix time the server started.
    pub started: u64,
    pub(crate) next_request: AtomicU64,
}

impl AppState {
    pub fn new(engine: Engine, cfg: ServeConfig) -> Arc<Self> {
        Arc::new(AppState {
            engine,
            cfg,
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            next_request: AtomicU64::new(0),
        })
    }
}

/// Routes that answer without an API key (probes and scrapes).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/v2/health/live" | "/v2/health/ready" | "/health" | "/metrics"
    )
}

/// Constant-time comparison, so a key cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if state.cfg.api_keys.is_empty() || is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token {
        Some(t)
            if state
                .cfg
                .api_keys
                .iter()
                .any(|k| same(k.as_bytes(), t.as_bytes())) =>
        {
            next.run(req).await
        }
        _ => ApiError::unauthorized().into_response(),
    }
}

/// A bounded route label for a path (model names are not echoed into labels).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/models" => "/v1/models",
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v2" => "/v2",
        "/v2/health/live" => "/v2/health/live",
        "/v2/health/ready" => "/v2/health/ready",
        "/health" => "/health",
        "/metrics" => "/metrics",
        p if p.starts_with("/v2/models/") => {
            if p.ends_with("/infer") {
                "/v2/models/{name}/infer"
            } else if p.ends_with("/generate_stream") {
                "/v2/models/{name}/generate_stream"
            } else if p.ends_with("/generate") {
                "/v2/models/{name}/generate"
            } else if p.ends_with("/ready") {
                "/v2/models/{name}/ready"
            } else {
                "/v2/models/{name}"
            }
        }
        _ => "other",
    }
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let resp = next.run(req).await;
    state.metrics.request(route, resp.status().as_u16());
    resp
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let body = state
        .metrics
        .render(&state.cfg.model_name, &state.engine.stats());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::bad_request(
            "no such route; see /v1/models, /v1/completions, /v1/chat/completions, /v2, /metrics",
        )
    }
}

/// Every route, with auth and request counting.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/models", get(openai::models))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat))
        .route("/v2", get(kserve::server_metadata))
        .route("/v2/health/live", get(kserve::live))
        .route("/v2/health/ready", get(kserve::ready))
        .route("/health", get(kserve::ready))
        .route("/v2/models/{name}", get(kserve::model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_versioned),
        )
        .route("/v2/models/{name}/ready", get(kserve::model_ready))
        .route("/v2/models/{name}/infer", post(kserve::infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(infer_versioned),
        )
        .route("/v2/models/{name}/generate", post(kserve::generate))
        .route(
            "/v2/models/{name}/generate_stream",
            post(kserve::generate_stream),
        )
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .with_state(state)
}

async fn model_metadata_versioned(
    st: State<Arc<AppState>>,
    axum::extract::Path((name, _v)): axum::extract::Path<(String, String)>,
) -> Result<axum::Json<serde_json::Value>, error::KsError> {
    kserve::model_metadata(st, axum::extract::Path(name)).await
}

async fn infer_versioned(
    st: State<Arc<AppState>>,
    axum::extract::Path((name, _v)): axum::extract::Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<Response, error::KsError> {
    kserve::infer(st, axum::extract::Path(name), headers, body).await
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests
/// (streams included) finish, and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, Router::new(), shutdown).await
}

/// As [`serve`], with more routes mounted beside the inference APIs (the registry's
/// HTTP API); those routes bring their own authentication.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let st = state.clone();
    let signal = async move {
        shutdown.await;
        st.ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: draining in-flight requests");
    };
    axum::serve(listener, extra.merge(router(state)))
        .with_graceful_shutdown(signal)
        .await
}

/// Binds `addr`, serves on a small tokio runtime of its own until SIGTERM / Ctrl-C,
/// drains in-flight requests, and returns. `on_listening` gets the bound address.
pub fn serve_blocking(
    state: Arc<AppState>,
    addr: &str,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    serve_blocking_with(state, addr, Router::new(), on_listening)
}

/// As [`serve_blocking`], with `extra` routes mounted (see [`serve_with`]).
pub fn serve_blocking_with(
    state: Arc<AppState>,
    addr: &str,
    extra: Router,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hangar-http")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        on_listening(listener.local_addr()?);
        serve_with(listener, state, extra, shutdown_signal()).await
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
