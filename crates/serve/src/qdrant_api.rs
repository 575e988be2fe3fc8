//! Qdrant's REST API over Hangar's vector database, for the calls the official
//! `qdrant-client` makes: collections, points (upsert, query, search, scroll, count,
//! delete, retrieve), payload indexes and snapshots. Owns routing and wire shapes only
//! (Qdrant's `{"result", "status", "time"}` envelope and error body); every decision is
//! `hangar_vector`'s. Blocking work (fsync, search) runs on the blocking pool.
//!
//! | method | path |
//! | --- | --- |
//! | GET | `/collections`, `/collections/{c}`, `/collections/{c}/exists` |
//! | PUT / DELETE | `/collections/{c}` |
//! | PUT | `/collections/{c}/points?wait=true` (upsert: `points` or `batch`) |
//! | POST | `/collections/{c}/points` (retrieve), `/points/query`, `/points/search`, `/points/scroll`, `/points/count`, `/points/delete` |
//! | GET | `/collections/{c}/points/{id}` |
//! | PUT / DELETE | `/collections/{c}/index`, `/collections/{c}/index/{field}` |
//! | POST / GET | `/collections/{c}/snapshots` |
//! | GET / DELETE | `/collections/{c}/snapshots/{name}` (GET downloads) |
//! | PUT | `/collections/{c}/snapshots/recover` `{"location": "file:///..." or this server's snapshot URL}` |

use crate::error::{ApiError, ApiFormat};
use crate::gen::read_body;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use hangar_vector::{
    Collection, CollectionConfig, Distance, Filter, HnswParams, IndexKind, Point, PointId,
    Quantization, SearchRequest, SharedCollection, VectorDb, VectorError, WithPayload,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Instant;

/// The vector database behind these routes, shared between handlers.
pub type SharedVectorDb = Arc<VectorDb>;

#[derive(Clone)]
struct VectorState {
    app: Arc<AppState>,
    db: SharedVectorDb,
}

/// The Qdrant routes, merged into the server's router when a vector database is served.
pub(crate) fn routes(app: Arc<AppState>, db: SharedVectorDb) -> Router {
    Router::new()
        .route("/collections", get(list_collections))
        .route(
            "/collections/{c}",
            get(get_collection)
                .put(create_collection)
                .delete(delete_collection),
        )
        .route("/collections/{c}/exists", get(collection_exists))
        .route("/collections/{c}/points", put(upsert).post(retrieve))
        .route("/collections/{c}/points/query", post(query))
        .route("/collections/{c}/points/search", post(search))
        .route("/collections/{c}/points/scroll", post(scroll))
        .route("/collections/{c}/points/count", post(count))
        .route("/collections/{c}/points/delete", post(delete_points))
        .route("/collections/{c}/points/{id}", get(get_point))
        .route("/collections/{c}/index", put(create_index))
        .route(
            "/collections/{c}/index/{field}",
            axum::routing::delete(delete_index),
        )
        .route(
            "/collections/{c}/snapshots",
            post(create_snapshot).get(list_snapshots),
        )
        .route("/collections/{c}/snapshots/recover", put(recover_snapshot))
        .route(
            "/collections/{c}/snapshots/{name}",
            get(download_snapshot).delete(delete_snapshot),
        )
        .with_state(VectorState { app, db })
}

// ---- envelope and errors ----

/// Qdrant's error body.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub status: ErrorStatus,
    pub time: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorStatus {
    pub error: String,
}

impl ErrorBody {
    pub fn new(error: String, time: f64) -> Self {
        ErrorBody {
            status: ErrorStatus { error },
            time,
        }
    }
}

/// An error answered in Qdrant's format.
#[derive(Debug)]
struct QdrantError(ApiError);

impl From<ApiError> for QdrantError {
    fn from(e: ApiError) -> Self {
        QdrantError(e)
    }
}

impl From<VectorError> for QdrantError {
    fn from(e: VectorError) -> Self {
        let msg = e.to_string();
        QdrantError(match e {
            VectorError::CollectionNotFound(_)
            | VectorError::PointNotFound(_)
            | VectorError::SnapshotNotFound(_) => ApiError::not_found(msg),
            VectorError::CollectionExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", msg)
            }
            VectorError::BadName(_)
            | VectorError::WrongDimension { .. }
            | VectorError::Invalid(_) => ApiError::bad_request(msg),
            VectorError::Io { .. } | VectorError::Corrupt { .. } | VectorError::InUse(_) => {
                ApiError::internal(msg)
            }
        })
    }
}

impl IntoResponse for QdrantError {
    fn into_response(self) -> Response {
        self.0.render(ApiFormat::Qdrant)
    }
}

type Answer = Result<Response, QdrantError>;

fn bad(msg: impl Into<String>) -> QdrantError {
    QdrantError(ApiError::bad_request(msg))
}

fn ok(t0: Instant, result: impl Serialize) -> Answer {
    Ok(axum::Json(json!({
        "result": result,
        "status": "ok",
        "time": t0.elapsed().as_secs_f64(),
    }))
    .into_response())
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QdrantError> + Send + 'static,
) -> Result<T, QdrantError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QdrantError(ApiError::internal(format!("vector task failed: {e}"))))?
}

async fn body_json(
    st: &VectorState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Value, QdrantError> {
    let bytes = read_body(headers, body, st.app.cfg.max_body_bytes).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("request body is not valid JSON: {e}")))
}

fn collection(db: &VectorDb, name: &str) -> Result<SharedCollection, QdrantError> {
    Ok(db.get(name)?)
}

fn read(c: &SharedCollection) -> std::sync::RwLockReadGuard<'_, Collection> {
    c.read().unwrap_or_else(|e| e.into_inner())
}

fn write(c: &SharedCollection) -> std::sync::RwLockWriteGuard<'_, Collection> {
    c.write().unwrap_or_else(|e| e.into_inner())
}

#[derive(Deserialize, Default)]
struct WaitQuery {
    #[serde(default)]
    wait: Option<String>,
}

impl WaitQuery {
    fn wait(&self) -> bool {
        matches!(self.wait.as_deref(), Some("true") | Some("1") | Some(""))
    }
}

fn update_result(op: u64, wait: bool) -> Value {
    json!({"operation_id": op, "status": if wait { "completed" } else { "acknowledged" }})
}

// ---- request pieces ----

/// Present and not null.
fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.get(k).filter(|x| !x.is_null())
}

fn filter_of(v: &Value) -> Result<Option<Filter>, QdrantError> {
    field(v, "filter")
        .map(|f| Filter::from_json(f).map_err(QdrantError::from))
        .transpose()
}

fn with_payload(v: &Value, default: bool) -> Result<WithPayload, QdrantError> {
    let keys = |a: &Value| -> Result<Vec<String>, QdrantError> {
        serde_json::from_value(a.clone()).map_err(|_| bad("with_payload keys must be strings"))
    };
    Ok(match field(v, "with_payload") {
        None => {
            if default {
                WithPayload::All
            } else {
                WithPayload::None
            }
        }
        Some(Value::Bool(true)) => WithPayload::All,
        Some(Value::Bool(false)) => WithPayload::None,
        Some(a @ Value::Array(_)) => WithPayload::Include(keys(a)?),
        Some(o @ Value::Object(_)) => {
            if let Some(i) = field(o, "include") {
                WithPayload::Include(keys(i)?)
            } else if let Some(e) = field(o, "exclude") {
                WithPayload::Exclude(keys(e)?)
            } else {
                return Err(bad("with_payload object needs include or exclude"));
            }
        }
        Some(other) => return Err(bad(format!("with_payload {other} is not supported"))),
    })
}

fn with_vector(v: &Value) -> Result<bool, QdrantError> {
    match field(v, "with_vector") {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::Array(a)) if a.is_empty() => Ok(false),
        Some(Value::Array(a)) if a.iter().all(|x| x.as_str() == Some("")) => Ok(true),
        Some(other) => Err(bad(format!(
            "with_vector {other}: named vectors are not supported; use true or false"
        ))),
    }
}

fn vector_of(v: &Value, what: &str) -> Result<Vec<f32>, QdrantError> {
    match v {
        Value::Array(_) => serde_json::from_value(v.clone())
            .map_err(|_| bad(format!("{what} must be a list of numbers"))),
        Value::Object(o) if o.len() == 1 && o.contains_key("") => vector_of(&o[""], what),
        Value::Object(_) => Err(bad(format!(
            "{what}: named and sparse vectors are not supported; send a list of numbers"
        ))),
        other => Err(bad(format!(
            "{what} must be a list of numbers, got {other}"
        ))),
    }
}

fn usize_of(v: &Value, k: &str, default: usize) -> Result<usize, QdrantError> {
    match field(v, k) {
        None => Ok(default),
        Some(x) => x
            .as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| bad(format!("{k} must be a non-negative integer, got {x}"))),
    }
}

fn id_of(v: &Value) -> Result<PointId, QdrantError> {
    serde_json::from_value(v.clone()).map_err(|e| bad(format!("bad point id {v}: {e}")))
}

fn ids_of(v: &Value, k: &str) -> Result<Vec<PointId>, QdrantError> {
    match field(v, k) {
        Some(Value::Array(a)) => a.iter().map(id_of).collect(),
        _ => Err(bad(format!("{k} must be a list of point ids"))),
    }
}

fn search_request(
    v: &Value,
    vector: Vec<f32>,
    limit_default: usize,
) -> Result<SearchRequest, QdrantError> {
    let params = field(v, "params");
    let ef = params
        .and_then(|p| field(p, "hnsw_ef"))
        .map(|x| {
            x.as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| bad("params.hnsw_ef must be a positive integer"))
        })
        .transpose()?;
    let exact = params
        .and_then(|p| field(p, "exact"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let score_threshold = field(v, "score_threshold")
        .map(|x| {
            x.as_f64()
                .map(|f| f as f32)
                .ok_or_else(|| bad("score_threshold must be a number"))
        })
        .transpose()?;
    // `query: {"nearest": [...], "mmr": {"diversity", "candidates_limit"}}`
    let mmr = match field(v, "query").and_then(|q| field(q, "mmr")) {
        None | Some(Value::Null) => None,
        Some(m) => {
            let diversity = match field(m, "diversity") {
                None | Some(Value::Null) => 0.5,
                Some(x) => x
                    .as_f64()
                    .filter(|d| (0.0..=1.0).contains(d))
                    .ok_or_else(|| bad("mmr.diversity must be a number from 0.0 to 1.0"))?
                    as f32,
            };
            let candidates_limit = match field(m, "candidates_limit") {
                None | Some(Value::Null) => None,
                Some(x) => Some(
                    x.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| bad("mmr.candidates_limit must be a positive integer"))?,
                ),
            };
            Some(hangar_vector::Mmr {
                diversity,
                candidates_limit,
            })
        }
    };
    Ok(SearchRequest {
        mmr,
        vector,
        limit: usize_of(v, "limit", limit_default)?,
        offset: usize_of(v, "offset", 0)?,
        filter: filter_of(v)?,
        ef,
        exact,
        score_threshold,
        with_payload: with_payload(v, false)?,
        with_vector: with_vector(v)?,
    })
}

fn scored_json(points: Vec<hangar_vector::ScoredPoint>) -> Vec<Value> {
    points
        .into_iter()
        .map(|p| json!({"id": p.id, "version": 0, "score": p.score, "payload": p.payload, "vector": p.vector}))
        .collect()
}

fn records_json(records: Vec<hangar_vector::Record>) -> Vec<Value> {
    records
        .into_iter()
        .map(|r| json!({"id": r.id, "payload": r.payload, "vector": r.vector}))
        .collect()
}

// ---- collections ----

async fn list_collections(State(st): State<VectorState>) -> Answer {
    let t0 = Instant::now();
    let names: Vec<Value> = st
        .db
        .list()
        .into_iter()
        .map(|n| json!({"name": n}))
        .collect();
    ok(t0, json!({"collections": names}))
}

async fn collection_exists(State(st): State<VectorState>, Path(c): Path<String>) -> Answer {
    let t0 = Instant::now();
    ok(t0, json!({"exists": st.db.exists(&c)}))
}

fn distance_name(d: Distance) -> &'static str {
    match d {
        Distance::Cosine => "Cosine",
        Distance::Dot => "Dot",
        Distance::Euclid => "Euclid",
    }
}

fn kind_name(k: IndexKind) -> &'static str {
    match k {
        IndexKind::Keyword => "keyword",
        IndexKind::Integer => "integer",
        IndexKind::Float => "float",
        IndexKind::Bool => "bool",
    }
}

async fn get_collection(State(st): State<VectorState>, Path(c): Path<String>) -> Answer {
    let t0 = Instant::now();
    let info = blocking(move || Ok(read(&collection(&st.db, &c)?).info())).await?;
    let cfg = &info.config;
    let schema: serde_json::Map<String, Value> = info
        .payload_schema
        .iter()
        .map(|(k, (kind, n))| {
            (
                k.clone(),
                json!({"data_type": kind_name(*kind), "points": n}),
            )
        })
        .collect();
    ok(
        t0,
        json!({
            "status": "green",
            "optimizer_status": "ok",
            "indexed_vectors_count": info.graph_rows,
            "points_count": info.points_count,
            "segments_count": 1,
            "config": {
                "params": {
                    "vectors": {"size": cfg.dim, "distance": distance_name(cfg.distance)},
                    "shard_number": 1,
                    "replication_factor": 1,
                    "write_consistency_factor": 1,
                    "on_disk_payload": false
                },
                "hnsw_config": {
                    "m": cfg.hnsw.m,
                    "ef_construct": cfg.hnsw.ef_construct,
                    "full_scan_threshold": cfg.full_scan_threshold,
                    "max_indexing_threads": 1,
                    "on_disk": false
                },
                "optimizer_config": {
                    "deleted_threshold": 0.2,
                    "vacuum_min_vector_number": 0,
                    "default_segment_number": 1,
                    "flush_interval_sec": 60
                },
                "wal_config": {"wal_capacity_mb": 64, "wal_segments_ahead": 0},
                "quantization_config": match cfg.quantization {
                    Quantization::None => Value::Null,
                    Quantization::Int8 => json!({"scalar": {"type": "int8", "always_ram": true}}),
                }
            },
            "payload_schema": schema
        }),
    )
}

/// `PUT /collections/{c}` body -> a collection config.
fn collection_config(v: &Value) -> Result<CollectionConfig, QdrantError> {
    let vectors = field(v, "vectors").ok_or_else(|| {
        bad("vectors is required: {\"vectors\": {\"size\": N, \"distance\": \"Cosine\"}}")
    })?;
    // `{"": {...}}`: the unnamed vector spelled as a named one (LangChain does this).
    let vectors = match field(vectors, "") {
        Some(inner) if vectors.as_object().is_some_and(|o| o.len() == 1) => inner,
        _ => vectors,
    };
    let size = field(vectors, "size")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("vectors.size is required (named vectors are not supported)"))?;
    let distance = field(vectors, "distance")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("vectors.distance is required: Cosine, Dot or Euclid"))?;
    // LangChain sends an empty map for a dense-only collection.
    if field(v, "sparse_vectors").is_some_and(|s| match s {
        Value::Null => false,
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }) {
        return Err(bad("sparse vectors are not supported"));
    }
    let mut cfg = CollectionConfig::new(size as usize, Distance::parse(distance)?);
    for hnsw in [field(v, "hnsw_config"), field(vectors, "hnsw_config")]
        .into_iter()
        .flatten()
    {
        cfg.hnsw = HnswParams {
            m: usize_of(hnsw, "m", cfg.hnsw.m)?,
            ef_construct: usize_of(hnsw, "ef_construct", cfg.hnsw.ef_construct)?,
        };
        cfg.full_scan_threshold = usize_of(hnsw, "full_scan_threshold", cfg.full_scan_threshold)?;
    }
    for q in [
        field(v, "quantization_config"),
        field(vectors, "quantization_config"),
    ]
    .into_iter()
    .flatten()
    {
        match field(q, "scalar")
            .and_then(|s| field(s, "type"))
            .and_then(Value::as_str)
        {
            Some("int8") => cfg.quantization = Quantization::Int8,
            _ => return Err(bad(
                "only scalar int8 quantization is supported: {\"scalar\": {\"type\": \"int8\"}}",
            )),
        }
    }
    Ok(cfg)
}

async fn create_collection(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let v = body_json(&st, &headers, body).await?;
    let cfg = collection_config(&v)?;
    blocking(move || {
        st.db.create(&c, cfg)?;
        Ok(())
    })
    .await?;
    ok(t0, true)
}

async fn delete_collection(State(st): State<VectorState>, Path(c): Path<String>) -> Answer {
    let t0 = Instant::now();
    let existed = blocking(move || Ok(st.db.delete(&c)?)).await?;
    ok(t0, existed)
}

// ---- points ----

async fn upsert(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let wait = q.map(|Query(q)| q.wait()).unwrap_or(false);
    let v = body_json(&st, &headers, body).await?;
    let points: Vec<Point> = if let Some(list) = field(&v, "points") {
        let list = list
            .as_array()
            .ok_or_else(|| bad("points must be a list"))?;
        list.iter()
            .map(|p| {
                Ok(Point {
                    id: id_of(field(p, "id").ok_or_else(|| bad("every point needs an id"))?)?,
                    vector: vector_of(
                        field(p, "vector").ok_or_else(|| bad("every point needs a vector"))?,
                        "vector",
                    )?,
                    payload: payload_of(field(p, "payload"))?,
                })
            })
            .collect::<Result<_, QdrantError>>()?
    } else if let Some(b) = field(&v, "batch") {
        let ids = ids_of(b, "ids")?;
        let vectors = field(b, "vectors")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("batch.vectors must be a list of vectors"))?;
        let payloads = field(b, "payloads").and_then(Value::as_array);
        if vectors.len() != ids.len() || payloads.is_some_and(|p| p.len() != ids.len()) {
            return Err(bad(
                "batch.ids, batch.vectors and batch.payloads must have the same length",
            ));
        }
        ids.into_iter()
            .enumerate()
            .map(|(i, id)| {
                Ok(Point {
                    id,
                    vector: vector_of(&vectors[i], "vector")?,
                    payload: payload_of(payloads.and_then(|p| p.get(i)))?,
                })
            })
            .collect::<Result<_, QdrantError>>()?
    } else {
        return Err(bad(
            "upsert needs {\"points\": [...]} or {\"batch\": {...}}",
        ));
    };
    let op = blocking(move || {
        let c = collection(&st.db, &c)?;
        let mut g = write(&c);
        g.upsert(points, wait)?;
        Ok(g.len() as u64)
    })
    .await?;
    ok(t0, update_result(op, wait))
}

fn payload_of(v: Option<&Value>) -> Result<hangar_vector::Payload, QdrantError> {
    match v {
        None | Some(Value::Null) => Ok(Default::default()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(other) => Err(bad(format!("payload must be a JSON object, got {other}"))),
    }
}

async fn delete_points(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let wait = q.map(|Query(q)| q.wait()).unwrap_or(false);
    let v = body_json(&st, &headers, body).await?;
    let ids = field(&v, "points")
        .map(|_| ids_of(&v, "points"))
        .transpose()?;
    let filter = filter_of(&v)?;
    if ids.is_none() && filter.is_none() {
        return Err(bad(
            "delete needs {\"points\": [ids]} or {\"filter\": {...}}",
        ));
    }
    let op = blocking(move || {
        let c = collection(&st.db, &c)?;
        let mut g = write(&c);
        if let Some(ids) = ids {
            g.delete(ids, wait)?;
        }
        if let Some(f) = filter {
            g.delete_where(&f, wait)?;
        }
        Ok(g.len() as u64)
    })
    .await?;
    ok(t0, update_result(op, wait))
}

async fn retrieve(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let v = body_json(&st, &headers, body).await?;
    let ids = ids_of(&v, "ids")?;
    let wp = with_payload(&v, true)?;
    let wv = with_vector(&v)?;
    let recs = blocking(move || Ok(read(&collection(&st.db, &c)?).retrieve(&ids, &wp, wv))).await?;
    ok(t0, records_json(recs))
}

async fn get_point(State(st): State<VectorState>, Path((c, id)): Path<(String, String)>) -> Answer {
    let t0 = Instant::now();
    let id = PointId::parse(&id)?;
    let recs = blocking(move || {
        Ok(read(&collection(&st.db, &c)?).retrieve(&[id], &WithPayload::All, true))
    })
    .await?;
    match recs.into_iter().next() {
        Some(r) => ok(
            t0,
            json!({"id": r.id, "payload": r.payload, "vector": r.vector}),
        ),
        None => Err(VectorError::PointNotFound(id.to_string()).into()),
    }
}

async fn run_search(
    st: VectorState,
    c: String,
    v: Value,
    by_id: Option<PointId>,
    vector: Option<Vec<f32>>,
    limit_default: usize,
) -> Result<Vec<Value>, QdrantError> {
    blocking(move || {
        let col = collection(&st.db, &c)?;
        let g = read(&col);
        let vector = match (vector, by_id) {
            (Some(v), _) => v,
            (None, Some(id)) => g
                .retrieve(&[id], &WithPayload::None, true)
                .into_iter()
                .next()
                .and_then(|r| r.vector)
                .ok_or_else(|| VectorError::PointNotFound(id.to_string()))?,
            (None, None) => return Err(bad("a query vector is required")),
        };
        let mut req = search_request(&v, vector, limit_default)?;
        if let Some(id) = by_id {
            // Searching by a point's id leaves that point out, as Qdrant does.
            let not_self = Filter {
                must_not: vec![hangar_vector::Condition::HasId(vec![id])],
                ..Default::default()
            };
            req.filter = Some(match req.filter.take() {
                None => not_self,
                Some(f) => Filter {
                    must: vec![
                        hangar_vector::Condition::Filter(f),
                        hangar_vector::Condition::Filter(not_self),
                    ],
                    ..Default::default()
                },
            });
        }
        Ok(scored_json(g.search(&req)?))
    })
    .await
}

async fn query(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let v = body_json(&st, &headers, body).await?;
    if field(&v, "prefetch").is_some() {
        return Err(bad("prefetch (hybrid queries) is not supported"));
    }
    if field(&v, "using")
        .and_then(Value::as_str)
        .is_some_and(|u| !u.is_empty())
    {
        return Err(bad("named vectors (using) are not supported"));
    }
    let (vector, by_id) = match field(&v, "query") {
        None => {
            return Err(bad(
                "query is required: a vector, {\"nearest\": vector} or a point id",
            ))
        }
        Some(q @ Value::Array(_)) => (Some(vector_of(q, "query")?), None),
        Some(Value::Object(o)) if o.contains_key("nearest") => match &o["nearest"] {
            n @ Value::Array(_) => (Some(vector_of(n, "query.nearest")?), None),
            id => (None, Some(id_of(id)?)),
        },
        Some(id @ (Value::Number(_) | Value::String(_))) => (None, Some(id_of(id)?)),
        Some(other) => {
            return Err(bad(format!(
            "query {other} is not supported; use a vector, {{\"nearest\": vector}} or a point id"
        )))
        }
    };
    let points = run_search(st, c, v, by_id, vector, 10).await?;
    ok(t0, json!({"points": points}))
}

async fn search(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let v = body_json(&st, &headers, body).await?;
    let vector = match field(&v, "vector") {
        Some(Value::Object(o)) if o.contains_key("vector") => {
            if o.get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
            {
                return Err(bad("named vectors are not supported"));
            }
            vector_of(&o["vector"], "vector")?
        }
        Some(x) => vector_of(x, "vector")?,
        None => return Err(bad("vector is required")),
    };
    if field(&v, "limit").is_none() {
        return Err(bad("limit is required"));
    }
    ok(t0, run_search(st, c, v, None, Some(vector), 10).await?)
}

async fn scroll(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let v = body_json(&st, &headers, body).await?;
    if field(&v, "order_by").is_some() {
        return Err(bad("order_by is not supported; points scroll in id order"));
    }
    let filter = filter_of(&v)?;
    let offset = field(&v, "offset").map(id_of).transpose()?;
    let limit = usize_of(&v, "limit", 10)?;
    let wp = with_payload(&v, true)?;
    let wv = with_vector(&v)?;
    let (recs, next) = blocking(move || {
        Ok(read(&collection(&st.db, &c)?).scroll(filter.as_ref(), offset, limit, &wp, wv))
    })
    .await?;
    ok(
        t0,
        json!({"points": records_json(recs), "next_page_offset": next}),
    )
}

async fn count(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let v = body_json(&st, &headers, body).await?;
    let filter = filter_of(&v)?;
    let n = blocking(move || Ok(read(&collection(&st.db, &c)?).count(filter.as_ref()))).await?;
    ok(t0, json!({"count": n}))
}

// ---- payload indexes ----

async fn create_index(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let wait = q.map(|Query(q)| q.wait()).unwrap_or(false);
    let v = body_json(&st, &headers, body).await?;
    let key = field(&v, "field_name")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("field_name is required"))?
        .to_string();
    let kind = match field(&v, "field_schema") {
        Some(Value::String(s)) => IndexKind::parse(s)?,
        Some(o @ Value::Object(_)) => IndexKind::parse(
            field(o, "type")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("field_schema.type is required"))?,
        )?,
        _ => {
            return Err(bad(
                "field_schema is required: keyword, integer, float or bool",
            ))
        }
    };
    let op = blocking(move || {
        let c = collection(&st.db, &c)?;
        let mut g = write(&c);
        g.create_index(&key, kind, wait)?;
        Ok(g.len() as u64)
    })
    .await?;
    ok(t0, update_result(op, wait))
}

async fn delete_index(
    State(st): State<VectorState>,
    Path((c, key)): Path<(String, String)>,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let t0 = Instant::now();
    let wait = q.map(|Query(q)| q.wait()).unwrap_or(false);
    let op = blocking(move || {
        let c = collection(&st.db, &c)?;
        let mut g = write(&c);
        g.delete_index(&key, wait)?;
        Ok(g.len() as u64)
    })
    .await?;
    ok(t0, update_result(op, wait))
}

// ---- snapshots ----

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of a Unix time, as Qdrant prints snapshot times.
fn iso_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn snapshot_json(s: &hangar_vector::SnapshotInfo) -> Value {
    json!({"name": s.name, "creation_time": iso_time(s.created), "size": s.size, "checksum": null})
}

async fn create_snapshot(State(st): State<VectorState>, Path(c): Path<String>) -> Answer {
    let t0 = Instant::now();
    let info = blocking(move || Ok(write(&collection(&st.db, &c)?).create_snapshot()?)).await?;
    ok(t0, snapshot_json(&info))
}

async fn list_snapshots(State(st): State<VectorState>, Path(c): Path<String>) -> Answer {
    let t0 = Instant::now();
    let list = blocking(move || Ok(read(&collection(&st.db, &c)?).list_snapshots()?)).await?;
    ok(t0, list.iter().map(snapshot_json).collect::<Vec<_>>())
}

async fn download_snapshot(
    State(st): State<VectorState>,
    Path((c, name)): Path<(String, String)>,
) -> Answer {
    let bytes = blocking(move || {
        let path = read(&collection(&st.db, &c)?).snapshot_path(&name)?;
        std::fs::read(&path).map_err(|e| {
            QdrantError(ApiError::internal(format!(
                "reading {}: {e}",
                path.display()
            )))
        })
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn delete_snapshot(
    State(st): State<VectorState>,
    Path((c, name)): Path<(String, String)>,
) -> Answer {
    let t0 = Instant::now();
    blocking(move || Ok(read(&collection(&st.db, &c)?).delete_snapshot(&name)?)).await?;
    ok(t0, true)
}

/// A snapshot location: `file:///abs/path`, or a URL of a snapshot on this server
/// (`http://host/collections/{c}/snapshots/{name}`), resolved to a local file.
fn snapshot_location(db: &VectorDb, location: &str) -> Result<std::path::PathBuf, QdrantError> {
    if let Some(p) = location.strip_prefix("file://") {
        return Ok(std::path::PathBuf::from(p));
    }
    let rest = location
        .strip_prefix("http://")
        .or_else(|| location.strip_prefix("https://"))
        .ok_or_else(|| {
            bad(format!(
                "snapshot location {location:?}: use file:///path or this server's snapshot URL"
            ))
        })?;
    let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["collections", c, "snapshots", name] => {
            let col = collection(db, c)?;
            let p = read(&col).snapshot_path(name)?;
            Ok(p)
        }
        _ => Err(bad(format!(
            "snapshot location {location:?} is not a snapshot of this server (/collections/{{c}}/snapshots/{{name}}); downloading from elsewhere is not supported"
        ))),
    }
}

async fn recover_snapshot(
    State(st): State<VectorState>,
    Path(c): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Answer {
    let t0 = Instant::now();
    let v = body_json(&st, &headers, body).await?;
    let location = field(&v, "location")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("location is required"))?
        .to_string();
    blocking(move || {
        let path = snapshot_location(&st.db, &location)?;
        // Copy first: restoring may replace the folder the snapshot lives in.
        let tmp = st.db.root().join(format!(".restore-{c}.snapshot"));
        std::fs::copy(&path, &tmp)
            .map_err(|e| bad(format!("cannot read snapshot {}: {e}", path.display())))?;
        let r = st.db.restore(&c, &tmp);
        let _ = std::fs::remove_file(&tmp);
        Ok(r?)
    })
    .await?;
    ok(t0, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times_match_the_calendar() {
        assert_eq!(iso_time(0), "1970-01-01T00:00:00");
        assert_eq!(iso_time(951_782_400), "2000-02-29T00:00:00");
        assert_eq!(iso_time(1_700_000_000), "2023-11-14T22:13:20");
    }

    #[test]
    fn collection_bodies_become_configs_or_clear_errors() {
        let c = collection_config(&json!({"vectors": {"size": 4, "distance": "Dot"},
            "hnsw_config": {"m": 8, "ef_construct": 50},
            "quantization_config": {"scalar": {"type": "int8"}}}))
        .unwrap();
        assert_eq!(
            (c.dim, c.distance, c.hnsw.m, c.hnsw.ef_construct),
            (4, Distance::Dot, 8, 50)
        );
        assert_eq!(c.quantization, Quantization::Int8);
        let unnamed =
            collection_config(&json!({"vectors": {"": {"size": 3, "distance": "Euclid"}}}))
                .unwrap();
        assert_eq!((unnamed.dim, unnamed.distance), (3, Distance::Euclid));
        for bad_body in [
            json!({}),
            json!({"vectors": {"a": {"size": 4, "distance": "Dot"}}}),
            json!({"vectors": {"size": 4, "distance": "Manhattan"}}),
            json!({"vectors": {"size": 4, "distance": "Dot"}, "quantization_config": {"binary": {}}}),
        ] {
            assert!(collection_config(&bad_body).is_err(), "{bad_body}");
        }
    }
}
