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
        .with_state(state)
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
