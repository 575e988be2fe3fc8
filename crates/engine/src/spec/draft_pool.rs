//! A draft model inside the batching engine (`hangar serve --speculative draft`): one
//! small model with the target's vocabulary drafts for every speculating sequence at
//! once. Each sequence gets a slot, with its own blocks of the draft's paged KV cache
//! (a free list shared by all slots), its own draft sampler and the distributions it
//! drafted from (for rejection sampling at the target). The drafting of a step is
//! batched: one forward catches every slot up on what its target emitted, then K
//! forwards of one token per slot.
//!
//! A slot remembers which tokens its cache holds; the next proposal keeps the longest
//! prefix that still matches the sequence (accepted drafts stay, rejected ones are
//! overwritten), so no rollback call is needed.

use super::DraftModel;
use crate::engine::ModelRunner;
use crate::sampler::{Sampler, SamplingParams};
use crate::EngineError;
use hangar_models::{LogitsWanted, SeqInput};
use hangar_tokenizer::Tokenizer;
use std::collections::HashMap;

const BLOCK: usize = 16;
/// Catch-up tokens fed per slot per forward (long prompts take several).
const CATCH_UP_CHUNK: usize = 512;

struct Slot {
    table: Vec<u32>,
    /// The tokens whose KV the draft cache holds, in order.
    cached: Vec<u32>,
    sampler: Sampler,
    /// The draft's distribution at each position of the last proposal.
    dists: Vec<Vec<(u32, f64)>>,
}

/// One drafting request: a sequence's id, its tokens, how many to draft, and the
/// sampling settings of the target (the draft samples alike, on its own stream).
pub struct DraftRequest<'a> {
    pub id: u64,
    pub history: &'a [u32],
    pub k: usize,
    pub sampling: &'a SamplingParams,
}

/// The draft model of a batching engine.
pub struct DraftPool {
    runner: Box<dyn ModelRunner>,
    groups: usize,
    free: Vec<u32>,
    slots: HashMap<u64, Slot>,
    logits: Vec<f32>,
}

impl DraftPool {
    /// Wraps `runner` (after checking that its tokenizer is the target's) with a KV
    /// cache of at most `kv_bytes` (at least one 16-token block per group).
    pub fn new(
        mut runner: Box<dyn ModelRunner>,
        draft_tokenizer: &Tokenizer,
        target_tokenizer: &Tokenizer,
        target_vocab: usize,
        kv_bytes: usize,
    ) -> Result<Self, EngineError> {
        DraftModel::check_vocabulary(
            runner.as_ref(),
            draft_tokenizer,
            target_tokenizer,
            target_vocab,
        )?;
        let layout = runner.kv_layout();
        let groups = layout.n_groups();
        let per_block: usize = (0..groups).map(|g| layout.block_bytes(g, BLOCK)).sum();
        let blocks = (kv_bytes / per_block.max(1)).max(1);
        runner.allocate_kv(BLOCK, &vec![blocks; groups])?;
        Ok(DraftPool {
            runner,
            groups,
            // Popped from the end: low ids first.
            free: (0..blocks as u32).rev().collect(),
            slots: HashMap::new(),
            logits: Vec::new(),
        })
    }

    /// Tokens the cache holds in all (every slot shares them).
    pub fn capacity_tokens(&self) -> usize {
        (self.free.len() + self.slots.values().map(|s| s.table.len()).sum::<usize>()) * BLOCK
    }

    /// Frees the slots of sequences for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        let gone: Vec<u64> = self.slots.keys().copied().filter(|&id| !keep(id)).collect();
        for id in gone {
            if let Some(s) = self.slots.remove(&id) {
                self.free.extend(s.table);
            }
        }
    }

    /// The draft distributions of the last proposal for sequence `id`.
    pub fn dists(&self, id: u64) -> Option<&[Vec<(u32, f64)>]> {
        self.slots.get(&id).map(|s| s.dists.as_slice())
    }

    /// Drafts for every request; `out[i]` gets request `i`'s draft (empty when its
    /// slot could not get the cache blocks it needs).
    pub fn propose(
        &mut self,
        reqs: &[DraftRequest],
        out: &mut [Vec<u32>],
    ) -> Result<(), EngineError> {
        // Slots, blocks and the cached prefix that still holds.
        let mut active: Vec<usize> = Vec::new();
        let mut start: Vec<usize> = vec![0; reqs.len()];
        let ctx = self.runner.ctx_len();
        for (i, r) in reqs.iter().enumerate() {
            out[i].clear();
            // Past the draft model's context a sequence goes on without drafts (the
            // others keep theirs).
            if r.k == 0 || r.history.is_empty() || r.history.len() + r.k > ctx {
                continue;
            }
            let slot = match self.slots.entry(r.id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    let mut params = r.sampling.clone();
                    params.n_logprobs = 0;
                    // Its own random stream: draft choices must not correlate with the
                    // target's acceptance draws.
                    params.seed = params.seed.map(|s| s ^ 0x5DEE_CE66_D1CE_F00D);
                    let mut sampler = Sampler::new(params)?;
                    sampler.set_logprob_wanted(false);
                    e.insert(Slot {
                        table: Vec::new(),
                        cached: Vec::new(),
                        sampler,
                        dists: Vec::new(),
                    })
                }
            };
            let need = (r.history.len() + r.k).div_ceil(BLOCK);
            while slot.table.len() < need {
                match self.free.pop() {
                    Some(b) => slot.table.push(b),
                    None => break,
                }
            }
            if slot.table.len() < need {
                continue;
            }
            let common = slot
                .cached
                .iter()
                .zip(r.history)
                .take_while(|(a, b)| a == b)
                .count();
            // At least the last token is fed again: its logits start the draft.
            let s = common.min(r.history.len() - 1);
            slot.cached.truncate(s);
            start[i] = s;
            active.push(i);
        }
        if active.is_empty() {
            return Ok(());
        }
        // Catch up, in rounds of at most CATCH_UP_CHUNK tokens per slot.
        let mut last_row: HashMap<usize, Vec<f32>> = HashMap::new();
        let vocab = self.runner.vocab_size();
        let mut pos = start.clone();
        loop {
            let pending: Vec<usize> = active
                .iter()
                .copied()
                .filter(|&i| pos[i] < reqs[i].history.len())
                .collect();
            if pending.is_empty() {
                break;
            }
            let tables = slot_tables(&self.slots, reqs, &pending, self.groups);
            let mut seqs = Vec::with_capacity(pending.len());
            let mut ends = Vec::with_capacity(pending.len());
            for (j, &i) in pending.iter().enumerate() {
                let h = reqs[i].history;
                let end = (pos[i] + CATCH_UP_CHUNK).min(h.len());
                seqs.push(SeqInput {
                    tokens: &h[pos[i]..end],
                    start_pos: pos[i],
                    block_tables: &tables[j],
                    logits: if end == h.len() {
                        LogitsWanted::Last
                    } else {
                        LogitsWanted::None
                    },
                });
                ends.push(end);
            }
            self.runner.execute(&seqs, &mut self.logits)?;
            let mut row = 0;
            for (&i, &end) in pending.iter().zip(&ends) {
                if end == reqs[i].history.len() {
                    let l = self.logits[row * vocab..(row + 1) * vocab].to_vec();
                    last_row.insert(i, l);
                    row += 1;
                }
                pos[i] = end;
            }
        }
        // Draft K tokens a slot, one batched forward per position.
        let mut ext: Vec<Vec<u32>> = reqs.iter().map(|r| r.history.to_vec()).collect();
        let kmax = active.iter().map(|&i| reqs[i].k).max().unwrap_or(0);
        for d in 0..kmax {
            let mut feed: Vec<usize> = Vec::new();
            for &i in &active {
                if d >= reqs[i].k {
                    continue;
                }
                let (Some(slot), Some(row)) =
                    (self.slots.get_mut(&reqs[i].id), last_row.get_mut(&i))
                else {
                    continue;
                };
                if slot.dists.len() <= d {
                    slot.dists.resize_with(d + 1, Vec::new);
                }
                let s = slot
                    .sampler
                    .sample_with_dist(row, &ext[i], &mut slot.dists[d]);
                out[i].push(s.id);
                ext[i].push(s.id);
                if d + 1 < reqs[i].k {
                    feed.push(i);
                }
            }
            if feed.is_empty() {
                break;
            }
            let tables = slot_tables(&self.slots, reqs, &feed, self.groups);
            let seqs: Vec<SeqInput> = feed
                .iter()
                .enumerate()
                .map(|(j, &i)| SeqInput {
                    tokens: &ext[i][ext[i].len() - 1..],
                    start_pos: ext[i].len() - 1,
                    block_tables: &tables[j],
                    logits: LogitsWanted::Last,
                })
                .collect();
            self.runner.execute(&seqs, &mut self.logits)?;
            for (row, &i) in feed.iter().enumerate() {
                if let Some(l) = last_row.get_mut(&i) {
                    l.copy_from_slice(&self.logits[row * vocab..(row + 1) * vocab]);
                }
            }
        }
        // The caches hold each history and its drafts but the last.
        for &i in &active {
            if let Some(slot) = self.slots.get_mut(&reqs[i].id) {
                let n = ext[i].len().saturating_sub(1);
                slot.cached.clear();
                slot.cached.extend_from_slice(&ext[i][..n]);
                slot.dists.truncate(out[i].len());
            }
        }
        Ok(())
    }
}

/// The block tables (one per KV group, all the slot's) of requests `which`.
fn slot_tables<'s>(
    slots: &'s HashMap<u64, Slot>,
    reqs: &[DraftRequest],
    which: &[usize],
    groups: usize,
) -> Vec<Vec<&'s [u32]>> {
    which
        .iter()
        .map(|&i| vec![slots[&reqs[i].id].table.as_slice(); groups])
        .collect()
}
