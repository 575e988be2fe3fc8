//! Routes every server answers, whatever services it has: health probes, `/metrics`,
//! KServe server metadata (`/v2`) and the OpenAI model list (empty without a model).
//! Owns no service; reads the optional ones from `AppState`.

use crate::kserve::types::{Live, Ready, ServerMetadata};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

pub(crate) fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/health", get(ready))
        .route("/healthz", get(ready))
        .route("/livez", get(live))
        .route("/readyz", get(ready))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2", get(server_metadata))
        .route("/v1/models", get(crate::openai::models))
        .route("/metrics", get(metrics_text))
        .route("/v1/monitor/timeseries", get(timeseries))
        .with_state(state)
}

#[derive(serde::Deserialize)]
struct RangeQuery {
    /// How far back, in seconds (default 900, at most a day).
    seconds: Option<f64>,
}

#[derive(serde::Serialize)]
struct TimeseriesBody {
    interval_s: f64,
    samples: Vec<crate::timeseries::Sample>,
}

/// `GET /v1/monitor/timeseries?seconds=N`: the dashboard's history.
async fn timeseries(
    State(state): State<Arc<AppState>>,
    q: Result<axum::extract::Query<RangeQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let seconds = match q {
        Ok(axum::extract::Query(RangeQuery { seconds: Some(s) })) if s.is_finite() && s > 0.0 => {
            s.min(86_400.0)
        }
        Ok(axum::extract::Query(RangeQuery { seconds: None })) => 900.0,
        Ok(_) | Err(_) => {
            return crate::error::ApiError::param(
                "seconds",
                "seconds must be a positive number of seconds (at most 86400)",
            )
            .render(crate::error::ApiFormat::OpenAi)
        }
    };
    let interval_s = if seconds > 3600.0 {
        60.0
    } else {
        state.history.interval.as_secs_f64()
    };
    Json(TimeseriesBody {
        interval_s,
        samples: state.history.range(seconds),
    })
    .into_response()
}

/// The Qdrant REST API version whose calls `/collections/...` answers: what the
/// official `qdrant-client` compares with its own version on connect (it warns when
/// the minor versions are more than one apart). Raise it when the tests move to a
/// newer client.
pub const QDRANT_API_VERSION: &str = "1.15.0";

#[derive(serde::Serialize)]
struct RootInfo {
    title: &'static str,
    /// Qdrant-compatible version (see [`QDRANT_API_VERSION`]): clients parse this field.
    version: &'static str,
    hangar_version: &'static str,
    /// The services this server mounts, so a script can tell what it is talking to.
    services: Vec<&'static str>,
}

/// `GET /`: who this is, as JSON (Qdrant's root shape, which `qdrant-client` reads
/// to check compatibility); a browser asking for HTML is sent to the dashboard.
async fn root(State(state): State<Arc<AppState>>, headers: axum::http::HeaderMap) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| {
            a.split(',')
                .next()
                .is_some_and(|first| first.trim().starts_with("text/html"))
        });
    if wants_html {
        return axum::response::Redirect::to("/ui/").into_response();
    }
    let mut services = vec!["health", "metrics", "dashboard"];
    for (present, name) in [
        (state.inference.is_some(), "inference"),
        (state.embeddings.is_some(), "embeddings"),
        (state.registry.is_some(), "registry"),
        (state.tracking.is_some(), "tracking"),
        (state.vector.is_some(), "vector"),
        (state.monitor.is_some(), "monitor"),
    ] {
        if present {
            services.push(name);
        }
    }
    Json(RootInfo {
        title: "hangar - LLMOps platform (Qdrant-compatible vector API at /collections)",
        version: QDRANT_API_VERSION,
        hangar_version: env!("CARGO_PKG_VERSION"),
        services,
    })
    .into_response()
}

/// `GET /v2`
async fn server_metadata() -> Json<ServerMetadata> {
    Json(crate::kserve::text_infer::server_metadata())
}

/// `GET /v2/health/live`
async fn live() -> Json<Live> {
    Json(Live { live: true })
}

/// `GET /v2/health/ready` and `/health`: 503 once shutdown has begun.
async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let ready = state.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Ready { ready })).into_response()
}

/// `GET /metrics`
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let model = state.inference.as_ref().map(|s| s.current());
    let engine = model
        .as_ref()
        .map(|i| (i.model_name.as_str(), i.engine.stats()));
    let mut body = state
        .metrics
        .render(engine.as_ref().map(|(name, stats)| (*name, stats)));
    if let Some(i) = &model {
        let info = i.engine.info();
        crate::metrics::render_model_info(&mut body, &i.model_name, &info.device, &info.arch);
    }
    if let Some(slot) = &state.inference {
        slot.render_metrics(&mut body);
    }
    if let Some(m) = &state.monitor {
        crate::metrics::render_monitor(&mut body, m);
    }
    crate::metrics::render_keys(&mut body, &state.tenants.counters());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
