//! hangar-serve: the HTTP edge of `hangar serve` — OpenAI-compatible API, KServe V2 /
//! Open Inference Protocol, the registry API, health, Prometheus metrics, API keys and
//! request limits.
//!
//! Every protocol module is a thin adapter over a service ([`Services`]): inference
//! (an [`Engine`] and the model's name) and the model registry. A service that is absent
//! (`hangar serve --no-model`) has its routes unmounted; health and metrics always
//! answer. Never touches kernels or model internals.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use hangar_engine::{Engine, EngineConfig, LoadedModel};
//! use hangar_serve::{AppState, ServeConfig, Services};
//! let engine = Engine::start(LoadedModel::load("model.gguf", 2).unwrap(), EngineConfig::default()).unwrap();
//! let state = AppState::new(Services::default().with_inference(engine, "gemma"), ServeConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! hangar_serve::serve(listener, state, hangar_serve::shutdown_signal()).await
//! # }
//! ```

pub mod auth;
pub mod error;
pub mod gen;
mod health;
pub mod kserve;
// KServe V2 over gRPC, on its own port (--grpc-port).
pub mod kserve_grpc;
// LoRA adapters: /v1/load_lora_adapter, /v1/unload_lora_adapter, `model` resolution.
pub mod lora_api;
pub mod metrics;
pub mod mlflow_api;
mod monitoring;
// Zero-downtime model swaps: the model slot, /admin/models/{name}/reload, the stage watcher.
pub mod openai;
pub mod qdrant_api;
mod reload;
// Retrieval-augmented chat (/v1/rag/chat, `retrieval` on chat completions).
pub mod rag_api;
pub mod registry_api;
// Embeddings (OpenAI /v1/embeddings, TEI /embed), mounted when an embedding model is served.
pub mod embeddings_api;
mod sampling;
mod server;
// Managed API keys: limits, usage, /v1/usage.
pub mod tenants;
pub mod timeseries;
mod ui;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use error::{ApiError, ApiFormat};
use hangar_engine::Engine;
use hangar_monitor::Monitor;
use hangar_registry::Registry;
use hangar_track::Tracker;
use metrics::Metrics;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

pub use reload::{
    reload, ModelLoader, ModelSlot, ModelVersion, ReloadError, ReloadReport, ReloadTarget, Reloads,
};
use std::time::Duration;

/// Server options (the services themselves are in [`Services`]).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Accepted bearer tokens; empty = no authentication (registry routes still check
    /// registry tokens when the registry has any).
    pub api_keys: Vec<String>,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Requests waiting for admission beyond which new ones get 503.
    pub max_queue: usize,
    /// Time a client has to send a request head, from the first byte of a request or
    /// the end of the previous one (so it is also the keep-alive idle timeout).
    pub header_timeout: Duration,
    /// Time a client has to send the whole body once the head has arrived.
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// On shutdown, how long in-flight requests may take before their connections are
    /// closed anyway.
    pub shutdown_timeout: Duration,
    /// Read special-token text in text prompts (OpenAI `prompt`, KServe `text_input`)
    /// and in chat message content as special tokens. Off by default, so clients
    /// cannot forge control tokens such as chat turn markers; the old behaviour for
    /// operators who need it.
    pub allow_special_in_prompt: bool,
    /// How often the dashboard's history is sampled.
    pub sample_interval: Duration,
    /// On shutdown, how long readiness fails while the listener still serves, so load
    /// balancers stop sending before connections are refused.
    pub drain_delay: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            api_keys: Vec::new(),
            max_body_bytes: 2 << 20,
            max_queue: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(30),
            allow_special_in_prompt: false,
            sample_interval: Duration::from_secs(2),
            drain_delay: Duration::ZERO,
        }
    }
}

/// The inference service: a running engine and the name clients call its model by.
pub struct Inference {
    pub engine: Engine,
    /// The name clients use for the model (`model` field, `/v2/models/{name}`).
    pub model_name: String,
    /// The registry version it was loaded from (absent for a plain file).
    pub version: Option<ModelVersion>,
}

/// The registry behind `/v1/registry/...`, shared between request handlers.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// The services a server fronts; each is optional and its routes are mounted only when
/// it is present. Tracking, vector search and monitoring join here later.
#[derive(Default)]
pub struct Services {
    pub inference: Option<Inference>,
    pub registry: Option<Registry>,
    pub monitor: Option<Monitor>,
    /// The registry version of the served model (`name@3`), for the request log.
    pub model_version: Option<String>,
    // -- vector database (Qdrant API) --
    pub vector: Option<qdrant_api::SharedVectorDb>,
    /// Experiment tracking behind the MLflow-compatible API.
    pub tracking: Option<Tracker>,
    pub embeddings: Option<hangar_engine::Embedder>,
    /// How the served model is reloaded (`POST /admin/models/{name}/reload`).
    pub reloads: Option<Reloads>,
    /// Managed API keys (`hangar keys`): accepted with their limits and usage.
    pub keys: Option<hangar_registry::KeyStore>,
    /// LoRA adapters of the served model, and how more are loaded at run time.
    pub lora: lora_api::Adapters,
}

impl Services {
    /// Accepts the managed API keys of this key store.
    pub fn with_keys(mut self, keys: hangar_registry::KeyStore) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Adds the inference service.
    pub fn with_inference(mut self, engine: Engine, model_name: impl Into<String>) -> Self {
        self.inference = Some(Inference {
            engine,
            model_name: model_name.into(),
            version: None,
        });
        self
    }

    /// Names the registry version the served model came from (metadata, headers,
    /// metrics, request log) and how to reload it.
    pub fn with_registry_version(
        mut self,
        version: ModelVersion,
        reloads: Option<Reloads>,
    ) -> Self {
        self.model_version = Some(version.reference());
        if let Some(i) = &mut self.inference {
            i.version = Some(version);
        }
        self.reloads = reloads;
        self
    }

    /// Serves these LoRA adapters (and loads more through their loader).
    pub fn with_lora(mut self, adapters: lora_api::Adapters) -> Self {
        self.lora = adapters;
        self
    }

    /// Adds the tracking service (MLflow-compatible routes).
    pub fn with_tracking(mut self, tracker: Tracker) -> Self {
        self.tracking = Some(tracker);
        self
    }

    /// Adds the embedding service (its model's name is the one clients use).
    pub fn with_embeddings(mut self, embedder: hangar_engine::Embedder) -> Self {
        self.embeddings = Some(embedder);
        self
    }

    /// Adds the registry service.
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Adds monitoring: request log, drift, usage and cost (`/v1/monitor/*`, gauges).
    pub fn with_monitor(mut self, monitor: Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }

    /// Names the registry version of the served model in request-log records.
    pub fn with_model_version(mut self, version: impl Into<String>) -> Self {
        self.model_version = Some(version.into());
        self
    }

    /// Adds the vector database, served with Qdrant's REST API at `/collections`.
    pub fn with_vector(mut self, db: std::sync::Arc<hangar_vector::VectorDb>) -> Self {
        self.vector = Some(db);
        self
    }
}

/// Shared by every handler.
pub struct AppState {
    pub cfg: ServeConfig,
    /// The served model, swappable by reloads.
    pub inference: Option<Arc<ModelSlot>>,
    pub registry: Option<SharedRegistry>,
    pub monitor: Option<Arc<Monitor>>,
    pub model_version: Option<String>,
    pub vector: Option<qdrant_api::SharedVectorDb>,
    pub tracking: Option<mlflow_api::SharedTracker>,
    pub embeddings: Option<hangar_engine::Embedder>,
    pub metrics: Metrics,
    /// Managed API keys, their limits and usage.
    pub tenants: Arc<tenants::Tenants>,
    /// The LoRA adapters requests may name.
    pub lora: Arc<lora_api::Adapters>,
    /// Sampled history of the metrics for the dashboard.
    pub history: timeseries::History,
    /// False once shutdown has begun (readiness probes then fail).
    pub ready: AtomicBool,
    /// Unix time the server started.
    pub started: u64,
    pub(crate) next_request: AtomicU64,
}

impl AppState {
    pub fn new(services: Services, cfg: ServeConfig) -> Arc<Self> {
        Arc::new(AppState {
            history: timeseries::History::new(cfg.sample_interval),
            cfg,
            inference: {
                let reloads = services.reloads;
                services
                    .inference
                    .map(|i| Arc::new(ModelSlot::new(i, reloads)))
            },
            registry: services.registry.map(|r| Arc::new(Mutex::new(r))),
            monitor: services.monitor.map(Arc::new),
            model_version: services.model_version,
            vector: services.vector,
            tracking: services.tracking.map(Arc::new),
            embeddings: services.embeddings,
            metrics: Metrics::default(),
            tenants: Arc::new(tenants::Tenants::new(services.keys)),
            lora: Arc::new(services.lora),
            ready: AtomicBool::new(true),
            started: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            next_request: AtomicU64::new(0),
        })
    }

    /// Ready for traffic: not shutting down, and the engine (if any) is running and
    /// done warming up.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.inference.as_ref().is_none_or(|i| {
                let engine = &i.current().engine;
                engine.is_alive() && engine.is_warm()
            })
    }

    /// The registry version serving new requests (`name@3`), else the configured one.
    pub fn served_version(&self) -> Option<String> {
        self.inference
            .as_ref()
            .and_then(|s| s.current().version.as_ref().map(ModelVersion::reference))
            .or_else(|| self.model_version.clone())
    }
}

/// The state the inference routes are built with; each request turns it into an
/// [`InferenceState`] holding the model current when the request began.
#[derive(Clone)]
pub struct InferenceRoutes {
    pub app: Arc<AppState>,
    pub slot: Arc<ModelSlot>,
}

impl axum::extract::FromRef<InferenceRoutes> for InferenceState {
    fn from_ref(r: &InferenceRoutes) -> Self {
        // The model `reload::pin_model` took for this request, so the handler and the
        // version header agree across a swap.
        let service = reload::PINNED
            .try_with(Arc::clone)
            .unwrap_or_else(|_| r.slot.current());
        InferenceState {
            app: r.app.clone(),
            service,
        }
    }
}

/// What inference handlers see: the server state and the inference service, present by
/// construction (these routes are mounted only when it exists).
#[derive(Clone)]
pub struct InferenceState {
    pub app: Arc<AppState>,
    pub service: Arc<Inference>,
}

impl InferenceState {
    pub fn engine(&self) -> &Engine {
        &self.service.engine
    }
    pub fn model_name(&self) -> &str {
        &self.service.model_name
    }
    /// How client text is tokenized: as plain text unless the operator allowed
    /// special tokens in prompts.
    pub fn text_encoding(&self) -> hangar_engine::TextEncoding {
        hangar_engine::TextEncoding {
            parse_special: self.app.cfg.allow_special_in_prompt,
        }
    }
}

/// A bounded route label for a path (model names are not echoed into labels).
fn route_label(path: &str) -> &'static str {
    match path {
        "/v1/models" => "/v1/models",
        "/v1/completions" => "/v1/completions",
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/rag/chat" => "/v1/rag/chat",
        "/v1/load_lora_adapter" => "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter" => "/v1/unload_lora_adapter",
        "/v2" => "/v2",
        "/v2/health/live" => "/v2/health/live",
        "/v2/health/ready" => "/v2/health/ready",
        "/health" => "/health",
        "/metrics" => "/metrics",
        "/v1/monitor/timeseries" => "/v1/monitor/timeseries",
        p if p == "/ui" || p.starts_with("/ui/") => "/ui",
        "/v1/embeddings" => "/v1/embeddings",
        "/embed" => "/embed",
        p if p.starts_with("/v1/registry/") => "/v1/registry",
        "/v1/monitor/drift" => "/v1/monitor/drift",
        "/v1/monitor/usage" => "/v1/monitor/usage",
        "/v1/usage" => "/v1/usage",
        p if p.starts_with("/v1/monitor/requests") => "/v1/monitor/requests",
        "/collections" => "/collections",
        p if p.starts_with("/collections/") => qdrant_label(p),
        p if p.starts_with("/api/2.0/mlflow-artifacts/") => "/api/2.0/mlflow-artifacts",
        p if mlflow_api::is_mlflow_path(p) => "/api/2.0/mlflow",
        p if p.starts_with("/admin/models/") => "/admin/models/{name}/reload",
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

/// Route labels of the Qdrant API (collection names are not echoed).
fn qdrant_label(path: &str) -> &'static str {
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    match parts.as_slice() {
        ["", "collections", _] => "/collections/{c}",
        ["", "collections", _, "exists"] => "/collections/{c}/exists",
        ["", "collections", _, "points"] => "/collections/{c}/points",
        ["", "collections", _, "points", "query"] => "/collections/{c}/points/query",
        ["", "collections", _, "points", "search"] => "/collections/{c}/points/search",
        ["", "collections", _, "points", "scroll"] => "/collections/{c}/points/scroll",
        ["", "collections", _, "points", "count"] => "/collections/{c}/points/count",
        ["", "collections", _, "points", "delete"] => "/collections/{c}/points/delete",
        ["", "collections", _, "points", _] => "/collections/{c}/points/{id}",
        ["", "collections", _, "index", ..] => "/collections/{c}/index",
        ["", "collections", _, "snapshots", ..] => "/collections/{c}/snapshots",
        _ => "/collections/other",
    }
}

async fn count_requests(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = route_label(req.uri().path());
    let resp = next.run(req).await;
    state.metrics.request(route, resp.status().as_u16());
    resp
}

/// Paths of the inference APIs (answered with a clear 404 when no model is served).
fn is_inference_path(path: &str) -> bool {
    matches!(
        path,
        "/v1/completions"
            | "/v1/chat/completions"
            | "/v1/rag/chat"
            | "/v1/load_lora_adapter"
            | "/v1/unload_lora_adapter"
    ) || path.starts_with("/v2/models/")
}

async fn not_found(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let path = req.uri().path();
    let message = if state.embeddings.is_none() && matches!(path, "/v1/embeddings" | "/embed") {
        format!("{path}: this server has no embedding model; start `hangar serve --embedding-model all-minilm-l6-v2` (after `hangar pull embedder`)")
    } else if state.inference.is_none() && is_inference_path(path) {
        format!("{path}: this server runs without a model (--no-model), so the inference APIs are not mounted; start `hangar serve --model ...` to serve one")
    } else if state.monitor.is_none() && path.starts_with("/v1/monitor") {
        format!("{path}: monitoring is off on this server (--no-monitor)")
    } else if state.vector.is_none()
        && (path == "/collections" || path.starts_with("/collections/"))
    {
        format!("{path}: the vector database (Qdrant API) is not mounted on this server")
    } else if state.registry.is_none() && path.starts_with("/v1/registry") {
        format!("{path}: the registry API is not mounted on this server (--no-registry-api, or the registry could not be opened)")
    } else if state.tracking.is_none() && mlflow_api::is_mlflow_path(path) {
        format!("{path}: the tracking API is not mounted on this server (--no-tracking-api, or the tracking store could not be opened)")
    } else {
        format!("no such route: {path}; see /v1/models, /v1/completions, /v1/chat/completions, /v2, /v1/registry/models, /metrics")
    };
    ApiError::not_found(message).render(ApiFormat::of_path(path))
}

/// Every route of the services present, behind one auth layer and request counting.
pub fn router(state: Arc<AppState>) -> Router {
    let mut app = health::routes(state.clone())
        .merge(ui::routes())
        .merge(tenants::routes(state.clone()));
    if let Some(slot) = &state.inference {
        let inf = InferenceRoutes {
            app: state.clone(),
            slot: slot.clone(),
        };
        app = app
            .merge(
                openai::routes(inf.clone())
                    .merge(lora_api::routes(inf.clone()))
                    .merge(kserve::routes(inf))
                    .layer(middleware::from_fn_with_state(
                        slot.clone(),
                        reload::pin_model,
                    )),
            )
            .merge(reload::routes(state.clone()));
    }
    if let Some(reg) = &state.registry {
        app = app.merge(registry_api::routes(state.clone(), reg.clone()));
    }
    if let Some(m) = &state.monitor {
        app = app.merge(monitoring::routes(state.clone(), m.clone()));
    }
    if let Some(db) = &state.vector {
        app = app.merge(qdrant_api::routes(state.clone(), db.clone()));
    }
    if let Some(tracker) = &state.tracking {
        app = app.merge(mlflow_api::routes(state.clone(), tracker.clone()));
    }
    if let Some(embedder) = &state.embeddings {
        app = app.merge(embeddings_api::routes(embeddings_api::EmbeddingState {
            app: state.clone(),
            embedder: embedder.clone(),
        }));
    }
    app.fallback_service(axum::routing::any(not_found).with_state(state.clone()))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            monitoring::with_context,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), auth::require))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(middleware::from_fn_with_state(state, server::body_deadline))
}

/// Serves until `shutdown` resolves, then stops accepting, marks the server not ready,
/// lets in-flight requests (streams included) finish, and returns once they have or
/// once `cfg.shutdown_timeout` has passed (closing whatever connections remain).
///
/// Connections beyond `cfg.max_connections` wait in the listen backlog; a client that
/// is slower than `cfg.header_timeout` / `cfg.body_timeout` is disconnected.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let sampler = tokio::spawn(timeseries::run_sampler(state.clone()));
    let watcher = state
        .inference
        .clone()
        .map(|s| tokio::spawn(reload::watch(s)));
    let refresher = tokio::spawn(tenants::run_refresher(state.clone()));
    let result = server::run(listener, state.clone(), app, shutdown).await;
    sampler.abort();
    refresher.abort();
    if let Some(w) = watcher {
        w.abort();
    }
    // Usage of the last second is written before the process exits.
    tenants::flush(&state).await;
    result
}

/// Serves HTTP on `http` and, when given, the KServe gRPC API on `grpc`, until
/// `shutdown` resolves; then both stop accepting and drain (gRPC calls get up to
/// `cfg.shutdown_timeout` after HTTP has drained).
pub async fn serve_with_grpc(
    http: tokio::net::TcpListener,
    grpc: Option<tokio::net::TcpListener>,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let grpc_task = grpc.map(|listener| {
        let mut rx = stop_rx.clone();
        tokio::spawn(kserve_grpc::serve(listener, state.clone(), async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }))
    });
    let http_shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let result = serve(http, state.clone(), http_shutdown).await;
    if let Some(task) = grpc_task {
        let abort = task.abort_handle();
        match tokio::time::timeout(state.cfg.shutdown_timeout, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("gRPC server stopped with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("gRPC server task failed: {e}"),
            Err(_) => {
                tracing::warn!("gRPC calls still running at the shutdown deadline; closing them");
                abort.abort();
            }
        }
    }
    result
}

/// Where a started server listens.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub http: std::net::SocketAddr,
    /// The KServe gRPC API's address, when it was asked for.
    pub grpc: Option<std::net::SocketAddr>,
}

/// Binds `addr`, serves on a small tokio runtime of its own until SIGTERM / Ctrl-C,
/// drains in-flight requests, and returns. `on_listening` gets the bound address.
pub fn serve_blocking(
    state: Arc<AppState>,
    addr: &str,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> std::io::Result<()> {
    serve_blocking_with_grpc(state, addr, None, |l| on_listening(l.http))
}

/// [`serve_blocking`], plus the KServe gRPC API on `grpc_addr` when given (port 0
/// picks a free port; `on_listening` gets the one bound). SIGTERM drains both.
pub fn serve_blocking_with_grpc(
    state: Arc<AppState>,
    addr: &str,
    grpc_addr: Option<&str>,
    on_listening: impl FnOnce(Listening),
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hangar-http")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let grpc = match grpc_addr {
            Some(a) => Some(tokio::net::TcpListener::bind(a).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("binding the gRPC port {a}: {e}"))
            })?),
            None => None,
        };
        on_listening(Listening {
            http: listener.local_addr()?,
            grpc: grpc.as_ref().map(|g| g.local_addr()).transpose()?,
        });
        serve_with_grpc(listener, grpc, state, shutdown_signal()).await
    })
}

/// Unix time in seconds (fractional).
pub(crate) fn monitoring_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
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
