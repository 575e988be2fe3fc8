//! Perplexity of a model on a token stream, by the method llama.cpp's `perplexity`
//! tool uses: non-overlapping windows of `ctx` tokens that start with BOS, scoring only
//! the second half of each window (so every scored token has at least ctx/2 context).

use crate::engine::{BorrowedCpuRunner, ModelRunner};
use crate::EngineError;
use hangar_kernels::ThreadPool;
use hangar_models::kv::KvFormat;
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
    let vocab = runner.vocab_size();
    let table = window_kv(runner, ctx)?;
    let (mut nll, mut count) = (0.0f64, 0usize);
    let first = ctx / 2;
    for w in 0..windows {
        let window = &text_tokens[w * per..(w + 1) * per];
        let logits = window_logits(runner, &table, bos, window)?;
        if logits.len() < ctx * vocab {
            return Err(EngineError::Invalid(format!(
                "the runner returned {} logits for {ctx} rows of {vocab}",
                logits.len()
            )));
        }
        for j in first..ctx - 1 {
            nll -= log_prob(&logits[j * vocab..(j + 1) * vocab], window[j] as usize);
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

/// How much a KV storage format changes the model's predictions: perplexity under
/// both formats and the divergence of the test format's next-token distributions
/// from the base's, over the same scored positions as [`perplexity`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct KvComparison {
    pub base: String,
    pub test: String,
    pub ppl_base: f64,
    pub ppl_test: f64,
    /// Mean KL(base ‖ test) in nats per scored token.
    pub kl_mean: f64,
    /// The largest per-token KL seen, and the 99th percentile.
    pub kl_max: f64,
    pub kl_p99: f64,
    /// Share of positions where both formats put the same token first.
    pub top1_agreement: f64,
    pub scored_tokens: usize,
    pub windows: usize,
    pub ctx: usize,
}

/// Log-softmax of a row, in f64.
fn log_softmax(row: &[f32], out: &mut Vec<f64>) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&l| (l as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    out.clear();
    out.extend(row.iter().map(|&l| l as f64 - lse));
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// Scores `text_tokens` as [`perplexity`] does, once with K and V stored as `base`
/// and once as `test` (CPU, fast numerics for the quantized formats), window by
/// window, and compares the two predictions at every scored position.
#[allow(clippy::too_many_arguments)]
pub fn compare_kv_formats(
    model: &Model,
    pool: &ThreadPool,
    bos: u32,
    text_tokens: &[u32],
    ctx: usize,
    base: KvFormat,
    test: KvFormat,
    mut on_window: impl FnMut(usize, usize),
) -> Result<KvComparison, EngineError> {
    let mut a = BorrowedCpuRunner::new(model, pool);
    let mut b = BorrowedCpuRunner::new(model, pool);
    a.set_kv_format(base)?;
    b.set_kv_format(test)?;
    let per = ctx.saturating_sub(1);
    let windows = text_tokens.len().checked_div(per).unwrap_or(0);
    if ctx < 4 || windows == 0 {
        return Err(EngineError::Invalid(format!(
            "need at least one window of --ctx {ctx} (at least 4) in {} tokens",
            text_tokens.len()
        )));
    }
    let vocab = model.cfg.vocab_size;
    let first = ctx / 2;
    let (mut nll_a, mut nll_b, mut agree) = (0.0f64, 0.0f64, 0usize);
    let mut kls: Vec<f64> = Vec::new();
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    let (ta, tb) = (window_kv(&mut a, ctx)?, window_kv(&mut b, ctx)?);
    let mut one = |w: usize| -> Result<(), EngineError> {
        let window = &text_tokens[w * per..(w + 1) * per];
        // One window each, through the same code `perplexity` uses.
        let ra = window_logits(&mut a, &ta, bos, window)?;
        let rb = window_logits(&mut b, &tb, bos, window)?;
        for j in first..ctx - 1 {
            let (xa, xb) = (
                &ra[j * vocab..(j + 1) * vocab],
                &rb[j * vocab..(j + 1) * vocab],
            );
            log_softmax(xa, &mut la);
            log_softmax(xb, &mut lb);
            let target = window[j] as usize;
            nll_a -= la[target];
            nll_b -= lb[target];
            let kl: f64 = la.iter().zip(&lb).map(|(p, q)| p.exp() * (p - q)).sum();
            kls.push(kl.max(0.0));
            agree += usize::from(argmax(xa) == argmax(xb));
        }
        Ok(())
    };
    for w in 0..windows {
        one(w)?;
        on_window(w + 1, windows);
    }
    let n = kls.len();
    let mean = |x: f64| x / n as f64;
    let kl_mean = mean(kls.iter().sum());
    kls.sort_by(f64::total_cmp);
    Ok(KvComparison {
        base: base.name().into(),
        test: test.name().into(),
        ppl_base: mean(nll_a).exp(),
        ppl_test: mean(nll_b).exp(),
        kl_mean,
        kl_max: kls.last().copied().unwrap_or(0.0),
        kl_p99: kls
            .get((n * 99 / 100).min(n.saturating_sub(1)))
            .copied()
            .unwrap_or(0.0),
        top1_agreement: agree as f64 / n as f64,
        scored_tokens: n,
        windows,
        ctx,
    })
}

/// Reserves one window's KV (blocks of 16) on `runner`; returns the block table.
fn window_kv(runner: &mut dyn ModelRunner, ctx: usize) -> Result<Vec<u32>, EngineError> {
    let block = 16;
    let n_blocks = ctx.div_ceil(block);
    let groups = runner.kv_layout().n_groups();
    runner.allocate_kv(block, &vec![n_blocks; groups])?;
    Ok((0..n_blocks as u32).collect())
}

/// Every row's logits for one window (`bos` + the window's tokens), over the blocks
/// of `table` (each window overwrites the last).
fn window_logits(
    runner: &mut dyn ModelRunner,
    table: &[u32],
    bos: u32,
    window: &[u32],
) -> Result<Vec<f32>, EngineError> {
    let tables: Vec<&[u32]> = vec![table; runner.kv_layout().n_groups()];
    let mut toks = Vec::with_capacity(window.len() + 1);
    toks.push(bos);
    toks.extend_from_slice(window);
    let mut logits = Vec::new();
    runner.execute(
        &[SeqInput {
            tokens: &toks,
            start_pos: 0,
            block_tables: &tables,
            logits: LogitsWanted::All,
        }],
        &mut logits,
    )?;
    Ok(logits)
}
