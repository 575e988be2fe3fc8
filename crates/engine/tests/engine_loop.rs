//! The engine loop on the deterministic fake runner (next token = last + 1): no
//! weights, so every scheduling path — a finish beside a partial prefill, preemption,
//! cancellation, stop strings, runner failures and panics, the per-request cap — is
//! checked exactly, in milliseconds.

use hangar_engine::{
    Engine, EngineConfig, FakeRunner, Finish, GenerateRequest, ModelRunner, TokenEvent,
};
use hangar_tokenizer::{TokenType, Tokenizer, TokenizerSpec};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// GPT-2's printable stand-in for each byte, so token `b` decodes to byte `b`.
fn byte_char(b: u8) -> char {
    let printable = |b: u32| {
        (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b)
    };
    if printable(b as u32) {
        return b as char;
    }
    let n = (0..b as u32).filter(|&x| !printable(x)).count() as u32;
    char::from_u32(256 + n).expect("valid char")
}

const EOS: u32 = 256;
const VOCAB: usize = 257;

/// 256 byte tokens and an end-of-text token (id 256).
fn byte_tokenizer() -> Tokenizer {
    let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
    tokens.push("<|endoftext|>".into());
    let mut types = vec![TokenType::Normal; tokens.len()];
    types[EOS as usize] = TokenType::Control;
    let mut spec = TokenizerSpec::gpt2(tokens, Vec::new(), "gpt-2");
    spec.token_types = Some(types);
    spec.eos_id = Some(EOS);
    Tokenizer::from_spec(&spec).expect("tokenizer")
}

fn engine_with(runner: FakeRunner, cfg: EngineConfig) -> Engine {
    Engine::start_with_runner(Box::new(runner), byte_tokenizer(), None, cfg).expect("engine")
}

fn small_cfg() -> EngineConfig {
    EngineConfig {
        block_size: 4,
        max_tokens_in_flight: Some(4096),
        max_batch_tokens: 16,
        max_running: 8,
        ..EngineConfig::default()
    }
}

#[derive(Debug, Default)]
struct Outcome {
    tokens: Vec<u32>,
    text: String,
    finish: Option<Finish>,
    completion_tokens: usize,
    error: Option<String>,
}

fn collect(mut rx: UnboundedReceiver<TokenEvent>) -> Outcome {
    let mut o = Outcome::default();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            TokenEvent::Token(t) => {
                o.tokens.push(t.id);
                o.text.push_str(&t.text);
            }
            TokenEvent::Done {
                finish,
                usage,
                text,
            } => {
                o.text.push_str(&text);
                o.finish = Some(finish);
                o.completion_tokens = usage.completion_tokens;
                break;
            }
            TokenEvent::Error(e) => {
                o.error = Some(e);
                break;
            }
            TokenEvent::PromptLogprobs(_) => {}
        }
    }
    o
}

fn wait_until(engine: &Engine, what: &str, ok: impl Fn(&Engine) -> bool) {
    let t0 = Instant::now();
    while !ok(engine) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the fake model continues `prompt` with: last + 1, and so on.
fn expected(prompt: &[u32], n: usize) -> Vec<u32> {
    let mut t = *prompt.last().expect("prompt");
    (0..n)
        .map(|_| {
            t = (t + 1) % VOCAB as u32;
            t
        })
        .collect()
}

#[test]
fn sequence_finishing_beside_a_partial_prefill_stops_at_max_tokens() {
    // The case: a 6-token prompt decodes while a 243-token prompt is still in
    // chunked prefill (16 tokens a step). The short one must stop at exactly 8.
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), small_cfg());
    let short: Vec<u32> = (10..16).collect();
    let long: Vec<u32> = (0..243).map(|i| 20 + (i % 50)).collect();
    let (_, rx_short) = engine
        .submit(GenerateRequest::greedy(short.clone(), 8))
        .unwrap();
    let (_, rx_long) = engine
        .submit(GenerateRequest::greedy(long.clone(), 8))
        .unwrap();
    let a = collect(rx_short);
    let b = collect(rx_long);
    assert_eq!(a.tokens, expected(&short, 8), "short request's tokens");
    assert_eq!(a.completion_tokens, 8);
    assert_eq!(a.finish, Some(Finish::Length));
    assert_eq!(b.tokens, expected(&long, 8), "long request's tokens");
    wait_until(&engine, "blocks freed", |e| e.stats().kv_blocks_used() == 0);
}

#[test]
fn preemption_under_a_tiny_pool_still_finishes_every_sequence_exactly() {
    let cfg = EngineConfig {
        block_size: 4,
        max_tokens_in_flight: Some(48),
        max_batch_tokens: 64,
        max_running: 8,
        prefix_caching: false,
        ..EngineConfig::default()
    };
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), cfg);
    let prompts: Vec<Vec<u32>> = (0..6u32).map(|i| vec![30 * i + 1; 6]).collect();
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            engine
                .submit(GenerateRequest::greedy(p.clone(), 12))
                .unwrap()
                .1
        })
        .collect();
    for (p, rx) in prompts.iter().zip(rxs) {
        let o = collect(rx);
        assert_eq!(o.error, None);
        assert_eq!(o.tokens, expected(p, 12));
    }
    assert!(
        engine.stats().preemptions > 0,
        "the pool was meant to run out"
    );
    wait_until(&engine, "blocks freed", |e| e.stats().kv_blocks_used() == 0);
}

#[test]
fn cancel_and_dropped_receivers_free_blocks() {
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), small_cfg());
    let mut req = GenerateRequest::greedy(vec![1; 20], 2000);
    req.ignore_eos = true;
    let (id, mut rx) = engine.submit(req.clone()).unwrap();
    let (_, rx2) = engine.submit(req).unwrap();
    // Both are generating.
    assert!(matches!(rx.blocking_recv(), Some(TokenEvent::Token(_))));
    engine.cancel(id);
    drop(rx2);
    wait_until(&engine, "idle after cancel", |e| {
        let s = e.stats();
        s.running == 0 && s.waiting == 0 && s.kv_blocks_used() == 0
    });
}

#[test]
fn stop_strings_end_generation_before_the_match() {
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), small_cfg());
    // 'a' continues "bcdefgh...": stop at "ef" returns "bcd".
    let mut req = GenerateRequest::greedy(vec![b'a' as u32], 20);
    req.stop = vec!["ef".into()];
    let o = collect(engine.submit(req).unwrap().1);
    assert_eq!(o.text, "bcd");
    assert_eq!(o.finish, Some(Finish::Stop));
    // Stop token ids and the end-of-text token end it too.
    let mut req = GenerateRequest::greedy(vec![b'a' as u32], 20);
    req.stop_token_ids = vec![b'd' as u32];
    let o = collect(engine.submit(req).unwrap().1);
    assert_eq!(o.text, "bc");
    assert_eq!(o.finish, Some(Finish::Stop));
    let o = collect(
        engine
            .submit(GenerateRequest::greedy(vec![250], 20))
            .unwrap()
            .1,
    );
    assert_eq!(*o.tokens.last().unwrap(), EOS);
    assert_eq!(o.tokens.len(), 6);
    assert_eq!(o.finish, Some(Finish::Stop));
}

#[test]
fn a_failing_step_errors_its_requests_and_the_engine_keeps_serving() {
    let mut runner = FakeRunner::new(VOCAB, 4096);
    runner.fail_at_step = Some(1);
    runner.panic_at_step = Some(3);
    let engine = engine_with(runner, small_cfg());
    let o = collect(
        engine
            .submit(GenerateRequest::greedy(vec![5], 10))
            .unwrap()
            .1,
    );
    assert!(o.error.unwrap().contains("failure requested"));
    let o = collect(
        engine
            .submit(GenerateRequest::greedy(vec![5], 10))
            .unwrap()
            .1,
    );
    assert!(o.error.unwrap().contains("internal engine error"));
    let o = collect(
        engine
            .submit(GenerateRequest::greedy(vec![5], 4))
            .unwrap()
            .1,
    );
    assert_eq!(o.tokens, vec![6, 7, 8, 9]);
    assert!(engine.is_alive());
    wait_until(&engine, "blocks freed", |e| e.stats().kv_blocks_used() == 0);
}

#[test]
fn a_backend_fault_stops_the_engine_taking_work_and_says_so() {
    // A GPU context after an illegal memory access: every later step would fail too.
    let mut runner = FakeRunner::new(VOCAB, 4096);
    runner.fault_at_step = Some(2);
    let engine = engine_with(runner, small_cfg());
    let o = collect(
        engine
            .submit(GenerateRequest::greedy(vec![5], 1))
            .unwrap()
            .1,
    );
    assert_eq!(o.tokens, vec![6], "the first steps still work");
    assert!(engine.is_alive() && engine.fault().is_none());
    let o = collect(
        engine
            .submit(GenerateRequest::greedy(vec![5], 10))
            .unwrap()
            .1,
    );
    let err = o.error.expect("the faulted step errors its request");
    assert!(err.contains("device fault requested"), "{err}");
    wait_until(&engine, "the fault is published", |e| e.fault().is_some());
    assert!(!engine.is_alive(), "readiness must go down");
    // New work is refused at once, with the reason and what to do.
    let o = collect(
        engine
            .submit(GenerateRequest::greedy(vec![5], 4))
            .unwrap()
            .1,
    );
    let err = o.error.expect("refused");
    assert!(
        err.contains("takes no more work") && err.contains("restart"),
        "{err}"
    );
    assert!(o.tokens.is_empty());
    wait_until(&engine, "blocks freed", |e| e.stats().kv_blocks_used() == 0);
}

#[test]
fn one_request_cannot_take_more_than_its_share_of_running_slots() {
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), small_cfg());
    let cap = engine.info().max_sequences_per_request;
    assert_eq!(cap, 2, "a quarter of 8 running slots");
    let reqs = vec![GenerateRequest::greedy(vec![1], 4); cap + 1];
    let err = engine.submit_group(reqs).unwrap_err().to_string();
    assert!(err.contains("at most 2"), "{err}");
    let ok = engine
        .submit_group(vec![GenerateRequest::greedy(vec![1], 4); cap])
        .unwrap();
    for (_, rx) in ok {
        assert_eq!(collect(rx).tokens, vec![2, 3, 4, 5]);
    }
}

#[test]
fn fake_runner_is_a_model_runner() {
    // The seam the CUDA backend implements: layout first, then KV, then steps.
    let mut r = FakeRunner::new(VOCAB, 128);
    assert_eq!(r.kv_layout().n_groups(), 1);
    assert!(r.allocate_kv(4, &[8]).unwrap() > 0);
    assert_eq!(r.vocab_size(), VOCAB);
}

/// Every event of one request, in order.
fn events_of(rx: &mut UnboundedReceiver<TokenEvent>) -> Vec<TokenEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(ev) = rx.blocking_recv() {
        let end = matches!(ev, TokenEvent::Done { .. } | TokenEvent::Error(_));
        out.push(ev);
        if end || Instant::now() > deadline {
            break;
        }
    }
    out
}

fn scoring(prompt: Vec<u32>, max_tokens: usize, top: usize) -> GenerateRequest {
    let mut r = GenerateRequest::greedy(prompt, max_tokens);
    r.prompt_logprobs = Some(top);
    r.ignore_eos = true;
    r
}

/// A 20-token prompt (longer than one 16-token step) with one jump the fake
/// model does not predict (21 -> 50).
fn jumpy_prompt() -> Vec<u32> {
    (10..22).chain(50..58).collect()
}

#[test]
fn prompt_logprobs_cover_every_prompt_token_across_prefill_chunks() {
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), small_cfg());
    let prompt = jumpy_prompt();
    let (_, mut rx) = engine.submit(scoring(prompt.clone(), 0, 2)).unwrap();
    let evs = events_of(&mut rx);
    assert_eq!(evs.len(), 2, "{evs:?}");
    let TokenEvent::PromptLogprobs(lp) = &evs[0] else {
        panic!("expected prompt logprobs first, got {:?}", evs[0])
    };
    assert_eq!(lp.len(), prompt.len());
    assert_eq!(lp[0].logprob, None);
    for i in 1..prompt.len() {
        assert_eq!(lp[i].id, prompt[i]);
        let l = lp[i]
            .logprob
            .expect("every token after the first has a logprob");
        if prompt[i] == prompt[i - 1] + 1 {
            assert!(l > -1e-3, "position {i}: {l}");
        } else {
            assert!(l < -20.0, "position {i}: {l}");
        }
        assert_eq!(lp[i].top_logprobs.len(), 2);
        assert_eq!(lp[i].top_logprobs[0].id, prompt[i - 1] + 1);
    }
    let TokenEvent::Done { finish, usage, .. } = &evs[1] else {
        panic!("expected the end, got {:?}", evs[1])
    };
    assert_eq!(*finish, Finish::Length);
    assert_eq!(usage.completion_tokens, 0);
    assert_eq!(usage.prompt_tokens, prompt.len());
}

#[test]
fn prompt_logprobs_come_before_the_generated_tokens() {
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), small_cfg());
    let (_, mut rx) = engine.submit(scoring(jumpy_prompt(), 3, 0)).unwrap();
    let evs = events_of(&mut rx);
    assert!(
        matches!(&evs[0], TokenEvent::PromptLogprobs(lp) if lp.len() == 20 && lp[5].top_logprobs.is_empty())
    );
    let ids: Vec<u32> = evs
        .iter()
        .filter_map(|e| match e {
            TokenEvent::Token(t) => Some(t.id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![58, 59, 60]);
}

#[test]
fn prompt_logprobs_are_computed_even_when_the_prefix_is_cached() {
    let cfg = EngineConfig {
        prefix_caching: true,
        ..small_cfg()
    };
    let engine = engine_with(FakeRunner::new(VOCAB, 4096), cfg);
    let prompt = jumpy_prompt();
    let plain = |engine: &Engine| {
        let (_, mut rx) = engine
            .submit(GenerateRequest::greedy(prompt.clone(), 1))
            .unwrap();
        match events_of(&mut rx).pop() {
            Some(TokenEvent::Done { usage, .. }) => usage.cached_tokens,
            other => panic!("{other:?}"),
        }
    };
    plain(&engine);
    assert!(plain(&engine) > 0, "the prefix cache is on");
    let (_, mut rx) = engine.submit(scoring(prompt.clone(), 0, 1)).unwrap();
    let evs = events_of(&mut rx);
    let TokenEvent::PromptLogprobs(lp) = &evs[0] else {
        panic!("{evs:?}")
    };
    assert!(lp[1..].iter().all(|p| p.logprob.is_some()));
    assert!(matches!(&evs[1], TokenEvent::Done { usage, .. } if usage.cached_tokens == 0));
}

/// A spread distribution that depends on the last token and the position: a few
/// likely tokens and a long tail, so sampling draws differ from seed to seed.
/// Grammar sequences whose first draw may ignore the mask (greedy, or untruncated
/// sampling without log-probabilities) go through the sampling head too: the head's
/// token stands when the grammar takes it, else the row is fetched, masked and drawn
/// again. The tokens must be exactly the host's `sample_constrained` tokens.
#[test]
fn the_sampling_head_keeps_grammar_sequences_exact() {
    use hangar_engine::sampler::{GrammarSpec, SamplingParams};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let sampled = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplingParams::default()
    };
    let variants = [
        sampled.clone(),
        SamplingParams::greedy(),
        // Truncated: the mask comes first (not a head request).
        SamplingParams {
            top_k: 40,
            ..sampled.clone()
        },
    ];
    let run = |head: Option<Arc<AtomicUsize>>| -> (Vec<Vec<u32>>, (u64, u64)) {
        let (outcomes, stats) = run_sampling_variants(&variants, 16, head, &|engine, mut req| {
            // 27 of the 257 byte tokens are allowed: most unmasked draws are
            // refused, some are taken.
            let spec = GrammarSpec::Regex("[a-z ]{16,40}".into());
            req.constraint = Some(engine.compile_grammar(&spec).expect("grammar"));
            req
        });
        let tokens = outcomes
            .into_iter()
            .map(|o| {
                assert!(o.error.is_none(), "{:?}", o.error);
                assert_eq!(o.tokens.len(), 16);
                assert!(
                    o.tokens.iter().all(|&t| t == 32 || (97..=122).contains(&t)),
                    "{:?}",
                    o.tokens
                );
                o.tokens
            })
            .collect();
        (tokens, stats)
    };
    let answered = Arc::new(AtomicUsize::new(0));
    let (with_head, (from_head, fetched)) = run(Some(answered.clone()));
    let (on_host, unused) = run(None);
    assert_eq!(with_head, on_host);
    assert_eq!(unused, (0, 0));
    // The greedy and untruncated sequences (2 x 3 x 16 tokens) asked the head; the
    // top-k ones masked first on the host.
    assert_eq!(answered.load(Ordering::Relaxed), 2 * 3 * 16);
    assert_eq!(from_head + fetched, 2 * 3 * 16);
    assert!(
        from_head > 0 && fetched > 0,
        "{from_head} taken, {fetched} fetched"
    );
    assert_ne!(on_host[0], on_host[1]);
}

/// Every variant with seeds 0..3, all in flight at once (batched steps), each a
/// request of `max_tokens` from prompt [40, 41, 42] that `request` may adjust, on a
/// fake runner with `spread_row` logits and, when `head` is set, a sampling head that
/// counts its answers there. The outcomes in order, and the engine's (tokens the head
/// answered, rows it fetched).
fn run_sampling_variants(
    variants: &[hangar_engine::sampler::SamplingParams],
    max_tokens: usize,
    head: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    request: &dyn Fn(&Engine, GenerateRequest) -> GenerateRequest,
) -> (Vec<Outcome>, (u64, u64)) {
    let mut runner = FakeRunner::new(VOCAB, 4096).with_rows(spread_row);
    if let Some(answered) = head {
        runner = runner.with_head(answered);
    }
    let engine = engine_with(runner, small_cfg());
    let rxs: Vec<_> = variants
        .iter()
        .flat_map(|p| (0..3u64).map(move |seed| (p.clone(), seed)))
        .map(|(p, seed)| {
            let mut req = GenerateRequest::greedy(vec![40, 41, 42], max_tokens);
            req.sampling = hangar_engine::sampler::SamplingParams {
                seed: Some(seed),
                ..p
            };
            engine.submit(request(&engine, req)).expect("submit").1
        })
        .collect();
    let outcomes = rxs.into_iter().map(collect).collect();
    let s = engine.stats();
    (outcomes, (s.head_tokens, s.head_rows_fetched))
}

fn spread_row(t: u32, pos: usize, row: &mut [f32]) {
    let mut h = (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ pos as u64;
    for (i, l) in row.iter_mut().enumerate() {
        h ^= h << 13;
        h ^= h >> 7;
        h ^= h << 17;
        *l = (h >> 40) as f32 / (1u64 << 24) as f32 * 6.0 - 3.0;
        if i as u32 == (t * 7 + 3) % VOCAB as u32 {
            *l += 4.0;
        }
    }
}

#[test]
fn the_sampling_head_gives_the_tokens_the_host_sampler_gives() {
    use hangar_engine::sampler::SamplingParams;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let base = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplingParams::default()
    };
    let mut variants = vec![base.clone(), SamplingParams::default()];
    variants.push(SamplingParams {
        top_p: 0.9,
        temperature: 0.7,
        ..base.clone()
    });
    variants.push(SamplingParams {
        // A nucleus wider than the head's 256 candidates (every token of these rows
        // holds more than 1e-5 of the mass): sampled from the fetched row.
        top_p: 0.99999,
        ..base.clone()
    });
    variants.push(SamplingParams {
        min_p: 0.1,
        repetition_penalty: 1.5,
        frequency_penalty: 0.4,
        logit_bias: vec![(10, 3.0), (11, f32::NEG_INFINITY)],
        ..base.clone()
    });
    variants.push(SamplingParams {
        temperature: 0.0,
        presence_penalty: 1.0,
        ..base.clone()
    });
    variants.push(SamplingParams {
        // Log-probabilities of the token and 3 alternatives, from the head's answer.
        n_logprobs: 3,
        top_k: 20,
        ..base.clone()
    });
    let run = |head: Option<Arc<AtomicUsize>>| -> (Vec<Vec<u32>>, (u64, u64)) {
        let (outcomes, stats) = run_sampling_variants(&variants, 24, head, &|_, mut req| {
            req.logprobs = (req.sampling.n_logprobs > 0).then_some(req.sampling.n_logprobs);
            req.ignore_eos = true;
            req
        });
        let tokens = outcomes
            .into_iter()
            .map(|o| {
                assert!(o.error.is_none(), "{:?}", o.error);
                o.tokens
            })
            .collect();
        (tokens, stats)
    };
    let answered = Arc::new(AtomicUsize::new(0));
    let (with_head, (from_head, fetched)) = run(Some(answered.clone()));
    let (on_host, unused) = run(None);
    assert_eq!(with_head, on_host);
    assert_eq!(unused, (0, 0));
    // Every token went through the head: 7 variants x 3 seeds x 24 tokens. Top-p
    // 0.99999 needs all 257 tokens, more than the 256 candidates: those rows were
    // fetched (and sampled on the host with the same draw).
    assert_eq!(answered.load(Ordering::Relaxed), 7 * 3 * 24);
    assert_eq!(from_head + fetched, 7 * 3 * 24);
    assert!(fetched >= 3 * 24, "{fetched} rows fetched");
    // The draws really are draws: seeds differ.
    assert_ne!(on_host[0], on_host[1]);
}
