//! An in-process hub speaking the Hugging Face protocol on 127.0.0.1: repo listing,
//! HEAD with X-Linked-Size / X-Linked-Etag, ranged GETs, optional throttling and
//! connections dropped mid-body.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// "org/repo" -> [(file path, bytes)]
pub type Repos = HashMap<String, Vec<(String, Vec<u8>)>>;

#[derive(Default)]
pub struct HubState {
    /// "org/repo" -> file path -> bytes
    pub repos: std::sync::Mutex<Repos>,
    /// Bytes of file bodies sent.
    pub served: AtomicU64,
    /// GETs to answer by dropping the connection after `drop_after` bytes.
    pub drops_left: AtomicU32,
    pub drop_after: AtomicU64,
    /// Sleep per 64 KiB sent, in microseconds.
    pub throttle_us: AtomicU64,
    /// Advertise a wrong sha256 for LFS files.
    pub lie_about_hash: AtomicBool,
    pub gets: AtomicU32,
    /// Once this many body bytes were served (0 = never), GETs answer 503.
    pub outage_after: AtomicU64,
}

pub struct HubServer {
    pub endpoint: String,
    pub state: Arc<HubState>,
}

fn git_sha1(b: &[u8]) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", b.len()).as_bytes());
    h.update(b);
    hex::encode(h.finalize())
}

fn is_lfs(f: &str) -> bool {
    f.ends_with(".gguf") || f.ends_with(".safetensors")
}

async fn listing(
    State(s): State<Arc<HubState>>,
    Path((org, repo)): Path<(String, String)>,
) -> Response {
    let repos = s.repos.lock().unwrap();
    match repos.get(&format!("{org}/{repo}")) {
        Some(files) => {
            let siblings: Vec<_> = files
                .iter()
                .map(|(f, _)| serde_json::json!({"rfilename": f}))
                .collect();
            axum::Json(serde_json::json!({"id": format!("{org}/{repo}"), "sha": "0123456789abcdef", "siblings": siblings}))
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn resolve(
    State(s): State<Arc<HubState>>,
    method: Method,
    headers: HeaderMap,
    Path((org, repo, _rev, file)): Path<(String, String, String, String)>,
) -> Response {
    let data = {
        let repos = s.repos.lock().unwrap();
        repos
            .get(&format!("{org}/{repo}"))
            .and_then(|fs| fs.iter().find(|(f, _)| *f == file).map(|(_, d)| d.clone()))
    };
    let Some(data) = data else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let len = data.len() as u64;
    let mut resp = Response::builder()
        .header("accept-ranges", "bytes")
        .header("x-repo-commit", "0123456789abcdef");
    if is_lfs(&file) {
        let mut sha = common_sha(&data);
        if s.lie_about_hash.load(Ordering::SeqCst) {
            sha = "f".repeat(64);
        }
        resp = resp
            .header("x-linked-etag", format!("\"{sha}\""))
            .header("x-linked-size", len.to_string())
            .header("etag", format!("\"{sha}\""));
    } else {
        resp = resp.header("etag", format!("\"{}\"", git_sha1(&data)));
    }
    if method == Method::HEAD {
        return resp
            .header("content-length", len.to_string())
            .status(StatusCode::OK)
            .body(Body::empty())
            .unwrap();
    }
    s.gets.fetch_add(1, Ordering::SeqCst);
    let outage = s.outage_after.load(Ordering::SeqCst);
    if outage > 0 && s.served.load(Ordering::SeqCst) >= outage {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let (start, end, status) = match headers.get("range").and_then(|v| v.to_str().ok()) {
        Some(r) => {
            let r = r.trim_start_matches("bytes=");
            let (a, b) = r.split_once('-').unwrap();
            let a: u64 = a.parse().unwrap();
            let b: u64 = if b.is_empty() {
                len - 1
            } else {
                b.parse::<u64>().unwrap().min(len - 1)
            };
            if a >= len || a > b {
                return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            }
            resp = resp.header("content-range", format!("bytes {a}-{b}/{len}"));
            (a, b + 1, StatusCode::PARTIAL_CONTENT)
        }
        None => (0, len, StatusCode::OK),
    };
    let drop_at = if s
        .drops_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        Some(s.drop_after.load(Ordering::SeqCst))
    } else {
        None
    };
    let body = data[start as usize..end as usize].to_vec();
    let state = s.clone();
    let stream = futures_util::stream::unfold(
        (0usize, body, state, drop_at),
        |(pos, body, state, drop_at)| async move {
            if pos >= body.len() {
                return None;
            }
            if let Some(d) = drop_at {
                if pos as u64 >= d {
                    // Let what was sent reach the client, then cut the connection.
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    return Some((
                        Err(std::io::Error::other("connection dropped by test hub")),
                        (body.len(), body, state, None),
                    ));
                }
            }
            let t = state.throttle_us.load(Ordering::Relaxed);
            if t > 0 {
                tokio::time::sleep(Duration::from_micros(t)).await;
            }
            let mut end = (pos + 65536).min(body.len());
            if let Some(d) = drop_at {
                end = end.min((d as usize).max(pos + 1));
            }
            state
                .served
                .fetch_add((end - pos) as u64, Ordering::Relaxed);
            let chunk = bytes::Bytes::copy_from_slice(&body[pos..end]);
            Some((Ok::<_, std::io::Error>(chunk), (end, body, state, drop_at)))
        },
    );
    resp.header("content-length", (end - start).to_string())
        .status(status)
        .body(Body::from_stream(stream))
        .unwrap()
}

fn common_sha(b: &[u8]) -> String {
    super::sha256_hex(b)
}

impl HubServer {
    /// Starts the hub on 127.0.0.1 (a free port) in a background thread.
    pub fn start() -> HubServer {
        let state = Arc::new(HubState::default());
        let st = state.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let app = Router::new()
                    .route("/api/models/{org}/{repo}", get(listing))
                    .route("/{org}/{repo}/resolve/{rev}/{*file}", get(resolve))
                    .with_state(st);
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                axum::serve(l, app).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        HubServer {
            endpoint: format!("http://{addr}"),
            state,
        }
    }

    pub fn add(&self, repo: &str, file: &str, bytes: Vec<u8>) {
        self.state
            .repos
            .lock()
            .unwrap()
            .entry(repo.to_string())
            .or_default()
            .push((file.to_string(), bytes));
    }
}
