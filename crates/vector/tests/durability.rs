//! Durability: every upsert acknowledged with `wait` survives SIGKILL of the writing
//! process (a child re-running this test binary), and snapshots round-trip.

mod common;

use hangar_vector::{
    CollectionConfig, Distance, Point, PointId, SearchRequest, VectorDb, WithPayload,
};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

const CHILD_DIR: &str = "HANGAR_VECTOR_TEST_CHILD_DIR";

/// The child: upserts batches with wait=true forever, printing each acknowledged id
/// range; it only runs when the parent test starts it.
#[test]
#[ignore = "helper process of acknowledged_upserts_survive_sigkill"]
fn child_writer() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let db = VectorDb::open(&dir).unwrap();
    let c = db
        .create("k", CollectionConfig::new(8, Distance::Cosine))
        .unwrap();
    let mut r = common::rng(1);
    let mut next = 0u64;
    loop {
        let batch: Vec<Point> = (next..next + 10)
            .map(|i| Point {
                id: PointId::Num(i),
                vector: common::random_vec(&mut r, 8),
                payload: json!({"i": i}).as_object().unwrap().clone(),
            })
            .collect();
        c.write().unwrap().upsert(batch, true).unwrap();
        next += 10;
        println!("acked {next}");
    }
}

#[test]
fn acknowledged_upserts_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_writer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = 0u64;
    while acked < 300 {
        let line = lines.next().expect("child stopped early").unwrap();
        if let Some(n) = line.strip_prefix("acked ") {
            acked = n.trim().parse().unwrap();
        }
    }
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    // Anything printed before the kill was acknowledged too.
    for line in lines.map_while(|l| l.ok()) {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = acked.max(n.trim().parse().unwrap());
        }
    }
    let db = VectorDb::open(dir.path()).unwrap();
    let c = db.get("k").unwrap();
    let c = c.read().unwrap();
    assert!(
        c.len() as u64 >= acked,
        "{} points after recovery, {acked} acknowledged",
        c.len()
    );
    let ids: Vec<PointId> = (0..acked).map(PointId::Num).collect();
    let got = c.retrieve(&ids, &WithPayload::All, true);
    assert_eq!(got.len() as u64, acked);
    for (i, rec) in got.iter().enumerate() {
        assert_eq!(rec.payload.as_ref().unwrap()["i"], json!(i));
        assert_eq!(rec.vector.as_ref().unwrap().len(), 8);
    }
}

#[test]
fn snapshot_round_trip_restores_the_exact_content() {
    let dir = tempfile::tempdir().unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let c = db
        .create("s", CollectionConfig::new(6, Distance::Euclid))
        .unwrap();
    let pts = common::points(4, 300, 6);
    c.write().unwrap().upsert(pts.clone(), true).unwrap();
    let snap = c.write().unwrap().create_snapshot().unwrap();
    assert!(snap.size > 300 * 24);
    let all_ids: Vec<PointId> = pts.iter().map(|p| p.id).collect();
    let before = c
        .read()
        .unwrap()
        .retrieve(&all_ids, &WithPayload::All, true);
    let q = SearchRequest {
        vector: vec![0.1; 6],
        limit: 5,
        ..Default::default()
    };
    let hits_before = c.read().unwrap().search(&q).unwrap();

    // Change everything after the snapshot.
    c.write()
        .unwrap()
        .delete(all_ids[..150].to_vec(), true)
        .unwrap();
    c.write()
        .unwrap()
        .upsert(common::points(9, 10, 6), true)
        .unwrap();
    assert_ne!(
        c.read()
            .unwrap()
            .retrieve(&all_ids, &WithPayload::All, true),
        before
    );

    let path = c.read().unwrap().snapshot_path(&snap.name).unwrap();
    db.restore("s", &path).unwrap();
    let after = c
        .read()
        .unwrap()
        .retrieve(&all_ids, &WithPayload::All, true);
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a, b);
    }
    assert_eq!(c.read().unwrap().search(&q).unwrap(), hits_before);
    // Into a new collection, and after reopening from disk.
    db.restore("copy", &path).unwrap();
    drop(db);
    let db = VectorDb::open(dir.path()).unwrap();
    for name in ["s", "copy"] {
        let c = db.get(name).unwrap();
        assert_eq!(
            c.read()
                .unwrap()
                .retrieve(&all_ids, &WithPayload::All, true),
            before,
            "{name}"
        );
    }
    assert_eq!(
        db.get("s")
            .unwrap()
            .read()
            .unwrap()
            .list_snapshots()
            .unwrap()
            .len(),
        1
    );
    assert!(db
        .get("s")
        .unwrap()
        .read()
        .unwrap()
        .snapshot_path("../x.snapshot")
        .is_err());
    // A damaged snapshot is refused and changes nothing.
    let bad = dir.path().join("bad.snapshot");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xFF;
    std::fs::write(&bad, bytes).unwrap();
    assert!(db
        .restore("s", &bad)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
    assert_eq!(db.get("s").unwrap().read().unwrap().len(), 300);
}

#[test]
fn reopening_replays_the_log_and_checkpoints_fold_it() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = VectorDb::open(dir.path()).unwrap();
        let c = db
            .create("w", CollectionConfig::new(4, Distance::Dot))
            .unwrap();
        let mut c = c.write().unwrap();
        c.upsert(common::points(2, 50, 4), true).unwrap();
        c.checkpoint().unwrap();
        assert_eq!(c.info().wal_bytes, 0);
        c.delete(vec![PointId::Num(3)], true).unwrap();
        c.create_index("city", hangar_vector::IndexKind::Keyword, true)
            .unwrap();
    }
    let db = VectorDb::open(dir.path()).unwrap();
    let c = db.get("w").unwrap();
    let c = c.read().unwrap();
    assert_eq!(c.len(), 49);
    assert!(c.info().payload_schema.contains_key("city"));
    assert!(c
        .retrieve(&[PointId::Num(3)], &WithPayload::None, false)
        .is_empty());
}

/// Top-10 ids of a few fixed queries.
fn answers(c: &hangar_vector::Collection, dim: usize) -> Vec<Vec<PointId>> {
    let mut r = common::rng(99);
    (0..20)
        .map(|_| {
            let q = common::random_vec(&mut r, dim);
            c.search(&hangar_vector::SearchRequest {
                vector: q,
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect()
        })
        .collect()
}

#[test]
fn a_checkpointed_graph_is_read_back_not_rebuilt_and_a_bad_one_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let dim = 12;
    let before;
    {
        let db = VectorDb::open(dir.path()).unwrap();
        let c = db
            .create("g", CollectionConfig::new(dim, Distance::Cosine))
            .unwrap();
        let mut c = c.write().unwrap();
        c.upsert(common::points(5, 1500, dim), true).unwrap();
        // A few tombstones stay in the graph (under the rebuild share).
        c.delete((0..40).map(PointId::Num).collect(), true).unwrap();
        c.create_index("city", hangar_vector::IndexKind::Keyword, true)
            .unwrap();
        c.checkpoint().unwrap();
        before = answers(&c, dim);
    }
    let reopened = |expect_restored: bool| {
        let db = VectorDb::open(dir.path()).unwrap();
        let c = db.get("g").unwrap();
        let c = c.read().unwrap();
        assert_eq!(c.len(), 1460);
        assert_eq!(c.info().graph_restored, expect_restored);
        assert_eq!(c.info().deleted_rows, if expect_restored { 40 } else { 0 });
        answers(&c, dim)
    };
    // The same graph: the same answers, tombstones never returned.
    let after = reopened(true);
    assert_eq!(before, after);
    assert!(after
        .iter()
        .flatten()
        .all(|id| !matches!(id, PointId::Num(n) if *n < 40)));

    // Writes after the checkpoint are replayed on top of the saved graph.
    {
        let db = VectorDb::open(dir.path()).unwrap();
        let c = db.get("g").unwrap();
        let mut c = c.write().unwrap();
        let mut p = common::points(6, 1, dim).pop().unwrap();
        p.id = PointId::Num(7_000);
        let q = p.vector.clone();
        c.upsert(vec![p], true).unwrap();
        drop(c);
        drop(db);
        let db = VectorDb::open(dir.path()).unwrap();
        let c = db.get("g").unwrap();
        let c = c.read().unwrap();
        assert!(c.info().graph_restored);
        let hits = c
            .search(&hangar_vector::SearchRequest {
                vector: q,
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(hits[0].id, PointId::Num(7_000));
    }

    // A damaged graph file is ignored: the graph is rebuilt and answers stay right.
    let path = dir.path().join("g").join("graph.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    std::fs::write(&path, &bytes).unwrap();
    let db = VectorDb::open(dir.path()).unwrap();
    let c = db.get("g").unwrap();
    let c = c.read().unwrap();
    assert!(!c.info().graph_restored);
    assert_eq!(c.len(), 1461);
}

#[test]
fn a_store_open_elsewhere_is_refused_until_it_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let first = VectorDb::open(dir.path()).unwrap();
    first
        .create("x", CollectionConfig::new(2, Distance::Dot))
        .unwrap();
    let err = VectorDb::open(dir.path())
        .err()
        .expect("second open must fail");
    assert!(matches!(err, hangar_vector::VectorError::InUse(_)), "{err}");
    assert!(err.to_string().contains("hangar serve"), "{err}");
    drop(first);
    let again = VectorDb::open(dir.path()).unwrap();
    assert!(again.exists("x"));
}
