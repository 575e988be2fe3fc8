//! End to end over loopback sockets: the router in front of small in-process fake
//! replicas that stream, fail, hang or go away.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hangar_route::{Policy, Router, RouterConfig};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// How a fake replica answers `POST /v1/chat/completions`.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// JSON naming the replica (and echoing the Authorization header).
    Answer,
    /// SSE: one event, then waits for `release`, then a second event and `[DONE]`.
    StreamUntilReleased,
    /// SSE: one event, then the connection breaks.
    StreamThenBreak,
    /// Never answers.
    Hang,
    /// 503 (as a replica whose queue is full).
    Busy,
}

struct Fake {
    name: String,
    model: String,
    mode: Mutex<Mode>,
    healthy: AtomicBool,
    hits: AtomicUsize,
    release: Notify,
}

async fn ready(State(f): State<Arc<Fake>>) -> StatusCode {
    if f.healthy.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn models(State(f): State<Arc<Fake>>) -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": f.model, "object": "model"}]}))
        .into_response()
}

async fn metrics() -> &'static str {
    "hangar_queue_depth{model=\"m\"} 0\nhangar_running_sequences{model=\"m\"} 0\nhangar_kv_usage_ratio{model=\"m\"} 0.1\n"
}

fn event(text: &str) -> Bytes {
    Bytes::from(format!(
        "data: {}\n\n",
        json!({"choices": [{"index": 0, "delta": {"content": text}}]})
    ))
}

async fn chat(State(f): State<Arc<Fake>>, headers: HeaderMap, body: Bytes) -> Response {
    f.hits.fetch_add(1, Ordering::Relaxed);
    let mode = *f.mode.lock().unwrap();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let sse = |stream: futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>| {
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(stream))
            .unwrap()
    };
    match mode {
        Mode::Answer => {
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            axum::Json(json!({"backend": f.name, "authorization": auth, "model": req["model"]}))
                .into_response()
        }
        Mode::Busy => (StatusCode::SERVICE_UNAVAILABLE, "queue full").into_response(),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
        Mode::StreamUntilReleased => {
            let f = f.clone();
            sse(Box::pin(async_stream(f)))
        }
        Mode::StreamThenBreak => {
            // Each piece after a pause, so the earlier ones are on the wire before
            // the connection breaks.
            let stream = futures_util::stream::unfold(0u8, |step| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let item = match step {
                    0 => Ok(event("partial")),
                    1 => Ok(Bytes::from_static(b"data: {\"choices\": [{\"ind")),
                    2 => Err(std::io::Error::other("replica died")),
                    _ => return None,
                };
                Some((item, step + 1))
            });
            sse(Box::pin(stream))
        }
    }
}

/// One event, then (once released) a second and `[DONE]`.
fn async_stream(
    f: Arc<Fake>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(0u8, move |step| {
        let f = f.clone();
        async move {
            match step {
                0 => Some((Ok(event("first")), 1)),
                1 => {
                    f.release.notified().await;
                    Some((Ok(event("second")), 2))
                }
                2 => Some((Ok(Bytes::from_static(b"data: [DONE]\n\n")), 3)),
                _ => None,
            }
        }
    })
}

struct FakeServer {
    fake: Arc<Fake>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeServer {
    /// Stops accepting connections (the port then refuses).
    fn shut_down(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
    fn hits(&self) -> usize {
        self.fake.hits.load(Ordering::Relaxed)
    }
}

async fn fake(name: &str, model: &str, mode: Mode) -> FakeServer {
    let fake = Arc::new(Fake {
        name: name.to_string(),
        model: model.to_string(),
        mode: Mutex::new(mode),
        healthy: AtomicBool::new(true),
        hits: AtomicUsize::new(0),
        release: Notify::new(),
    });
    let app = axum::Router::new()
        .route("/v2/health/ready", get(ready))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(chat))
        .route("/v2/models/{name}/generate", post(chat))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    FakeServer {
        fake,
        url,
        stop: Some(tx),
    }
}

fn config(backends: &[&FakeServer], policy: Policy) -> RouterConfig {
    RouterConfig {
        backends: backends.iter().map(|b| b.url.clone()).collect(),
        policy,
        probe_interval: Duration::from_millis(50),
        unhealthy_after: 1,
        healthy_after: 1,
        first_byte_timeout: Duration::from_secs(5),
        ..RouterConfig::default()
    }
}

async fn start(cfg: RouterConfig) -> (String, Arc<Router>) {
    let router = Router::new(cfg).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(hangar_route::serve_router(
        listener,
        router.clone(),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                return (base, router);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("router did not become ready");
}

async fn chat_json(base: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..200 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn first_sse_event_reaches_the_client_before_the_backend_finishes() {
    let a = fake("a", "m", Mode::StreamUntilReleased).await;
    let (base, _r) = start(config(&[&a], Policy::RoundRobin)).await;
    let mut resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .body(json!({"model": "m", "stream": true, "messages": []}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    // The replica has not finished: it waits for `release`.
    let first = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
        .await
        .expect("the first event must arrive while the replica is still streaming")
        .unwrap()
        .unwrap();
    assert!(std::str::from_utf8(&first).unwrap().contains("first"));
    a.fake.release.notify_one();
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.contains("second") && rest.ends_with("data: [DONE]\n\n"),
        "{rest}"
    );
}

#[tokio::test]
async fn a_cut_stream_ends_with_a_clear_error_event() {
    let a = fake("a", "m", Mode::StreamThenBreak).await;
    let (base, _r) = start(config(&[&a], Policy::RoundRobin)).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .body(json!({"model": "m", "stream": true}).to_string())
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 2, "{text}");
    assert!(events[0].contains("partial"));
    // The half event was dropped; the last one is a whole JSON error.
    let err: Value = serde_json::from_str(events[1].trim_start_matches("data: ")).unwrap();
    assert_eq!(err["error"]["code"], "replica_failed");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("incomplete"));
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("outcome=\"stream_cut\"} 1"), "{m}");
}

#[tokio::test]
async fn requests_that_had_not_started_are_retried_on_another_replica() {
    let busy = fake("busy", "m", Mode::Busy).await;
    let hung = fake("hung", "m", Mode::Hang).await;
    let ok = fake("ok", "m", Mode::Answer).await;
    let mut cfg = config(&[&busy, &hung, &ok], Policy::RoundRobin);
    cfg.first_byte_timeout = Duration::from_millis(300);
    let (base, _r) = start(cfg).await;
    for _ in 0..6 {
        let (status, body) = chat_json(&base, hello("m")).await;
        assert_eq!(
            (status, body["backend"].as_str()),
            (200, Some("ok")),
            "{body}"
        );
    }
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("outcome=\"timeout\"}"), "{m}");
    assert!(m.contains("outcome=\"status_5xx\"}"), "{m}");
    assert!(!m.contains("hangar_route_retries_total 0"), "{m}");
}

#[tokio::test]
async fn a_replica_that_goes_away_is_ejected_and_readmitted_when_back() {
    let mut a = fake("a", "m", Mode::Answer).await;
    let b = fake("b", "m", Mode::Answer).await;
    let (base, r) = start(config(&[&a, &b], Policy::RoundRobin)).await;
    // Gone: the port refuses; every request still succeeds, on b.
    a.shut_down();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..4 {
        let (status, body) = chat_json(&base, hello("m")).await;
        assert_eq!(
            (status, body["backend"].as_str()),
            (200, Some("b")),
            "{body}"
        );
    }
    let backend_a = r.pool.all().into_iter().find(|x| *x.url == *a.url).unwrap();
    wait_for("a ejected", || !backend_a.is_healthy()).await;
    // Failing readiness ejects too, and passing it again re-admits.
    b.fake.healthy.store(false, Ordering::Relaxed);
    let backend_b = r.pool.all().into_iter().find(|x| *x.url == *b.url).unwrap();
    wait_for("b ejected", || !backend_b.is_healthy()).await;
    let (status, body) = chat_json(&base, hello("m")).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no healthy replica"));
    b.fake.healthy.store(true, Ordering::Relaxed);
    wait_for("b re-admitted", || backend_b.is_healthy()).await;
    assert_eq!(chat_json(&base, hello("m")).await.0, 200);
}

#[tokio::test]
async fn requests_go_to_the_replicas_that_serve_their_model() {
    let a = fake("a", "alpha", Mode::Answer).await;
    let b = fake("b", "beta", Mode::Answer).await;
    let (base, _r) = start(config(&[&a, &b], Policy::LeastLoaded)).await;
    // Wait for the model lists (read by the first probe, before the first request).
    for _ in 0..4 {
        assert_eq!(chat_json(&base, hello("beta")).await.1["backend"], "b");
        assert_eq!(chat_json(&base, hello("alpha")).await.1["backend"], "a");
    }
    // The model list names every model served behind the router.
    let list = reqwest::get(format!("{base}/v1/models"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&list).unwrap();
    let mut ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["alpha", "beta"]);
    let (status, body) = chat_json(&base, hello("gamma")).await;
    assert_eq!(status, 404);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("gamma") && msg.contains("alpha, beta"),
        "{msg}"
    );
    // KServe paths name the model in the path, and get KServe's error shape.
    let r = reqwest::Client::new()
        .post(format!("{base}/v2/models/gamma/generate"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(body["error"].is_string(), "{body}");
}

#[tokio::test]
async fn same_system_prompt_goes_to_the_same_replica() {
    let fakes = [
        fake("a", "m", Mode::Answer).await,
        fake("b", "m", Mode::Answer).await,
        fake("c", "m", Mode::Answer).await,
    ];
    let (base, _r) = start(config(&[&fakes[0], &fakes[1], &fakes[2]], Policy::Prefix)).await;
    let mut owners = Vec::new();
    for group in 0..6 {
        let system = format!("Group {group}: you are a careful assistant. ").repeat(20);
        let mut seen = Vec::new();
        for q in 0..4 {
            let body = json!({"model": "m", "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": format!("question {q}")}
            ]});
            seen.push(chat_json(&base, body).await.1["backend"].clone());
        }
        assert!(
            seen.iter().all(|s| *s == seen[0]),
            "group {group}: {seen:?}"
        );
        owners.push(seen[0].clone());
    }
    owners.sort_by_key(|v| v.to_string());
    owners.dedup();
    assert!(
        owners.len() >= 2,
        "six groups all on one replica: {owners:?}"
    );
    let m = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("reason=\"prefix_match\"} 18"), "{m}");
    assert!(
        m.contains("hangar_route_prefix_affinity_hit_share 0.75"),
        "{m}"
    );
}

#[tokio::test]
async fn sessions_stick_and_api_keys_pass_through() {
    let a = fake("a", "m", Mode::Answer).await;
    let b = fake("b", "m", Mode::Answer).await;
    let (base, _r) = start(config(&[&a, &b], Policy::Session)).await;
    let client = reqwest::Client::new();
    for session in ["s1", "s2", "s3"] {
        let mut seen = Vec::new();
        for _ in 0..4 {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .header("x-session-id", session)
                .header("authorization", "Bearer key-123")
                .body(hello("m").to_string())
                .send()
                .await
                .unwrap();
            let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
            assert_eq!(body["authorization"], "Bearer key-123");
            seen.push(body["backend"].clone());
        }
        assert!(seen.iter().all(|s| *s == seen[0]), "{session}: {seen:?}");
    }
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_the_limit_named() {
    let a = fake("a", "m", Mode::Answer).await;
    let mut cfg = config(&[&a], Policy::RoundRobin);
    cfg.max_body_bytes = 1000;
    let (base, _r) = start(cfg).await;
    let big = json!({"model": "m", "prompt": "x".repeat(5000)});
    let (status, body) = chat_json(&base, big).await;
    assert_eq!(status, 413);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-body-bytes"));
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn replicas_are_found_through_dns() {
    let a = fake("a", "m", Mode::Answer).await;
    let port = a.url.rsplit(':').next().unwrap();
    let cfg = RouterConfig {
        backend_dns: vec![format!("localhost:{port}")],
        dns_interval: Duration::from_millis(100),
        ..config(&[], Policy::RoundRobin)
    };
    let (base, r) = start(cfg).await;
    // localhost may also resolve to ::1, where nothing listens: never admitted.
    assert!(r
        .pool
        .all()
        .iter()
        .any(|b| *b.url == *a.url && b.is_healthy()));
    for _ in 0..3 {
        assert_eq!(chat_json(&base, hello("m")).await.1["backend"], "a");
    }
}
