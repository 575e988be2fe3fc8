//! The registry's HTTP API (feature `http`): list/show/promote with the CLI's tokens.
#![cfg(feature = "http")]

mod common;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hangar_registry::{ImportRequest, Registry, Role};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    let req = req
        .body(Body::from(body.unwrap_or("").to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn http_api_lists_shows_and_promotes_with_roles() {
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let boot = reg.principal(None).unwrap();
    let p = common::write_gguf(&d.path().join("m.gguf"), 2, 8, 32, 1);
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
    let app = hangar_registry::http::router(Arc::new(Mutex::new(reg)));

    let (s, _) = call(&app, "GET", "/v1/registry/models", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = call(&app, "GET", "/v1/registry/models", Some(&reader), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["models"][0]["name"], "m");
    let (s, v) = call(
        &app,
        "GET",
        "/v1/registry/models/m/versions/1",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["files"][0]["format"], "gguf");
    let (s, _) = call(&app, "GET", "/v1/registry/models/nope", Some(&reader), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let body = Some(r#"{"stage": "production"}"#);
    let (s, v) = call(
        &app,
        "POST",
        "/v1/registry/models/m/versions/1/promote",
        Some(&writer),
        body,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = call(
        &app,
        "POST",
        "/v1/registry/models/m/versions/1/promote",
        Some(&promoter),
        body,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["stage"], "production");
    let (s, v) = call(
        &app,
        "GET",
        "/v1/registry/models/m/versions/production",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!((s, v["version"].as_u64()), (StatusCode::OK, Some(1)));
    let (s, v) = call(&app, "GET", "/v1/registry/audit", Some(&promoter), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["entries"][0]["actor"], "promoter");
    assert_eq!(v["entries"][0]["action"], "promote");
    let (s, _) = call(
        &app,
        "POST",
        "/v1/registry/models/m/versions/1/demote",
        Some(&writer),
        Some("{}"),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
}
