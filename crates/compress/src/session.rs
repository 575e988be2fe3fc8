//! A single-sequence run of a model over a paged KV cache: the small harness that
//! eval, imatrix and the multiple-choice scorer share.

use crate::error::Result;
use hangar_kernels::ThreadPool;
use hangar_models::{KvCache, LogitsWanted, Model, Observer, SeqInput, Workspace};

/// One sequence of up to `cap` tokens.
pub(crate) struct Session<'m> {
    pub model: &'m Model,
    kv: KvCache,
    table: Vec<u32>,
    ws: Workspace,
    pub logits: Vec<f32>,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, cap: usize) -> Self {
        let block = 16;
        let kv = KvCache::for_single_sequence(&model.cfg, block, cap);
        let table = (0..cap.div_ceil(block) as u32).collect();
        Session {
            model,
            kv,
            table,
            ws: Workspace::default(),
            logits: Vec::new(),
        }
    }

    /// Feeds `tokens` at `start`; afterwards `self.logits` holds the rows asked for.
    pub fn feed(
        &mut self,
        pool: &ThreadPool,
        tokens: &[u32],
        start: usize,
        want: LogitsWanted,
        observer: Option<Observer>,
    ) -> Result<()> {
        let tables: Vec<&[u32]> = vec![&self.table; self.kv.n_groups()];
        let seq = SeqInput {
            tokens,
            start_pos: start,
            block_tables: &tables,
            logits: want,
        };
        self.model.forward_observed(
            pool,
            &[seq],
            &mut self.kv,
            &mut self.ws,
            &mut self.logits,
            observer,
        )?;
        Ok(())
    }

    pub fn vocab(&self) -> usize {
        self.model.cfg.vocab_size
    }
}

/// `(max, log Σ exp)` of a logit row, for log-softmax.
pub(crate) fn lse(row: &[f32]) -> (f32, f64) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
    (max, max as f64 + sum.ln())
}

pub(crate) fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}
