//! Speculative decoding inside the batching engine, on the real default model:
//! several sequences draft by prompt lookup and verify in the same batched step, and
//! every one emits exactly what plain decoding emits (greedy, and sampled with a
//! seed); stops and limits inside an accepted run end it where plain decoding ends;
//! only verified positions reach the prefix cache; preemption and sliding-window
//! layers keep working; the counters add up.

use hangar_engine::sampler::SamplingParams;
use hangar_engine::spec::{SpecConfig, SpecMode};
use hangar_engine::{Engine, EngineConfig, Finish, GenerateRequest, LoadedModel};
use hangar_testkit::model_path;

mod common;
use common::{greedy_reference as reference, run_all};

/// Prompts with text to copy (where drafts get accepted) and one without.
const PROMPTS: &[&str] = &[
    "Repeat the sentence three times.\nThe quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "Passage: Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 and studied physics at the Sorbonne.\nQuestion: Where was Marie Curie born?\nAnswer: Marie Curie was born in",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "The capital of France is",
];

fn spec(mode: SpecMode) -> SpecConfig {
    SpecConfig {
        mode,
        draft_tokens: 6,
        max_batch: 8,
        ..SpecConfig::default()
    }
}

fn engine(path: &std::path::Path, mode: SpecMode, cfg: EngineConfig) -> Engine {
    let cfg = EngineConfig {
        speculative: spec(mode),
        ..cfg
    };
    Engine::start(LoadedModel::load(path, 2).unwrap(), cfg).unwrap()
}

fn greedy(prompt: Vec<u32>, n: usize) -> GenerateRequest {
    let mut r = GenerateRequest::greedy(prompt, n);
    r.ignore_eos = true;
    r
}

#[test]
fn batched_prompt_lookup_matches_plain_greedy_token_for_token() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true, false))
        .collect();
    let n = 48;
    let e = engine(&path, SpecMode::Ngram, EngineConfig::default());
    let outs = run_all(&e, prompts.iter().map(|p| greedy(p.clone(), n)).collect());
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.tokens, reference(&lm, &prompts[i], n), "{:?}", PROMPTS[i]);
        assert_eq!((o.finish, o.completion_tokens), (Some(Finish::Length), n));
    }
    let s = e.stats();
    // The copying prompts must actually exercise acceptance, in fewer steps.
    assert!(s.spec_steps > 0 && s.spec_accepted_tokens > 40, "{s:?}");
    assert!(s.spec_accepted_tokens <= s.spec_drafted_tokens);
    assert_eq!(
        s.spec_emitted_tokens,
        s.spec_steps + s.spec_accepted_tokens,
        "each verifying step emits its accepted drafts plus one"
    );
    assert_eq!(s.generated_tokens, (n * PROMPTS.len()) as u64);
    assert!(
        s.steps < (n as u64),
        "{} steps for {n} tokens each",
        s.steps
    );
    assert_eq!(s.kv_blocks_used(), 0, "every block is returned");
}

#[test]
fn off_by_default_and_off_above_the_batch_limit() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let p = lm.tokenizer.encode(PROMPTS[0], true, false);
    let e = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    run_all(&e, vec![greedy(p.clone(), 16)]);
    assert_eq!(e.stats().spec_drafted_tokens, 0);
    // Five sequences with a limit of two: the batch is "compute-bound", so there are
    // no drafts while more than two run. (The first request may be admitted alone
    // and draft a step or two before the others arrive: compare with a limit of 8.)
    let drafted = |max_batch: usize| {
        let cfg = EngineConfig {
            speculative: SpecConfig {
                max_batch,
                ..spec(SpecMode::Ngram)
            },
            ..EngineConfig::default()
        };
        let e = Engine::start(LoadedModel::load(&path, 2).unwrap(), cfg).unwrap();
        run_all(&e, (0..5).map(|_| greedy(p.clone(), 24)).collect());
        e.stats().spec_drafted_tokens
    };
    let (limited, free) = (drafted(2), drafted(8));
    assert!(
        free > 40 && limited * 4 < free,
        "drafted {limited} at max 2, {free} at max 8"
    );
}

#[test]
fn stops_limits_and_seeded_sampling_match_plain_decoding() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let reqs = || -> Vec<GenerateRequest> {
        let mut out = Vec::new();
        for (i, p) in PROMPTS.iter().enumerate() {
            let ids = lm.tokenizer.encode(p, true, false);
            // A limit that falls inside an accepted run.
            out.push(greedy(ids.clone(), 5 + i));
            // A stop string the copied text reaches.
            let mut r = greedy(ids.clone(), 40);
            r.stop = vec![
                "lazy".into(),
                "return a *".into(),
                "1891".into(),
                "12".into(),
            ];
            out.push(r);
            // A stop token id.
            let mut r = greedy(ids.clone(), 40);
            r.stop_token_ids = vec![lm.tokenizer.encode(" fox", false, false)[0]];
            out.push(r);
            // Sampling with a seed and a repetition penalty: a prompt-lookup draft is a
            // point mass, so verification draws exactly once per emitted token and
            // the same seed gives the same tokens.
            let mut r = greedy(ids, 32);
            r.sampling = SamplingParams {
                seed: Some(7 + i as u64),
                repetition_penalty: 1.1,
                penalty_last_n: 32,
                ..SamplingParams::default()
            };
            out.push(r);
        }
        out
    };
    let plain = run_all(
        &engine(&path, SpecMode::Off, EngineConfig::default()),
        reqs(),
    );
    let e = engine(&path, SpecMode::Ngram, EngineConfig::default());
    let spec = run_all(&e, reqs());
    for (i, (a, b)) in plain.iter().zip(&spec).enumerate() {
        // Everything but `cached_tokens`, which depends on which earlier request's
        // blocks were published when this one was admitted (timing).
        assert_eq!(
            (&a.tokens, &a.text, a.finish, a.completion_tokens),
            (&b.tokens, &b.text, b.finish, b.completion_tokens),
            "request {i}"
        );
    }
    assert!(plain.iter().any(|o| o.finish == Some(Finish::Stop)));
    assert!(e.stats().spec_accepted_tokens > 0);
    assert_eq!(e.stats().kv_blocks_used(), 0);
}

#[test]
fn only_verified_positions_reach_the_prefix_cache() {
    // The same long copying prompt twice, one after the other: the second is served
    // from blocks the first published while it speculated. A block holding KV of a
    // rejected draft would change its tokens.
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(12);
    let p = lm.tokenizer.encode(&text, true, false);
    let n = 64;
    let want = reference(&lm, &p, n);
    let e = engine(&path, SpecMode::Ngram, EngineConfig::default());
    let first = run_all(&e, vec![greedy(p.clone(), n)]).remove(0);
    // Continue from the first answer: its generated blocks are in the cache now.
    let mut longer = p.clone();
    longer.extend_from_slice(&first.tokens);
    let second = run_all(&e, vec![greedy(longer.clone(), 16)]).remove(0);
    assert_eq!(first.tokens, want);
    assert!(
        second.cached_tokens > p.len(),
        "generated blocks were published: {} cached of {}",
        second.cached_tokens,
        longer.len()
    );
    assert_eq!(second.tokens, reference(&lm, &longer, 16));
    assert!(e.stats().spec_accepted_tokens > 20);
}

#[test]
fn preemption_and_sliding_windows_under_speculation() {
    // A pool too small for everyone, and prompts past Gemma 3's 512-token window:
    // recomputed and windowed sequences still emit plain greedy's tokens.
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let long = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ".repeat(30);
    let mut prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true, false))
        .collect();
    prompts.push(lm.tokenizer.encode(&long, true, false));
    assert!(prompts.last().unwrap().len() > 600);
    let cfg = EngineConfig {
        max_tokens_in_flight: Some(1024),
        max_batch_tokens: 64,
        ..EngineConfig::default()
    };
    let e = engine(&path, SpecMode::Ngram, cfg);
    let n = 48;
    let outs = run_all(&e, prompts.iter().map(|p| greedy(p.clone(), n)).collect());
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.tokens, reference(&lm, &prompts[i], n), "prompt {i}");
    }
    let s = e.stats();
    assert!(s.preemptions > 0, "expected preemptions: {s:?}");
    assert!(s.spec_accepted_tokens > 0);
    assert_eq!(s.kv_blocks_used(), 0);
}
