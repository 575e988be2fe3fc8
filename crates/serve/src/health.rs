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
        .route("/health", get(ready))
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

/// `GET /v2`
async fn server_metadata() -> Json<ServerMetadata> {
    Json(ServerMetadata {
        name: "hangar",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data", "generate"],
    })
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
    let engine = state
        .inference
        .as_ref()
        .map(|i| (i.model_name.as_str(), i.engine.stats()));
    let mut body = state
        .metrics
        .render(engine.as_ref().map(|(name, stats)| (*name, stats)));
    if let Some(m) = &state.monitor {
        crate::metrics::render_monitor(&mut body, m);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
