//! The S3 chunk store against a local moto server (`pip install "moto[server]"`),
//! started by the test on 127.0.0.1 (hangar-testkit finds and starts it).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use hangar_registry::{ImportRequest, Registry, S3Config, StoreSpec};

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
    let Some(moto) = hangar_testkit::MotoServer::start() else {
        return;
    };
    let port = moto.port;
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
