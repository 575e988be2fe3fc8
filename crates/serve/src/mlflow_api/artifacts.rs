//! MLflow's artifact proxy (`/api/2.0/mlflow-artifacts/artifacts/<exp>/<run>/artifacts/<path>`:
//! PUT uploads, GET downloads, GET with `?path=` lists) and `mlflow/artifacts/list`,
//! over the tracker's content-addressed artifact store.

use super::{
    blocking, fields, require, tracking_principal, MlResult, MlflowError, MlflowState, PREFIXES,
};
use crate::auth::Caller;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hangar_registry::Role;
use serde::Deserialize;
use serde_json::{json, Value};

/// Where the MLflow client sends artifact bytes.
pub(crate) const ROOT: &str = "/api/2.0/mlflow-artifacts/artifacts";
/// The largest artifact accepted in one PUT.
pub const MAX_ARTIFACT_BYTES: usize = 512 << 20;

pub(super) fn routes(mut r: Router<MlflowState>) -> Router<MlflowState> {
    r = r
        .route(ROOT, get(list_proxy))
        .route(&format!("{ROOT}/{{*path}}"), get(download).put(upload));
    for p in PREFIXES {
        r = r.route(&format!("{p}/artifacts/list"), get(list_run));
    }
    r
}

/// `<experiment>/<run id>/artifacts[/<path>]` → (run id, path).
fn split_proxy_path(path: &str) -> MlResult<(String, String)> {
    let parts: Vec<&str> = path.trim_matches('/').splitn(4, '/').collect();
    match parts.as_slice() {
        [_exp, run, "artifacts", rest @ ..] if !run.is_empty() => {
            Ok((run.to_string(), rest.first().copied().unwrap_or("").to_string()))
        }
        _ => Err(MlflowError::invalid(format!(
            "artifact path {path:?} is not of the form <experiment id>/<run id>/artifacts/<path>; use the artifact_uri of a run"
        ))),
    }
}

async fn upload(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> MlResult<Json<Value>> {
    let who = tracking_principal(&st, &c).await?;
    require(&who, Role::Writer, "uploading artifacts")?;
    let (run, rel) = split_proxy_path(&path)?;
    let bytes = crate::gen::read_body(&headers, body, MAX_ARTIFACT_BYTES).await?;
    blocking(&st, move |t| Ok(t.put_artifact(&run, &rel, &bytes)?)).await?;
    Ok(Json(json!({})))
}

async fn download(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    Path(path): Path<String>,
) -> MlResult<Response> {
    let who = tracking_principal(&st, &c).await?;
    require(&who, Role::Reader, "reading artifacts")?;
    let (run, rel) = split_proxy_path(&path)?;
    let bytes = blocking(&st, move |t| Ok(t.get_artifact(&run, &rel)?)).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

#[derive(Deserialize)]
struct ProxyList {
    path: Option<String>,
}

/// Entries relative to the listed folder, as the client joins them to its path.
fn listing(entries: Vec<hangar_track::ArtifactEntry>, dir: &str) -> Vec<Value> {
    let prefix = dir.trim_matches('/');
    entries
        .into_iter()
        .map(|e| {
            let rel = if prefix.is_empty() {
                e.path.clone()
            } else {
                e.path
                    .strip_prefix(prefix)
                    .map(|s| s.trim_start_matches('/').to_string())
                    .unwrap_or(e.path.clone())
            };
            match e.file_size {
                Some(size) if !e.is_dir => {
                    json!({"path": rel, "is_dir": false, "file_size": size})
                }
                _ => json!({"path": rel, "is_dir": true}),
            }
        })
        .collect()
}

async fn list_proxy(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> MlResult<Json<Value>> {
    let who = tracking_principal(&st, &c).await?;
    require(&who, Role::Reader, "reading artifacts")?;
    let q: ProxyList = fields(&st, req).await?;
    let path = q.path.unwrap_or_default();
    let (run, rel) = split_proxy_path(&path)?;
    let entries = blocking(&st, {
        let rel = rel.clone();
        move |t| Ok(t.list_artifacts(&run, &rel)?)
    })
    .await?;
    Ok(Json(json!({ "files": listing(entries, &rel) })))
}

#[derive(Deserialize)]
struct RunList {
    run_id: Option<String>,
    run_uuid: Option<String>,
    path: Option<String>,
}

async fn list_run(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> MlResult<Json<Value>> {
    let who = tracking_principal(&st, &c).await?;
    require(&who, Role::Reader, "reading artifacts")?;
    let q: RunList = fields(&st, req).await?;
    let run = q
        .run_id
        .or(q.run_uuid)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| MlflowError::missing("run_id"))?;
    let rel = q.path.unwrap_or_default();
    let (root, entries) = blocking(&st, {
        let rel = rel.clone();
        move |t| {
            let info = t.get_run(&run)?.info;
            Ok((info.artifact_uri, t.list_artifacts(&run, &rel)?))
        }
    })
    .await?;
    // This endpoint gives paths relative to the run's root.
    let files: Vec<Value> = entries
        .into_iter()
        .map(|e| match e.file_size {
            Some(size) if !e.is_dir => json!({"path": e.path, "is_dir": false, "file_size": size}),
            _ => json!({"path": e.path, "is_dir": true}),
        })
        .collect();
    Ok(Json(json!({ "root_uri": root, "files": files })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths_name_a_run_and_a_relative_path() {
        assert_eq!(
            split_proxy_path("0/abc/artifacts/model/w.gguf").unwrap(),
            ("abc".into(), "model/w.gguf".into())
        );
        assert_eq!(
            split_proxy_path("0/abc/artifacts").unwrap(),
            ("abc".into(), "".into())
        );
        for bad in ["", "0", "0/abc", "0/abc/other/x"] {
            assert!(split_proxy_path(bad).is_err(), "{bad}");
        }
    }
}
