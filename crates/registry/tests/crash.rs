//! Crash safety: an import or a pull killed with SIGKILL at any moment leaves the
//! registry consistent (no version points at missing chunks) and a retry completes.
//! The test re-runs this test binary as the child (`crash_child`), so the kill is real.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hangar_registry::hub::{pull, PullOptions, PullRequest};
use hangar_registry::{ImportRequest, Registry};

const CHILD: &str = "HANGAR_CRASH_CHILD";

fn pull_opts(endpoint: &str) -> PullOptions {
    PullOptions {
        endpoint: endpoint.into(),
        part_size: 1 << 20,
        backoff: Duration::from_millis(20),
        hub_token: None,
        ..Default::default()
    }
}

/// Not a test of its own: the body the parent runs in a child process and kills.
#[test]
fn crash_child() {
    let Ok(mode) = std::env::var(CHILD) else {
        return;
    };
    let home = PathBuf::from(std::env::var("CRASH_HOME").unwrap());
    let mut reg = Registry::open(Some(home)).unwrap();
    let who = reg.principal(None).unwrap();
    match mode.as_str() {
        "import" => {
            let req = ImportRequest {
                path: std::env::var("CRASH_FILE").unwrap().into(),
                name: "crash".into(),
                ..Default::default()
            };
            reg.import(&who, &req).unwrap();
        }
        "pull" => {
            let req = PullRequest {
                source: "hf://org/big".into(),
                ..Default::default()
            };
            pull(
                &mut reg,
                &who,
                &req,
                &pull_opts(&std::env::var("CRASH_ENDPOINT").unwrap()),
            )
            .unwrap();
        }
        m => panic!("unknown mode {m}"),
    }
}

fn spawn_and_kill(mode: &str, home: &Path, extra: &[(&str, String)], after: Duration) -> bool {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env("CRASH_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(after);
    let finished = child.try_wait().unwrap().is_some();
    child.kill().ok(); // SIGKILL
    child.wait().unwrap();
    finished
}

/// Runs a child to completion and returns how long it took.
fn time_child(mode: &str, home: &Path, extra: &[(&str, String)]) -> Duration {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .env("CRASH_HOME", home)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let t0 = std::time::Instant::now();
    let status = cmd.status().unwrap();
    assert!(status.success(), "the uninterrupted {mode} must succeed");
    t0.elapsed()
}

fn assert_consistent(home: &Path) {
    let reg = Registry::open(Some(home.to_path_buf())).unwrap();
    let who = reg.principal(None).unwrap();
    let report = reg.verify(&who, false).unwrap();
    assert!(report.ok(), "after a kill: {:?}", report.problems);
}

#[test]
fn import_killed_at_any_moment_leaves_the_registry_consistent() {
    let d = tempfile::tempdir().unwrap();
    let file = common::write_gguf(&d.path().join("big.gguf"), 24, 512, 1024, 3); // 48 MiB
    let home = d.path().join("home");
    let extra = [("CRASH_FILE", file.display().to_string())];
    // Kill times spread over one full import on this machine (timed on a scratch home),
    // so the kills land mid-import however fast or loaded the machine is.
    let probe = d.path().join("probe");
    let full = time_child("import", &probe, &extra);
    let mut killed_mid = 0;
    for i in 0..12u32 {
        let finished = spawn_and_kill("import", &home, &extra, full * (i + 1) / 14);
        killed_mid += usize::from(!finished);
        assert_consistent(&home);
    }
    assert!(
        killed_mid > 3,
        "the kills should land mid-import ({killed_mid})"
    );
    let mut reg = Registry::open(Some(home.clone())).unwrap();
    let who = reg.principal(None).unwrap();
    let out = reg
        .import(
            &who,
            &ImportRequest {
                path: file.clone(),
                name: "crash".into(),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        out.version, 1,
        "retries never make a second version of the same bytes"
    );
    let gc = reg.gc(&who, false).unwrap();
    println!("gc after kills: {gc:?}");
    let r = reg.resolve(&who, "crash@1").unwrap();
    assert_eq!(
        std::fs::read(r.primary.unwrap()).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert!(reg.verify(&who, true).unwrap().ok());
}

#[test]
fn pull_killed_at_any_moment_resumes_and_completes() {
    let hub = common::hub::HubServer::start();
    let bytes = common::gguf_bytes(&[
        ("a", 1024, 1024, 1),
        ("b", 1024, 1024, 2),
        ("c", 1024, 1024, 3),
    ]); // 12 MiB
    hub.add("org/big", "model.gguf", bytes.clone());
    hub.add("org/big", "config.json", b"{}".to_vec());
    // ~1.6 MB/s per connection so kills land mid-transfer.
    hub.state.throttle_us.store(40_000, Ordering::SeqCst);
    let d = tempfile::tempdir().unwrap();
    let home = d.path().join("home");
    let extra = [("CRASH_ENDPOINT", hub.endpoint.clone())];
    let mut any_finished = false;
    for i in 0..5u64 {
        any_finished |= spawn_and_kill("pull", &home, &extra, Duration::from_millis(300 + i * 100));
        assert_consistent(&home);
    }
    let before = hub.state.served.load(Ordering::SeqCst);
    assert!(before > 0);
    hub.state.throttle_us.store(0, Ordering::SeqCst);
    let mut reg = Registry::open(Some(home)).unwrap();
    let who = reg.principal(None).unwrap();
    let req = PullRequest {
        source: "hf://org/big".into(),
        ..Default::default()
    };
    let out = pull(&mut reg, &who, &req, &pull_opts(&hub.endpoint)).unwrap();
    let resumed = hub.state.served.load(Ordering::SeqCst) - before;
    println!("served before the last pull: {before}, during it: {resumed}");
    assert!(
        any_finished || resumed < bytes.len() as u64,
        "the final pull resumed instead of starting over"
    );
    assert_eq!(
        out.import
            .files
            .iter()
            .find(|f| f.path == "model.gguf")
            .unwrap()
            .sha256,
        common::sha256_hex(&bytes)
    );
    assert!(reg.verify(&who, true).unwrap().ok());
}

use std::sync::atomic::Ordering;
