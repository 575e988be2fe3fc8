//! Zero-downtime model reloads: the [`ModelSlot`] that holds the served model (each
//! request takes the current one once, at its start), `POST /admin/models/{name}/reload`
//! and the optional registry-stage watcher. Never reads files or the registry itself:
//! a [`ModelLoader`] from the binary does that.

use crate::auth::Caller;
use crate::error::{ApiError, ApiFormat};
use crate::{AppState, Inference};
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hangar_engine::{Engine, GenerateRequest, TokenEvent};
use hangar_registry::Role;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The registry version a served model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    /// Registry name.
    pub name: String,
    pub version: u32,
    /// The weights file's sha256 as the registry recorded it.
    pub sha256: Option<String>,
}

impl ModelVersion {
    /// `name@3`.
    pub fn reference(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// What a reload loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadTarget {
    /// The reference the server was started with, resolved again (`name@production`
    /// follows the stage).
    Started,
    Version(u32),
    Stage(String),
}

/// Why a reload did not happen; the old model keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The version exists but cannot be served (corrupt file, hash mismatch, failed
    /// warm-up).
    #[error("{0}")]
    Unloadable(String),
    #[error("{0}")]
    InsufficientMemory(String),
    #[error("a reload is already running on this server; retry once it has finished")]
    Busy,
    #[error("this server was not started from a registry reference (--model name@stage), so it has nothing to reload from")]
    NotReloadable,
}

impl ReloadError {
    fn status(&self) -> StatusCode {
        match self {
            ReloadError::NotFound(_) => StatusCode::NOT_FOUND,
            ReloadError::Invalid(_) | ReloadError::NotReloadable => StatusCode::BAD_REQUEST,
            ReloadError::Unloadable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ReloadError::InsufficientMemory(_) => StatusCode::INSUFFICIENT_STORAGE,
            ReloadError::Busy => StatusCode::CONFLICT,
        }
    }
}

/// Loads model versions for reloads (the binary implements it over the registry).
/// Both methods block; they run on blocking threads.
pub trait ModelLoader: Send + Sync + 'static {
    /// The version `target` names now: a registry lookup, no file access.
    fn resolve(&self, target: &ReloadTarget) -> Result<u32, ReloadError>;
    /// Loads `target`'s weights and starts an engine on them.
    fn load(&self, target: &ReloadTarget) -> Result<(Engine, ModelVersion), ReloadError>;
}

/// How the server reloads: the loader and, optionally, how often to poll the stage it
/// was started with.
pub struct Reloads {
    pub loader: Arc<dyn ModelLoader>,
    /// Poll the started reference this often and reload when its version changes.
    pub watch: Option<Duration>,
}

/// Reload outcomes, for `/metrics`.
#[derive(Default)]
struct Outcomes {
    ok: AtomicU64,
    failed: AtomicU64,
    busy: AtomicU64,
}

/// Holds the served model. A swap replaces the whole [`Inference`]; requests and
/// streams keep the `Arc` they took, so the old engine lives until they finish.
pub struct ModelSlot {
    current: RwLock<Arc<Inference>>,
    reloads: Option<Reloads>,
    /// Held from the start of a reload until the old engine is freed: one at a time.
    running: Arc<tokio::sync::Mutex<()>>,
    outcomes: Outcomes,
}

impl ModelSlot {
    pub fn new(inference: Inference, reloads: Option<Reloads>) -> Self {
        ModelSlot {
            current: RwLock::new(Arc::new(inference)),
            reloads,
            running: Arc::new(tokio::sync::Mutex::new(())),
            outcomes: Outcomes::default(),
        }
    }

    /// The model serving new requests now.
    pub fn current(&self) -> Arc<Inference> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn swap(&self, new: Arc<Inference>) -> Arc<Inference> {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        std::mem::replace(&mut *cur, new)
    }

    /// Appends the served version gauge and the reload counters to a metrics page.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let cur = self.current();
        let (version, reference, sha) = match &cur.version {
            Some(v) => (
                v.version,
                v.reference(),
                v.sha256.clone().unwrap_or_default(),
            ),
            None => (0, String::new(), String::new()),
        };
        let _ = writeln!(out, "# HELP hangar_model_version Registry version of the served model (0: not from the registry).\n# TYPE hangar_model_version gauge");
        let _ = writeln!(
            out,
            "hangar_model_version{{model=\"{}\",reference=\"{reference}\",sha256=\"{sha}\"}} {version}",
            cur.model_name
        );
        let _ = writeln!(out, "# HELP hangar_model_reloads_total Model reloads by outcome (busy: refused while another ran).\n# TYPE hangar_model_reloads_total counter");
        for (outcome, n) in [
            ("success", &self.outcomes.ok),
            ("failed", &self.outcomes.failed),
            ("busy", &self.outcomes.busy),
        ] {
            let _ = writeln!(
                out,
                "hangar_model_reloads_total{{outcome=\"{outcome}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
    }
}

/// A finished switch.
#[derive(Debug, serde::Serialize)]
pub struct ReloadReport {
    pub model: String,
    pub previous: Option<String>,
    pub current: String,
    pub sha256: Option<String>,
    pub load_seconds: f64,
}

/// Loads `target` beside the serving model, warms it up, switches new requests to it,
/// and frees the old engine in the background once its last request has finished.
pub async fn reload(
    slot: &Arc<ModelSlot>,
    target: ReloadTarget,
) -> Result<ReloadReport, ReloadError> {
    let Some(reloads) = &slot.reloads else {
        return Err(ReloadError::NotReloadable);
    };
    let Ok(guard) = slot.running.clone().try_lock_owned() else {
        slot.outcomes.busy.fetch_add(1, Ordering::Relaxed);
        return Err(ReloadError::Busy);
    };
    let t0 = Instant::now();
    let loader = reloads.loader.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let (engine, version) = loader.load(&target)?;
        warm_up(&engine)?;
        Ok::<_, ReloadError>((engine, version))
    })
    .await
    .unwrap_or_else(|e| Err(ReloadError::Unloadable(format!("the loader stopped: {e}"))));
    let (engine, version) = match loaded {
        Ok(x) => x,
        Err(e) => {
            slot.outcomes.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("reload failed, the old model keeps serving: {e}");
            return Err(e);
        }
    };
    let model_name = slot.current().model_name.clone();
    let report = ReloadReport {
        model: model_name.clone(),
        previous: None,
        current: version.reference(),
        sha256: version.sha256.clone(),
        load_seconds: t0.elapsed().as_secs_f64(),
    };
    let old = slot.swap(Arc::new(Inference {
        engine,
        model_name,
        version: Some(version),
    }));
    slot.outcomes.ok.fetch_add(1, Ordering::Relaxed);
    let previous = old.version.as_ref().map(ModelVersion::reference);
    tracing::info!(
        "reloaded {}: {} -> {} in {:.2}s; the old engine drains in the background",
        report.model,
        previous.as_deref().unwrap_or("?"),
        report.current,
        report.load_seconds
    );
    tokio::spawn(retire(old, guard));
    Ok(ReloadReport { previous, ..report })
}

/// One greedy token through the new engine (the model runs, not just parses), then
/// the end of its background warm-up: the server's readiness follows the serving
/// engine's, so a new engine taking traffic still warm would turn it unready.
fn warm_up(engine: &Engine) -> Result<(), ReloadError> {
    let fail =
        |why: String| ReloadError::Unloadable(format!("the new model failed its warm-up: {why}"));
    let prompt = engine.tokenizer().encode_prompt("Hello");
    let (_, mut rx) = engine
        .submit(GenerateRequest::greedy(prompt, 1))
        .map_err(|e| fail(e.to_string()))?;
    loop {
        match rx.blocking_recv() {
            Some(TokenEvent::Done { .. }) => break,
            Some(TokenEvent::Error(e)) => return Err(fail(e.to_string())),
            Some(_) => {}
            None => return Err(fail("the engine stopped".into())),
        }
    }
    while !engine.is_warm() {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Waits until no request holds the old model, then frees it off the async threads
/// (dropping an engine joins its loop thread). Releases the reload lock last, so at
/// most two engines are ever loaded.
async fn retire(old: Arc<Inference>, guard: tokio::sync::OwnedMutexGuard<()>) {
    let t0 = Instant::now();
    while Arc::strong_count(&old) > 1 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = tokio::task::spawn_blocking(move || drop(old)).await;
    tracing::info!(
        "the previous engine drained and was freed after {:.2}s",
        t0.elapsed().as_secs_f64()
    );
    drop(guard);
}

/// Polls the started reference and reloads when the version it names changes
/// (`--reload-on-stage-change`: a promotion moves the server).
pub(crate) async fn watch(slot: Arc<ModelSlot>) {
    let Some(Reloads {
        loader,
        watch: Some(every),
    }) = &slot.reloads
    else {
        return;
    };
    let (loader, every) = (loader.clone(), *every);
    loop {
        tokio::time::sleep(every).await;
        let l = loader.clone();
        let resolved = tokio::task::spawn_blocking(move || l.resolve(&ReloadTarget::Started)).await;
        let serving = slot.current().version.as_ref().map(|v| v.version);
        match resolved {
            Ok(Ok(v)) if Some(v) != serving => {
                tracing::info!("the watched stage now names version {v}; reloading");
                if let Err(e) = reload(&slot, ReloadTarget::Started).await {
                    tracing::warn!("stage-change reload: {e}");
                }
            }
            Ok(Err(e)) => tracing::warn!("stage watch: {e}"),
            _ => {}
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReloadBody {
    version: Option<u32>,
    stage: Option<String>,
}

pub(crate) fn routes(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/models/{name}/reload", post(reload_handler))
        .with_state(app)
}

/// `POST /admin/models/{name}/reload` with an optional `{"version": N}` or
/// `{"stage": "production"}`.
async fn reload_handler(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    caller: Option<axum::Extension<Caller>>,
    body: axum::body::Bytes,
) -> Response {
    let fmt = ApiFormat::OpenAi;
    // With API keys configured, only an admin registry token may swap the model.
    if !app.cfg.api_keys.is_empty() {
        let admin = matches!(caller.as_deref(), Some(Caller::RegistryToken(p)) if p.require(Role::Admin, "reloading the served model").is_ok());
        if !admin {
            return ApiError::forbidden(
                "reloading the served model needs a registry token with the admin role",
            )
            .render(fmt);
        }
    }
    let Some(slot) = &app.inference else {
        return ApiError::not_found(
            "this server runs without a model (--no-model); there is nothing to reload",
        )
        .render(fmt);
    };
    let served = slot.current().model_name.clone();
    if name != served {
        return ApiError::model_not_found(&name, &served).render(fmt);
    }
    let body: ReloadBody = if body.iter().all(u8::is_ascii_whitespace) {
        ReloadBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(b) => b,
            Err(e) => {
                return ApiError::bad_request(format!(
                "the body must be empty, {{\"version\": N}} or {{\"stage\": \"production\"}}: {e}"
            ))
                .render(fmt)
            }
        }
    };
    let target = match body {
        ReloadBody {
            version: Some(_),
            stage: Some(_),
        } => return ApiError::bad_request("give either version or stage, not both").render(fmt),
        ReloadBody {
            version: Some(v), ..
        } => ReloadTarget::Version(v),
        ReloadBody { stage: Some(s), .. } => ReloadTarget::Stage(s),
        _ => ReloadTarget::Started,
    };
    match reload(slot, target).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => ApiError::new(e.status(), "reload_error", e.to_string()).render(fmt),
    }
}

/// Middleware on the inference routes: takes the current model once for the whole
/// request (the handler's `InferenceState` reads it) and names its version in
/// `x-hangar-model-version`.
pub(crate) async fn pin_model(
    State(slot): State<Arc<ModelSlot>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let model = slot.current();
    let version = model
        .version
        .as_ref()
        .and_then(|v| HeaderValue::from_str(&v.reference()).ok());
    let mut resp = PINNED.scope(model, next.run(req)).await;
    if let Some(v) = version {
        resp.headers_mut().insert("x-hangar-model-version", v);
    }
    resp
}

tokio::task_local! {
    /// The model the current request started on (set by [`pin_model`]).
    pub(crate) static PINNED: Arc<Inference>;
}
