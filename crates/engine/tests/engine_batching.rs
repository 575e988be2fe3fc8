//! End-to-end tests of the engine loop on the real default model: continuous batching
//! gives the same greedy tokens as single-sequence generation, preemption under a tiny
//! KV pool still finishes everything, cancellation frees blocks, prefixes are shared.

use hangar_engine::sampler::SamplingParams;
use hangar_engine::{
    generate, Engine, EngineConfig, Finish, GenerateOptions, GenerateRequest, LoadedModel,
    TokenEvent,
};
use hangar_testkit::model_path;

mod common;
use common::{collect, Outcome};
use std::time::{Duration, Instant};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "Once upon a time, in a land far away,",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "A haiku about the sea:",
];

fn reference(lm: &LoadedModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    generate(lm, prompt, &opts, |_| true)
        .expect("generate")
        .tokens
}

fn encode_prompts(lm: &LoadedModel) -> Vec<Vec<u32>> {
    PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true, false))
        .collect()
}

fn ignore_eos(prompt: Vec<u32>, n: usize) -> GenerateRequest {
    let mut r = GenerateRequest::greedy(prompt, n);
    r.ignore_eos = true;
    r
}

#[test]
fn batched_greedy_matches_single_sequence_generate() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let prompts = encode_prompts(&lm);
    let want: Vec<Vec<u32>> = prompts.iter().map(|p| reference(&lm, p, 24)).collect();
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(ignore_eos(p.clone(), 24)).unwrap().1)
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        let got = collect(rx);
        assert_eq!(got.tokens, want[i], "prompt {:?}", PROMPTS[i]);
        assert_eq!(got.finish, Some(Finish::Length));
        assert_eq!(got.completion_tokens, 24);
    }
    let s = engine.stats();
    assert_eq!(s.kv_blocks_used(), 0, "every block is returned");
}

#[test]
fn preemption_under_a_tiny_kv_pool_still_finishes_every_request() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let cfg = EngineConfig {
        max_tokens_in_flight: Some(640),
        max_batch_tokens: 64,
        ..EngineConfig::default()
    };
    let engine = Engine::start(LoadedModel::load(&path, 2).unwrap(), cfg).unwrap();
    let n = 64;
    let prompts: Vec<Vec<u32>> = (0..12)
        .map(|i| lm.tokenizer.encode(PROMPTS[i % PROMPTS.len()], true, false))
        .collect();
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| engine.submit(ignore_eos(p.clone(), n)).unwrap().1)
        .collect();
    let outs: Vec<Outcome> = rxs.into_iter().map(collect).collect();
    let stats = engine.stats();
    assert!(
        stats.preemptions > 0,
        "the pool is too small for all at once: expected preemptions"
    );
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.finish, Some(Finish::Length), "request {i}");
        assert_eq!(o.tokens.len(), n, "request {i}");
    }
    // Recomputation after preemption gives the same tokens as an undisturbed run.
    for i in 0..PROMPTS.len() {
        assert_eq!(
            outs[i].tokens,
            reference(&lm, &prompts[i], n),
            "prompt {:?}",
            PROMPTS[i]
        );
    }
    assert_eq!(stats.kv_blocks_used(), 0);
}

#[test]
fn dropping_the_receiver_cancels_and_frees_blocks() {
    let Some(path) = model_path() else { return };
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let prompt = engine
        .tokenizer()
        .encode("Tell me a very long story about dragons.", true, false);
    let (_id, mut rx) = engine.submit(ignore_eos(prompt, 2000)).unwrap();
    // Wait for a few tokens, then walk away.
    for _ in 0..3 {
        assert!(matches!(rx.blocking_recv(), Some(TokenEvent::Token(_))));
    }
    assert!(engine.stats().kv_blocks_used() > 0);
    drop(rx);
    let t0 = Instant::now();
    while engine.stats().kv_blocks_used() > 0 || engine.stats().running > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "blocks were not freed after the receiver went away"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn explicit_cancel_frees_blocks() {
    let Some(path) = model_path() else { return };
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let prompt = engine
        .tokenizer()
        .encode("Count to one thousand:", true, false);
    let (id, mut rx) = engine.submit(ignore_eos(prompt, 2000)).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(TokenEvent::Token(_))));
    engine.cancel(id);
    // The stream ends without a Done event.
    while let Some(ev) = rx.blocking_recv() {
        assert!(matches!(ev, TokenEvent::Token(_)), "unexpected {ev:?}");
    }
    let t0 = Instant::now();
    while engine.stats().kv_blocks_used() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn repeated_system_prompt_is_served_from_the_prefix_cache() {
    let Some(path) = model_path() else { return };
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let system =
        "You are a helpful assistant who answers questions about geography, history and science. \
                  Always answer in one short sentence and never make things up. "
            .repeat(3);
    let a = engine.tokenizer().encode(
        &format!("{system}Question: what is the capital of Italy?"),
        true,
        false,
    );
    let b = engine.tokenizer().encode(
        &format!("{system}Question: how tall is Mount Everest?"),
        true,
        false,
    );
    let first = collect(
        engine
            .submit(GenerateRequest::greedy(a.clone(), 4))
            .unwrap()
            .1,
    );
    assert_eq!(first.cached_tokens, 0);
    let second = collect(engine.submit(GenerateRequest::greedy(b, 4)).unwrap().1);
    let shared = a.iter().zip(&second.tokens).count().min(a.len());
    assert!(
        second.cached_tokens >= 16,
        "expected a prefix hit, got {} cached tokens",
        second.cached_tokens
    );
    assert!(shared > 0);
    // The same prompt again: every whole block but the last token's is reused, and the
    // answer is unchanged.
    let again = collect(
        engine
            .submit(GenerateRequest::greedy(a.clone(), 4))
            .unwrap()
            .1,
    );
    assert_eq!(again.tokens, first.tokens);
    assert!(again.cached_tokens >= (a.len() - 1) / 16 * 16);
    assert!(engine.stats().prefix_hit_rate() > 0.0);
}

#[test]
fn rejects_requests_beyond_the_context() {
    let Some(path) = model_path() else { return };
    let cfg = EngineConfig {
        max_model_len: Some(64),
        ..EngineConfig::default()
    };
    let engine = Engine::start(LoadedModel::load(&path, 2).unwrap(), cfg).unwrap();
    assert!(engine
        .submit(GenerateRequest::greedy(vec![2; 60], 10))
        .is_err());
    assert!(engine.submit(GenerateRequest::greedy(vec![], 10)).is_err());
    assert!(engine
        .submit(GenerateRequest::greedy(vec![u32::MAX], 1))
        .is_err());
    assert!(engine
        .submit(GenerateRequest::greedy(vec![2; 10], 10))
        .is_ok());
}

#[test]
fn lone_request_matches_single_sequence_generate() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    for p in PROMPTS.iter().take(3) {
        let prompt = lm.tokenizer.encode(p, true, false);
        let want = reference(&lm, &prompt, 24);
        let got = collect(engine.submit(ignore_eos(prompt, 24)).unwrap().1);
        assert_eq!(got.tokens, want, "prompt {p:?}");
    }
}

#[test]
fn long_prompts_past_the_sliding_window_match_generate_and_share_prefixes() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    // ~1300 tokens: several prefill chunks, and well past Gemma 3's 512-token window.
    let base = "The history of the lighthouse keepers on the northern islands is long and full of storms. ".repeat(70);
    let a = lm.tokenizer.encode(&format!("{base}Summary:"), true, false);
    let b = lm
        .tokenizer
        .encode(&format!("{base}In short,"), true, false);
    assert!(a.len() > 1100, "prompt has {} tokens", a.len());
    let want_a = reference(&lm, &a, 12);
    let want_b = reference(&lm, &b, 12);
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let got_a = collect(engine.submit(ignore_eos(a.clone(), 12)).unwrap().1);
    assert_eq!(got_a.tokens, want_a);
    // The second prompt shares all but its last few tokens: served from the cache,
    // with only the window's blocks needed for the sliding-window layers.
    let got_b = collect(engine.submit(ignore_eos(b.clone(), 12)).unwrap().1);
    assert!(got_b.cached_tokens > 1000, "cached {}", got_b.cached_tokens);
    assert_eq!(got_b.tokens, want_b);
    let stats = engine.stats();
    assert_eq!(stats.kv_blocks_used(), 0);
    // Sliding-window blocks were released along the way: the windowed group never
    // held more than a window plus a chunk per sequence.
    assert!(stats.kv.len() == 2);
}

/// The engine's greedy rows go through the runner's greedy head (the argmax without
/// writing logits, the request's biased tokens reported apart); `generate` samples
/// from full logits rows. With logit biases that ban the natural choice, favour
/// others and force one token, both give the same tokens.
#[test]
fn greedy_head_with_logit_bias_matches_full_logits_sampling() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let prompts = encode_prompts(&lm);
    let n = 12;
    let unbiased: Vec<Vec<u32>> = prompts.iter().map(|p| reference(&lm, p, n)).collect();
    // Per prompt: ban its first two greedy tokens, nudge a few others (duplicates and
    // an id past the vocabulary included); the last prompt forces one token.
    let biases: Vec<Vec<(u32, f32)>> = unbiased
        .iter()
        .enumerate()
        .map(|(i, u)| {
            if i + 1 == unbiased.len() {
                vec![(4_000, 60.0)]
            } else {
                vec![
                    (u[0], -100.0),
                    (u[1], -100.0),
                    (u[2], 0.5),
                    (u[2], 0.25),
                    (10, 1.0),
                    (u32::MAX - 1, 5.0),
                ]
            }
        })
        .collect();
    let want: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&biases)
        .map(|(p, b)| {
            let mut sampling = SamplingParams::greedy();
            sampling.logit_bias = b.clone();
            let opts = GenerateOptions {
                max_tokens: n,
                sampling,
                ignore_eos: true,
                ..Default::default()
            };
            generate(&lm, p, &opts, |_| true).expect("generate").tokens
        })
        .collect();
    assert_ne!(want[0], unbiased[0], "the ban changes the output");
    assert!(
        want.last().unwrap().iter().all(|&t| t == 4_000),
        "the forced token wins"
    );
    let engine = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let rxs: Vec<_> = prompts
        .iter()
        .zip(&biases)
        .map(|(p, b)| {
            let mut r = ignore_eos(p.clone(), n);
            r.sampling.logit_bias = b.clone();
            engine.submit(r).unwrap().1
        })
        .collect();
    for (i, rx) in rxs.into_iter().enumerate() {
        assert_eq!(collect(rx).tokens, want[i], "prompt {:?}", PROMPTS[i]);
    }
}
