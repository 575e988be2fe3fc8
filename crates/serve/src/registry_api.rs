//! The registry's HTTP API: list, show, promote and demote with the same tokens and
//! roles as the command line. Owns routing and wire shapes only; every decision is the
//! `Registry`'s, and who the caller is comes from the auth layer.
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
//! | GET | `/v1/registry/prompts` | reader |
//! | GET | `/v1/registry/prompts/{name}` (every version) | reader |
//! | POST | `/v1/registry/prompts/{name}/versions` `{"user", "system"?, "description"?, "tags"?, "alias"?}` | writer (promoter for `alias: production`) |
//! | GET | `/v1/registry/prompts/{name}/versions/{selector}` | reader |
//! | POST | `/v1/registry/prompts/{name}/versions/{selector}/render` `{"variables": {...}}` | reader |
//! | POST | `/v1/registry/prompts/{name}/aliases` `{"alias": "production", "version": "3"}` | writer / promoter (stages) |
//! | DELETE | `/v1/registry/prompts/{name}/aliases/{alias}` | writer |

use crate::auth::Caller;
use crate::error::{ApiError, RegistryApiError};
use crate::gen::{parse_json, read_body};
use crate::{AppState, SharedRegistry};
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hangar_registry::{
    AuditEntry, ModelInfo, ModelSummary, NewPrompt, Principal, PromptSummary, PromptVersion,
    Registry, StoreStats, VersionInfo,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// What registry handlers see.
#[derive(Clone)]
struct RegistryState {
    app: Arc<AppState>,
    registry: SharedRegistry,
}

/// The registry routes, to be merged into the server's router.
pub(crate) fn routes(app: Arc<AppState>, registry: SharedRegistry) -> Router {
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
        .route("/v1/registry/prompts", get(list_prompts))
        .route("/v1/registry/prompts/{name}", get(show_prompt))
        .route("/v1/registry/prompts/{name}/versions", post(create_prompt))
        .route(
            "/v1/registry/prompts/{name}/versions/{selector}",
            get(show_prompt_version),
        )
        .route(
            "/v1/registry/prompts/{name}/versions/{selector}/render",
            post(render_prompt),
        )
        .route(
            "/v1/registry/prompts/{name}/aliases",
            post(set_prompt_alias),
        )
        .route(
            "/v1/registry/prompts/{name}/aliases/{alias}",
            axum::routing::delete(remove_prompt_alias),
        )
        .route("/v1/registry/stats", get(stats))
        .route("/v1/registry/audit", get(audit))
        .with_state(RegistryState { app, registry })
}

/// The registry API's error body: `{"error": {"type", "message"}}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                kind: e.kind.to_string(),
                message: e.message,
            },
        }
    }
}

/// `GET /v1/registry/models`
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub models: Vec<ModelSummary>,
}

/// `GET /v1/registry/audit`
#[derive(Debug, Serialize)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

#[derive(Deserialize)]
struct PromoteBody {
    stage: String,
}

#[derive(Deserialize, Default)]
struct DemoteBody {
    to: Option<String>,
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<u32>,
}

/// The registry principal of a caller the auth layer let through.
fn principal(reg: &Registry, caller: &Caller) -> hangar_registry::Result<Principal> {
    match caller {
        Caller::ApiKey { .. } => Ok(Caller::api_key_principal()),
        Caller::Key(_) | Caller::RegistryToken(_) => {
            Ok(caller.principal().unwrap_or_else(Caller::api_key_principal))
        }
        Caller::Open { bearer } => reg.principal_for_network(bearer.as_deref()),
    }
}

/// Like [`with_registry`], for calls that write the store (they take `&mut`).
async fn with_registry_mut<T, F>(
    st: RegistryState,
    caller: Caller,
    f: F,
) -> Result<Json<T>, RegistryApiError>
where
    T: Serialize + Send + 'static,
    F: FnOnce(&mut Registry, &Principal) -> hangar_registry::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let mut reg = st.registry.lock().unwrap_or_else(|e| e.into_inner());
        let who = principal(&reg, &caller)?;
        f(&mut reg, &who)
    })
    .await
    .map_err(|e| ApiError::internal(format!("registry task failed: {e}")))?
    .map(Json)
    .map_err(RegistryApiError::from)
}

/// Runs `f` with the registry and the caller's principal on a blocking thread.
async fn with_registry<T, F>(
    st: RegistryState,
    caller: Caller,
    f: F,
) -> Result<Json<T>, RegistryApiError>
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Registry, &Principal) -> hangar_registry::Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let reg = st.registry.lock().unwrap_or_else(|e| e.into_inner());
        let who = principal(&reg, &caller)?;
        f(&reg, &who)
    })
    .await
    .map_err(|e| ApiError::internal(format!("registry task failed: {e}")))?
    .map(Json)
    .map_err(RegistryApiError::from)
}

async fn list(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
) -> Result<Json<ModelList>, RegistryApiError> {
    with_registry(s, c, |r, w| Ok(ModelList { models: r.list(w)? })).await
}

async fn show_model(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<ModelInfo>, RegistryApiError> {
    with_registry(s, c, move |r, w| r.show_model(w, &name)).await
}

async fn show_version(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path((name, sel)): Path<(String, String)>,
) -> Result<Json<VersionInfo>, RegistryApiError> {
    with_registry(s, c, move |r, w| r.show(w, &format!("{name}@{sel}"))).await
}

async fn promote(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path((name, sel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<VersionInfo>, RegistryApiError> {
    let bytes = read_body(&headers, body, s.app.cfg.max_body_bytes).await?;
    let body: PromoteBody = parse_json(&bytes)?;
    with_registry(s, c, move |r, w| {
        r.promote(w, &format!("{name}@{sel}"), &body.stage)
    })
    .await
}

async fn demote(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path((name, sel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<VersionInfo>, RegistryApiError> {
    let bytes = read_body(&headers, body, s.app.cfg.max_body_bytes).await?;
    let to = if bytes.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        parse_json::<DemoteBody>(&bytes)?.to
    };
    with_registry(s, c, move |r, w| {
        r.demote(w, &format!("{name}@{sel}"), to.as_deref())
    })
    .await
}

async fn stats(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
) -> Result<Json<StoreStats>, RegistryApiError> {
    with_registry(s, c, |r, w| r.stats(w)).await
}

async fn audit(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, RegistryApiError> {
    let Query(q) =
        q.map_err(|e| ApiError::param("limit", format!("bad query string: {e}; use ?limit=N")))?;
    with_registry(s, c, move |r, w| {
        Ok(AuditList {
            entries: r.audit_log(w, q.limit.unwrap_or(100))?,
        })
    })
    .await
}

// ---- prompts ------------------------------------------------------------------------

/// `GET /v1/registry/prompts`
#[derive(Debug, Serialize)]
pub struct PromptList {
    pub prompts: Vec<PromptSummary>,
}

/// `GET /v1/registry/prompts/{name}`
#[derive(Debug, Serialize)]
pub struct PromptVersions {
    pub name: String,
    pub versions: Vec<PromptVersion>,
}

#[derive(Deserialize)]
struct CreatePromptBody {
    user: String,
    system: Option<String>,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    alias: Option<String>,
}

#[derive(Deserialize)]
struct AliasBody {
    alias: String,
    /// A version number or any selector (`3`, `latest`, `candidate`).
    version: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct RenderBody {
    #[serde(default)]
    variables: serde_json::Map<String, serde_json::Value>,
}

/// `POST .../render`
#[derive(Debug, Serialize)]
pub struct RenderedBody {
    pub prompt: String,
    pub system: Option<String>,
    pub user: String,
}

async fn list_prompts(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
) -> Result<Json<PromptList>, RegistryApiError> {
    with_registry(s, c, |r, w| {
        Ok(PromptList {
            prompts: r.list_prompts(w)?,
        })
    })
    .await
}

async fn show_prompt(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
) -> Result<Json<PromptVersions>, RegistryApiError> {
    with_registry(s, c, move |r, w| {
        Ok(PromptVersions {
            versions: r.prompt_versions(w, &name)?,
            name,
        })
    })
    .await
}

async fn show_prompt_version(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path((name, sel)): Path<(String, String)>,
) -> Result<Json<PromptVersion>, RegistryApiError> {
    with_registry(s, c, move |r, w| r.prompt(w, &format!("{name}@{sel}"))).await
}

async fn create_prompt(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PromptVersion>, RegistryApiError> {
    let bytes = read_body(&headers, body, s.app.cfg.max_body_bytes).await?;
    let b: CreatePromptBody = parse_json(&bytes)?;
    with_registry_mut(s, c, move |r, w| {
        let mut out = r.create_prompt(
            w,
            &NewPrompt {
                name,
                system: b.system,
                user: b.user,
                description: b.description,
                tags: b.tags,
                ..Default::default()
            },
        )?;
        if let Some(a) = b.alias {
            let present = out.already_present;
            out = r.set_prompt_alias(w, &out.reference, &a)?;
            out.already_present = present;
        }
        Ok(out)
    })
    .await
}

async fn render_prompt(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path((name, sel)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<RenderedBody>, RegistryApiError> {
    let bytes = read_body(&headers, body, s.app.cfg.max_body_bytes).await?;
    let b: RenderBody = if bytes.iter().all(u8::is_ascii_whitespace) {
        RenderBody::default()
    } else {
        parse_json(&bytes)?
    };
    with_registry(s, c, move |r, w| {
        let (p, out) = r.render_prompt(w, &format!("{name}@{sel}"), &b.variables)?;
        Ok(RenderedBody {
            prompt: p.reference,
            system: out.system,
            user: out.user,
        })
    })
    .await
}

async fn set_prompt_alias(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PromptVersion>, RegistryApiError> {
    let bytes = read_body(&headers, body, s.app.cfg.max_body_bytes).await?;
    let b: AliasBody = parse_json(&bytes)?;
    let sel = match &b.version {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(v) => v.clone(),
        _ => {
            return Err(ApiError::param(
                "version",
                "version must be a number or a selector such as \"latest\"",
            )
            .into())
        }
    };
    with_registry(s, c, move |r, w| {
        r.set_prompt_alias(w, &format!("{name}@{sel}"), &b.alias)
    })
    .await
}

async fn remove_prompt_alias(
    State(s): State<RegistryState>,
    Extension(c): Extension<Caller>,
    Path((name, alias)): Path<(String, String)>,
) -> Result<Json<PromptVersions>, RegistryApiError> {
    with_registry(s, c, move |r, w| {
        r.prompt(w, &format!("{name}@latest"))?;
        r.remove_alias(w, &name, &alias)?;
        Ok(PromptVersions {
            versions: r.prompt_versions(w, &name)?,
            name,
        })
    })
    .await
}
