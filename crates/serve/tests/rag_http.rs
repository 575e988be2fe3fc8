//! Retrieval-augmented chat over a real socket: the default model and all-MiniLM-L6-v2
//! (skipped without them unless HANGAR_REQUIRE_MODEL=1), a collection ingested with
//! hangar-rag, `POST /v1/rag/chat` and `retrieval` on `/v1/chat/completions`, whole
//! and streamed, and the 400s for a missing collection or embedder.

mod common;

use common::Server;
use hangar_engine::{Embedder, EmbedderConfig, EmbeddingModel, Engine, EngineConfig, LoadedModel};
use hangar_rag::{DocFormat, IngestOptions, Ingestor};
use hangar_serve::{AppState, ServeConfig, Services};
use hangar_vector::VectorDb;
use serde_json::{json, Value};
use std::sync::Arc;

const KEY: &str = "k";

fn models() -> Option<(LoadedModel, Embedder)> {
    let path = hangar_testkit::model_path()?;
    let dir = hangar_testkit::embedder_dir()?;
    let e = Embedder::start(
        EmbeddingModel::load(&dir, "all-minilm-l6-v2").unwrap(),
        EmbedderConfig {
            threads: 2,
            ..EmbedderConfig::default()
        },
    );
    Some((LoadedModel::load(&path, 2).unwrap(), e))
}

fn state(lm: LoadedModel, db: Arc<VectorDb>, e: Option<Embedder>) -> Arc<AppState> {
    let engine = Engine::start(lm, EngineConfig::default()).unwrap();
    let mut s = Services::default()
        .with_inference(engine, "m")
        .with_vector(db);
    if let Some(e) = e {
        s = s.with_embeddings(e);
    }
    AppState::new(
        s,
        ServeConfig {
            api_keys: vec![KEY.into()],
            ..ServeConfig::default()
        },
    )
}

fn ingest(db: &VectorDb, e: &Embedder) {
    let mut ing = Ingestor::open(db, "kb", e, IngestOptions::default()).unwrap();
    ing.add(
        "bread.md",
        DocFormat::Markdown,
        "Bread is baked from flour, water, salt and yeast.",
    )
    .unwrap();
    ing.add(
        "tides.html",
        DocFormat::Html,
        "<p>Tides are caused by the Moon&#39;s gravity pulling on the oceans.</p>",
    )
    .unwrap();
    ing.finish().unwrap();
}

fn ask(q: &str, retrieval: Value, stream: bool) -> String {
    json!({"messages": [{"role": "user", "content": q}], "max_tokens": 8,
           "temperature": 0, "stream": stream, "retrieval": retrieval})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rag_chat_answers_with_citations_whole_and_streamed() {
    let Some((lm, e)) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(VectorDb::open(dir.path()).unwrap());
    // Ingest blocks on the embedder: off the async workers.
    tokio::task::block_in_place(|| ingest(&db, &e));
    let srv = Server::start(state(lm, db, Some(e))).await;

    let q = "What causes the tides?";
    for path in ["/v1/rag/chat", "/v1/chat/completions"] {
        let r = srv
            .post(
                path,
                Some(KEY),
                &ask(q, json!({"collection": "kb", "top_k": 2}), false),
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        let c = v["citations"].as_array().unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["index"], 1);
        assert_eq!(c[0]["source"], "tides.html");
        assert_eq!(
            c[0]["text"],
            "Tides are caused by the Moon's gravity pulling on the oceans."
        );
        assert!(c[0]["score"].as_f64().unwrap() > c[1]["score"].as_f64().unwrap());
        // The prompt holds the passages: more prompt tokens than the question alone.
        assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 30, "{v}");
    }
    // A plain chat completion has no citations field.
    let plain = json!({"messages": [{"role": "user", "content": q}], "max_tokens": 4}).to_string();
    let r = srv.post("/v1/chat/completions", Some(KEY), &plain).await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("citations").is_none());

    let r = srv
        .post(
            "/v1/rag/chat",
            Some(KEY),
            &ask(q, json!({"collection": "kb", "top_k": 1}), true),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let events: Vec<Value> = r
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["citations"][0]["source"], "tides.html");
    assert!(events[1..].iter().all(|e| e.get("citations").is_none()));

    let r = srv
        .post(
            "/v1/rag/chat",
            Some(KEY),
            &ask(q, json!({"collection": "nope"}), false),
        )
        .await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("\"nope\" does not exist") && msg.contains("hangar ingest"),
        "{msg}"
    );
    let r = srv
        .post(
            "/v1/rag/chat",
            None,
            &ask(q, json!({"collection": "kb"}), false),
        )
        .await;
    assert_eq!(r.status, 401);
    srv.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieval_without_an_embedding_model_is_a_400() {
    let Some((lm, _)) = models() else { return };
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(VectorDb::open(dir.path()).unwrap());
    let srv = Server::start(state(lm, db, None)).await;
    let r = srv
        .post(
            "/v1/chat/completions",
            Some(KEY),
            &ask("q", json!({"collection": "kb"}), false),
        )
        .await;
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["param"], "retrieval");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("--embedding-model"), "{msg}");
    srv.shutdown().await;
}
