//! The registry's HTTP API (feature `http`), mounted by `hangar serve`: list, show,
//! promote and demote with the same tokens and roles as the command line. Owns routing
//! and status codes only; every decision is the `Registry`'s.
//!
//! | method | path | role |
//! | --- | --- | --- |
//! | GET | `/v1/registry/models` | reader |
//! | GET | `/v1/registry/models/{name}` | reader |
//! | GET | `/v1/registry/models/{name}/versions/{selector}` | reader |
//! | POST | `/v1/registry/models/{name}/versions/{selector}/promote` `{"stage": "production"}` | promoter (production) / writer |
//! | POST | `/v1/registry/models/{name}/versions/{selector}/demote` `{"to": "archived"}` | promoter (from production) / writer |
//! | GET | `/v1/registry/stats` | reader |
//! | GET | `/v1/registry/audit?limit=N` | promoter |

use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::{Principal, Registry, RegistryError};

/// The registry shared between request handlers.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// Builds the router; merge it into the server's (`app.merge(router(state))`).
///
/// ```no_run
/// # use std::sync::{Arc, Mutex};
/// let reg = hangar_registry::Registry::open(None).unwrap();
/// let app: axum::Router = hangar_registry::http::router(Arc::new(Mutex::new(reg)));
/// ```
pub fn router(state: SharedRegistry) -> Router {
    Router::new()
        .route("/v1/registry/models", get(list))
        .route("/v1/registry/models/{name}", get(show_model))
        .route(
            "/v1/registry/models/{name}/versions/{selector}",
            get(show_version),
        )
        .route(
            "/v1/registry/models/{name}/versions/{selector}/promote",
            post(promote),
        )
        .route(
            "/v1/registry/models/{name}/versions/{selector}/demote",
            post(demote),
        )
        .route("/v1/registry/stats", get(stats))
        .route("/v1/registry/audit", get(audit))
        .with_state(state)
}

struct ApiError(RegistryError);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = match &self.0 {
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RegistryError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            RegistryError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            RegistryError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            RegistryError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            RegistryError::Invalid(_) | RegistryError::InvalidName { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let body = json!({"error": {"type": kind, "message": self.0.to_string()}});
        (status, Json(body)).into_response()
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
}

/// Runs `f` with the registry and the caller's principal on a blocking thread.
async fn with_registry<T, F>(
    state: SharedRegistry,
    headers: HeaderMap,
    f: F,
) -> Result<Json<T>, ApiError>
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce(&Registry, &Principal) -> crate::Result<T> + Send + 'static,
{
    let token = bearer(&headers);
    tokio::task::spawn_blocking(move || {
        let reg = state.lock().unwrap_or_else(|e| e.into_inner());
        let who = reg.principal_for_network(token.as_deref())?;
        f(&reg, &who)
    })
    .await
    .map_err(|e| ApiError(RegistryError::Invalid(e.to_string())))?
    .map(Json)
    .map_err(ApiError)
}

async fn list(
    State(s): State<SharedRegistry>,
    h: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    with_registry(s, h, |r, w| Ok(json!({"models": r.list(w)?}))).await
}

async fn show_model(
    State(s): State<SharedRegistry>,
    h: HeaderMap,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    with_registry(s, h, move |r, w| r.show_model(w, &name)).await
}

async fn show_version(
    State(s): State<SharedRegistry>,
    h: HeaderMap,
    Path((name, sel)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    with_registry(s, h, move |r, w| r.show(w, &format!("{name}@{sel}"))).await
}

#[derive(Deserialize)]
struct PromoteBody {
    stage: String,
}

async fn promote(
    State(s): State<SharedRegistry>,
    h: HeaderMap,
    Path((name, sel)): Path<(String, String)>,
    Json(body): Json<PromoteBody>,
) -> Result<impl IntoResponse, ApiError> {
    with_registry(s, h, move |r, w| {
        r.promote(w, &format!("{name}@{sel}"), &body.stage)
    })
    .await
}

#[derive(Deserialize, Default)]
struct DemoteBody {
    to: Option<String>,
}

async fn demote(
    State(s): State<SharedRegistry>,
    h: HeaderMap,
    Path((name, sel)): Path<(String, String)>,
    body: Option<Json<DemoteBody>>,
) -> Result<impl IntoResponse, ApiError> {
    let to = body.map(|b| b.0).unwrap_or_default().to;
    with_registry(s, h, move |r, w| {
        r.demote(w, &format!("{name}@{sel}"), to.as_deref())
    })
    .await
}

async fn stats(
    State(s): State<SharedRegistry>,
    h: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    with_registry(s, h, |r, w| r.stats(w)).await
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

async fn audit(
    State(s): State<SharedRegistry>,
    h: HeaderMap,
    Query(q): Query<AuditQuery>,
) -> Result<impl IntoResponse, ApiError> {
    with_registry(s, h, move |r, w| {
        Ok(json!({"entries": r.audit_log(w, q.limit.unwrap_or(100))?}))
    })
    .await
}
