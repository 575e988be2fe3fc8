//! `pull` end to end against an in-process hub on 127.0.0.1 that serves ranges and
//! drops connections mid-transfer.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::hub::HubServer;
use hangar_registry::hub::{pull, PullOptions, PullRequest};
use hangar_registry::Registry;

fn opts(endpoint: &str) -> PullOptions {
    PullOptions {
        endpoint: endpoint.into(),
        connections: 4,
        part_size: 1 << 20,
        retries: 5,
        backoff: Duration::from_millis(20),
        hub_token: None,
        ..Default::default()
    }
}

fn repo(hub: &HubServer) -> (Vec<u8>, Vec<u8>) {
    let gguf = common::gguf_bytes(&[
        ("a", 512, 1024, 1),
        ("b", 512, 1024, 2),
        ("c", 256, 1024, 3),
    ]);
    let cfg = br#"{"architectures": ["Test"]}"#.to_vec();
    hub.add("org/tiny", "model.gguf", gguf.clone());
    hub.add("org/tiny", "config.json", cfg.clone());
    hub.add("org/tiny", "pytorch_model.bin", b"\x80\x02.".to_vec());
    (gguf, cfg)
}

#[test]
fn pulls_a_repo_with_parallel_ranges_and_survives_dropped_connections() {
    let hub = HubServer::start();
    let (gguf, cfg) = repo(&hub);
    hub.state.drops_left.store(6, Ordering::SeqCst);
    hub.state.drop_after.store(100_000, Ordering::SeqCst);
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let req = PullRequest {
        source: "hf://org/tiny".into(),
        ..Default::default()
    };
    let out = pull(&mut reg, &who, &req, &opts(&hub.endpoint)).unwrap();
    assert_eq!(out.import.name, "tiny");
    assert_eq!(out.import.version, 1);
    assert_eq!(out.skipped.len(), 1, "{:?}", out.skipped);
    assert!(out.skipped[0].1.contains("pickle"));
    assert_eq!(
        hub.state.drops_left.load(Ordering::SeqCst),
        0,
        "drops were exercised"
    );
    assert!(
        hub.state.gets.load(Ordering::SeqCst) > 6,
        "ranged parts were fetched"
    );
    let v = reg.show(&who, "tiny@1").unwrap();
    assert_eq!(v.metadata["source"], "hf://org/tiny");
    assert_eq!(v.metadata["revision"], "0123456789abcdef");
    let r = reg.resolve(&who, "tiny").unwrap();
    assert_eq!(std::fs::read(r.primary.unwrap()).unwrap(), gguf);
    assert_eq!(std::fs::read(r.dir.join("config.json")).unwrap(), cfg);
    // The download area is cleaned after a successful import.
    assert!(std::fs::read_dir(reg.root().join("downloads"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn an_interrupted_pull_resumes_where_it_stopped() {
    let hub = HubServer::start();
    let (gguf, _) = repo(&hub);
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    // Requests die after 300 KB and the hub goes down after 1.5 MB: the first pull fails.
    hub.state.drops_left.store(1000, Ordering::SeqCst);
    hub.state.drop_after.store(300_000, Ordering::SeqCst);
    hub.state.outage_after.store(1_500_000, Ordering::SeqCst);
    let mut o = opts(&hub.endpoint);
    o.retries = 1;
    o.connections = 2;
    o.part_size = 2 << 20;
    let req = PullRequest {
        source: "hf://org/tiny/model.gguf".into(),
        name: Some("t".into()),
        ..Default::default()
    };
    let e = pull(&mut reg, &who, &req, &o).unwrap_err();
    assert!(e.to_string().contains("resume"), "{e}");
    let first = hub.state.served.load(Ordering::SeqCst);
    assert!(first > 0 && first < gguf.len() as u64);
    // The network heals; the retry fetches only what was missing.
    hub.state.drops_left.store(0, Ordering::SeqCst);
    hub.state.outage_after.store(0, Ordering::SeqCst);
    let out = pull(&mut reg, &who, &req, &opts(&hub.endpoint)).unwrap();
    let second = hub.state.served.load(Ordering::SeqCst) - first;
    assert!(
        second < gguf.len() as u64,
        "resumed: {second} of {} fetched again",
        gguf.len()
    );
    assert_eq!(out.import.files[0].sha256, common::sha256_hex(&gguf));
}

#[test]
fn a_hash_mismatch_is_caught_and_the_partial_file_discarded() {
    let hub = HubServer::start();
    repo(&hub);
    hub.state.lie_about_hash.store(true, Ordering::SeqCst);
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let req = PullRequest {
        source: "hf://org/tiny/model.gguf".into(),
        ..Default::default()
    };
    let e = pull(&mut reg, &who, &req, &opts(&hub.endpoint)).unwrap_err();
    assert!(
        e.to_string().contains("sha256") || e.to_string().contains("hash"),
        "{e}"
    );
    assert!(reg.list(&who).unwrap().is_empty());
}

#[test]
fn refuses_a_requested_pickle_file_and_a_missing_repo() {
    let hub = HubServer::start();
    repo(&hub);
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let req = PullRequest {
        source: "hf://org/tiny/pytorch_model.bin".into(),
        ..Default::default()
    };
    let e = pull(&mut reg, &who, &req, &opts(&hub.endpoint)).unwrap_err();
    assert!(e.to_string().contains("pickle"), "{e}");
    let req = PullRequest {
        source: "hf://org/nope".into(),
        ..Default::default()
    };
    let e = pull(&mut reg, &who, &req, &opts(&hub.endpoint)).unwrap_err();
    assert!(e.to_string().contains("404"), "{e}");
}
