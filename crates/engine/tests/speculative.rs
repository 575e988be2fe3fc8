//! Speculative decoding on the real default model: prompt-lookup and draft-model
//! speculation emit exactly the tokens of plain decoding (greedy, and sampled with
//! the same seed), and stops, EOS and max_tokens inside an accepted run end it where
//! plain decoding ends.

use hangar_engine::sampler::SamplingParams;
use hangar_engine::spec::{DraftModel, SpecConfig, SpecMode};
use hangar_engine::{
    generate, generate_with_draft, BorrowedCpuRunner, FakeRunner, GenerateOptions, Generation,
    LoadedModel,
};
use hangar_testkit::model_path;

/// Prompts with text to copy (where drafts get accepted) and one without.
const PROMPTS: &[&str] = &[
    "Repeat the sentence three times.\nThe quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog. The quick",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "Passage: Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 and studied physics at the Sorbonne.\nQuestion: Where was Marie Curie born?\nAnswer: Marie Curie was born in",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "The capital of France is",
];

fn opts(sampling: SamplingParams, mode: SpecMode, n: usize) -> GenerateOptions {
    GenerateOptions {
        max_tokens: n,
        sampling,
        ignore_eos: true,
        speculative: SpecConfig {
            mode,
            draft_tokens: 6,
            ..SpecConfig::default()
        },
        ..Default::default()
    }
}

fn run(lm: &LoadedModel, prompt: &str, o: &GenerateOptions) -> Generation {
    let ids = lm.tokenizer.encode(prompt, true, false);
    generate(lm, &ids, o, |_| true).expect("generate")
}

#[test]
fn ngram_greedy_matches_plain_greedy_token_for_token() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let mut accepted = 0;
    for p in PROMPTS {
        let plain = run(&lm, p, &opts(SamplingParams::greedy(), SpecMode::Off, 48));
        let spec = run(&lm, p, &opts(SamplingParams::greedy(), SpecMode::Ngram, 48));
        assert_eq!(spec.tokens, plain.tokens, "prompt {p:?}");
        assert_eq!(spec.text, plain.text);
        assert_eq!(plain.spec.drafted, 0);
        accepted += spec.spec.accepted;
        assert!(spec.spec.steps < 48);
    }
    // The copying prompts must actually exercise acceptance.
    assert!(accepted > 40, "only {accepted} drafted tokens accepted");
}

#[test]
fn ngram_sampling_with_a_seed_matches_plain_sampling() {
    // A point-mass draft leaves the sampler's random stream untouched (one draw per
    // emitted token), so the same seed gives the same tokens.
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let sampling = SamplingParams {
        seed: Some(11),
        repetition_penalty: 1.1,
        penalty_last_n: 32,
        ..SamplingParams::default()
    };
    for p in PROMPTS {
        let plain = run(&lm, p, &opts(sampling.clone(), SpecMode::Off, 40));
        let spec = run(&lm, p, &opts(sampling.clone(), SpecMode::Ngram, 40));
        assert_eq!(spec.tokens, plain.tokens, "prompt {p:?}");
    }
}

#[test]
fn stops_and_limits_inside_an_accepted_run_end_where_plain_decoding_ends() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let p = PROMPTS[0];
    for n in [1, 2, 3, 5, 9] {
        let plain = run(&lm, p, &opts(SamplingParams::greedy(), SpecMode::Off, n));
        let spec = run(&lm, p, &opts(SamplingParams::greedy(), SpecMode::Ngram, n));
        assert_eq!(spec.tokens, plain.tokens, "max_tokens {n}");
        assert_eq!(spec.tokens.len(), n);
    }
    // A stop string in the middle of the copied sentence.
    let mut o = opts(SamplingParams::greedy(), SpecMode::Off, 48);
    o.stop = vec!["lazy".into()];
    let plain = run(&lm, p, &o);
    o.speculative.mode = SpecMode::Ngram;
    let spec = run(&lm, p, &o);
    assert_eq!(spec.text, plain.text);
    assert_eq!(spec.finish, plain.finish);
    assert!(!spec.text.contains("lazy"));
    // EOS honoured: whatever plain decoding does, speculation does.
    for p in PROMPTS {
        let mut o = opts(SamplingParams::greedy(), SpecMode::Off, 64);
        o.ignore_eos = false;
        let plain = run(&lm, p, &o);
        o.speculative.mode = SpecMode::Ngram;
        let spec = run(&lm, p, &o);
        assert_eq!((spec.tokens, spec.finish), (plain.tokens, plain.finish));
    }
}

#[test]
fn draft_model_with_the_same_weights_is_exact_and_accepts_everything() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let dm = LoadedModel::load(&path, 2).unwrap();
    let runner = BorrowedCpuRunner::new(&dm.model, &dm.pool);
    let mut draft = DraftModel::new(
        Box::new(runner),
        &dm.tokenizer,
        &lm.tokenizer,
        lm.model.cfg.vocab_size,
    )
    .unwrap();
    for p in &PROMPTS[..3] {
        let ids = lm.tokenizer.encode(p, true, false);
        let plain = run(&lm, p, &opts(SamplingParams::greedy(), SpecMode::Off, 32));
        let o = opts(SamplingParams::greedy(), SpecMode::Draft, 32);
        let spec = generate_with_draft(&lm, Some(&mut draft), &ids, &o, |_| true).unwrap();
        assert_eq!(spec.tokens, plain.tokens, "prompt {p:?}");
        assert_eq!(spec.spec.accepted, spec.spec.drafted, "prompt {p:?}");
        // Sampling: p = q, so every draft passes min(1, p/q) = 1.
        let sampling = SamplingParams {
            seed: Some(5),
            ..SamplingParams::default()
        };
        let o = opts(sampling, SpecMode::Draft, 32);
        let spec = generate_with_draft(&lm, Some(&mut draft), &ids, &o, |_| true).unwrap();
        assert_eq!(spec.tokens.len(), 32);
        assert!(
            spec.spec.acceptance() > 0.95,
            "acceptance {}",
            spec.spec.acceptance()
        );
    }
}

#[test]
fn draft_model_with_another_vocabulary_is_refused_clearly() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let fake = FakeRunner::new(1000, 4096);
    let err = DraftModel::new(
        Box::new(fake),
        &lm.tokenizer,
        &lm.tokenizer,
        lm.model.cfg.vocab_size,
    )
    .err()
    .expect("a 1000-token draft must be refused");
    assert!(err.to_string().contains("vocabulary"), "{err}");
    // And without a draft model, draft mode is an error, not a silent fallback.
    let ids = lm.tokenizer.encode("Hello", true, false);
    let o = opts(SamplingParams::greedy(), SpecMode::Draft, 4);
    assert!(generate(&lm, &ids, &o, |_| true).is_err());
}
