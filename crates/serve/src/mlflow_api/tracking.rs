//! MLflow tracking endpoints: experiments, runs, logging, search and metric history.
//! Unpack the fields, call the `Tracker`, wrap the answer in MLflow's shape.

use super::wire::{
    opt_bool, opt_i64, str_list, OutExperiment, OutMetric, OutRun, OutRunInfo, WireKeyValue,
    WireMetric,
};
use super::{blocking, fields, require, tracking_principal, MlResult, MlflowError, MlflowState};
use crate::auth::Caller;
use axum::extract::{Request, State};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hangar_registry::Role;
use hangar_track::{
    KeyValue, LogBatch, NewRun, RunStatus, SearchExperiments, SearchRuns, Tracker, ViewType,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

pub(super) fn routes(r: Router<MlflowState>, p: &str) -> Router<MlflowState> {
    r.route(&format!("{p}/experiments/create"), post(create_experiment))
        .route(&format!("{p}/experiments/get"), get(get_experiment))
        .route(
            &format!("{p}/experiments/get-by-name"),
            get(get_experiment_by_name),
        )
        .route(
            &format!("{p}/experiments/search"),
            post(search_experiments).get(search_experiments),
        )
        .route(&format!("{p}/experiments/list"), get(search_experiments))
        .route(&format!("{p}/experiments/update"), post(update_experiment))
        .route(&format!("{p}/experiments/delete"), post(delete_experiment))
        .route(
            &format!("{p}/experiments/restore"),
            post(restore_experiment),
        )
        .route(
            &format!("{p}/experiments/set-experiment-tag"),
            post(set_experiment_tag),
        )
        .route(&format!("{p}/runs/create"), post(create_run))
        .route(&format!("{p}/runs/get"), get(get_run))
        .route(&format!("{p}/runs/update"), post(update_run))
        .route(&format!("{p}/runs/delete"), post(delete_run))
        .route(&format!("{p}/runs/restore"), post(restore_run))
        .route(&format!("{p}/runs/search"), post(search_runs))
        .route(&format!("{p}/runs/log-metric"), post(log_metric))
        .route(&format!("{p}/runs/log-parameter"), post(log_param))
        .route(&format!("{p}/runs/set-tag"), post(set_tag))
        .route(&format!("{p}/runs/delete-tag"), post(delete_tag))
        .route(&format!("{p}/runs/log-batch"), post(log_batch))
        .route(&format!("{p}/runs/log-inputs"), post(log_inputs))
        .route(&format!("{p}/metrics/get-history"), get(get_metric_history))
        .route(
            &format!("{p}/logged-models/search"),
            post(search_logged_models),
        )
}

type Reply = MlResult<Json<Value>>;

/// Parses the fields, checks the role, runs `f` on a blocking thread.
async fn handle<T, F>(
    st: MlflowState,
    caller: Caller,
    req: Request,
    needed: Role,
    action: &'static str,
    f: F,
) -> Reply
where
    T: DeserializeOwned + Send + 'static,
    F: FnOnce(&Tracker, T) -> MlResult<Value> + Send + 'static,
{
    let who = tracking_principal(&st, &caller).await?;
    require(&who, needed, action)?;
    let body: T = fields(&st, req).await?;
    blocking(&st, move |t| f(t, body)).await.map(Json)
}

fn need(v: Option<String>, field: &str) -> MlResult<String> {
    v.filter(|s| !s.is_empty())
        .ok_or_else(|| MlflowError::missing(field))
}

fn kvs(items: Vec<WireKeyValue>, what: &str) -> MlResult<Vec<KeyValue>> {
    items
        .into_iter()
        .map(|kv| kv.into_kv(what).map_err(MlflowError::invalid))
        .collect()
}

/// `run_id`, or the older `run_uuid`.
fn run_id_of(run_id: Option<String>, run_uuid: Option<String>) -> MlResult<String> {
    need(run_id.filter(|s| !s.is_empty()).or(run_uuid), "run_id")
}

fn view_of(v: Option<Value>) -> MlResult<ViewType> {
    match v {
        None | Some(Value::Null) => Ok(ViewType::ActiveOnly),
        Some(Value::String(s)) => Ok(ViewType::parse(&s)?),
        Some(Value::Number(n)) => Ok(ViewType::parse(&n.to_string())?),
        Some(other) => Err(MlflowError::invalid(format!("invalid view type {other}"))),
    }
}

fn max_results(v: Option<i64>) -> MlResult<Option<usize>> {
    match v {
        None => Ok(None),
        Some(n) if n >= 1 => Ok(Some(n as usize)),
        Some(n) => Err(MlflowError::invalid(format!(
            "max_results must be a positive integer, got {n}"
        ))),
    }
}

// ---- experiments ----

#[derive(Deserialize)]
struct CreateExperiment {
    name: Option<String>,
    artifact_location: Option<String>,
    #[serde(default)]
    tags: Vec<WireKeyValue>,
}

async fn create_experiment(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "creating an experiment",
        |t, b: CreateExperiment| {
            let name = need(b.name, "name")?;
            let tags = kvs(b.tags, "tag")?;
            let id = t.create_experiment(&name, b.artifact_location.as_deref(), &tags)?;
            Ok(json!({ "experiment_id": id }))
        },
    )
    .await
}

#[derive(Deserialize)]
struct ExperimentId {
    experiment_id: Option<String>,
}

async fn get_experiment(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Reader,
        "reading experiments",
        |t, b: ExperimentId| {
            let id = need(b.experiment_id, "experiment_id")?;
            let exp = t.get_experiment(&id).map_err(|e| match e {
                hangar_track::TrackError::Invalid(_) => {
                    MlflowError::not_found(format!("no experiment with id={id}"))
                }
                e => e.into(),
            })?;
            Ok(json!({ "experiment": OutExperiment::from(exp) }))
        },
    )
    .await
}

#[derive(Deserialize)]
struct ExperimentName {
    experiment_name: Option<String>,
}

async fn get_experiment_by_name(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Reader,
        "reading experiments",
        |t, b: ExperimentName| {
            let name = need(b.experiment_name, "experiment_name")?;
            match t.get_experiment_by_name(&name)? {
                Some(e) => Ok(json!({ "experiment": OutExperiment::from(e) })),
                None => Err(MlflowError::not_found(format!(
                    "could not find experiment with name '{name}'"
                ))),
            }
        },
    )
    .await
}

#[derive(Deserialize)]
struct SearchExperimentsBody {
    #[serde(default, deserialize_with = "opt_i64")]
    max_results: Option<i64>,
    page_token: Option<String>,
    filter: Option<String>,
    #[serde(default, deserialize_with = "str_list")]
    order_by: Vec<String>,
    view_type: Option<Value>,
}

async fn search_experiments(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Reader,
        "reading experiments",
        |t, b: SearchExperimentsBody| {
            let (exps, next) = t.search_experiments(&SearchExperiments {
                filter: b.filter.unwrap_or_default(),
                order_by: b.order_by,
                max_results: max_results(b.max_results)?,
                page_token: b.page_token,
                view: view_of(b.view_type)?,
            })?;
            let exps: Vec<OutExperiment> = exps.into_iter().map(Into::into).collect();
            let mut out = json!({ "experiments": exps });
            if let Some(n) = next {
                out["next_page_token"] = json!(n);
            }
            Ok(out)
        },
    )
    .await
}

#[derive(Deserialize)]
struct UpdateExperiment {
    experiment_id: Option<String>,
    new_name: Option<String>,
}

async fn update_experiment(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "renaming an experiment",
        |t, b: UpdateExperiment| {
            let id = need(b.experiment_id, "experiment_id")?;
            if let Some(name) = b.new_name {
                t.rename_experiment(&id, &name)?;
            }
            Ok(json!({}))
        },
    )
    .await
}

async fn delete_experiment(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "deleting an experiment",
        |t, b: ExperimentId| {
            t.delete_experiment(&need(b.experiment_id, "experiment_id")?)?;
            Ok(json!({}))
        },
    )
    .await
}

async fn restore_experiment(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "restoring an experiment",
        |t, b: ExperimentId| {
            t.restore_experiment(&need(b.experiment_id, "experiment_id")?)?;
            Ok(json!({}))
        },
    )
    .await
}

#[derive(Deserialize)]
struct ExperimentTag {
    experiment_id: Option<String>,
    key: Option<String>,
    value: Option<String>,
}

async fn set_experiment_tag(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "tagging an experiment",
        |t, b: ExperimentTag| {
            t.set_experiment_tag(
                &need(b.experiment_id, "experiment_id")?,
                &need(b.key, "key")?,
                &b.value.unwrap_or_default(),
            )?;
            Ok(json!({}))
        },
    )
    .await
}

// ---- runs ----

#[derive(Deserialize)]
struct CreateRun {
    experiment_id: Option<String>,
    user_id: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    start_time: Option<i64>,
    #[serde(default)]
    tags: Vec<WireKeyValue>,
    run_name: Option<String>,
}

async fn create_run(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "creating a run",
        |t, b: CreateRun| {
            let run = t.create_run(&NewRun {
                experiment_id: b.experiment_id.unwrap_or_else(|| "0".into()),
                run_name: b.run_name,
                user_id: b.user_id,
                start_time: b.start_time,
                tags: kvs(b.tags, "tag")?,
            })?;
            Ok(json!({ "run": OutRun::from(run) }))
        },
    )
    .await
}

#[derive(Deserialize)]
struct RunId {
    run_id: Option<String>,
    run_uuid: Option<String>,
}

async fn get_run(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, Role::Reader, "reading runs", |t, b: RunId| {
        let run = t.get_run(&run_id_of(b.run_id, b.run_uuid)?)?;
        Ok(json!({ "run": OutRun::from(run) }))
    })
    .await
}

#[derive(Deserialize)]
struct UpdateRun {
    run_id: Option<String>,
    run_uuid: Option<String>,
    status: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    end_time: Option<i64>,
    run_name: Option<String>,
}

async fn update_run(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "updating a run",
        |t, b: UpdateRun| {
            let id = run_id_of(b.run_id, b.run_uuid)?;
            let status = b.status.as_deref().map(RunStatus::parse).transpose()?;
            let info = t.update_run(&id, status, b.end_time, b.run_name.as_deref())?;
            Ok(json!({ "run_info": OutRunInfo::from(info) }))
        },
    )
    .await
}

async fn delete_run(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, Role::Writer, "deleting a run", |t, b: RunId| {
        t.delete_run(&run_id_of(b.run_id, b.run_uuid)?)?;
        Ok(json!({}))
    })
    .await
}

async fn restore_run(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "restoring a run",
        |t, b: RunId| {
            t.restore_run(&run_id_of(b.run_id, b.run_uuid)?)?;
            Ok(json!({}))
        },
    )
    .await
}

#[derive(Deserialize)]
struct SearchRunsBody {
    #[serde(default, deserialize_with = "str_list")]
    experiment_ids: Vec<String>,
    filter: Option<String>,
    run_view_type: Option<Value>,
    #[serde(default, deserialize_with = "opt_i64")]
    max_results: Option<i64>,
    #[serde(default, deserialize_with = "str_list")]
    order_by: Vec<String>,
    page_token: Option<String>,
}

async fn search_runs(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Reader,
        "reading runs",
        |t, b: SearchRunsBody| {
            let page = t.search_runs(&SearchRuns {
                experiment_ids: b.experiment_ids,
                filter: b.filter.unwrap_or_default(),
                order_by: b.order_by,
                max_results: max_results(b.max_results)?,
                page_token: b.page_token,
                view: view_of(b.run_view_type)?,
            })?;
            let runs: Vec<OutRun> = page.runs.into_iter().map(Into::into).collect();
            let mut out = json!({ "runs": runs });
            if let Some(n) = page.next_page_token {
                out["next_page_token"] = json!(n);
            }
            Ok(out)
        },
    )
    .await
}

// ---- logging ----

#[derive(Deserialize)]
struct LogMetric {
    run_id: Option<String>,
    run_uuid: Option<String>,
    #[serde(flatten)]
    metric: WireMetric,
}

async fn log_metric(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "logging to a run",
        |t, b: LogMetric| {
            let id = run_id_of(b.run_id, b.run_uuid)?;
            let m = b.metric.into_metric().map_err(MlflowError::invalid)?;
            t.log_metric(&id, &m.key, m.value, m.timestamp, m.step)?;
            Ok(json!({}))
        },
    )
    .await
}

#[derive(Deserialize)]
struct KeyValueBody {
    run_id: Option<String>,
    run_uuid: Option<String>,
    key: Option<String>,
    value: Option<Value>,
}

impl KeyValueBody {
    fn split(self, what: &str) -> MlResult<(String, KeyValue)> {
        let id = run_id_of(self.run_id, self.run_uuid)?;
        let kv = WireKeyValue {
            key: Some(need(self.key, "key")?),
            value: self.value,
        }
        .into_kv(what)
        .map_err(MlflowError::invalid)?;
        Ok((id, kv))
    }
}

async fn log_param(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "logging to a run",
        |t, b: KeyValueBody| {
            let (id, kv) = b.split("param")?;
            t.log_param(&id, &kv.key, &kv.value)?;
            Ok(json!({}))
        },
    )
    .await
}

async fn set_tag(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "tagging a run",
        |t, b: KeyValueBody| {
            let (id, kv) = b.split("tag")?;
            t.set_tag(&id, &kv.key, &kv.value)?;
            Ok(json!({}))
        },
    )
    .await
}

async fn delete_tag(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "tagging a run",
        |t, b: KeyValueBody| {
            let id = run_id_of(b.run_id, b.run_uuid)?;
            t.delete_tag(&id, &need(b.key, "key")?)?;
            Ok(json!({}))
        },
    )
    .await
}

#[derive(Deserialize)]
struct LogBatchBody {
    run_id: Option<String>,
    #[serde(default)]
    metrics: Vec<WireMetric>,
    #[serde(default)]
    params: Vec<WireKeyValue>,
    #[serde(default)]
    tags: Vec<WireKeyValue>,
}

async fn log_batch(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "logging to a run",
        |t, b: LogBatchBody| {
            let id = need(b.run_id, "run_id")?;
            let metrics = b
                .metrics
                .into_iter()
                .map(|m| m.into_metric().map_err(MlflowError::invalid))
                .collect::<MlResult<Vec<_>>>()?;
            t.log_batch(
                &id,
                &LogBatch {
                    metrics,
                    params: kvs(b.params, "param")?,
                    tags: kvs(b.tags, "tag")?,
                },
            )?;
            Ok(json!({}))
        },
    )
    .await
}

/// Dataset inputs are accepted and not stored (Hangar tracks no datasets yet); the run
/// must exist so that typos still fail.
async fn log_inputs(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Writer,
        "logging to a run",
        |t, b: RunId| {
            t.get_run(&run_id_of(b.run_id, b.run_uuid)?)?;
            Ok(json!({}))
        },
    )
    .await
}

/// MLflow 3's logged models are not tracked by Hangar: the search (which the client
/// makes when listing a run's artifacts) answers an empty page.
async fn search_logged_models(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(st, c, req, Role::Reader, "reading runs", |_t, _b: Value| {
        Ok(json!({ "models": [] }))
    })
    .await
}

#[derive(Deserialize)]
struct HistoryQuery {
    run_id: Option<String>,
    run_uuid: Option<String>,
    metric_key: Option<String>,
    page_token: Option<String>,
    #[serde(default, deserialize_with = "opt_i64")]
    max_results: Option<i64>,
    /// Hangar extension: down-sample on the server to at most this many points.
    #[serde(default, deserialize_with = "opt_i64")]
    max_points: Option<i64>,
    #[serde(default, deserialize_with = "opt_bool")]
    #[allow(dead_code)]
    downsample: Option<bool>,
}

async fn get_metric_history(
    State(st): State<MlflowState>,
    Extension(c): Extension<Caller>,
    req: Request,
) -> Reply {
    handle(
        st,
        c,
        req,
        Role::Reader,
        "reading runs",
        |t, b: HistoryQuery| {
            let id = run_id_of(b.run_id, b.run_uuid)?;
            let key = need(b.metric_key, "metric_key")?;
            let max_points = match b.max_points {
                None => None,
                Some(n) if n >= 2 => Some(n as usize),
                Some(n) => {
                    return Err(MlflowError::invalid(format!(
                        "max_points must be at least 2, got {n}"
                    )))
                }
            };
            let points = t.metric_history(&id, &key, max_points)?;
            let offset = match b.page_token.as_deref().filter(|s| !s.is_empty()) {
                None => 0,
                Some(tok) => tok.parse::<usize>().map_err(|_| {
                    MlflowError::invalid(format!(
                        "invalid page_token {tok:?}; pass back next_page_token"
                    ))
                })?,
            };
            let limit = match b.max_results {
                None => usize::MAX,
                Some(n) if n >= 1 => n as usize,
                Some(n) => {
                    return Err(MlflowError::invalid(format!(
                        "max_results must be a positive integer, got {n}"
                    )))
                }
            };
            let total = points.len();
            let page: Vec<OutMetric> = points
                .into_iter()
                .skip(offset)
                .take(limit)
                .map(Into::into)
                .collect();
            let mut out = json!({ "metrics": page });
            if offset.saturating_add(limit) < total {
                out["next_page_token"] = json!((offset + limit).to_string());
            }
            Ok(out)
        },
    )
    .await
}
