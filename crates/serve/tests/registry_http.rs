//! The registry's HTTP API as mounted by the server (no model needed): list, show and
//! promote with the registry's tokens and roles, over a real socket.

mod common;

use common::Server;
use hangar_registry::{ImportRequest, Registry, Role};
use hangar_serve::{AppState, ServeConfig, Services};

/// A registry in a temporary home with one imported model `m` and tokens of each role.
struct Fixture {
    _dir: tempfile::TempDir,
    reg: Registry,
    reader: String,
    writer: String,
    promoter: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(Some(dir.path().join("home"))).unwrap();
    let boot = reg.principal(None).unwrap();
    let p = dir.path().join("m.gguf");
    common::tiny_gguf(&p);
    let mut reg = reg;
    reg.import(
        &boot,
        &ImportRequest {
            path: p,
            name: "m".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let reader = reg.create_token(&boot, "reader", Role::Reader).unwrap();
    let writer = reg.create_token(&boot, "writer", Role::Writer).unwrap();
    let promoter = reg.create_token(&boot, "promoter", Role::Promoter).unwrap();
    Fixture {
        _dir: dir,
        reg,
        reader,
        writer,
        promoter,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_lists_shows_and_promotes_with_roles() {
    let f = fixture();
    let (reader, writer, promoter) = (f.reader.clone(), f.writer.clone(), f.promoter.clone());
    let state = AppState::new(
        Services::default().with_registry(f.reg),
        ServeConfig::default(),
    );
    let srv = Server::start(state).await;

    let r = srv.get("/v1/registry/models", None).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "unauthorized");
    let r = srv.get("/v1/registry/models", Some(&reader)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["models"][0]["name"], "m");
    let r = srv
        .get("/v1/registry/models/m/versions/1", Some(&reader))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["files"][0]["format"], "gguf");
    let r = srv.get("/v1/registry/models/nope", Some(&reader)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["type"], "not_found");

    let body = r#"{"stage": "production"}"#;
    let path = "/v1/registry/models/m/versions/1/promote";
    let r = srv.post(path, Some(&writer), body).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = srv.post(path, Some(&promoter), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stage"], "production");
    let r = srv
        .get("/v1/registry/models/m/versions/production", Some(&reader))
        .await;
    assert_eq!((r.status, r.json()["version"].as_u64()), (200, Some(1)));
    let r = srv.get("/v1/registry/audit", Some(&promoter)).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["entries"][0]["actor"], "promoter");
    assert_eq!(v["entries"][0]["action"], "promote");
    let r = srv
        .post(
            "/v1/registry/models/m/versions/1/demote",
            Some(&writer),
            "{}",
        )
        .await;
    assert_eq!(r.status, 403);
    let r = srv.post(path, Some(&promoter), "{\"stage\": ").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));
    srv.shutdown().await;
}

/// Regression (issue 18 item 2): with `--api-key` set, the registry routes answered
/// anonymous callers and refused the valid API key. Every route but health and metrics
/// now needs a credential, and an API key and a registry token each work where their
/// role allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_and_registry_tokens_compose_on_every_route() {
    let f = fixture();
    let (reader, promoter) = (f.reader.clone(), f.promoter.clone());
    let cfg = ServeConfig {
        api_keys: vec!["sk-test".into()],
        ..ServeConfig::default()
    };
    let srv = Server::start(AppState::new(Services::default().with_registry(f.reg), cfg)).await;

    for path in [
        "/v1/registry/models",
        "/v1/registry/models/m",
        "/v1/registry/stats",
    ] {
        let r = srv.get(path, None).await;
        assert_eq!(r.status, 401, "{path} without a key: {}", r.text());
        assert!(r.json()["error"]["message"].as_str().is_some());
        let r = srv.get(path, Some("sk-wrong")).await;
        assert_eq!(r.status, 401, "{path} with a wrong key");
        let r = srv.get(path, Some("sk-test")).await;
        assert_eq!(r.status, 200, "{path} with the API key: {}", r.text());
        let r = srv.get(path, Some(&reader)).await;
        assert_eq!(r.status, 200, "{path} with a reader token: {}", r.text());
    }
    assert_eq!(srv.get("/v1/models", None).await.status, 401);
    assert_eq!(srv.get("/v1/models", Some("sk-test")).await.status, 200);
    assert_eq!(srv.get("/v1/models", Some(&reader)).await.status, 200);
    assert_eq!(srv.get("/v2", None).await.status, 401);
    for path in ["/health", "/v2/health/live", "/v2/health/ready", "/metrics"] {
        assert_eq!(srv.get(path, None).await.status, 200, "{path}");
    }

    // The API key reads the catalog but cannot change it or read the audit log.
    let body = r#"{"stage": "production"}"#;
    let path = "/v1/registry/models/m/versions/1/promote";
    let r = srv.post(path, Some("sk-test"), body).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        srv.get("/v1/registry/audit", Some("sk-test")).await.status,
        403
    );
    let r = srv.post(path, Some(&promoter), body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        srv.get("/v1/registry/audit", Some(&promoter)).await.status,
        200
    );
    srv.shutdown().await;
}

/// A registry without tokens is readable by anyone only while no API keys are set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_close_a_registry_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::open(Some(dir.path().join("home"))).unwrap();
    let cfg = ServeConfig {
        api_keys: vec!["sk-test".into()],
        ..ServeConfig::default()
    };
    let srv = Server::start(AppState::new(Services::default().with_registry(reg), cfg)).await;
    assert_eq!(srv.get("/v1/registry/models", None).await.status, 401);
    let r = srv.get("/v1/registry/models", Some("sk-test")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["models"], serde_json::json!([]));
    srv.shutdown().await;
}
