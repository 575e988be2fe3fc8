//! The engine loop's own time per step, without a model: `FakeRunner` returns one-hot
//! logits instantly, so what is measured is scheduling, the logits rows the loop
//! reads, sampling, detokenization and event delivery: the host work a GPU step
//! must not wait on. A benchmark, not a test (docs/BENCHMARKS.md):
//!
//! `cargo run --release -p hangar-engine --example loop_overhead -- [STREAMS] [TOKENS] [VOCAB]`
//!
//! (defaults 64 streams, 128 tokens each, the default model's vocabulary of 262 144).

use hangar_engine::sampler::SamplingParams;
use hangar_engine::{Engine, EngineConfig, FakeRunner, GenerateRequest, LoadedModel, TokenEvent};
use hangar_testkit::model_path;
use std::time::Instant;

fn main() {
    let Some(path) = model_path() else {
        eprintln!("no model: set HANGAR_MODEL or fetch it with scripts/fetch-default-model.sh");
        std::process::exit(2);
    };
    let arg = |i: usize, d: usize| -> usize {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (streams, tokens) = (arg(1, 64), arg(2, 128));
    let lm = LoadedModel::load(&path, 1).unwrap();
    let vocab = arg(3, lm.tokenizer.vocab_size());
    let cfg = EngineConfig {
        max_running: streams.max(1),
        ..EngineConfig::default()
    };
    let runner = FakeRunner::new(vocab, 8192).with_next(|t, v| (t * 7 + 3) % v as u32);
    let engine = Engine::start_with_runner(Box::new(runner), lm.tokenizer, None, cfg).unwrap();
    for round in 0..3 {
        let t0 = Instant::now();
        let steps0 = engine.stats().steps;
        let rxs: Vec<_> = (0..streams)
            .map(|i| {
                let prompt: Vec<u32> = (0..24).map(|j| (1000 + 37 * i + j) as u32).collect();
                let mut r = GenerateRequest::greedy(prompt, tokens);
                r.ignore_eos = true;
                // As scripts/bench_serve.py asks: end-of-turn tokens banned.
                r.sampling = SamplingParams {
                    logit_bias: vec![(1, -100.0), (106, -100.0)],
                    ..SamplingParams::greedy()
                };
                engine.submit(r).unwrap().1
            })
            .collect();
        let mut n = 0usize;
        for mut rx in rxs {
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    TokenEvent::Token(_) => n += 1,
                    TokenEvent::Done { .. } => break,
                    TokenEvent::Error(e) => panic!("{e}"),
                    _ => {}
                }
            }
        }
        let dt = t0.elapsed().as_secs_f64();
        let steps = engine.stats().steps - steps0;
        println!(
            "round {round}: {streams} streams x {tokens} tokens, vocab {vocab}: {n} tokens in {dt:.3} s, \
             {steps} steps, {:.3} ms a step, {:.0} tok/s",
            1e3 * dt / steps.max(1) as f64,
            n as f64 / dt
        );
    }
}
