//! A draft model inside the batching engine (`serve --speculative draft`), on the real
//! default model. The draft is the same model with a 4-bit KV cache, so it agrees
//! with the target often but not always: rejected drafts happen. Greedy output must
//! equal plain decoding token for token whatever the batch; sampled output must be
//! reproducible from its seed; the counters must show drafts being verified.

use hangar_engine::sampler::SamplingParams;
use hangar_engine::spec::{SpecConfig, SpecMode};
use hangar_engine::{
    CpuRunner, Engine, EngineConfig, Finish, GenerateRequest, LoadedModel, ModelRunner,
};
use hangar_models::kv::KvFormat;
use hangar_testkit::model_path;

mod common;
use common::{greedy_reference, run_all};

const PROMPTS: &[&str] = &[
    "The capital of France is",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n",
    "Write a short poem about the sea.",
    "1, 2, 3, 4, 5, 6,",
    "Passage: Marie Curie was born in Warsaw in 1867.\nQuestion: Where was she born?\nAnswer:",
    "List three colors:",
];

fn engine(path: &std::path::Path, max_batch: usize) -> Engine {
    let target = LoadedModel::load(path, 2).unwrap();
    let draft = LoadedModel::load(path, 1).unwrap();
    let LoadedModel {
        model,
        tokenizer,
        pool,
    } = draft;
    let mut runner = CpuRunner::new(model, pool);
    runner.set_kv_format(KvFormat::Q4_0).unwrap();
    let cfg = EngineConfig {
        speculative: SpecConfig {
            mode: SpecMode::Draft,
            draft_tokens: 5,
            max_batch,
            ..SpecConfig::default()
        },
        ..EngineConfig::default()
    };
    let LoadedModel {
        model,
        tokenizer: ttok,
        pool,
    } = target;
    Engine::start_with_draft(
        Box::new(CpuRunner::new(model, pool)),
        ttok,
        None,
        cfg,
        Some((Box::new(runner), tokenizer)),
    )
    .unwrap()
}

#[test]
fn draft_model_in_the_batch_matches_plain_greedy_token_for_token() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let prompts: Vec<Vec<u32>> = PROMPTS
        .iter()
        .map(|p| lm.tokenizer.encode(p, true, false))
        .collect();
    let n = 40;
    // max_batch 4 with six sequences: speculation switches off while more than four
    // run and back on as they finish, so slots are created, kept and freed.
    let e = engine(&path, 4);
    let reqs = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut r = GenerateRequest::greedy(p.clone(), n - 4 * (i % 3));
            r.ignore_eos = true;
            r
        })
        .collect();
    let outs = run_all(&e, reqs);
    for (i, o) in outs.iter().enumerate() {
        let len = n - 4 * (i % 3);
        let plain = greedy_reference(&lm, &prompts[i], len);
        assert_eq!(o.tokens, plain, "{:?}", PROMPTS[i]);
        assert_eq!((o.finish, o.completion_tokens), (Some(Finish::Length), len));
    }
    let s = e.stats();
    assert!(s.spec_steps > 0 && s.spec_drafted_tokens > 0, "{s:?}");
    assert!(s.spec_accepted_tokens > 0, "the same model drafts: {s:?}");
    assert!(s.spec_accepted_tokens <= s.spec_drafted_tokens, "{s:?}");
    assert_eq!(s.spec_draft_failures, 0);
    // Each verified step emits its accepted drafts plus the target's own token.
    assert_eq!(s.spec_emitted_tokens, s.spec_accepted_tokens + s.spec_steps);
}

#[test]
fn sampled_output_with_a_draft_model_is_reproducible_from_its_seed() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 1).unwrap();
    let e = engine(&path, 8);
    let req = |seed: u64| {
        let mut r = GenerateRequest::greedy(lm.tokenizer.encode(PROMPTS[2], true, false), 24);
        r.sampling = SamplingParams {
            temperature: 0.8,
            top_p: 0.95,
            seed: Some(seed),
            ..SamplingParams::greedy()
        };
        r.ignore_eos = true;
        r
    };
    let a = run_all(&e, vec![req(7), req(8), req(9)]);
    let b = run_all(&e, vec![req(9), req(7)]);
    assert_eq!(a[0].tokens, b[1].tokens);
    assert_eq!(a[2].tokens, b[0].tokens);
    assert_ne!(a[0].tokens, a[1].tokens, "different seeds, same 24 tokens");
    for o in a.iter().chain(&b) {
        assert_eq!(o.completion_tokens, 24);
    }
    assert!(e.stats().spec_drafted_tokens > 0);
}

#[test]
fn draft_mode_without_a_draft_model_is_refused() {
    let Some(path) = model_path() else { return };
    let cfg = EngineConfig {
        speculative: SpecConfig {
            mode: SpecMode::Draft,
            ..SpecConfig::default()
        },
        ..EngineConfig::default()
    };
    let err = match Engine::start(LoadedModel::load(&path, 1).unwrap(), cfg) {
        Ok(_) => panic!("a draft mode without a draft model started"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--draft-model"), "{err}");
}
