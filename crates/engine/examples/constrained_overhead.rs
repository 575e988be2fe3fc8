//! Decode speed with and without a JSON schema (structured output), at 1 and 16
//! sequences, rounds interleaved (A B A B ...) so machine load hits both alike;
//! medians reported, after one unmeasured warm-up round of each (printed apart). A benchmark, not a test (docs/BENCHMARKS.md):
//!
//! `cargo run --release -p hangar-engine --example constrained_overhead`
//!
//! `HANGAR_BENCH_THREADS` sets the kernel threads (default 2), `HANGAR_BENCH_ROUNDS`
//! the rounds (default 3).

use hangar_engine::sampler::GrammarSpec;
use hangar_engine::{Engine, EngineConfig, GenerateRequest, LoadedModel, TokenEvent};
use hangar_testkit::model_path;
use serde_json::json;
use std::time::Instant;

fn main() {
    let Some(path) = model_path() else {
        eprintln!("no model: set HANGAR_MODEL or fetch it with scripts/fetch-default-model.sh");
        std::process::exit(2);
    };
    let threads: usize = std::env::var("HANGAR_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let engine = Engine::start(
        LoadedModel::load(&path, threads).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 100, "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20},
                           "qty": {"type": "integer", "minimum": 0, "maximum": 1000}},
            "required": ["name", "qty"], "additionalProperties": false}}},
        "required": ["items"], "additionalProperties": false
    });
    let spec = GrammarSpec::JsonSchema(schema);
    let _ = engine.compile_grammar(&spec).unwrap(); // build the trie outside the timing
    let tokens = 48;
    let rounds: usize = std::env::var("HANGAR_BENCH_ROUNDS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(3);
    let run = |batch: usize, constrained: bool, round: usize| -> f64 {
        let reqs: Vec<GenerateRequest> = (0..batch)
            .map(|i| {
                let msgs = [hangar_engine::chat::ChatMessage::new(
                    "user",
                    format!(
                        "[{round}-{i}-{constrained}] List the items of a shop inventory as JSON."
                    ),
                )];
                let mut r = GenerateRequest::greedy(engine.encode_chat(&msgs).unwrap(), tokens);
                r.ignore_eos = true;
                if constrained {
                    r.constraint = Some(engine.compile_grammar(&spec).unwrap());
                }
                r
            })
            .collect();
        // Decode speed: from every sequence's first token to the last token of all.
        let rxs: Vec<_> = reqs
            .into_iter()
            .map(|r| engine.submit(r).unwrap().1)
            .collect();
        let mut first = None;
        let mut n = 0usize;
        for mut rx in rxs {
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    TokenEvent::Token(_) => {
                        first.get_or_insert_with(Instant::now);
                        n += 1;
                    }
                    TokenEvent::Error(e) => panic!("{e}"),
                    _ => {}
                }
            }
        }
        let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        (n - batch.min(n)) as f64 / secs.max(1e-9)
    };
    for batch in [1usize, 16] {
        // One unmeasured round each first: the grammar's lexer builds its automaton
        // states lazily, so the first sequences through a new schema pay for them
        // (reported apart; a server pays it once per schema).
        let (cold_a, cold_b) = (run(batch, false, rounds), run(batch, true, rounds));
        eprintln!(
            "batch {batch:2}: first (cold) round: unconstrained {cold_a:7.1} tok/s, JSON schema {cold_b:7.1} tok/s"
        );
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            a.push(run(batch, false, round));
            b.push(run(batch, true, round));
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|x, y| x.total_cmp(y));
            v[v.len() / 2]
        };
        let (ma, mb) = (med(&mut a), med(&mut b));
        eprintln!(
            "batch {batch:2}: unconstrained {ma:7.1} tok/s, JSON schema {mb:7.1} tok/s, overhead {:+.1}% (rounds: {a:.1?} vs {b:.1?})",
            (ma / mb - 1.0) * 100.0
        );
    }
}
