//! Embeddings on the real all-MiniLM-L6-v2 (`hangar pull embedder`): vectors against
//! sentence-transformers' (`tests/data/minilm_reference.json`, from
//! `scripts/make-embedding-reference.py`), batch invariance, and the queue's limits.

use hangar_engine::{
    EmbedError, EmbedInput, EmbedRequest, Embedder, EmbedderConfig, EmbeddingModel, InputKind,
};
use hangar_kernels::ThreadPool;
use hangar_models::EncoderWorkspace;

fn model() -> Option<EmbeddingModel> {
    let dir = hangar_testkit::embedder_dir()?;
    Some(EmbeddingModel::load(&dir, "all-minilm-l6-v2").expect("load the embedding model"))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn vectors_match_sentence_transformers() {
    let Some(m) = model() else { return };
    let path = hangar_testkit::repo_file("crates/engine/tests/data/minilm_reference.json");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let texts: Vec<&str> = r["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let want: Vec<Vec<f32>> = r["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    assert!(texts.len() >= 200 && texts.len() == want.len());
    assert_eq!(
        m.max_tokens(),
        r["max_seq_length"].as_u64().unwrap() as usize
    );
    let pool = ThreadPool::new(2);
    let mut ws = EncoderWorkspace::default();
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| m.tokenize(i, t, InputKind::Document, true).unwrap())
        .collect();
    let mut worst = (1.0f64, 0usize);
    for (b, chunk) in ids.chunks(16).enumerate() {
        let seqs: Vec<&[u32]> = chunk.iter().map(Vec::as_slice).collect();
        let got = m.embed_ids(&pool, &seqs, true, &mut ws).unwrap();
        for (k, v) in got.iter().enumerate() {
            let i = b * 16 + k;
            let c = cosine(v, &want[i]);
            if c < worst.0 {
                worst = (c, i);
            }
        }
    }
    eprintln!("lowest cosine {:.7} (text {})", worst.0, worst.1);
    assert!(
        worst.0 >= 0.9999,
        "text {:?}: cosine {}",
        texts[worst.1],
        worst.0
    );
}

#[test]
fn a_vector_does_not_change_when_batched_with_longer_texts() {
    let Some(m) = model() else { return };
    let pool = ThreadPool::new(2);
    let mut ws = EncoderWorkspace::default();
    let texts = [
        "A short text.",
        &"A much longer text that goes on and on, with many more tokens than the first. ".repeat(5),
        "Tiny",
        &"Another long one: café, 東京, emoji 😀. ".repeat(8),
    ];
    let ids: Vec<Vec<u32>> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| m.tokenize(i, t, InputKind::Document, false).unwrap())
        .collect();
    let seqs: Vec<&[u32]> = ids.iter().map(Vec::as_slice).collect();
    let together = m.embed_ids(&pool, &seqs, true, &mut ws).unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let alone = m.embed_ids(&pool, &[s], true, &mut ws).unwrap();
        assert_eq!(alone[0], together[i], "text {i} changed when batched");
    }
    // And in reverse order, so the short text sits after the long ones.
    let rev: Vec<&[u32]> = seqs.iter().rev().copied().collect();
    let reversed = m.embed_ids(&pool, &rev, true, &mut ws).unwrap();
    assert_eq!(reversed[3], together[0]);
}

#[test]
fn the_queue_batches_concurrent_requests_and_refuses_long_inputs() {
    let Some(m) = model() else { return };
    let pool = ThreadPool::new(2);
    let mut ws = EncoderWorkspace::default();
    let direct_ids = m
        .tokenize(0, "the queue", InputKind::Document, false)
        .unwrap();
    let direct = m.embed_ids(&pool, &[&direct_ids], true, &mut ws).unwrap();
    let max = m.max_tokens();
    let e = Embedder::start(
        m,
        EmbedderConfig {
            threads: 2,
            max_batch_tokens: 64,
            max_batch_inputs: 8,
        },
    );
    let long = "word ".repeat(400);
    let err = e
        .embed_blocking(EmbedRequest {
            inputs: vec![
                EmbedInput::Text("ok".into()),
                EmbedInput::Text(long.clone()),
            ],
            ..Default::default()
        })
        .unwrap_err();
    assert!(
        matches!(err, EmbedError::TooLong { index: 1, max: m2, .. } if m2 == max),
        "{err}"
    );
    assert!(err.is_client_error());
    let ok = e
        .embed_blocking(EmbedRequest {
            inputs: vec![EmbedInput::Text(long)],
            truncate: true,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ok.prompt_tokens, max);
    let handles: Vec<_> = (0..8)
        .map(|k| {
            let e = e.clone();
            std::thread::spawn(move || {
                let inputs = (0..=k)
                    .map(|j| {
                        EmbedInput::Text(if j == 0 {
                            "the queue".into()
                        } else {
                            format!("text {j} of request {k}")
                        })
                    })
                    .collect();
                e.embed_blocking(EmbedRequest {
                    inputs,
                    ..Default::default()
                })
                .unwrap()
            })
        })
        .collect();
    for (k, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap();
        assert_eq!(out.vectors.len(), k + 1);
        assert_eq!(out.vectors[0], direct[0], "request {k}");
        let norm: f32 = out.vectors[k].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
    }
    let raw = e
        .embed_blocking(EmbedRequest {
            inputs: vec![EmbedInput::Ids(vec![101, 7592, 102])],
            normalize: Some(false),
            ..Default::default()
        })
        .unwrap();
    let norm: f32 = raw.vectors[0].iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (norm - 1.0).abs() > 1e-3,
        "normalize: false keeps the raw length ({norm})"
    );
    let bad = e.embed_blocking(EmbedRequest {
        inputs: vec![EmbedInput::Ids(vec![101, 999_999])],
        ..Default::default()
    });
    assert!(matches!(bad, Err(EmbedError::BadToken { .. })));
}
