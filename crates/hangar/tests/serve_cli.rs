//! `hangar serve` as a process: the flags that wire services together (`--home`),
//! checked over a real socket.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `hangar serve`; killed when dropped.
struct ServeProc {
    child: Child,
    addr: SocketAddr,
}

impl ServeProc {
    /// Starts `hangar <args>` (which must include `serve --port 0`) and waits for its
    /// "listening on" line.
    fn start(args: &[&str], env_home: &Path) -> ServeProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(args)
            .env("HANGAR_HOME", env_home)
            .env_remove("HANGAR_API_KEYS")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running hangar serve");
        let stderr = child.stderr.take().expect("stderr pipe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[serve] {line}");
                if let Some(a) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(a) => a.parse().expect("listening address"),
            Err(_) => {
                let _ = child.kill();
                panic!("hangar serve did not start listening");
            }
        };
        ServeProc { child, addr }
    }

    /// `GET path` as (status, body).
    fn get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("response");
        let status = buf
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tiny valid GGUF the registry accepts.
fn tiny_gguf(path: &Path) {
    use hangar_formats::{GgmlType, GgufFileWriter, GgufHeader, MetaValue};
    let mut h = GgufHeader::new();
    h.set("general.architecture", MetaValue::String("test".into()));
    h.add_tensor("w", vec![32], GgmlType::F32).unwrap();
    let mut w = GgufFileWriter::create(path, &h).unwrap();
    w.write_tensor(&[7u8; 128]).unwrap();
    w.finish().unwrap();
}

/// Regression (issue 20): `hangar --home X serve` mounted the registry API of the
/// default home ($HANGAR_HOME here) instead of X.
#[test]
fn serve_mounts_the_registry_of_the_home_flag() {
    let tmp = std::env::temp_dir().join(format!("hangar-serve-home-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let home = tmp.join("home");
    let other = tmp.join("other-home");
    std::fs::create_dir_all(&other).unwrap();
    let file = tmp.join("tiny.gguf");
    tiny_gguf(&file);
    let home_s = home.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["--home", home_s, "registry", "import"])
        .arg(&file)
        .args(["--name", "tiny-in-home"])
        .env("HANGAR_HOME", &other)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let Some(model) = common::model() else {
        return;
    };
    let srv = ServeProc::start(
        &[
            "--home",
            home_s,
            "serve",
            "--model",
            &model,
            "--port",
            "0",
            "--threads",
            "1",
        ],
        &other,
    );
    let (status, body) = srv.get("/v1/registry/models");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    let names: Vec<&str> = v["models"]
        .as_array()
        .expect("models list")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["tiny-in-home"], "{body}");
    drop(srv);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// `hangar serve --no-model` starts without loading anything and answers health,
/// metrics and the registry API of its home.
#[test]
fn serve_without_a_model_answers_health_metrics_and_registry() {
    let tmp = std::env::temp_dir().join(format!("hangar-serve-nomodel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let home = tmp.join("home");
    std::fs::create_dir_all(&tmp).unwrap();
    let file = tmp.join("tiny.gguf");
    tiny_gguf(&file);
    let home_s = home.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["--home", home_s, "registry", "import"])
        .arg(&file)
        .args(["--name", "tiny"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let srv = ServeProc::start(
        &["--home", home_s, "serve", "--no-model", "--port", "0"],
        &tmp,
    );
    for path in ["/health", "/v2/health/ready", "/metrics"] {
        assert_eq!(srv.get(path).0, 200, "{path}");
    }
    let (status, body) = srv.get("/v1/models");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"data\":[]"), "{body}");
    let (status, body) = srv.get("/v1/registry/models");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tiny\""), "{body}");
    drop(srv);
    let _ = std::fs::remove_dir_all(&tmp);
}

/// Regression (issue 18 item 4): SIGTERM with a half-sent request open kept the process
/// alive until the client gave up. It now exits by `--shutdown-timeout`.
#[test]
fn sigterm_exits_by_the_shutdown_deadline_with_a_half_sent_request_open() {
    let tmp = std::env::temp_dir().join(format!("hangar-serve-term-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let home = tmp.join("home");
    let mut srv = ServeProc::start(
        &[
            "--home",
            home.to_str().unwrap(),
            "serve",
            "--no-model",
            "--port",
            "0",
            "--shutdown-timeout",
            "2",
            "--header-timeout",
            "600",
            "--body-timeout",
            "600",
        ],
        &tmp,
    );
    assert_eq!(srv.get("/health").0, 200);
    // A request whose body never finishes: the handler waits for it.
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(
        b"POST /v1/registry/models/m/versions/1/promote HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"stage\"",
    )
    .unwrap();
    // And an idle connection that never sends a byte.
    let _idle = TcpStream::connect(srv.addr).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = srv.child.id().to_string();
    let t0 = std::time::Instant::now();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let status = loop {
        if let Some(st) = srv.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "hangar serve still running {:?} after SIGTERM (deadline 2 s)",
            t0.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    assert!(status.success(), "exit status {status}");
    assert!(
        took >= Duration::from_millis(1500),
        "exited after {took:?}: the in-flight request was not given its drain time"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&tmp);
}
