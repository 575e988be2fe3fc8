//! A server without a model (`hangar serve --no-model`): health, metrics and the
//! registry answer; the inference routes are absent with a clear 404 in each API's
//! error format.

mod common;

use common::Server;
use hangar_registry::{ImportRequest, Registry};
use hangar_serve::{AppState, ServeConfig, Services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_metrics_and_registry_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(dir.path().join("home"))).unwrap();
    let boot = reg.principal(None).unwrap();
    let file = dir.path().join("tiny.gguf");
    common::tiny_gguf(&file);
    reg.import(
        &boot,
        &ImportRequest {
            path: file,
            name: "tiny".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let state = AppState::new(
        Services::default().with_registry(reg),
        ServeConfig::default(),
    );
    let srv = Server::start(state).await;

    for path in ["/health", "/v2/health/live", "/v2/health/ready"] {
        assert_eq!(srv.get(path, None).await.status, 200, "{path}");
    }
    assert_eq!(srv.get("/v2", None).await.json()["name"], "hangar");
    let models = srv.get("/v1/models", None).await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"], serde_json::json!([]));

    // Anonymous reads are allowed on a registry without tokens.
    let r = srv.get("/v1/registry/models", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["models"][0]["name"], "tiny");

    // Inference routes are absent: 404 in the OpenAI and KServe formats.
    let r = srv
        .post("/v1/completions", None, r#"{"prompt": "hi"}"#)
        .await;
    assert_eq!(r.status, 404);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("--no-model"), "{msg}");
    let r = srv.post("/v1/chat/completions", None, "{}").await;
    assert_eq!(r.status, 404);
    let r = srv
        .post("/v2/models/any/infer", None, r#"{"inputs": []}"#)
        .await;
    assert_eq!(r.status, 404);
    let v = r.json();
    assert!(v["error"].as_str().unwrap().contains("--no-model"), "{v}");
    assert_eq!(srv.get("/v2/models/any/ready", None).await.status, 404);

    // Metrics answer without engine gauges, and count what happened.
    let m = srv.get("/metrics", None).await;
    assert_eq!(m.status, 200);
    let text = m.text();
    assert!(
        text.contains("hangar_requests_total{route=\"/v1/completions\",status=\"404\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("route=\"/v1/registry\",status=\"200\""),
        "{text}"
    );
    assert!(!text.contains("hangar_kv_blocks_capacity"), "{text}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_no_services_still_answers_probes() {
    let srv = Server::start(AppState::new(Services::default(), ServeConfig::default())).await;
    assert_eq!(srv.get("/v2/health/ready", None).await.status, 200);
    assert_eq!(srv.get("/metrics", None).await.status, 200);
    let r = srv.get("/v1/registry/models", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    srv.shutdown().await;
}
