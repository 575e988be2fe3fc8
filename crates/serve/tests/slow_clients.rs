//! Slow and idle clients over a real socket (issue 18 item 3): headers sent a byte at a
//! time and bodies sent halfway are cut off at their deadlines while other requests
//! keep flowing, and connections beyond the cap wait for a free slot.

mod common;

use common::{parse_response, request, Server};
use hangar_registry::{ImportRequest, Registry};
use hangar_serve::{AppState, ServeConfig, Services};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);
const BODY_TIMEOUT: Duration = Duration::from_millis(1000);
/// Generous slack over a deadline for a loaded test machine.
const SLACK: Duration = Duration::from_secs(4);

/// A registry with model `m`, so a route that reads a body (promote) exists.
fn registry(dir: &std::path::Path) -> Registry {
    let mut reg = Registry::open(Some(dir.join("home"))).unwrap();
    let boot = reg.principal(None).unwrap();
    let file = dir.join("m.gguf");
    common::tiny_gguf(&file);
    reg.import(
        &boot,
        &ImportRequest {
            path: file,
            name: "m".into(),
            ..Default::default()
        },
    )
    .unwrap();
    reg
}

fn config(max_connections: usize) -> ServeConfig {
    ServeConfig {
        header_timeout: HEADER_TIMEOUT,
        body_timeout: BODY_TIMEOUT,
        max_connections,
        ..ServeConfig::default()
    }
}

/// Reads until the server closes the connection (EOF or reset); returns what was read
/// and when it closed, or `None` if it stayed open past `limit`.
async fn wait_closed(s: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Instant)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((buf, Instant::now())),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends a request head one byte every 250 ms, forever; returns when the server closes.
async fn trickle_headers(addr: SocketAddr) -> Duration {
    let t0 = Instant::now();
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let head = b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        for b in head.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let mut chunk = [0u8; 256];
    let closed = tokio::time::timeout(HEADER_TIMEOUT + SLACK, async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    writer.abort();
    assert!(closed.is_ok(), "a trickling header was never cut off");
    t0.elapsed()
}

/// Sends a whole head and half the body, then nothing; returns the status answered and
/// how long the server waited.
async fn half_body(addr: SocketAddr) -> (u16, Duration) {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/registry/models/m/versions/1/promote HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(br#"{"stage": "#).await.unwrap();
    let (buf, _) = wait_closed(&mut s, BODY_TIMEOUT + SLACK)
        .await
        .expect("a half-sent body was never cut off");
    let r = parse_response(&buf);
    (r.status, t0.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_half_bodies_are_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let state = AppState::new(
        Services::default().with_registry(registry(dir.path())),
        config(64),
    );
    let srv = Server::start(state).await;
    let addr = srv.addr;

    let slow: Vec<_> = (0..4)
        .map(|_| tokio::spawn(trickle_headers(addr)))
        .collect();
    let halves: Vec<_> = (0..4).map(|_| tokio::spawn(half_body(addr))).collect();
    // Meanwhile, ordinary requests are answered promptly.
    let t0 = Instant::now();
    let mut served = 0;
    while t0.elapsed() < HEADER_TIMEOUT + Duration::from_millis(500) {
        let t = Instant::now();
        let r = request(addr, "GET", "/v1/registry/models", &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a normal request waited {:?}",
            t.elapsed()
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served >= 5, "only {served} normal requests were served");
    for t in slow {
        let took = t.await.unwrap();
        assert!(took >= HEADER_TIMEOUT / 2, "closed too early: {took:?}");
    }
    for t in halves {
        let (status, took) = t.await.unwrap();
        assert_eq!(
            status, 408,
            "a half-sent body should get 408 Request Timeout"
        );
        assert!(took >= BODY_TIMEOUT / 2, "closed too early: {took:?}");
    }
    // Still serving afterwards.
    assert_eq!(request(addr, "GET", "/health", &[], b"").await.status, 200);
    let metrics = request(addr, "GET", "/metrics", &[], b"").await.text();
    assert!(metrics.contains("status=\"408\""), "{metrics}");
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let state = AppState::new(Services::default(), config(2));
    let srv = Server::start(state).await;
    let addr = srv.addr;
    // Two idle connections take both slots...
    let mut idle1 = TcpStream::connect(addr).await.unwrap();
    let mut idle2 = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...so a third is answered only once the header timeout has closed one of them.
    let t0 = Instant::now();
    let r = tokio::time::timeout(
        HEADER_TIMEOUT + SLACK,
        request(addr, "GET", "/health", &[], b""),
    )
    .await
    .expect("the third connection was never served");
    assert_eq!(r.status, 200);
    let waited = t0.elapsed();
    assert!(
        waited >= HEADER_TIMEOUT / 2,
        "served after {waited:?}, before any slot could have been freed"
    );
    for s in [&mut idle1, &mut idle2] {
        assert!(
            wait_closed(s, SLACK).await.is_some(),
            "an idle connection stayed open past the header timeout"
        );
    }
    srv.shutdown().await;
}
