//! `POST /admin/models/{name}/reload` failure paths on a real `hangar serve` of the
//! default model from a registry: every refused reload leaves the old version serving.

#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `hangar serve`; killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(home: &Path, model: &str) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hangar"))
            .args(["--home", home.to_str().unwrap(), "serve", "--model", model])
            .args(["--port", "0", "--threads", "1", "--kv-memory", "64MiB"])
            .args(["--no-registry-api", "--no-tracking-api", "--no-vector-api"])
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
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(180)) else {
            let _ = child.kill();
            panic!("hangar serve did not start listening");
        };
        Server {
            child,
            addr: addr.parse().expect("listening address"),
        }
    }

    /// One request as (status, headers, body).
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, String, String) {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        )
        .unwrap();
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("response");
        let status = buf
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    /// A short completion must still answer from `gem@1`.
    fn assert_serves_version_1(&self) {
        let (status, head, body) = self.call(
            "POST",
            "/v1/completions",
            r#"{"model":"gem","prompt":"The capital of France is","max_tokens":3,"temperature":0}"#,
        );
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("x-hangar-model-version: gem@1"), "{head}");
        let (_, _, models) = self.call("GET", "/v1/models", "");
        assert!(models.contains("\"reference\":\"gem@1\""), "{models}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A valid GGUF of an architecture nobody can run: the registry takes it, loading fails.
fn unloadable_gguf(path: &Path) {
    use hangar_formats::{GgmlType, GgufFileWriter, GgufHeader, MetaValue};
    let mut h = GgufHeader::new();
    h.set("general.architecture", MetaValue::String("test".into()));
    h.add_tensor("w", vec![32], GgmlType::F32).unwrap();
    let mut w = GgufFileWriter::create(path, &h).unwrap();
    w.write_tensor(&[7u8; 128]).unwrap();
    w.finish().unwrap();
}

fn import(home: &Path, file: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(["--home", home.to_str().unwrap(), "registry", "import"])
        .arg(file)
        .args(["--name", "gem"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn failed_reloads_leave_the_old_version_serving() {
    let Some(model) = common::model() else { return };
    let tmp = std::env::temp_dir().join(format!("hangar-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    let home = tmp.join("home");
    let bad = tmp.join("bad.gguf");
    unloadable_gguf(&bad);
    import(&home, Path::new(&model)); // gem@1
    import(&home, &bad); // gem@2
    let srv = Server::start(&home, "gem@1");
    srv.assert_serves_version_1();

    let cases: [(&str, &str, u16, &str); 6] = [
        ("gem", r#"{"version": 9}"#, 404, "not found"),
        ("gem", r#"{"stage": "staging"}"#, 404, "not found"),
        ("gem", r#"{"version": 2}"#, 422, "does not load"),
        (
            "gem",
            r#"{"version": 1, "stage": "production"}"#,
            400,
            "either",
        ),
        ("gem", r#"{"versoin": 2}"#, 400, "unknown field"),
        ("other", "", 404, "other"),
    ];
    for (name, body, want, says) in cases {
        let (status, _, answer) = srv.call("POST", &format!("/admin/models/{name}/reload"), body);
        assert_eq!(status, want, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
        srv.assert_serves_version_1();
    }
    let (_, _, metrics) = srv.call("GET", "/metrics", "");
    assert!(
        metrics.contains("hangar_model_reloads_total{outcome=\"failed\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("hangar_model_reloads_total{outcome=\"success\"} 0"));
    assert!(metrics.contains("reference=\"gem@1\""), "{metrics}");

    // Reloading the same version is a real swap, and the server keeps answering.
    let (status, _, answer) = srv.call("POST", "/admin/models/gem/reload", r#"{"version": 1}"#);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("\"current\":\"gem@1\""), "{answer}");
    srv.assert_serves_version_1();
    drop(srv);
    let _ = std::fs::remove_dir_all(&tmp);
}
