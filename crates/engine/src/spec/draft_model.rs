//! The draft model: a small model with the target's vocabulary that decodes K
//! tokens ahead on its own KV cache. Owns that cache and the draft sampler; must
//! not see the target's logits.

use crate::engine::ModelRunner;
use crate::sampler::{Sampler, SamplingParams};
use crate::EngineError;
use hangar_models::{LogitsWanted, SeqInput};
use hangar_tokenizer::Tokenizer;

/// A draft model bound to one sequence at a time ([`DraftModel::start`]).
pub struct DraftModel<'a> {
    runner: Box<dyn ModelRunner + 'a>,
    sampler: Option<Sampler>,
    /// Positions of the history whose KV the draft cache holds.
    cached: usize,
    capacity: usize,
    logits: Vec<f32>,
    scratch: Vec<u32>,
    /// The draft's distribution at each drafted position (for rejection sampling).
    dists: Vec<Vec<(u32, f64)>>,
}

impl<'a> DraftModel<'a> {
    /// Wraps `runner`, after checking that its tokenizer is the target's: the same
    /// vocabulary size and the same token at every id (drafts are token ids).
    pub fn new(
        runner: Box<dyn ModelRunner + 'a>,
        draft_tokenizer: &Tokenizer,
        target_tokenizer: &Tokenizer,
        target_vocab: usize,
    ) -> Result<Self, EngineError> {
        Self::check_vocabulary(
            runner.as_ref(),
            draft_tokenizer,
            target_tokenizer,
            target_vocab,
        )?;
        Ok(DraftModel {
            runner,
            sampler: None,
            cached: 0,
            capacity: 0,
            logits: Vec::new(),
            scratch: Vec::new(),
            dists: Vec::new(),
        })
    }

    /// Checks that a draft model can draft for a target: the same vocabulary size
    /// and the same token at every id.
    pub fn check_vocabulary(
        runner: &dyn ModelRunner,
        draft_tokenizer: &Tokenizer,
        target_tokenizer: &Tokenizer,
        target_vocab: usize,
    ) -> Result<(), EngineError> {
        let (dv, tv) = (draft_tokenizer.vocab_size(), target_tokenizer.vocab_size());
        if dv != tv || runner.vocab_size() != target_vocab {
            return Err(EngineError::Invalid(format!(
                "the draft model's vocabulary ({dv} tokens, {} logits) differs from the target's ({tv} tokens, {target_vocab} logits); a draft model must share the target's tokenizer",
                runner.vocab_size()
            )));
        }
        if let Some(id) = (0..tv as u32)
            .find(|&i| draft_tokenizer.id_to_token(i) != target_tokenizer.id_to_token(i))
        {
            return Err(EngineError::Invalid(format!(
                "the draft model's tokenizer differs from the target's at token {id} ({:?} vs {:?}); a draft model must share the target's tokenizer",
                draft_tokenizer.id_to_token(id).unwrap_or(""),
                target_tokenizer.id_to_token(id).unwrap_or("")
            )));
        }
        Ok(())
    }

    /// Prepares for a new sequence of at most `capacity` positions, drafting with
    /// the target's sampling settings (its own random stream).
    pub fn start(&mut self, capacity: usize, sampling: &SamplingParams) -> Result<(), EngineError> {
        if capacity > self.runner.ctx_len() {
            return Err(EngineError::Invalid(format!(
                "the draft model's context ({}) is shorter than this generation needs ({capacity})",
                self.runner.ctx_len()
            )));
        }
        let block = 16;
        let n_blocks = capacity.div_ceil(block);
        let groups = self.runner.kv_layout().n_groups();
        self.runner.allocate_kv(block, &vec![n_blocks; groups])?;
        let mut params = sampling.clone();
        params.n_logprobs = 0;
        // A different stream from the target's: the draft's choices must not be
        // correlated with the target's acceptance draws.
        params.seed = params.seed.map(|s| s ^ 0x5DEE_CE66_D1CE_F00D);
        let mut sampler = Sampler::new(params)?;
        sampler.set_logprob_wanted(false);
        self.sampler = Some(sampler);
        self.cached = 0;
        self.capacity = capacity;
        Ok(())
    }

    /// Drafts up to `k` tokens after `history` into `out` (fewer near the capacity).
    pub fn propose(
        &mut self,
        history: &[u32],
        k: usize,
        out: &mut Vec<u32>,
    ) -> Result<(), EngineError> {
        out.clear();
        let k = k.min(self.capacity.saturating_sub(history.len()));
        if k == 0 || history.is_empty() {
            return Ok(());
        }
        let n_blocks = self.capacity.div_ceil(16) as u32;
        let table: Vec<u32> = (0..n_blocks).collect();
        let groups = self.runner.kv_layout().n_groups();
        let tables: Vec<&[u32]> = vec![&table; groups];
        // Catch up on what the target emitted since the last draft.
        let mut pos = self.cached.min(history.len() - 1);
        while pos < history.len() {
            let end = (pos + 512).min(history.len());
            let seq = SeqInput {
                tokens: &history[pos..end],
                start_pos: pos,
                block_tables: &tables,
                logits: if end == history.len() {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            };
            self.runner.execute(&[seq], &mut self.logits)?;
            pos = end;
        }
        let Some(sampler) = self.sampler.as_mut() else {
            return Err(EngineError::Invalid("draft model used before start".into()));
        };
        let mut ext = std::mem::take(&mut self.scratch);
        ext.clear();
        ext.extend_from_slice(history);
        while self.dists.len() < k {
            self.dists.push(Vec::new());
        }
        for (i, dist) in self.dists.iter_mut().take(k).enumerate() {
            let s = sampler.sample_with_dist(&mut self.logits, &ext, dist);
            out.push(s.id);
            ext.push(s.id);
            if i + 1 < k {
                let seq = SeqInput {
                    tokens: &ext[ext.len() - 1..],
                    start_pos: ext.len() - 1,
                    block_tables: &tables,
                    logits: LogitsWanted::Last,
                };
                self.runner.execute(&[seq], &mut self.logits)?;
            }
        }
        self.scratch = ext;
        // The cache now holds the history and all drafts but the last.
        self.cached = history.len() + k - 1;
        Ok(())
    }

    /// The draft distribution at drafted position `i` of the last proposal.
    pub fn dist(&self, i: usize) -> Option<&[(u32, f64)]> {
        self.dists.get(i).map(Vec::as_slice)
    }

    /// After verification: of the history the last proposal extended (`history_len`
    /// tokens), `accepted` drafts were kept; positions past them are stale.
    pub fn rollback(&mut self, history_len: usize, accepted: usize) {
        self.cached = self.cached.min(history_len + accepted);
    }
}
