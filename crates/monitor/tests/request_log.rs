//! The request log against a real SQLite file: records survive a reopen, redaction and
//! sampling apply, retention bounds the table, search and export find what was stored.

use hangar_monitor::{LogConfig, LogQuery, RequestLog, RequestRecord};

fn rec(i: usize, prompt: &str) -> RequestRecord {
    RequestRecord {
        ts_ms: hangar_monitor::now_ms(),
        request_id: format!("req-{i}"),
        route: "/v1/chat/completions".into(),
        model: if i.is_multiple_of(2) { "a" } else { "b" }.into(),
        prompt: prompt.into(),
        response: format!("answer {i}"),
        prompt_tokens: 10,
        completion_tokens: i as u64,
        finish_reason: "stop".into(),
        status: 200,
        ..Default::default()
    }
}

#[test]
fn records_survive_a_reopen_and_search_finds_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("monitor/requests.db");
    {
        let log = RequestLog::open(&path, LogConfig::default()).unwrap();
        for i in 0..50 {
            assert!(log.record(rec(i, &format!("question number {i} about Rust"))));
        }
        log.close();
    }
    let log = RequestLog::open(&path, LogConfig::default()).unwrap();
    assert_eq!(log.count().unwrap(), 50);
    let tail = log.tail(3).unwrap();
    assert_eq!(
        tail.iter()
            .map(|r| r.request_id.as_str())
            .collect::<Vec<_>>(),
        ["req-49", "req-48", "req-47"]
    );
    let hits = log
        .search(&LogQuery {
            text: Some("NUMBER 7 ".into()),
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].completion_tokens, 7);
    let only_b = log
        .search(&LogQuery {
            model: Some("b".into()),
            limit: 100,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(only_b.len(), 25);
    let one = log.get(hits[0].id).unwrap().unwrap();
    assert_eq!(one, hits[0]);
    let mut out = Vec::new();
    let n = log
        .export_jsonl(
            &LogQuery {
                limit: 1000,
                ..Default::default()
            },
            &mut out,
        )
        .unwrap();
    assert_eq!(n, 50);
    let first: RequestRecord =
        serde_json::from_str(std::str::from_utf8(&out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first.request_id, "req-0");
}

#[test]
fn redaction_happens_before_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("requests.db");
    let log = RequestLog::open(
        &path,
        LogConfig {
            redact: true,
            ..Default::default()
        },
    )
    .unwrap();
    log.record(rec(
        1,
        "my mail is bob@example.com and card 4111-1111-1111-1111",
    ));
    log.flush();
    let r = &log.tail(1).unwrap()[0];
    assert_eq!(r.prompt, "my mail is [EMAIL] and card [CARD]");
    log.close();
    let raw = std::fs::read(&path).unwrap();
    let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
    for bytes in [raw, wal] {
        assert!(!String::from_utf8_lossy(&bytes).contains("bob@example.com"));
    }
}

#[test]
fn sampling_keeps_about_the_asked_share() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(
        dir.path().join("r.db"),
        LogConfig {
            sample_rate: 0.25,
            ..Default::default()
        },
    )
    .unwrap();
    let kept = (0..4000).filter(|&i| log.record(rec(i, "x"))).count();
    assert!((850..=1150).contains(&kept), "kept {kept} of 4000 at 25%");
    log.flush();
    assert_eq!(log.count().unwrap(), kept as u64);
}

#[test]
fn retention_keeps_the_newest_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let cfg = LogConfig {
        max_rows: 100,
        ..Default::default()
    };
    let log = RequestLog::open(&path, cfg.clone()).unwrap();
    for i in 0..1500 {
        log.record(rec(i, "x"));
    }
    log.flush();
    hangar_monitor::log::enforce_retention(&path, &cfg).unwrap();
    assert_eq!(log.count().unwrap(), 100);
    assert_eq!(log.tail(1).unwrap()[0].request_id, "req-1499");
    let old = rec(0, "old");
    let log2 = RequestLog::open(
        dir.path().join("age.db"),
        LogConfig {
            max_age: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .unwrap();
    log2.record(RequestRecord {
        ts_ms: old.ts_ms - 3_600_000,
        ..old
    });
    log2.record(rec(1, "new"));
    log2.flush();
    hangar_monitor::log::enforce_retention(
        &dir.path().join("age.db"),
        &LogConfig {
            max_age: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(log2.count().unwrap(), 1);
}

#[test]
fn a_full_queue_drops_instead_of_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let log = RequestLog::open(
        dir.path().join("r.db"),
        LogConfig {
            queue: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let t = std::time::Instant::now();
    for i in 0..20_000 {
        log.record(rec(i, "x"));
    }
    // Handing over never waits on the disk: 20 000 records in well under a second.
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    log.flush();
    let written = log.count().unwrap();
    let dropped = log
        .counters
        .dropped
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(written + dropped, 20_000);
}
