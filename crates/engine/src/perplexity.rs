//! Perplexity of a model on a token stream, by the method llama.cpp's `perplexity`
//! tool uses: non-overlapping windows of `ctx` tokens that start with BOS, scoring only
//! the second half of each window (so every scored token has at least ctx/2 context).

use crate::engine::{BorrowedCpuRunner, ModelRunner};
use crate::EngineError;
use hangar_kernels::ThreadPool;
use hangar_models::{LogitsWanted, Model, SeqInput};

/// Result of a perplexity run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    /// Mean negative log-likelihood (nats per token).
    pub nll: f64,
    pub windows: usize,
    pub scored_tokens: usize,
    pub ctx: usize,
}

/// Log-softmax probability of `target` under `logits`.
pub fn log_prob(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[target] as f64 - max - sum.ln()
}

/// Scores `text_tokens` (without BOS) in windows of `ctx` tokens (`bos` + ctx-1 text
/// tokens) on the CPU. `on_window(done, total)` reports progress.
pub fn perplexity(
    model: &Model,
    pool: &ThreadPool,
    bos: u32,
    text_tokens: &[u32],
    ctx: usize,
    on_window: impl FnMut(usize, usize),
) -> Result<Perplexity, EngineError> {
    let mut runner = BorrowedCpuRunner::new(model, pool);
    perplexity_on(&mut runner, bos, text_tokens, ctx, on_window)
}

/// [`perplexity`] on any [`ModelRunner`] (the CPU, or the GPU backend for
/// `hangar perplexity --device cuda`): one prefill step a window.
pub fn perplexity_on(
    runner: &mut dyn ModelRunner,
    bos: u32,
    text_tokens: &[u32],
    ctx: usize,
    mut on_window: impl FnMut(usize, usize),
) -> Result<Perplexity, EngineError> {
    if ctx < 4 {
        return Err(EngineError::Invalid(format!(
            "context {ctx} is too small (at least 4)"
        )));
    }
    let per = ctx - 1;
    let windows = text_tokens.len() / per;
    if windows == 0 {
        return Err(EngineError::Invalid(format!(
            "the text has {} tokens; a window of --ctx {ctx} needs at least {per}",
            text_tokens.len()
        )));
    }
    let block = 16;
    let n_blocks = ctx.div_ceil(block);
    let groups = runner.kv_layout().n_groups();
    runner.allocate_kv(block, &vec![n_blocks; groups])?;
    let table: Vec<u32> = (0..n_blocks as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; groups];
    let vocab = runner.vocab_size();
    let mut logits = Vec::new();
    let (mut nll, mut count) = (0.0f64, 0usize);
    let first = ctx / 2;
    let mut toks = Vec::with_capacity(ctx);
    for w in 0..windows {
        toks.clear();
        toks.push(bos);
        toks.extend_from_slice(&text_tokens[w * per..(w + 1) * per]);
        let seq = SeqInput {
            tokens: &toks,
            start_pos: 0,
            block_tables: &tables,
            logits: LogitsWanted::All,
        };
        runner.execute(&[seq], &mut logits)?;
        if logits.len() < ctx * vocab {
            return Err(EngineError::Invalid(format!(
                "the runner returned {} logits for {ctx} rows of {vocab}",
                logits.len()
            )));
        }
        for j in first..ctx - 1 {
            nll -= log_prob(&logits[j * vocab..(j + 1) * vocab], toks[j + 1] as usize);
            count += 1;
        }
        on_window(w + 1, windows);
    }
    let mean = nll / count as f64;
    Ok(Perplexity {
        ppl: mean.exp(),
        nll: mean,
        windows,
        scored_tokens: count,
        ctx,
    })
}
