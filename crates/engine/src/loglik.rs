//! Log-likelihood of continuations given a context, on a direct forward pass (the
//! request type lm-evaluation-harness calls `loglikelihood`), and of whole texts in
//! rolling windows (`loglikelihood_rolling`).
//!
//! Owns the batching of scoring requests: the context of each question is computed
//! once, in whole KV blocks, and every choice continues from those shared blocks in
//! one batched forward (only the context's last partial block is recomputed per
//! choice). Knows nothing about task files or metrics; no scheduler, no sampling.

use crate::engine::prompt_lp::{log_sum_exp, top_k};
use crate::engine::ModelRunner;
use crate::EngineError;
use hangar_kernels::ThreadPool;
use hangar_models::kv::KvLayout;
use hangar_models::{KvCache, LogitsWanted, Model, SeqInput, Workspace};

/// One scoring request: a context (BOS included when the model wants one) and the
/// continuations to score after it.
#[derive(Debug, Clone)]
pub struct LoglikRequest {
    pub context: Vec<u32>,
    pub continuations: Vec<Vec<u32>>,
}

/// The score of one continuation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ContinuationScore {
    /// Sum of the log-probabilities of the continuation's tokens (nats).
    pub logprob: f64,
    /// Whether every token was the most likely one at its position.
    pub greedy: bool,
    pub tokens: usize,
}

/// Scores requests against a model; keeps its KV storage and buffers between calls
/// (use one scorer per model, or per runner with the `_on` methods).
#[derive(Default)]
pub struct LoglikScorer {
    block: usize,
    kv: Option<(KvCache, usize)>,
    ws: Workspace,
    logits: Vec<f32>,
    /// Blocks a runner given to the `_on` methods holds for this scorer (0: none;
    /// reset with [`LoglikScorer::runner_kv_reset`] when something else reallocated).
    runner_blocks: usize,
}

/// Where the forward passes run: the CPU forward on a borrowed model, keeping the KV
/// storage in the scorer, or any [`ModelRunner`] (the GPU backend).
trait Forward {
    fn vocab_size(&self) -> usize;
    fn ctx_len(&self) -> usize;
    fn n_groups(&self) -> usize;
    /// Makes room for `blocks` KV blocks of `block` tokens in every group.
    fn ensure_kv(&mut self, block: usize, blocks: usize) -> Result<(), EngineError>;
    fn forward(&mut self, inputs: &[SeqInput], logits: &mut Vec<f32>) -> Result<(), EngineError>;
}

struct CpuForward<'a> {
    model: &'a Model,
    pool: &'a ThreadPool,
    kv: &'a mut Option<(KvCache, usize)>,
    ws: &'a mut Workspace,
}

impl Forward for CpuForward<'_> {
    fn vocab_size(&self) -> usize {
        self.model.cfg.vocab_size
    }
    fn ctx_len(&self) -> usize {
        self.model.cfg.ctx_len
    }
    fn n_groups(&self) -> usize {
        KvLayout::for_model(&self.model.cfg).n_groups()
    }
    fn ensure_kv(&mut self, block: usize, blocks: usize) -> Result<(), EngineError> {
        if self.kv.as_ref().is_none_or(|(_, n)| *n < blocks) {
            let kv = KvCache::new(&self.model.cfg, block, &vec![blocks; self.n_groups()]);
            *self.kv = Some((kv, blocks));
        }
        Ok(())
    }
    fn forward(&mut self, inputs: &[SeqInput], logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let (kv, _) = self
            .kv
            .as_mut()
            .ok_or_else(|| EngineError::Invalid("KV cache not allocated".into()))?;
        self.model.forward(self.pool, inputs, kv, self.ws, logits)?;
        Ok(())
    }
}

struct RunnerForward<'a> {
    runner: &'a mut dyn ModelRunner,
    blocks: &'a mut usize,
}

impl Forward for RunnerForward<'_> {
    fn vocab_size(&self) -> usize {
        self.runner.vocab_size()
    }
    fn ctx_len(&self) -> usize {
        self.runner.ctx_len()
    }
    fn n_groups(&self) -> usize {
        self.runner.kv_layout().n_groups()
    }
    fn ensure_kv(&mut self, block: usize, blocks: usize) -> Result<(), EngineError> {
        if *self.blocks < blocks {
            let groups = self.n_groups();
            self.runner.allocate_kv(block, &vec![blocks; groups])?;
            *self.blocks = blocks;
        }
        Ok(())
    }
    fn forward(&mut self, inputs: &[SeqInput], logits: &mut Vec<f32>) -> Result<(), EngineError> {
        self.runner.execute(inputs, logits)
    }
}

impl LoglikScorer {
    /// KV block size (tokens). Small, so that at most `BLOCK` context tokens are
    /// recomputed per continuation (their logit rows, over a large vocabulary, dominate
    /// the cost of short continuations): 2 measured fastest on the default model.
    pub const BLOCK: usize = 2;

    pub fn new() -> Self {
        LoglikScorer {
            block: Self::BLOCK,
            ..Default::default()
        }
    }

    /// Scores every continuation of every request, in as few forward passes as the
    /// batch allows: one for all shared contexts, one for all continuations.
    pub fn score(
        &mut self,
        model: &Model,
        pool: &ThreadPool,
        reqs: &[LoglikRequest],
    ) -> Result<Vec<Vec<ContinuationScore>>, EngineError> {
        let mut f = CpuForward {
            model,
            pool,
            kv: &mut self.kv,
            ws: &mut self.ws,
        };
        score_with(&mut f, self.block, &mut self.logits, reqs)
    }

    /// As [`LoglikScorer::score`], on any backend (`hangar eval --device cuda`). The
    /// runner's KV storage is (re)allocated for the scorer as needed.
    pub fn score_on(
        &mut self,
        runner: &mut dyn ModelRunner,
        reqs: &[LoglikRequest],
    ) -> Result<Vec<Vec<ContinuationScore>>, EngineError> {
        let mut f = RunnerForward {
            runner,
            blocks: &mut self.runner_blocks,
        };
        score_with(&mut f, self.block, &mut self.logits, reqs)
    }

    /// The runner given to the `_on` methods had its KV storage reallocated by
    /// something else (a generation): allocate again on next use.
    pub fn runner_kv_reset(&mut self) {
        self.runner_blocks = 0;
    }

    /// Total log-likelihood of `tokens` (a whole document, without BOS), scored in
    /// windows of at most `window` tokens: the first is conditioned on `bos`, each
    /// later one on the `window / 2` tokens before it. Every token is scored once.
    pub fn rolling(
        &mut self,
        model: &Model,
        pool: &ThreadPool,
        bos: u32,
        tokens: &[u32],
        window: usize,
    ) -> Result<f64, EngineError> {
        let window = window.min(model.cfg.ctx_len);
        rolling_windows(bos, tokens, window, |r| {
            Ok(self.score(model, pool, std::slice::from_ref(r))?[0][0].logprob)
        })
    }

    /// As [`LoglikScorer::rolling`], on any backend.
    pub fn rolling_on(
        &mut self,
        runner: &mut dyn ModelRunner,
        bos: u32,
        tokens: &[u32],
        window: usize,
    ) -> Result<f64, EngineError> {
        let window = window.min(runner.ctx_len());
        rolling_windows(bos, tokens, window, |r| {
            Ok(self.score_on(runner, std::slice::from_ref(r))?[0][0].logprob)
        })
    }
}

/// The windows of [`LoglikScorer::rolling`], each scored by `score`.
fn rolling_windows(
    bos: u32,
    tokens: &[u32],
    window: usize,
    mut score: impl FnMut(&LoglikRequest) -> Result<f64, EngineError>,
) -> Result<f64, EngineError> {
    if window < 4 {
        return Err(EngineError::Invalid(format!(
            "a rolling window of {window} tokens is too small (at least 4)"
        )));
    }
    let mut total = 0.0;
    let first = tokens.len().min(window - 1);
    if first > 0 {
        total += score(&LoglikRequest {
            context: vec![bos],
            continuations: vec![tokens[..first].to_vec()],
        })?;
    }
    let keep = window / 2;
    let mut s = first;
    while s < tokens.len() {
        // Each later window: `keep` tokens of context, then new tokens to score.
        let e = (s + window - keep).min(tokens.len());
        total += score(&LoglikRequest {
            context: tokens[s - keep.min(s)..s].to_vec(),
            continuations: vec![tokens[s..e].to_vec()],
        })?;
        s = e;
    }
    Ok(total)
}

/// Scoring over a [`Forward`] backend (see [`LoglikScorer::score`]).
fn score_with(
    f: &mut dyn Forward,
    block: usize,
    logits: &mut Vec<f32>,
    reqs: &[LoglikRequest],
) -> Result<Vec<Vec<ContinuationScore>>, EngineError> {
    let bs = block.max(1);
    let vocab = f.vocab_size();
    let max_len = f.ctx_len();
    for r in reqs {
        if r.context.is_empty() {
            return Err(EngineError::Invalid(
                "a scoring request needs at least one context token (BOS)".into(),
            ));
        }
        if let Some(&id) = r
            .context
            .iter()
            .chain(r.continuations.iter().flatten())
            .find(|&&id| id as usize >= vocab)
        {
            return Err(EngineError::Invalid(format!(
                "token id {id} is outside the vocabulary"
            )));
        }
        let longest = r.continuations.iter().map(Vec::len).max().unwrap_or(0);
        if r.context.len() + longest > max_len {
            return Err(EngineError::Invalid(format!(
                "context ({} tokens) plus continuation ({longest}) exceed the model's {max_len}; shorten the item or truncate its context",
                r.context.len()
            )));
        }
    }
    // Block plan: each request's shared blocks, then each continuation's own.
    struct Plan {
        shared: usize,
        shared_table: Vec<u32>,
        tables: Vec<Vec<u32>>,
    }
    let mut next = 0u32;
    let mut alloc = |n: usize| -> Vec<u32> {
        let t: Vec<u32> = (next..next + n as u32).collect();
        next += n as u32;
        t
    };
    let plans: Vec<Plan> = reqs
        .iter()
        .map(|r| {
            // The last context token is always recomputed with the continuation, so
            // its logits (which predict the continuation's first token) are there.
            let shared = (r.context.len() - 1) / bs * bs;
            let shared_table = alloc(shared / bs);
            let tables = r
                .continuations
                .iter()
                .map(|c| {
                    let own = (r.context.len() - shared + c.len()).div_ceil(bs);
                    let mut t = shared_table.clone();
                    t.extend(alloc(own));
                    t
                })
                .collect();
            Plan {
                shared,
                shared_table,
                tables,
            }
        })
        .collect();
    let blocks = next as usize;
    let n_groups = f.n_groups();
    f.ensure_kv(bs, blocks.max(1))?;

    // Pass 1: shared contexts.
    let shared_tables: Vec<Vec<&[u32]>> = plans
        .iter()
        .map(|p| vec![p.shared_table.as_slice(); n_groups])
        .collect();
    let inputs: Vec<SeqInput> = reqs
        .iter()
        .zip(&plans)
        .zip(&shared_tables)
        .filter(|((_, p), _)| p.shared > 0)
        .map(|((r, p), t)| SeqInput {
            tokens: &r.context[..p.shared],
            start_pos: 0,
            block_tables: t,
            logits: LogitsWanted::None,
        })
        .collect();
    if !inputs.is_empty() {
        f.forward(&inputs, logits)?;
    }

    // Pass 2: context tail + continuation, every row's logits.
    let joined: Vec<Vec<Vec<u32>>> = reqs
        .iter()
        .zip(&plans)
        .map(|(r, p)| {
            r.continuations
                .iter()
                .map(|c| {
                    let mut t = r.context[p.shared..].to_vec();
                    t.extend_from_slice(c);
                    t
                })
                .collect()
        })
        .collect();
    let cont_tables: Vec<Vec<Vec<&[u32]>>> = plans
        .iter()
        .map(|p| {
            p.tables
                .iter()
                .map(|t| vec![t.as_slice(); n_groups])
                .collect()
        })
        .collect();
    let mut inputs = Vec::new();
    for ((p, js), ts) in plans.iter().zip(&joined).zip(&cont_tables) {
        for (j, t) in js.iter().zip(ts) {
            inputs.push(SeqInput {
                tokens: j,
                start_pos: p.shared,
                block_tables: t,
                logits: LogitsWanted::All,
            });
        }
    }
    if inputs.is_empty() {
        return Ok(reqs.iter().map(|_| Vec::new()).collect());
    }
    f.forward(&inputs, logits)?;

    let mut out = Vec::with_capacity(reqs.len());
    let mut row0 = 0usize;
    for (r, p) in reqs.iter().zip(&plans) {
        let tail = r.context.len() - p.shared;
        let mut scores = Vec::with_capacity(r.continuations.len());
        for c in &r.continuations {
            let (mut lp, mut greedy) = (0.0f64, true);
            for (k, &t) in c.iter().enumerate() {
                let row = row0 + tail - 1 + k;
                let row = &logits[row * vocab..(row + 1) * vocab];
                lp += row[t as usize] as f64 - log_sum_exp(row);
                greedy &= top_k(row, 1).first().is_some_and(|&(id, _)| id == t);
            }
            scores.push(ContinuationScore {
                logprob: lp,
                greedy,
                tokens: c.len(),
            });
            row0 += tail + c.len();
        }
        out.push(scores);
    }
    Ok(out)
}
