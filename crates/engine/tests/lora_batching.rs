//! LoRA adapters in the engine, on the real default model: a batch mixing the base
//! model and two adapters gives every sequence the tokens it gets alone; the prefix
//! cache never hands one adapter's KV to another (or to the base); requests naming an
//! adapter the backend cannot run are refused before they queue.

use hangar_engine::{
    Engine, EngineConfig, GenerateRequest, LoadedModel, LoraAdapter, LoraShape, LoraTarget,
};
use hangar_models::{LoadOptions, LoraMatrix, Numerics};
use hangar_testkit::model_path;
use std::sync::Arc;

mod common;
use common::{collect, Outcome};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a land far away,",
    "def fibonacci(n):",
];

/// A deterministic adapter on every projection: A ~ unit variance / in, B scaled so
/// each delta is a few percent of a typical weight.
fn adapter(shape: &LoraShape, rank: usize, seed: u64) -> Arc<LoraAdapter> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.464
    };
    let mut a = LoraAdapter::new(shape.clone());
    for layer in 0..shape.n_layers {
        for t in LoraTarget::ALL {
            let (rows, cols) = shape.dims(t);
            let av: Vec<f32> = (0..rank * cols)
                .map(|_| next() / (cols as f32).sqrt())
                .collect();
            let bv: Vec<f32> = (0..rows * rank).map(|_| next() * 0.01).collect();
            let m = LoraMatrix::new(rank, rows, cols, av, &bv, 2.0).unwrap();
            a.insert(layer, t, m).unwrap();
        }
    }
    Arc::new(a)
}

fn request(prompt: &[u32], adapter: &Option<Arc<LoraAdapter>>, n: usize) -> GenerateRequest {
    let mut r = GenerateRequest::greedy(prompt.to_vec(), n);
    r.ignore_eos = true;
    r.adapter = adapter.clone();
    r
}

/// One request at a time: nothing else in its batches.
fn alone(engine: &Engine, prompt: &[u32], adapter: &Option<Arc<LoraAdapter>>) -> Outcome {
    collect(engine.submit(request(prompt, adapter, 24)).unwrap().1)
}

#[test]
fn mixed_adapter_batch_matches_each_sequence_alone() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let shape = LoraShape::of(&lm.model.cfg);
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true, false))
        .collect();
    let (a, b) = (adapter(&shape, 8, 1), adapter(&shape, 16, 2));
    let choices = [None, Some(a), Some(b)];
    // No prefix cache: every run computes its own KV.
    let cfg = EngineConfig {
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let engine = Engine::start(lm, cfg).unwrap();
    let mut want = Vec::new();
    for p in &prompts {
        for c in &choices {
            want.push(alone(&engine, p, c).tokens);
        }
    }
    for (i, w) in want.chunks(3).enumerate() {
        assert_ne!(w[0], w[1], "adapter A changes {:?}", PROMPTS[i]);
        assert_ne!(w[0], w[2], "adapter B changes {:?}", PROMPTS[i]);
        assert_ne!(w[1], w[2], "the adapters differ on {:?}", PROMPTS[i]);
    }
    // All nine at once, interleaved: base rows next to both adapters' rows.
    let rxs: Vec<_> = prompts
        .iter()
        .flat_map(|p| choices.iter().map(move |c| (p, c)))
        .map(|(p, c)| engine.submit(request(p, c, 24)).unwrap().1)
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let got = collect(rx);
        assert_eq!(
            got.tokens,
            want[i],
            "prompt {:?} under choice {} differs in the mixed batch",
            PROMPTS[i / 3],
            i % 3
        );
    }
    assert_eq!(engine.stats().kv_blocks_used(), 0);
}

#[test]
fn prefix_cache_never_shares_kv_between_adapters() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let shape = LoraShape::of(&lm.model.cfg);
    // Three full blocks of 16 and a tail.
    let text = "In the beginning there was a quiet village by the river, where the people \
                grew wheat and barley and told long stories about the mountains beyond. \
                Every winter the snow closed the passes, and the children listened to the \
                old miller, who remembered the year the bridge fell.";
    let prompt = lm.tokenizer.encode(text, true, false);
    assert!(prompt.len() > 40, "{} tokens", prompt.len());
    let (a, b) = (Some(adapter(&shape, 8, 3)), Some(adapter(&shape, 8, 4)));
    // References without any cache.
    let fresh = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig {
            prefix_caching: false,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let want_a = alone(&fresh, &prompt, &a).tokens;
    let want_b = alone(&fresh, &prompt, &b).tokens;
    let want_base = alone(&fresh, &prompt, &None).tokens;
    drop(fresh);

    let engine = Engine::start(lm, EngineConfig::default()).unwrap();
    let first_a = alone(&engine, &prompt, &a);
    assert_eq!(first_a.cached_tokens, 0);
    assert_eq!(first_a.tokens, want_a);
    // Adapter A's blocks are in the cache now; B and the base must not use them.
    let got_b = alone(&engine, &prompt, &b);
    assert_eq!(got_b.cached_tokens, 0, "adapter B reused adapter A's KV");
    assert_eq!(got_b.tokens, want_b);
    let got_base = alone(&engine, &prompt, &None);
    assert_eq!(
        got_base.cached_tokens, 0,
        "the base model reused an adapter's KV"
    );
    assert_eq!(got_base.tokens, want_base);
    // The same adapter again does hit, and still gives its own tokens.
    let again_a = alone(&engine, &prompt, &a);
    assert!(again_a.cached_tokens >= 32, "{}", again_a.cached_tokens);
    assert_eq!(again_a.tokens, want_a);
    let again_base = alone(&engine, &prompt, &None);
    assert!(again_base.cached_tokens >= 32);
    assert_eq!(again_base.tokens, want_base);
    // A copy of A with the same weights is a new adapter object: no reuse (a reloaded
    // file is never trusted to be the same).
    let copy = Some(adapter(&shape, 8, 3));
    let got_copy = alone(&engine, &prompt, &copy);
    assert_eq!(got_copy.cached_tokens, 0);
    assert_eq!(got_copy.tokens, want_a);
}

#[test]
fn adapters_that_cannot_run_are_refused_at_submit() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let shape = LoraShape::of(&lm.model.cfg);
    let prompt = lm.tokenizer.encode("Hello", true, false);
    let engine = Engine::start(lm, EngineConfig::default()).unwrap();
    // Made for a model with a wider FFN.
    let mut other = shape.clone();
    other.ffn_dim *= 2;
    let wrong = Some(adapter(&other, 4, 5));
    let err = engine.submit(request(&prompt, &wrong, 4)).unwrap_err();
    assert!(err.to_string().contains("does not fit"), "{err}");
    // llama.cpp's exact arithmetic has no adapter path.
    let ggml = LoadedModel::load_with(
        &path,
        2,
        LoadOptions {
            numerics: Numerics::Ggml,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let engine = Engine::start(ggml, EngineConfig::default()).unwrap();
    assert!(engine.info().lora.is_none());
    let ok = Some(adapter(&shape, 4, 6));
    let err = engine.submit(request(&prompt, &ok, 4)).unwrap_err();
    assert!(err.to_string().contains("does not apply LoRA"), "{err}");
    // The base model still runs there.
    let got = collect(engine.submit(request(&prompt, &None, 4)).unwrap().1);
    assert_eq!(got.tokens.len(), 4);
}
