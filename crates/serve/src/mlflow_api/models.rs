//! MLflow's model-registry calls mapped onto Hangar's registry. An MLflow registered
//! model is a registry model (its name and description, before it has versions, are
//! kept by the tracker); a model version created from `runs:/<run>/<path>` or
//! `mlflow-artifacts:/<exp>/<run>/artifacts/<path>` is a registry import of the run's
//! artifact files under that path (GGUF / safetensors and text companions; MLflow's
//! packaging files are left out), with the run id and source in its metadata; when
//! the run is tagged `hangar.base=name@N` (and optionally `hangar.derivation`), the
//! version's registry lineage is that base, that derivation and the run.
//! Stages map to registry stages (`Staging`/`Production`/`Archived`); aliases to
//! registry aliases. Registry roles apply: the caller's registry principal decides.
//! MLflow's prompt registry (registered models tagged `mlflow.prompt.is_prompt`) maps
//! onto the registry's prompts: see `prompts.rs`.

use super::{MlResult, MlflowError, MlflowState};
use crate::auth::Caller;
use crate::SharedRegistry;
use axum::extract::{Request, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hangar_registry::{ImportRequest, LineageSpec, Principal, Registry, VersionInfo};
use hangar_track::filter::{like_match, parse_filter_with, Comparator, Value as FValue};
use hangar_track::Tracker;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

pub(super) fn routes(r: Router<MlflowState>, p: &str) -> Router<MlflowState> {
    r.route(&format!("{p}/registered-models/create"), post(create_model))
        .route(&format!("{p}/registered-models/get"), get(get_model))
        .route(
            &format!("{p}/registered-models/update"),
            axum::routing::patch(update_model),
        )
        .route(
            &format!("{p}/registered-models/delete"),
            axum::routing::delete(delete_model),
        )
        .route(&format!("{p}/registered-models/search"), get(search_models))
        .route(
            &format!("{p}/registered-models/set-tag"),
            post(set_model_tag),
        )
        .route(
            &format!("{p}/registered-models/delete-tag"),
            axum::routing::delete(delete_model_tag),
        )
        .route(
            &format!("{p}/registered-models/get-latest-versions"),
            post(latest_versions).get(latest_versions),
        )
        .route(
            &format!("{p}/registered-models/alias"),
            post(set_alias).delete(delete_alias).get(get_by_alias),
        )
        .route(&format!("{p}/model-versions/create"), post(create_version))
        .route(&format!("{p}/model-versions/get"), get(get_version))
        .route(
            &format!("{p}/model-versions/update"),
            axum::routing::patch(update_version),
        )
        .route(
            &format!("{p}/model-versions/delete"),
            axum::routing::delete(delete_version),
        )
        .route(&format!("{p}/model-versions/search"), get(search_versions))
        .route(
            &format!("{p}/model-versions/transition-stage"),
            post(transition_stage),
        )
        .route(
            &format!("{p}/model-versions/get-download-uri"),
            get(download_uri),
        )
}

type Reply = MlResult<Json<Value>>;

/// Run tag naming the registry version a model was derived from (`name@N`).
const BASE_TAG: &str = "hangar.base";
/// Run tag naming how it was derived (`fine-tuned`, `quantized`, ...; default fine-tuned).
const DERIVATION_TAG: &str = "hangar.derivation";

/// Files MLflow writes next to a model that Hangar's registry does not hold.
const MLFLOW_PACKAGING: &[&str] = &[
    "MLmodel",
    "conda.yaml",
    "python_env.yaml",
    "requirements.txt",
    "registered_model_meta",
    "input_example.json",
    "serving_input_example.json",
];

/// Parses the fields, resolves the caller's registry principal, runs `f` with the
/// registry and the tracker on a blocking thread.
async fn handle<T, F>(st: MlflowState, caller: Caller, req: Request, f: F) -> Reply
where
    T: DeserializeOwned + Send + 'static,
    F: FnOnce(&mut Registry, &Tracker, &Principal, T) -> MlResult<Value> + Send + 'static,
{
    let Some(reg) = st.registry.clone() else {
        return Err(MlflowError {
            status: axum::http::StatusCode::NOT_FOUND,
            code: "ENDPOINT_NOT_FOUND",
            message: "the model registry is not mounted on this server (--no-registry-api)".into(),
        });
    };
    let body: T = super::fields(&st, req).await?;
    let tracker = st.tracker.clone();
    tokio::task::spawn_blocking(move || run_with(&reg, &tracker, &caller, body, f))
        .await
        .map_err(|e| MlflowError::internal(format!("registry task failed: {e}")))?
        .map(Json)
}

fn run_with<T, F>(
    reg: &SharedRegistry,
    tracker: &Arc<Tracker>,
    caller: &Caller,
    body: T,
    f: F,
) -> MlResult<Value>
where
    F: FnOnce(&mut Registry, &Tracker, &Principal, T) -> MlResult<Value>,
{
    let mut reg = reg.lock().unwrap_or_else(|e| e.into_inner());
    let who = match caller {
        Caller::ApiKey { .. } => Caller::api_key_principal(),
        Caller::Key(_) | Caller::RegistryToken(_) => {
            caller.principal().unwrap_or_else(Caller::api_key_principal)
        }
        Caller::Open { bearer } => reg.principal_for_network(bearer.as_deref())?,
    };
    f(&mut reg, tracker, &who, body)
}

fn need(v: Option<String>, field: &str) -> MlResult<String> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| MlflowError::missing(field))
}

fn version_ref(name: &str, version: &str) -> MlResult<String> {
    let v: u32 = version.trim().parse().map_err(|_| {
        MlflowError::invalid(format!("version {version:?} is not a version number"))
    })?;
    Ok(format!("{name}@{v}"))
}

/// MLflow's stage name for a registry stage.
pub(super) fn mlflow_stage(stage: Option<&str>) -> String {
    match stage {
        None => "None".into(),
        Some("staging") => "Staging".into(),
        Some("production") => "Production".into(),
        Some("archived") => "Archived".into(),
        Some(other) => other.into(),
    }
}

fn version_json(v: &VersionInfo) -> Value {
    let run_id = v
        .metadata
        .get("mlflow.run_id")
        .cloned()
        .or_else(|| v.lineage.as_ref().and_then(|l| l.run.clone()))
        .unwrap_or_default();
    let source = v
        .metadata
        .get("mlflow.source")
        .cloned()
        .unwrap_or_else(|| format!("models:/{}/{}", v.name, v.version));
    json!({
        "name": v.name,
        "version": v.version.to_string(),
        "creation_timestamp": v.created_at * 1000,
        "last_updated_timestamp": v.created_at * 1000,
        "user_id": v.created_by,
        "current_stage": mlflow_stage(v.stage.as_deref()),
        "description": v.metadata.get("mlflow.description").cloned().unwrap_or_default(),
        "source": source,
        "run_id": run_id,
        "status": "READY",
        "tags": v.tags.iter().map(|t| json!({"key": t, "value": ""})).collect::<Vec<_>>(),
        "aliases": v.aliases,
    })
}

/// The registered model `name`: from the registry if it has versions, else from the
/// tracker's record of the name; RESOURCE_DOES_NOT_EXIST if neither knows it.
fn model_json(reg: &Registry, t: &Tracker, who: &Principal, name: &str) -> MlResult<Value> {
    let record = t.model_name(name)?;
    let info = match reg.show_model(who, name) {
        Ok(i) => Some(i),
        Err(hangar_registry::RegistryError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if record.is_none() && info.as_ref().is_none_or(|i| i.versions.is_empty()) {
        return Err(MlflowError::not_found(format!(
            "registered model with name={name} not found"
        )));
    }
    let versions = info.as_ref().map(|i| i.versions.as_slice()).unwrap_or(&[]);
    let mut latest: BTreeMap<String, &VersionInfo> = BTreeMap::new();
    for v in versions {
        let stage = mlflow_stage(v.stage.as_deref());
        if latest.get(&stage).is_none_or(|o| o.version < v.version) {
            latest.insert(stage, v);
        }
    }
    let aliases: Vec<Value> = versions
        .iter()
        .flat_map(|v| {
            v.aliases
                .iter()
                .map(move |a| json!({"alias": a, "version": v.version.to_string()}))
        })
        .collect();
    let created = record
        .as_ref()
        .map(|r| r.creation_time)
        .or(info.as_ref().map(|i| i.created_at * 1000))
        .unwrap_or(0);
    let updated = versions
        .iter()
        .map(|v| v.created_at * 1000)
        .chain(record.as_ref().map(|r| r.last_updated_time))
        .max()
        .unwrap_or(created);
    Ok(json!({
        "name": name,
        "creation_timestamp": created,
        "last_updated_timestamp": updated,
        "description": record.map(|r| r.description).unwrap_or_default(),
        "latest_versions": latest.values().map(|v| version_json(v)).collect::<Vec<_>>(),
        "tags": model_tags(reg, t, who, name)?,
        "aliases": aliases,
    }))
}

/// A registered model's tags: its own, and `mlflow.prompt.is_prompt` for a prompt.
fn model_tags(reg: &Registry, t: &Tracker, who: &Principal, name: &str) -> MlResult<Value> {
    let mut tags: Vec<Value> = t
        .model_name_tags(name)?
        .into_iter()
        .filter(|(k, _)| k != super::prompts::IS_PROMPT)
        .map(|(k, v)| json!({"key": k, "value": v}))
        .collect();
    if super::prompts::is_prompt(reg, who, name)? {
        tags.push(json!({"key": super::prompts::IS_PROMPT, "value": "true"}));
    }
    Ok(Value::Array(tags))
}

#[derive(Deserialize)]
struct TagBody {
    name: Option<String>,
    key: Option<String>,
    value: Option<String>,
}

async fn set_model_tag(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: TagBody| {
        who.require(hangar_registry::Role::Writer, "tagging a registered model")?;
        let name = need(b.name, "name")?;
        let key = need(b.key, "key")?;
        model_json(reg, t, who, &name)?;
        t.set_model_name_tag(&name, &key, b.value.as_deref().unwrap_or(""))?;
        Ok(json!({}))
    })
    .await
}

async fn delete_model_tag(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: TagBody| {
        who.require(hangar_registry::Role::Writer, "tagging a registered model")?;
        let name = need(b.name, "name")?;
        let key = need(b.key, "key")?;
        model_json(reg, t, who, &name)?;
        if !t.delete_model_name_tag(&name, &key)? {
            return Err(MlflowError::not_found(format!(
                "registered model {name} has no tag {key:?}"
            )));
        }
        Ok(json!({}))
    })
    .await
}

#[derive(Deserialize)]
struct ModelBody {
    name: Option<String>,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<super::prompts::Tag>,
}

async fn create_model(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: ModelBody| {
        who.require(hangar_registry::Role::Writer, "registering a model")?;
        let name = need(b.name, "name")?;
        hangar_registry::names::validate_model_name(&name)?;
        let has_versions = matches!(reg.show_model(who, &name), Ok(i) if !i.versions.is_empty());
        if has_versions {
            return Err(MlflowError {
                status: axum::http::StatusCode::BAD_REQUEST,
                code: "RESOURCE_ALREADY_EXISTS",
                message: format!("registered model (name={name}) already exists"),
            });
        }
        if super::prompts::tagged_prompt(&b.tags) {
            reg.reserve_prompt(who, &name)?;
        }
        t.create_model_name(&name, b.description.as_deref().unwrap_or(""))?;
        for tag in b.tags.iter().filter(|x| x.key != super::prompts::IS_PROMPT) {
            t.set_model_name_tag(&name, &tag.key, &tag.value)?;
        }
        Ok(json!({ "registered_model": model_json(reg, t, who, &name)? }))
    })
    .await
}

async fn get_model(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: ModelBody| {
        let name = need(b.name, "name")?;
        Ok(json!({ "registered_model": model_json(reg, t, who, &name)? }))
    })
    .await
}

async fn update_model(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: ModelBody| {
        who.require(hangar_registry::Role::Writer, "updating a registered model")?;
        let name = need(b.name, "name")?;
        model_json(reg, t, who, &name)?;
        if let Some(d) = b.description {
            t.describe_model_name(&name, &d)?;
        }
        Ok(json!({ "registered_model": model_json(reg, t, who, &name)? }))
    })
    .await
}

async fn delete_model(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: ModelBody| {
        who.require(hangar_registry::Role::Writer, "deleting a registered model")?;
        let name = need(b.name, "name")?;
        model_json(reg, t, who, &name)?;
        if let Ok(info) = reg.show_model(who, &name) {
            for v in &info.versions {
                reg.delete(who, &format!("{name}@{}", v.version), false)?;
            }
        }
        t.delete_model_name(&name)?;
        Ok(json!({}))
    })
    .await
}

#[derive(Deserialize)]
struct SearchBody {
    filter: Option<String>,
    #[serde(default, deserialize_with = "super::wire::opt_i64")]
    max_results: Option<i64>,
    page_token: Option<String>,
}

/// Whether `value` satisfies one parsed clause.
fn clause_matches(c: &hangar_track::filter::Clause, value: &str) -> bool {
    match (&c.value, c.comparator) {
        (FValue::Str(s), Comparator::Eq) => value == s,
        (FValue::Str(s), Comparator::Ne) => value != s,
        (FValue::Str(s), Comparator::Like) => like_match(s, value, false),
        (FValue::Str(s), Comparator::ILike) => like_match(s, value, true),
        (FValue::List(l), Comparator::In) => l.iter().any(|x| x == value),
        (FValue::List(l), Comparator::NotIn) => l.iter().all(|x| x != value),
        (FValue::Number(n), cmp) => value.parse::<f64>().is_ok_and(|v| match cmp {
            Comparator::Eq => v == *n,
            Comparator::Ne => v != *n,
            Comparator::Lt => v < *n,
            Comparator::Le => v <= *n,
            Comparator::Gt => v > *n,
            Comparator::Ge => v >= *n,
            _ => false,
        }),
        _ => false,
    }
}

/// Offset paging over an already-filtered list.
fn page<T: Clone>(
    items: &[T],
    max: Option<i64>,
    token: Option<&str>,
) -> MlResult<(Vec<T>, Option<String>)> {
    let max = match max {
        None => 100,
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            return Err(MlflowError::invalid(format!(
                "max_results must be positive, got {n}"
            )))
        }
    };
    let offset = match token.filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => t
            .parse::<usize>()
            .map_err(|_| MlflowError::invalid(format!("invalid page_token {t:?}")))?,
    };
    let out: Vec<T> = items.iter().skip(offset).take(max).cloned().collect();
    let next = (offset + max < items.len()).then(|| (offset + max).to_string());
    Ok((out, next))
}

async fn search_models(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: SearchBody| {
        let clauses = parse_filter_with(b.filter.as_deref().unwrap_or(""), &["name"], &[])?;
        let mut names: Vec<String> = reg
            .list(who)?
            .into_iter()
            .filter(|m| m.versions > 0)
            .map(|m| m.name)
            .collect();
        names.extend(t.model_names()?.into_iter().map(|m| m.name));
        names.sort();
        names.dedup();
        names.retain(|n| clauses.iter().all(|c| clause_matches(c, n)));
        let (names, next) = page(&names, b.max_results, b.page_token.as_deref())?;
        let models = names
            .iter()
            .map(|n| model_json(reg, t, who, n))
            .collect::<MlResult<Vec<_>>>()?;
        let mut out = json!({ "registered_models": models });
        if let Some(n) = next {
            out["next_page_token"] = json!(n);
        }
        Ok(out)
    })
    .await
}

#[derive(Deserialize)]
struct LatestBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "super::wire::str_list")]
    stages: Vec<String>,
}

async fn latest_versions(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: LatestBody| {
        let name = need(b.name, "name")?;
        let model = model_json(reg, t, who, &name)?;
        let wanted: Vec<String> = b.stages.iter().map(|s| s.to_ascii_lowercase()).collect();
        let versions: Vec<Value> = model["latest_versions"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|v| {
                wanted.is_empty()
                    || v["current_stage"]
                        .as_str()
                        .is_some_and(|s| wanted.contains(&s.to_ascii_lowercase()))
            })
            .collect();
        Ok(json!({ "model_versions": versions }))
    })
    .await
}

#[derive(Deserialize)]
struct AliasBody {
    name: Option<String>,
    alias: Option<String>,
    version: Option<Value>,
}

async fn set_alias(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: AliasBody| {
        let name = need(b.name, "name")?;
        let alias = need(b.alias, "alias")?;
        let version = match b.version {
            Some(Value::String(s)) => s,
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(MlflowError::missing("version")),
        };
        if super::prompts::is_prompt(reg, who, &name)? {
            reg.set_prompt_alias(who, &version_ref(&name, &version)?, &alias)?;
        } else {
            reg.set_alias(who, &version_ref(&name, &version)?, &alias)?;
        }
        Ok(json!({}))
    })
    .await
}

async fn delete_alias(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: AliasBody| {
        reg.remove_alias(who, &need(b.name, "name")?, &need(b.alias, "alias")?)?;
        Ok(json!({}))
    })
    .await
}

async fn get_by_alias(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: AliasBody| {
        let name = need(b.name, "name")?;
        let alias = need(b.alias, "alias")?;
        if super::prompts::is_prompt(reg, who, &name)? {
            let p = reg.prompt(who, &format!("{name}@{alias}"))?;
            return Ok(json!({ "model_version": super::prompts::version_json(&p) }));
        }
        let v = reg.show(who, &format!("{name}@{alias}"))?;
        if !v.aliases.contains(&alias) {
            return Err(MlflowError::not_found(format!(
                "registered model {name} has no alias {alias:?}"
            )));
        }
        Ok(json!({ "model_version": version_json(&v) }))
    })
    .await
}

#[derive(Deserialize)]
struct CreateVersion {
    name: Option<String>,
    source: Option<String>,
    run_id: Option<String>,
    description: Option<String>,
    #[serde(default)]
    tags: Vec<super::prompts::Tag>,
}

/// `runs:/<run>/<path>` or `mlflow-artifacts:/<exp>/<run>/artifacts/<path>` → (run, path).
fn parse_source(source: &str) -> MlResult<(String, String)> {
    let bad = || {
        MlflowError::invalid(format!(
            "model source {source:?} is not a run's artifacts; register `runs:/<run id>/<path>` (files logged to a run of this server)"
        ))
    };
    if let Some(rest) = source.strip_prefix("runs:/") {
        let (run, path) = rest
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((rest, ""));
        if run.is_empty() {
            return Err(bad());
        }
        return Ok((run.to_string(), path.trim_matches('/').to_string()));
    }
    let rest = source
        .strip_prefix("mlflow-artifacts:")
        .map(|r| r.trim_start_matches('/'))
        .ok_or_else(bad)?;
    let parts: Vec<&str> = rest.splitn(4, '/').collect();
    match parts.as_slice() {
        [_exp, run, "artifacts", tail @ ..] if !run.is_empty() => Ok((
            run.to_string(),
            tail.first()
                .copied()
                .unwrap_or("")
                .trim_matches('/')
                .to_string(),
        )),
        _ => Err(bad()),
    }
}

/// Every file under `dir` of a run, recursively (run-relative paths).
fn files_under(t: &Tracker, run: &str, dir: &str) -> MlResult<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_string()];
    while let Some(d) = todo.pop() {
        for e in t.list_artifacts(run, &d)? {
            if e.is_dir {
                todo.push(e.path);
            } else {
                out.push(e.path);
            }
        }
    }
    Ok(out)
}

async fn create_version(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, t, who, b: CreateVersion| {
        who.require(hangar_registry::Role::Writer, "creating a model version")?;
        let name = need(b.name, "name")?;
        if super::prompts::is_prompt(reg, who, &name)? {
            return super::prompts::create_version(reg, who, name, b.description, &b.tags);
        }
        let source = need(b.source, "source")?;
        let (run, dir) = parse_source(&source)?;
        if let Some(r) = b.run_id.as_deref().filter(|r| !r.is_empty()) {
            if r != run {
                return Err(MlflowError::invalid(format!(
                    "run_id {r} does not match the run of source {source:?}"
                )));
            }
        }
        let run_tags = t.get_run(&run)?.tags;
        let tag = |k: &str| run_tags.iter().find(|t| t.key == k).map(|t| t.value.clone());
        // Registry lineage needs a base version: a run tagged `hangar.base` (`name@N`)
        // records it, with the run, as the version's lineage.
        let lineage = tag(BASE_TAG).map(|base| LineageSpec {
            base,
            derivation: tag(DERIVATION_TAG).unwrap_or_else(|| "fine-tuned".into()),
            run: Some(run.clone()),
        });
        let files: Vec<String> = files_under(t, &run, &dir)?
            .into_iter()
            .filter(|f| {
                let base = f.rsplit('/').next().unwrap_or(f);
                !MLFLOW_PACKAGING.contains(&base)
            })
            .collect();
        if files.is_empty() {
            return Err(MlflowError::invalid(format!(
                "run {run} has no model files under {dir:?}; log a GGUF or safetensors model (and its config/tokenizer) there first"
            )));
        }
        let tmp = t.root().join(format!("tmp-register-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let result = (|| -> MlResult<Value> {
            for f in &files {
                let rel = f.strip_prefix(&dir).unwrap_or(f).trim_start_matches('/');
                let dest = tmp.join(rel);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| MlflowError::internal(format!("staging {rel}: {e}")))?;
                }
                std::fs::write(&dest, t.get_artifact(&run, f)?)
                    .map_err(|e| MlflowError::internal(format!("staging {rel}: {e}")))?;
            }
            let mut metadata = BTreeMap::new();
            metadata.insert("mlflow.run_id".to_string(), run.clone());
            metadata.insert("mlflow.source".to_string(), source.clone());
            if let Some(d) = b.description.filter(|d| !d.is_empty()) {
                metadata.insert("mlflow.description".to_string(), d);
            }
            let out = reg
                .import(
                    who,
                    &ImportRequest {
                        path: tmp.clone(),
                        name: name.clone(),
                        metadata,
                        lineage,
                        ..Default::default()
                    },
                )
                .map_err(|e| match e {
                    hangar_registry::RegistryError::Refused { .. } => MlflowError::invalid(format!(
                        "{e}; the registry accepts GGUF and safetensors models with text companions (config, tokenizer, template)"
                    )),
                    e => e.into(),
                })?;
            let v = reg.show(who, &format!("{name}@{}", out.version))?;
            Ok(json!({ "model_version": version_json(&v) }))
        })();
        let _ = std::fs::remove_dir_all(&tmp);
        result
    })
    .await
}

#[derive(Deserialize)]
struct VersionBody {
    name: Option<String>,
    version: Option<Value>,
    stage: Option<String>,
    description: Option<String>,
}

impl VersionBody {
    fn reference(&self) -> MlResult<String> {
        let name = need(self.name.clone(), "name")?;
        let version = match &self.version {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return Err(MlflowError::missing("version")),
        };
        version_ref(&name, &version)
    }
}

async fn get_version(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: VersionBody| {
        let reference = b.reference()?;
        if super::prompts::is_prompt(reg, who, b.name.as_deref().unwrap_or_default())? {
            let p = reg.prompt(who, &reference)?;
            return Ok(json!({ "model_version": super::prompts::version_json(&p) }));
        }
        let v = reg.show(who, &reference)?;
        Ok(json!({ "model_version": version_json(&v) }))
    })
    .await
}

async fn update_version(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: VersionBody| {
        let v = reg.show(who, &b.reference()?)?;
        if b.description.is_some() {
            return Err(MlflowError::invalid(
                "Hangar registry versions are immutable: a description can only be given when the version is created",
            ));
        }
        Ok(json!({ "model_version": version_json(&v) }))
    })
    .await
}

async fn delete_version(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: VersionBody| {
        reg.delete(who, &b.reference()?, false)?;
        Ok(json!({}))
    })
    .await
}

async fn transition_stage(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: VersionBody| {
        let r = b.reference()?;
        let stage = need(b.stage.clone(), "stage")?;
        let v = match stage.to_ascii_lowercase().as_str() {
            "production" => reg.promote(who, &r, "production")?,
            "staging" => reg.promote(who, &r, "staging")?,
            "archived" => reg.demote(who, &r, Some("archived"))?,
            "none" => {
                return Err(MlflowError::invalid(
                    "Hangar's registry cannot clear a version's stage; transition it to Archived instead",
                ))
            }
            other => {
                return Err(MlflowError::invalid(format!(
                    "unknown stage {other:?}: use Staging, Production or Archived"
                )))
            }
        };
        Ok(json!({ "model_version": version_json(&v) }))
    })
    .await
}

async fn download_uri(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: VersionBody| {
        let v = reg.show(who, &b.reference()?)?;
        Ok(json!({ "artifact_uri": version_json(&v)["source"] }))
    })
    .await
}

async fn search_versions(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, |reg, _t, who, b: SearchBody| {
        let clauses = parse_filter_with(
            b.filter.as_deref().unwrap_or(""),
            &["name", "run_id", "source", "version", "current_stage"],
            &[],
        )?;
        let mut all = Vec::new();
        for m in reg.list(who)? {
            if clauses
                .iter()
                .any(|c| c.key == "name" && !clause_matches(c, &m.name))
            {
                continue;
            }
            for v in reg.show_model(who, &m.name)?.versions {
                let j = version_json(&v);
                let ok = clauses.iter().all(|c| {
                    let field = j.get(c.key.as_str()).and_then(Value::as_str).unwrap_or("");
                    clause_matches(c, field)
                });
                if ok {
                    all.push(j);
                }
            }
        }
        let (versions, next) = page(&all, b.max_results, b.page_token.as_deref())?;
        let mut out = json!({ "model_versions": versions });
        if let Some(n) = next {
            out["next_page_token"] = json!(n);
        }
        Ok(out)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_name_a_run_and_a_folder() {
        assert_eq!(
            parse_source("runs:/abc/model").unwrap(),
            ("abc".into(), "model".into())
        );
        assert_eq!(
            parse_source("mlflow-artifacts:/0/abc/artifacts/model").unwrap(),
            ("abc".into(), "model".into())
        );
        assert_eq!(
            parse_source("runs:/abc").unwrap(),
            ("abc".into(), "".into())
        );
        for bad in [
            "s3://b/k",
            "models:/m/1",
            "runs:/",
            "mlflow-artifacts:/0/abc",
        ] {
            assert!(parse_source(bad).is_err(), "{bad}");
        }
    }
}
