//! The one auth layer of every route: API keys (`--api-key`) and registry tokens,
//! composed. Decides who the caller is and refuses unknown callers; what a caller may
//! do (registry roles) stays the registry's decision.
//!
//! With API keys configured (`--api-key`, or managed keys from `hangar keys create`),
//! every route but health and metrics needs a credential: a static API key (inference,
//! and the registry as a reader), a managed key (inference under its limits, and the
//! registry with its role: user = reader, promoter, admin) or a registry token (its
//! role on the registry; any role on inference). Without API keys, inference is open
//! and the registry applies its own rules to the bearer token, as the command line does.
//!
//! [`authenticate`] is the one check of a presented key, for every protocol.

use crate::error::{ApiError, ApiFormat};
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;
use hangar_engine::Tenant;
use hangar_registry::{ApiKeyInfo, Principal, Role};
use std::sync::Arc;

/// Who the auth layer let through; registry handlers read it from the request's
/// extensions to pick the principal.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No API keys are configured: the bearer (if any) is passed on unchecked, and the
    /// registry judges it.
    Open { bearer: Option<String> },
    /// A static API key (`--api-key`), by its position in the list.
    ApiKey { index: usize },
    /// A managed key (`hangar keys`), with its role and limits.
    Key(ApiKeyInfo),
    /// A registry token, already resolved.
    RegistryToken(Principal),
}

tokio::task_local! {
    /// The caller of the request being handled (set by [`require`] around the handler).
    static CALLER: Caller;
}

/// The caller of the request this task is handling, if the auth layer ran.
pub fn current_caller() -> Option<Caller> {
    CALLER.try_with(|c| c.clone()).ok()
}

/// A stable id for fair sharing, from a kind and a name (FNV-1a: not a secret digest,
/// only keeps callers apart).
fn tenant_id(kind: u8, name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(kind);
    for b in name {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | 1
}

impl Caller {
    /// The tenant the engine shares slots by: one per key or token, weighted by the
    /// managed key's weight; open callers share one tenant.
    pub fn tenant(&self) -> Tenant {
        match self {
            Caller::Open { .. } => Tenant::default(),
            Caller::ApiKey { index } => Tenant {
                id: tenant_id(1, &index.to_le_bytes()),
                weight: 1,
            },
            Caller::Key(k) => Tenant {
                id: tenant_id(2, &k.id.to_le_bytes()),
                weight: k.limits.weight.max(1),
            },
            Caller::RegistryToken(p) => Tenant {
                id: tenant_id(3, p.name.as_bytes()),
                weight: 1,
            },
        }
    }

    /// The registry principal a caller acts as, where the auth layer decided it.
    pub fn principal(&self) -> Option<Principal> {
        match self {
            Caller::Open { .. } => None,
            Caller::ApiKey { .. } => Some(Self::api_key_principal()),
            Caller::Key(k) => Some(Principal {
                name: format!("key:{}", k.name),
                role: k.role.registry_role(),
            }),
            Caller::RegistryToken(p) => Some(p.clone()),
        }
    }

    /// The registry principal of an API key: it may read the catalog, not change it.
    pub fn api_key_principal() -> Principal {
        Principal {
            name: "api-key".into(),
            role: Role::Reader,
        }
    }
}

/// Routes that answer without a credential: probes, scrapes, and the dashboard's
/// static files (they hold no data; the page asks for a key and sends it on each call).
pub fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/v2/health/live"
            | "/v2/health/ready"
            | "/health"
            | "/healthz"
            | "/livez"
            | "/readyz"
            | "/metrics"
    ) || path == "/ui"
        || path.starts_with("/ui/")
}

/// Constant-time comparison, so a key cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Authorization: Bearer` token, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The credential of a request: `Authorization: Bearer`, else the `api-key` header
/// (how qdrant-client sends its key), else `x-api-key` (common with gRPC clients).
pub fn credential(headers: &HeaderMap) -> Option<String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    };
    bearer(headers)
        .or_else(|| header("api-key"))
        .or_else(|| header("x-api-key"))
}

/// Resolves a registry token on a blocking thread (the registry is SQLite).
async fn registry_principal(state: &AppState, token: String) -> Option<Principal> {
    let reg = state.registry.clone()?;
    tokio::task::spawn_blocking(move || {
        let reg = reg.lock().unwrap_or_else(|e| e.into_inner());
        reg.principal_for_network(Some(&token)).ok()
    })
    .await
    .ok()
    .flatten()
}

/// Whether callers must present a key: static keys are set, or the key store holds
/// (or held, since start) a managed key.
pub fn keys_required(state: &AppState) -> bool {
    !state.cfg.api_keys.is_empty() || state.tenants.enabled()
}

/// Who a presented key belongs to: a static key, a managed key, or a registry token —
/// in that order; `None` when it is none of them. Revoked managed keys stop matching
/// within [`crate::tenants::REFRESH`]. Every protocol (HTTP here, gRPC later) calls this.
pub async fn authenticate(state: &AppState, key: &str) -> Option<Caller> {
    let mut static_match = None;
    for (index, k) in state.cfg.api_keys.iter().enumerate() {
        if same(k.as_bytes(), key.as_bytes()) {
            static_match = Some(index);
        }
    }
    if let Some(index) = static_match {
        return Some(Caller::ApiKey { index });
    }
    if let Some(k) = state.tenants.verify(key) {
        return Some(Caller::Key(k));
    }
    registry_principal(state, key.to_string())
        .await
        .map(Caller::RegistryToken)
}

/// Who presents `token` (from any transport): with keys required, a valid static
/// key, managed key or registry token, else 401; without them, anyone.
pub async fn identify(state: &AppState, token: Option<String>) -> Result<Caller, ApiError> {
    if !keys_required(state) {
        return Ok(Caller::Open { bearer: token });
    }
    let token = token.ok_or_else(ApiError::unauthorized)?;
    authenticate(state, &token)
        .await
        .ok_or_else(ApiError::unauthorized)
}

/// The middleware: lets public routes through, identifies the caller, refuses with 401
/// (in the route's API format) when keys are configured and no credential is valid.
pub async fn require(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if is_public(path) {
        return next.run(req).await;
    }
    let format = ApiFormat::of_path(path);
    let token = credential(req.headers());
    let caller = match identify(&state, token).await {
        Ok(c) => c,
        Err(e) => return e.render(format),
    };
    req.extensions_mut().insert(caller.clone());
    CALLER.scope(caller, next.run(req)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_either_case() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc ".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer xyz".parse().unwrap());
        assert_eq!(bearer(&h).as_deref(), Some("xyz"));
        h.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }

    #[test]
    fn the_api_key_header_is_a_credential_too() {
        let mut h = HeaderMap::new();
        h.insert("api-key", " k1 ".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("k1"));
        h.insert(header::AUTHORIZATION, "Bearer k2".parse().unwrap());
        assert_eq!(credential(&h).as_deref(), Some("k2"));
        h.remove(header::AUTHORIZATION);
        h.insert("api-key", "".parse().unwrap());
        assert_eq!(credential(&h), None);
    }

    #[test]
    fn only_probes_and_metrics_are_public() {
        for p in [
            "/health",
            "/healthz",
            "/livez",
            "/readyz",
            "/v2/health/live",
            "/v2/health/ready",
            "/metrics",
        ] {
            assert!(is_public(p), "{p}");
        }
        for p in [
            "/",
            "/v1/models",
            "/v1/registry/models",
            "/v2",
            "/v2/models/m",
        ] {
            assert!(!is_public(p), "{p}");
        }
    }

    #[test]
    fn comparison_needs_equal_bytes() {
        assert!(same(b"key", b"key"));
        assert!(!same(b"key", b"kex"));
        assert!(!same(b"key", b"keys"));
    }
}
