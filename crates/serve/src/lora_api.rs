//! LoRA adapters over HTTP, with vLLM's routes and bodies: `POST /v1/load_lora_adapter`
//! `{"lora_name", "lora_path"}` and `POST /v1/unload_lora_adapter` `{"lora_name"}`; the
//! set of loaded adapters; and how a request's `model` picks one (`base:adapter`, or
//! the adapter's name alone). Never reads files: an [`AdapterLoader`] from the binary
//! does, so this crate stays free of file formats.

use crate::error::ApiError;
use crate::gen::read_body;
use crate::InferenceState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hangar_engine::{LoraAdapter, LoraShape};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// Why an adapter could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Nothing at that path or reference (404).
    #[error("{0}")]
    NotFound(String),
    /// The file is not a usable adapter for the served model (400).
    #[error("{0}")]
    Invalid(String),
}

impl From<AdapterError> for ApiError {
    fn from(e: AdapterError) -> Self {
        match e {
            AdapterError::NotFound(m) => ApiError::not_found(m),
            AdapterError::Invalid(m) => ApiError::param("lora_path", m),
        }
    }
}

/// Reads adapters (the binary implements it over `hangar-lora` and the registry).
/// Blocking; called on a blocking thread.
pub trait AdapterLoader: Send + Sync + 'static {
    /// The adapter `source` names (a file, a PEFT folder, or a registry reference),
    /// for a model of `shape`.
    fn load(&self, source: &str, shape: &LoraShape) -> Result<LoraAdapter, AdapterError>;
}

/// One loaded adapter.
#[derive(Clone)]
pub struct LoadedAdapter {
    pub adapter: Arc<LoraAdapter>,
    /// What it was loaded from (`lora_path`), shown as `root` in `/v1/models`.
    pub source: String,
    /// Unix time it was loaded.
    pub created: u64,
}

/// The adapters a server holds, by name, and how it loads more.
#[derive(Default)]
pub struct Adapters {
    loader: Option<Arc<dyn AdapterLoader>>,
    loaded: RwLock<BTreeMap<String, LoadedAdapter>>,
}

impl Adapters {
    /// An empty set that loads with `loader` at run time.
    pub fn new(loader: Arc<dyn AdapterLoader>) -> Self {
        Adapters {
            loader: Some(loader),
            loaded: RwLock::default(),
        }
    }

    /// Adds a loaded adapter; refused when the name is taken.
    pub fn insert(&self, name: &str, source: &str, adapter: LoraAdapter) -> Result<(), ApiError> {
        let mut map = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(name) {
            return Err(ApiError::param(
                "lora_name",
                format!("The lora adapter '{name}' has already been loaded. Unload it first (POST /v1/unload_lora_adapter) or choose another name."),
            ));
        }
        map.insert(
            name.to_string(),
            LoadedAdapter {
                adapter: Arc::new(adapter),
                source: source.to_string(),
                created: crate::monitoring_now() as u64,
            },
        );
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoraAdapter>> {
        let map = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        map.get(name).map(|l| l.adapter.clone())
    }

    /// Removes an adapter; requests already running keep theirs until they end.
    pub fn remove(&self, name: &str) -> bool {
        let mut map = self.loaded.write().unwrap_or_else(|e| e.into_inner());
        map.remove(name).is_some()
    }

    /// Every loaded adapter, by name.
    pub fn list(&self) -> Vec<(String, LoadedAdapter)> {
        let map = self.loaded.read().unwrap_or_else(|e| e.into_inner());
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    fn names(&self) -> String {
        let names: Vec<String> = self.list().into_iter().map(|(n, _)| n).collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }
}

/// What a request's `model` names: the base model (`None`) or one of its adapters.
/// Accepts the served name, `served:adapter`, or an adapter's own name (as vLLM).
pub fn resolve_model(
    state: &InferenceState,
    model: Option<&str>,
) -> Result<(String, Option<Arc<LoraAdapter>>), ApiError> {
    let served = state.model_name();
    let m = match model {
        None | Some("") => return Ok((served.to_string(), None)),
        Some(m) if m == served => return Ok((m.to_string(), None)),
        Some(m) => m,
    };
    let adapters = &state.app.lora;
    if let Some(a) = adapters.get(m) {
        return Ok((m.to_string(), Some(a)));
    }
    if let Some(name) = m.strip_prefix(served).and_then(|r| r.strip_prefix(':')) {
        return match adapters.get(name) {
            Some(a) => Ok((m.to_string(), Some(a))),
            None => Err(ApiError {
                param: Some("model".into()),
                code: Some("model_not_found"),
                ..ApiError::not_found(format!(
                    "the LoRA adapter `{name}` is not loaded on this server (loaded adapters: {}); load it with POST /v1/load_lora_adapter or `hangar serve --lora {name}=PATH`",
                    adapters.names()
                ))
            }),
        };
    }
    Err(ApiError {
        param: Some("model".into()),
        code: Some("model_not_found"),
        ..ApiError::not_found(format!(
            "the model `{m}` does not exist; this server serves `{served}` and its LoRA adapters ({}), as `{served}` or `{served}:ADAPTER`",
            adapters.names()
        ))
    })
}

pub(crate) fn routes(state: crate::InferenceRoutes) -> Router {
    Router::new()
        .route("/v1/load_lora_adapter", post(load))
        .route("/v1/unload_lora_adapter", post(unload))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct LoadBody {
    lora_name: Option<String>,
    lora_path: Option<String>,
}

#[derive(Debug, Deserialize)]
struct UnloadBody {
    lora_name: Option<String>,
}

fn required(v: Option<String>, field: &str) -> Result<String, ApiError> {
    match v.map(|s| s.trim().to_string()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::param(field, format!("{field} is required"))),
    }
}

/// `POST /v1/load_lora_adapter`: reads the adapter, checks it against the served
/// model, and makes it available as `lora_name`.
async fn load(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let b: LoadBody = crate::gen::parse_json(&bytes)?;
    let name = required(b.lora_name, "lora_name")?;
    let path = required(b.lora_path, "lora_path")?;
    if name.len() > 256 || name.chars().any(char::is_control) {
        return Err(ApiError::param(
            "lora_name",
            "lora_name must be at most 256 printable characters",
        ));
    }
    if name == state.model_name() {
        return Err(ApiError::param(
            "lora_name",
            format!("`{name}` is the base model's name; give the adapter another"),
        ));
    }
    if state.app.lora.get(&name).is_some() {
        return Err(ApiError::param(
            "lora_name",
            format!("The lora adapter '{name}' has already been loaded. Unload it first (POST /v1/unload_lora_adapter) or choose another name."),
        ));
    }
    // Off unless the operator opted in: the route makes the server read files its
    // client names (vLLM gates it the same way).
    let Some(loader) = state.app.lora.loader.clone() else {
        return Err(ApiError::forbidden(
            "loading LoRA adapters at run time is off on this server; start `hangar serve` with --allow-runtime-lora to allow it (it lets API clients make the server read adapter files from its disk, so pair it with --api-key)",
        ));
    };
    let engine_shape = state.engine().info().lora.clone();
    let Some(shape) = engine_shape else {
        return Err(ApiError::bad_request(format!(
            "this server's model runs on {} with a backend that does not apply LoRA adapters (they need the single-process CPU runner with fast numerics)",
            state.engine().info().device
        )));
    };
    let source = path.clone();
    let adapter = tokio::task::spawn_blocking(move || loader.load(&source, &shape))
        .await
        .map_err(|e| ApiError::internal(format!("the adapter loader stopped: {e}")))??;
    state
        .engine()
        .check_adapter(&adapter)
        .map_err(|e| ApiError::param("lora_path", e.to_string()))?;
    state.app.lora.insert(&name, &path, adapter)?;
    tracing::info!("LoRA adapter {name:?} loaded from {path}");
    Ok((
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' added successfully."),
    )
        .into_response())
}

/// `POST /v1/unload_lora_adapter`: new requests can no longer name it; running ones
/// finish with it.
async fn unload(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let b: UnloadBody = crate::gen::parse_json(&bytes)?;
    let name = required(b.lora_name, "lora_name")?;
    if state.app.lora.loader.is_none() {
        return Err(ApiError::forbidden(
            "unloading LoRA adapters at run time is off on this server; start `hangar serve` with --allow-runtime-lora to allow it",
        ));
    }
    if !state.app.lora.remove(&name) {
        return Err(ApiError {
            param: Some("lora_name".into()),
            ..ApiError::not_found(format!(
                "The lora adapter '{name}' cannot be found (loaded adapters: {}).",
                state.app.lora.names()
            ))
        });
    }
    tracing::info!("LoRA adapter {name:?} unloaded");
    Ok((
        StatusCode::OK,
        format!("Success: LoRA adapter '{name}' removed successfully."),
    )
        .into_response())
}
