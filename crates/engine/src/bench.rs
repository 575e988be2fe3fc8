//! `hangar bench`: prefill and decode throughput of one model, measured the way
//! llama-bench does (pp: one batch of N prompt tokens, logits for the last only;
//! tg: N single-token decode steps after a short prompt), median of several runs.

use crate::engine::{BorrowedCpuRunner, ModelRunner};
use crate::EngineError;
use hangar_kernels::ThreadPool;
use hangar_models::{LogitsWanted, LoraAdapter, Model, SeqInput};
use std::time::Instant;

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchFigure {
    /// `pp512`, `tg128`, ...
    pub test: String,
    pub tokens: usize,
    pub median_tok_s: f64,
    pub min_tok_s: f64,
    pub max_tok_s: f64,
    pub runs: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub model: String,
    pub threads: usize,
    pub simd: String,
    pub figures: Vec<BenchFigure>,
}

fn figure(test: String, tokens: usize, mut secs: Vec<f64>) -> BenchFigure {
    secs.sort_by(|a, b| a.total_cmp(b));
    let rate = |s: f64| tokens as f64 / s;
    BenchFigure {
        test,
        tokens,
        median_tok_s: rate(secs[secs.len() / 2]),
        min_tok_s: rate(*secs.last().expect("at least one run")),
        max_tok_s: rate(secs[0]),
        runs: secs.len(),
    }
}

/// Deterministic pseudo-random token ids (a benchmark must not depend on a tokenizer).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as usize % vocab.clamp(1, 32_000)) as u32 + 2
        })
        .collect()
}

/// Times prefill of `pp` tokens and decode of `tg` tokens, `runs` times each
/// (after one warm-up run). With `batch > 1`, also times batched decode: `batch`
/// sequences after a 32-token prompt each, `tg` steps of one token per sequence
/// with logits for every row (what a server does at `batch` concurrent streams).
pub fn run(
    model: &Model,
    pool: &ThreadPool,
    pp: usize,
    tg: usize,
    batch: usize,
    runs: usize,
) -> Result<Vec<BenchFigure>, EngineError> {
    run_on(
        &mut BorrowedCpuRunner::new(model, pool),
        pp,
        tg,
        batch,
        runs,
        0,
    )
}

/// As [`run`], on any backend; with `depth > 0` the single-sequence decode starts after
/// a `depth`-token context (llama-bench's `-d`: decode speed at long contexts) and its
/// figure is named `tg{tg}@d{depth}`.
pub fn run_on(
    runner: &mut dyn ModelRunner,
    pp: usize,
    tg: usize,
    batch: usize,
    runs: usize,
    depth: usize,
) -> Result<Vec<BenchFigure>, EngineError> {
    run_with_adapters(runner, pp, tg, batch, runs, depth, &[])
}

/// One step, through the adapter path when any sequence has an adapter.
fn exec(
    runner: &mut dyn ModelRunner,
    seqs: &[SeqInput],
    adapters: &[Option<&LoraAdapter>],
    logits: &mut Vec<f32>,
) -> Result<(), EngineError> {
    if adapters.iter().all(Option::is_none) {
        runner.execute(seqs, logits)
    } else {
        runner.execute_lora(seqs, adapters, logits)
    }
}

/// As [`run_on`], with LoRA adapters: the single-sequence tests run under
/// `choices[0]`, and sequence `s` of the batched test under `choices[s % len]`
/// (`None`: the base model), so a list mixing `None` and adapters measures a mixed
/// batch. An empty list is the base model throughout.
pub fn run_with_adapters(
    runner: &mut dyn ModelRunner,
    pp: usize,
    tg: usize,
    batch: usize,
    runs: usize,
    depth: usize,
    choices: &[Option<&LoraAdapter>],
) -> Result<Vec<BenchFigure>, EngineError> {
    let first = [choices.first().copied().flatten()];
    let runs = runs.max(1);
    let block = 16;
    let cap = (pp + 8).max(depth + tg + 8);
    let groups = runner.kv_layout().n_groups();
    let n_blocks = cap.div_ceil(block);
    runner.allocate_kv(block, &vec![n_blocks; groups])?;
    let table: Vec<u32> = (0..n_blocks as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; groups];
    let mut logits = Vec::new();
    let vocab = runner.vocab_size();
    let mut out = Vec::new();
    if pp > 0 {
        let toks = tokens(pp, vocab, 1);
        let mut secs = Vec::new();
        for r in 0..=runs {
            let t0 = Instant::now();
            let seq = SeqInput {
                tokens: &toks,
                start_pos: 0,
                block_tables: &tables,
                logits: LogitsWanted::Last,
            };
            exec(runner, &[seq], &first, &mut logits)?;
            if r > 0 {
                secs.push(t0.elapsed().as_secs_f64());
            }
        }
        out.push(figure(format!("pp{pp}"), pp, secs));
    }
    if tg > 0 {
        let toks = tokens(depth + tg + 1, vocab, 2);
        let mut secs = Vec::new();
        for r in 0..=runs {
            // A (depth + 1)-token prompt, then `tg` decode steps.
            let seq = SeqInput {
                tokens: &toks[..depth + 1],
                start_pos: 0,
                block_tables: &tables,
                logits: LogitsWanted::Last,
            };
            exec(runner, &[seq], &first, &mut logits)?;
            let t0 = Instant::now();
            for i in 0..tg {
                let seq = SeqInput {
                    tokens: &toks[depth + i + 1..depth + i + 2],
                    start_pos: depth + i + 1,
                    block_tables: &tables,
                    logits: LogitsWanted::Last,
                };
                exec(runner, &[seq], &first, &mut logits)?;
            }
            if r > 0 {
                secs.push(t0.elapsed().as_secs_f64());
            }
        }
        let name = match depth {
            0 => format!("tg{tg}"),
            d => format!("tg{tg}@d{d}"),
        };
        out.push(figure(name, tg, secs));
    }
    if tg > 0 && batch > 1 {
        let per_seq: Vec<Option<&LoraAdapter>> = (0..batch)
            .map(|s| match choices.len() {
                0 => None,
                n => choices[s % n],
            })
            .collect();
        out.push(batched_decode(runner, tg, batch, runs, &per_seq)?);
    }
    Ok(out)
}

/// `batch` sequences decoding together: one forward per step, one token per sequence.
fn batched_decode(
    runner: &mut dyn ModelRunner,
    tg: usize,
    batch: usize,
    runs: usize,
    adapters: &[Option<&LoraAdapter>],
) -> Result<BenchFigure, EngineError> {
    const PROMPT: usize = 32;
    let block = 16;
    let per_seq = (PROMPT + tg + 1).div_ceil(block);
    let groups = runner.kv_layout().n_groups();
    runner.allocate_kv(block, &vec![per_seq * batch; groups])?;
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| ((s * per_seq) as u32..((s + 1) * per_seq) as u32).collect())
        .collect();
    let table_refs: Vec<Vec<&[u32]>> = tables.iter().map(|t| vec![t.as_slice(); groups]).collect();
    let vocab = runner.vocab_size();
    let toks: Vec<Vec<u32>> = (0..batch)
        .map(|s| tokens(PROMPT + tg, vocab, 100 + s as u64))
        .collect();
    let mut logits = Vec::new();
    let mut secs = Vec::new();
    for r in 0..=runs {
        let prompts: Vec<SeqInput> = (0..batch)
            .map(|s| SeqInput {
                tokens: &toks[s][..PROMPT],
                start_pos: 0,
                block_tables: &table_refs[s],
                logits: LogitsWanted::Last,
            })
            .collect();
        exec(runner, &prompts, adapters, &mut logits)?;
        let t0 = Instant::now();
        for i in 0..tg {
            let step: Vec<SeqInput> = (0..batch)
                .map(|s| SeqInput {
                    tokens: &toks[s][PROMPT + i..PROMPT + i + 1],
                    start_pos: PROMPT + i,
                    block_tables: &table_refs[s],
                    logits: LogitsWanted::Last,
                })
                .collect();
            exec(runner, &step, adapters, &mut logits)?;
        }
        if r > 0 {
            secs.push(t0.elapsed().as_secs_f64());
        }
    }
    Ok(figure(format!("tg{tg}x{batch}"), tg * batch, secs))
}
