//! The MLflow-compatible REST adapter: MLflow's tracking API (`/api/2.0/mlflow/...`,
//! also under `/ajax-api/2.0/mlflow/...`), its artifact proxy
//! (`/api/2.0/mlflow-artifacts/artifacts/...`) and its model-registry calls mapped
//! onto Hangar's registry. Owns routing, wire shapes and the one error mapping
//! (`{"error_code", "message"}`); every decision is `hangar_track::Tracker`'s or the
//! `Registry`'s. Who the caller is comes from the auth layer.
//!
//! Roles: reading needs a reader, logging and creating need a writer (a registry
//! token; an `--api-key` is a reader). Without API keys and without registry tokens
//! the tracking API is open to anyone who can reach the server, as MLflow's own is.

mod artifacts;
mod models;
mod prompts;
mod tracking;
pub mod wire;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{AppState, SharedRegistry};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hangar_registry::{Principal, Role};
use hangar_track::{TrackError, Tracker};
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The tracking store behind the MLflow routes, shared between handlers.
pub type SharedTracker = Arc<Tracker>;

/// What MLflow handlers see.
#[derive(Clone)]
pub(crate) struct MlflowState {
    pub app: Arc<AppState>,
    pub tracker: SharedTracker,
    pub registry: Option<SharedRegistry>,
}

/// The path prefixes the MLflow client and UI call.
pub(crate) const PREFIXES: [&str; 2] = ["/api/2.0/mlflow", "/ajax-api/2.0/mlflow"];

/// The MLflow routes, to be merged into the server's router.
pub(crate) fn routes(app: Arc<AppState>, tracker: SharedTracker) -> Router {
    let state = MlflowState {
        registry: app.registry.clone(),
        app,
        tracker,
    };
    let mut r = Router::new();
    for prefix in PREFIXES {
        r = tracking::routes(r, prefix);
        r = models::routes(r, prefix);
    }
    artifacts::routes(r).with_state(state)
}

/// An error in MLflow's form: `{"error_code": "...", "message": "..."}`.
#[derive(Debug)]
pub struct MlflowError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl MlflowError {
    pub fn invalid(message: impl Into<String>) -> Self {
        MlflowError {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_PARAMETER_VALUE",
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        MlflowError {
            status: StatusCode::NOT_FOUND,
            code: "RESOURCE_DOES_NOT_EXIST",
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        MlflowError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "INTERNAL_ERROR",
            message: message.into(),
        }
    }
    /// A required field is missing.
    pub fn missing(field: &str) -> Self {
        Self::invalid(format!("missing value for required parameter '{field}'"))
    }
}

/// MLflow's error code for an HTTP status (used for errors raised outside handlers).
pub fn code_for_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 413 => "INVALID_PARAMETER_VALUE",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "ENDPOINT_NOT_FOUND",
        408 => "DEADLINE_EXCEEDED",
        409 => "RESOURCE_CONFLICT",
        429 => "REQUEST_LIMIT_EXCEEDED",
        503 => "TEMPORARILY_UNAVAILABLE",
        _ => "INTERNAL_ERROR",
    }
}

impl From<ApiError> for MlflowError {
    fn from(e: ApiError) -> Self {
        MlflowError {
            status: e.status,
            code: code_for_status(e.status),
            message: e.message,
        }
    }
}

impl From<TrackError> for MlflowError {
    fn from(e: TrackError) -> Self {
        let message = e.to_string();
        match e {
            TrackError::NotFound(_) => Self::not_found(message),
            TrackError::AlreadyExists(_) => MlflowError {
                status: StatusCode::BAD_REQUEST,
                code: "RESOURCE_ALREADY_EXISTS",
                message,
            },
            TrackError::Invalid(_) => Self::invalid(message),
            TrackError::Db(_) | TrackError::Io { .. } => Self::internal(message),
        }
    }
}

impl From<hangar_registry::RegistryError> for MlflowError {
    fn from(e: hangar_registry::RegistryError) -> Self {
        use hangar_registry::RegistryError as R;
        let message = e.to_string();
        let (status, code) = match e {
            R::NotFound(_) => (StatusCode::NOT_FOUND, "RESOURCE_DOES_NOT_EXIST"),
            R::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            R::Forbidden { .. } => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            R::Invalid(_)
            | R::InvalidName { .. }
            | R::Refused { .. }
            | R::Conflict(_)
            | R::Template { .. }
            | R::MissingVariables { .. } => (StatusCode::BAD_REQUEST, "INVALID_PARAMETER_VALUE"),
            R::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "TEMPORARILY_UNAVAILABLE"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        };
        MlflowError {
            status,
            code,
            message,
        }
    }
}

impl IntoResponse for MlflowError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error_code": self.code, "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

pub(crate) type MlResult<T> = Result<T, MlflowError>;

/// The tracking principal of a caller: API keys read; registry tokens have their role;
/// an open server (no API keys) lets anonymous callers write unless the registry has
/// tokens, in which case a token is needed.
pub(crate) async fn tracking_principal(st: &MlflowState, caller: &Caller) -> MlResult<Principal> {
    match caller {
        Caller::ApiKey { .. } => Ok(Caller::api_key_principal()),
        Caller::Key(_) | Caller::RegistryToken(_) => {
            Ok(caller.principal().unwrap_or_else(Caller::api_key_principal))
        }
        Caller::Open { bearer } => {
            let Some(reg) = st.registry.clone() else {
                return Ok(anonymous_writer());
            };
            let bearer = bearer.clone();
            let p = tokio::task::spawn_blocking(move || {
                let reg = reg.lock().unwrap_or_else(|e| e.into_inner());
                match bearer {
                    Some(t) => reg.principal_for_network(Some(&t)).map(Some),
                    None => reg.principal_for_network(None).map(|_| None),
                }
            })
            .await
            .map_err(|e| MlflowError::internal(format!("auth task failed: {e}")))??;
            Ok(p.unwrap_or_else(anonymous_writer))
        }
    }
}

fn anonymous_writer() -> Principal {
    Principal {
        name: "anonymous".into(),
        role: Role::Writer,
    }
}

/// Fails with PERMISSION_DENIED unless `who` has `needed`.
pub(crate) fn require(who: &Principal, needed: Role, action: &str) -> MlResult<()> {
    who.require(needed, action).map_err(MlflowError::from)
}

/// The request's fields: the query string for GET, else the JSON body. MLflow's client
/// sends GET parameters as a query string (lists as repeated keys) and everything else
/// as JSON, with NaN and Infinity as bare words.
pub(crate) async fn fields<T: DeserializeOwned>(st: &MlflowState, req: Request) -> MlResult<T> {
    let value = if req.method() == Method::GET {
        wire::query_to_json(req.uri().query().unwrap_or(""))
    } else {
        let (parts, body) = req.into_parts();
        let bytes = crate::gen::read_body(&parts.headers, body, st.app.cfg.max_body_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Object(Default::default())
        } else {
            wire::parse_lenient_json(&bytes)
                .map_err(|e| MlflowError::invalid(format!("invalid JSON body: {e}")))?
        }
    };
    serde_json::from_value(value).map_err(|e| MlflowError::invalid(format!("invalid request: {e}")))
}

/// Runs `f` with the tracker on a blocking thread (SQLite and fsync).
pub(crate) async fn blocking<T, F>(st: &MlflowState, f: F) -> MlResult<T>
where
    T: Send + 'static,
    F: FnOnce(&Tracker) -> MlResult<T> + Send + 'static,
{
    let tracker = st.tracker.clone();
    tokio::task::spawn_blocking(move || f(&tracker))
        .await
        .map_err(|e| MlflowError::internal(format!("tracking task failed: {e}")))?
}

/// Whether a path belongs to the MLflow API (its errors use MLflow's format).
pub fn is_mlflow_path(path: &str) -> bool {
    PREFIXES.iter().any(|p| path.starts_with(p)) || path.starts_with(artifacts::ROOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_errors_become_mlflow_codes_and_statuses() {
        let e: MlflowError = TrackError::NotFound("run x".into()).into();
        assert_eq!(
            (e.status.as_u16(), e.code),
            (404, "RESOURCE_DOES_NOT_EXIST")
        );
        let e: MlflowError = TrackError::AlreadyExists("exp".into()).into();
        assert_eq!(
            (e.status.as_u16(), e.code),
            (400, "RESOURCE_ALREADY_EXISTS")
        );
        let e: MlflowError = TrackError::Invalid("bad".into()).into();
        assert_eq!(
            (e.status.as_u16(), e.code),
            (400, "INVALID_PARAMETER_VALUE")
        );
        assert_eq!(code_for_status(StatusCode::UNAUTHORIZED), "UNAUTHENTICATED");
        assert_eq!(code_for_status(StatusCode::FORBIDDEN), "PERMISSION_DENIED");
        assert_eq!(code_for_status(StatusCode::NOT_FOUND), "ENDPOINT_NOT_FOUND");
    }

    #[test]
    fn mlflow_paths_are_recognised() {
        for p in [
            "/api/2.0/mlflow/runs/create",
            "/ajax-api/2.0/mlflow/experiments/search",
            "/api/2.0/mlflow-artifacts/artifacts/0/r/artifacts/x",
        ] {
            assert!(is_mlflow_path(p), "{p}");
        }
        for p in ["/v1/registry/models", "/api/2.0/other", "/v1/completions"] {
            assert!(!is_mlflow_path(p), "{p}");
        }
    }
}
