//! The S3 chunk store against a local moto server (`pip install "moto[server]"`),
//! started by the test on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hangar_registry::{ImportRequest, Registry, S3Config, StoreSpec};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn moto_command() -> Option<Command> {
    let ok = |c: &mut Command| {
        c.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ok(Command::new("moto_server").arg("--help")) {
        return Some(Command::new("moto_server"));
    }
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_module =
        |py: &str| ok(Command::new(py).args(["-c", "import moto.server, flask, werkzeug"]));
    if !has_module(&py) {
        eprintln!("installing moto[server] with pip ...");
        let installed =
            ok(Command::new(&py).args(["-m", "pip", "install", "--quiet", "moto[server]"]));
        if !installed || !has_module(&py) {
            return None;
        }
    }
    let mut c = Command::new(py);
    c.args(["-m", "moto.server"]);
    Some(c)
}

fn start_moto() -> Option<(Moto, u16)> {
    let mut cmd = moto_command()?;
    let port = free_port();
    let child = cmd
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let moto = Moto(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((moto, port));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("moto_server did not start on port {port}");
}

fn create_bucket(port: u16, bucket: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
        "{reply}"
    );
}

#[test]
fn s3_store_imports_dedups_exports_and_collects_garbage() {
    let Some((_moto, port)) = start_moto() else {
        eprintln!("skipped: moto[server] is not installed and pip could not install it (no PyPI?)");
        return;
    };
    create_bucket(port, "models");
    let cfg = S3Config {
        bucket: "models".into(),
        prefix: "hangar".into(),
        endpoint: Some(format!("http://127.0.0.1:{port}")),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    };
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let mut reg =
        Registry::open_with(Some(home.clone()), Some(StoreSpec::S3(cfg.clone()))).unwrap();
    assert!(reg.store().describe().starts_with("s3://models/hangar"));
    let who = reg.principal(None).unwrap();
    let names: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    let mut spec: Vec<(&str, usize, usize, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), 256, 1024, i as u64))
        .collect();
    let base = d.path().join("base.gguf");
    std::fs::write(&base, common::gguf_bytes(&spec)).unwrap();
    let a = reg
        .import(
            &who,
            &ImportRequest {
                path: base.clone(),
                name: "m".into(),
                ..Default::default()
            },
        )
        .unwrap();
    spec[2].3 = 77;
    let derived = d.path().join("derived.gguf");
    std::fs::write(&derived, common::gguf_bytes(&spec)).unwrap();
    let b = reg
        .import(
            &who,
            &ImportRequest {
                path: derived.clone(),
                name: "m".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(b.version, 2);
    assert!(
        b.new_bytes < a.new_bytes / 2,
        "dedup in S3: {} vs {}",
        b.new_bytes,
        a.new_bytes
    );
    let n_objects = reg.store().list().unwrap().len();
    drop(reg);

    // Reopening without --store finds the recorded S3 store (credentials from here).
    let reg = Registry::open_with(Some(home.clone()), Some(StoreSpec::S3(cfg.clone()))).unwrap();
    let out = d.path().join("out");
    reg.export(&who, "m@2", &out, false).unwrap();
    assert_eq!(
        std::fs::read(out.join("derived.gguf")).unwrap(),
        std::fs::read(&derived).unwrap()
    );
    assert!(reg.verify(&who, true).unwrap().ok());
    // A different store for the same home is refused.
    assert!(Registry::open_with(Some(home.clone()), Some(StoreSpec::Local)).is_err());

    let mut reg = reg;
    reg.delete(&who, "m@1", false).unwrap();
    let gc = reg.gc(&who, false).unwrap();
    assert!(gc.unreferenced_chunks > 0);
    assert!(reg.store().list().unwrap().len() < n_objects);
    let r = reg.resolve(&who, "m").unwrap();
    assert_eq!(
        std::fs::read(r.primary.unwrap()).unwrap(),
        std::fs::read(&derived).unwrap()
    );
}
