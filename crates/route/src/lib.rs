//! hangar-route: `hangar route`, a reverse proxy in front of several `hangar serve`
//! replicas that speaks their HTTP APIs (OpenAI, KServe V2, everything else passed
//! through), streams answers without buffering them, and picks replicas by policy.
//!
//! - [`Pool`] / [`Backend`]: the replicas (static `--backend` URLs or the addresses a
//!   DNS name resolves to), their health, load and models.
//! - [`probe`]: health probes with ejection and re-admission, `/metrics` and
//!   `/v1/models` scrapes, DNS re-resolution.
//! - [`Picker`] / [`Policy`]: round-robin, least-loaded, session affinity,
//!   prefix-cache-aware with bounded load ([`prefix`] hashes prompts into blocks).
//! - the proxy: bodies buffered up to a limit so a request that has not started
//!   streaming can be retried on another replica; responses relayed chunk by chunk.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use hangar_route::{RouterConfig, Policy};
//! let cfg = RouterConfig {
//!     backends: vec!["http://127.0.0.1:8081".into(), "http://127.0.0.1:8082".into()],
//!     policy: Policy::Prefix,
//!     ..RouterConfig::default()
//! };
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! hangar_route::serve(listener, cfg, hangar_route::shutdown_signal()).await
//! # }
//! ```

mod backend;
mod metrics;
mod policy;
pub mod prefix;
pub mod probe;
mod proxy;
mod relay;

pub use backend::{Backend, Load, Pool, Source};
pub use metrics::RouterMetrics;
pub use policy::{Picker, Policy, Reason, RouteKey};
pub use prefix::BlockConfig;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Errors of starting the router.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no replicas: give at least one --backend URL or --backend-dns NAME:PORT")]
    NoBackends,
    #[error("--backend {0:?} is not an http:// URL; give the replica's base URL, e.g. http://10.0.0.7:8080")]
    BadBackendUrl(String),
    #[error("--backend-dns {0:?} is not NAME:PORT; give e.g. hangar-replicas.default.svc.cluster.local:8080")]
    BadDnsName(String),
    #[error("could not build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Router options (`hangar route` flags become this).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Replica base URLs.
    pub backends: Vec<String>,
    /// `NAME:PORT` names whose addresses are the replicas (a headless Service).
    pub backend_dns: Vec<String>,
    pub dns_interval: Duration,
    pub policy: Policy,
    /// Header whose value keys session affinity.
    pub session_header: String,
    /// How prompts are cut into blocks for prefix routing.
    pub blocks: BlockConfig,
    /// Bounded load: a replica may hold this many times the mean in-flight requests.
    pub load_factor: f64,
    /// Block hashes the prefix index remembers.
    pub prefix_index_entries: usize,
    /// Health probe and `/metrics` scrape period.
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Consecutive failed probes that eject a replica.
    pub unhealthy_after: u32,
    /// Consecutive passing probes that re-admit an ejected replica.
    pub healthy_after: u32,
    pub connect_timeout: Duration,
    /// Longest wait for a replica's first response byte (then the next replica).
    pub first_byte_timeout: Duration,
    /// Longest wait between two chunks of a response.
    pub idle_timeout: Duration,
    /// Further replicas tried when one fails before its response starts.
    pub retries: usize,
    /// Largest request body (buffered whole, so it can be retried).
    pub max_body_bytes: usize,
    /// Bearer token the probes send (replicas with `--api-key` want one for
    /// `/v1/models`); client requests keep their own `Authorization` header.
    pub backend_api_key: Option<String>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            backends: Vec::new(),
            backend_dns: Vec::new(),
            dns_interval: Duration::from_secs(5),
            policy: Policy::Prefix,
            session_header: "x-session-id".into(),
            blocks: BlockConfig::default(),
            load_factor: 1.5,
            prefix_index_entries: 200_000,
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            healthy_after: 2,
            connect_timeout: Duration::from_secs(1),
            first_byte_timeout: Duration::from_secs(300),
            idle_timeout: Duration::from_secs(120),
            retries: 2,
            max_body_bytes: 2 << 20,
            backend_api_key: None,
        }
    }
}

impl RouterConfig {
    /// Checks the replica addresses.
    pub fn validate(&self) -> Result<(), RouteError> {
        if self.backends.is_empty() && self.backend_dns.is_empty() {
            return Err(RouteError::NoBackends);
        }
        for b in &self.backends {
            let rest = b.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || rest.starts_with('/') {
                return Err(RouteError::BadBackendUrl(b.clone()));
            }
        }
        for d in &self.backend_dns {
            match d.rsplit_once(':') {
                Some((name, port)) if !name.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => return Err(RouteError::BadDnsName(d.clone())),
            }
        }
        Ok(())
    }
}

/// Shared by the handlers and background tasks.
pub struct Router {
    pub cfg: Arc<RouterConfig>,
    pub pool: Arc<Pool>,
    pub picker: Arc<Picker>,
    pub metrics: RouterMetrics,
    client: reqwest::Client,
}

impl Router {
    pub fn new(cfg: RouterConfig) -> Result<Arc<Self>, RouteError> {
        cfg.validate()?;
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .tcp_nodelay(true)
            // Below `hangar serve`'s keep-alive idle timeout (10 s), so a pooled connection
            // is not reused just as the replica closes it.
            .pool_idle_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Arc::new(Router {
            pool: Arc::new(Pool::new(&cfg.backends)),
            picker: Arc::new(Picker::new(
                cfg.policy,
                cfg.load_factor,
                cfg.prefix_index_entries,
            )),
            metrics: RouterMetrics::default(),
            cfg: Arc::new(cfg),
            client,
        }))
    }

    /// Resolves DNS names and probes every replica once (so the first requests find
    /// the healthy ones), then keeps doing both in the background.
    pub async fn start_background(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        probe::sync_dns(&self.pool, &self.cfg).await;
        let client = probe::probe_client(&self.cfg);
        probe::probe_all(&client, &self.pool, &self.picker, &self.cfg).await;
        let mut tasks = vec![tokio::spawn(probe::run_probes(
            self.pool.clone(),
            self.picker.clone(),
            self.cfg.clone(),
        ))];
        if !self.cfg.backend_dns.is_empty() {
            tasks.push(tokio::spawn(probe::run_dns(
                self.pool.clone(),
                self.cfg.clone(),
            )));
        }
        tasks
    }

    fn healthy_count(&self) -> usize {
        self.pool.all().iter().filter(|b| b.is_healthy()).count()
    }
}

/// The router's own routes (health, metrics) and the proxy for everything else.
pub fn app(router: Arc<Router>) -> axum::Router {
    axum::Router::new()
        .route("/health", get(ready))
        .route("/healthz", get(ready))
        .route("/v2/health/ready", get(ready))
        .route("/v2/health/live", get(live))
        .route("/metrics", get(metrics_text))
        .route("/v1/models", get(proxy::models))
        .fallback(proxy::proxy)
        .with_state(router)
}

/// Ready while at least one replica is healthy.
async fn ready(State(r): State<Arc<Router>>) -> Response {
    let healthy = r.healthy_count();
    let status = if healthy > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({
            "ready": healthy > 0,
            "healthy_replicas": healthy,
            "replicas": r.pool.all().len(),
        })),
    )
        .into_response()
}

async fn live() -> Response {
    axum::Json(serde_json::json!({"live": true})).into_response()
}

async fn metrics_text(State(r): State<Arc<Router>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        r.metrics.render(&r.pool, r.cfg.policy),
    )
        .into_response()
}

/// Serves the router on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    cfg: RouterConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new(cfg).map_err(std::io::Error::other)?;
    serve_router(listener, router, shutdown).await
}

/// [`serve`] with a router built beforehand (tests read its state).
pub async fn serve_router(
    listener: tokio::net::TcpListener,
    router: Arc<Router>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tasks = router.start_background().await;
    let result = axum::serve(listener, app(router))
        .with_graceful_shutdown(shutdown)
        .await;
    for t in tasks {
        t.abort();
    }
    result
}

/// Binds `addr` and serves on a small runtime of its own until SIGTERM / Ctrl-C.
/// `on_listening` gets the bound address.
pub fn serve_blocking(
    cfg: RouterConfig,
    addr: &str,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<(), RouteError> {
    let router = Router::new(cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hangar-route")
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        on_listening(listener.local_addr()?);
        serve_router(listener, router, shutdown_signal()).await
    })?;
    Ok(())
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
