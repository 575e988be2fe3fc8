//! Continuous-batching policy: which sequences run in the next model step and how many
//! tokens each, under a per-step token budget and the KV block pool.
//!
//! Plain data in, plain data out: it never runs the model nor samples. Each step mixes
//! the decode tokens of running sequences with chunked prefill of new ones.
//!
//! Admission is weighted-fair across tenants (API keys), then fair across requests:
//! the waiting sequence whose tenant holds the smallest weighted share of the running
//! slots goes first (ties: the tenant that was served the fewest weighted tokens, a
//! virtual clock as in weighted fair queuing), then the request that runs the fewest
//! sequences, then arrival order — so one tenant's requests keep their FIFO order. When
//! the slots are full and a tenant waits while another holds more than its share, the
//! newest sequence of the most over-share tenant is preempted to make room. When
//! blocks run out the newest sequence of the request holding the most is preempted
//! (its blocks freed, recomputed later) instead of failing.

use crate::kv_manager::{KvBlockManager, SeqBlocks};
use std::collections::{HashMap, HashSet, VecDeque};

/// Identifies a sequence inside the engine.
pub type SeqId = u64;

/// Scheduler limits.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Tokens (prefill + decode) one model step may process.
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_running: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_batch_tokens: 512,
            max_running: 64,
        }
    }
}

/// A sequence as the scheduler sees it: its tokens (prompt, then generated) and how
/// many of them already have KV in the cache.
#[derive(Debug)]
pub struct SchedSeq {
    pub id: SeqId,
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose KV is computed.
    pub computed: usize,
    pub blocks: SeqBlocks,
    /// Prompt tokens served from the prefix cache at the first admission.
    pub cached_tokens: usize,
    pub preempted: u32,
    /// The client request this sequence belongs to (its `n` choices share one).
    pub group: u64,
    /// The tenant (API key) the sequence is charged to, and its weight (at least 1).
    pub tenant: u64,
    pub weight: u32,
    /// Most prompt tokens the prefix cache may serve (a request that reports prompt
    /// logprobs must compute the positions it reports).
    pub cache_limit: usize,
    /// Prefix-cache key beside the tokens: 0 for the base model, a LoRA adapter's id
    /// otherwise (blocks are shared only between sequences with the same salt).
    pub cache_salt: u128,
    admitted_once: bool,
    /// A hash of the prompt, computed once: siblings (the `n` choices of one prompt)
    /// share it.
    prompt_hash: u64,
    /// When the sequence was submitted.
    arrived: std::time::Instant,
    /// Time from submission to the first admission (zero until admitted).
    pub queue_time: std::time::Duration,
    /// Speculative decoding: tokens guessed to follow `tokens`, verified by the next
    /// decode step (their KV is computed there, but trusted only once accepted).
    pub draft: Vec<u32>,
}

impl SchedSeq {
    pub fn new(id: SeqId, prompt: Vec<u32>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        prompt.hash(&mut h);
        SchedSeq {
            prompt_hash: h.finish(),
            id,
            prompt_len: prompt.len(),
            tokens: prompt,
            computed: 0,
            blocks: SeqBlocks::default(),
            cached_tokens: 0,
            preempted: 0,
            group: id,
            tenant: 0,
            weight: 1,
            cache_limit: usize::MAX,
            cache_salt: 0,
            admitted_once: false,
            arrived: std::time::Instant::now(),
            queue_time: std::time::Duration::ZERO,
            draft: Vec::new(),
        }
    }
    /// Marks the sequence as one of a request's several (fair admission counts by group).
    pub fn in_group(mut self, group: u64) -> Self {
        self.group = group;
        self
    }
    /// Charges the sequence to `tenant`, whose share of the slots is `weight`.
    pub fn for_tenant(mut self, tenant: u64, weight: u32) -> Self {
        self.tenant = tenant;
        self.weight = weight.max(1);
        self
    }
    /// Generated tokens so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }
}

/// One sequence's share of a step: `len` tokens from position `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledChunk {
    /// Index into [`Scheduler::running`] (valid until the next `step` or `finish`).
    pub slot: usize,
    pub id: SeqId,
    pub start: usize,
    pub len: usize,
    /// The chunk ends at the sequence's last token: sample from its logits.
    pub sample: bool,
    /// Of `len`, how many trailing positions are the sequence's draft (speculative
    /// decoding): they are not in `tokens`, and every row's logits verifies one.
    pub draft: usize,
}

/// The scheduler's output for one model step.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub chunks: Vec<ScheduledChunk>,
    /// Sequences moved back to the waiting queue in this step.
    pub preempted: Vec<SeqId>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
    pub fn tokens(&self) -> usize {
        self.chunks.iter().map(|c| c.len).sum()
    }
}

/// Continuous-batching scheduler, fair across requests.
#[derive(Debug, Default)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    waiting: VecDeque<SchedSeq>,
    running: Vec<SchedSeq>,
    /// Each tenant's virtual clock: tokens computed for it divided by its weight.
    /// Dropped when the tenant has nothing queued or running.
    served: HashMap<u64, f64>,
    /// Preemptions since start (memory pressure and fairness).
    pub preemptions: u64,
}

/// A tenant's share of the running slots, as a fraction compared exactly.
#[derive(Debug, Clone, Copy)]
struct Share {
    running: u64,
    weight: u64,
}

impl Share {
    /// `self < other`, by cross-multiplication (no rounding).
    fn less(self, other: Share) -> bool {
        self.running * other.weight < other.running * self.weight
    }
}

impl Scheduler {
    pub fn new(cfg: SchedulerConfig) -> Self {
        Scheduler {
            cfg: SchedulerConfig {
                max_batch_tokens: cfg.max_batch_tokens.max(1),
                max_running: cfg.max_running.max(1),
            },
            ..Default::default()
        }
    }

    /// Queues a new sequence behind every earlier one. A tenant that was idle joins
    /// at the current virtual time, so it cannot bank credit while away.
    pub fn add(&mut self, seq: SchedSeq) {
        if !self.served.contains_key(&seq.tenant) {
            let now = self.served.values().copied().fold(f64::INFINITY, f64::min);
            self.served
                .insert(seq.tenant, if now.is_finite() { now } else { 0.0 });
        }
        self.waiting.push_back(seq);
    }

    /// Weighted tokens computed for `tenant` so far (its virtual clock).
    pub fn served(&self, tenant: u64) -> f64 {
        self.served.get(&tenant).copied().unwrap_or(0.0)
    }

    pub fn running(&self) -> &[SchedSeq] {
        &self.running
    }
    pub fn running_mut(&mut self) -> &mut [SchedSeq] {
        &mut self.running
    }
    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn n_running(&self) -> usize {
        self.running.len()
    }
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }
    /// Ids of every sequence, running or waiting.
    pub fn ids(&self) -> impl Iterator<Item = SeqId> + '_ {
        self.running.iter().chain(self.waiting.iter()).map(|s| s.id)
    }

    /// Removes a sequence (finished or cancelled) wherever it is and frees its blocks
    /// at once. Returns it, if it was there.
    pub fn finish(&mut self, id: SeqId, kv: &mut KvBlockManager) -> Option<SchedSeq> {
        let mut seq = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            self.running.remove(i)
        } else {
            let i = self.waiting.iter().position(|s| s.id == id)?;
            self.waiting.remove(i)?
        };
        kv.free(&mut seq.blocks);
        self.forget_if_idle(seq.tenant);
        Some(seq)
    }

    fn forget_if_idle(&mut self, tenant: u64) {
        if !self.has_work(tenant) {
            self.served.remove(&tenant);
        }
    }

    fn has_work(&self, tenant: u64) -> bool {
        self.running
            .iter()
            .chain(self.waiting.iter())
            .any(|s| s.tenant == tenant)
    }

    /// Running sequences per tenant, and each tenant's weight.
    fn shares(&self) -> HashMap<u64, Share> {
        let mut m: HashMap<u64, Share> = HashMap::new();
        for s in self.running.iter().chain(self.waiting.iter()) {
            let e = m.entry(s.tenant).or_insert(Share {
                running: 0,
                weight: u64::from(s.weight.max(1)),
            });
            e.weight = e.weight.max(u64::from(s.weight.max(1)));
        }
        for s in &self.running {
            if let Some(e) = m.get_mut(&s.tenant) {
                e.running += 1;
            }
        }
        m
    }

    /// With every slot taken: the running sequence to give way so a waiting tenant
    /// below its share gets one. Picks the newest sequence of the tenant furthest over
    /// its share, and only if it stays at or above the waiting tenant's share after
    /// the swap (so two tenants never trade a slot back and forth).
    fn fairness_victim(&self) -> Option<usize> {
        if self.running.len() < self.cfg.max_running || self.waiting.is_empty() {
            return None;
        }
        let shares = self.shares();
        let neediest = self
            .waiting
            .iter()
            .filter_map(|s| shares.get(&s.tenant).copied())
            .reduce(|a, b| if b.less(a) { b } else { a })?;
        let richest_tenant = self.running.iter().map(|s| s.tenant).reduce(|a, b| {
            if shares[&a].less(shares[&b]) {
                b
            } else {
                a
            }
        })?;
        let richest = shares[&richest_tenant];
        let after = Share {
            running: neediest.running + 1,
            weight: neediest.weight,
        };
        if !after.less(richest) {
            return None;
        }
        (0..self.running.len())
            .rev()
            .find(|&j| self.running[j].tenant == richest_tenant)
    }

    fn running_in_group(&self, group: u64) -> usize {
        self.running.iter().filter(|s| s.group == group).count()
    }

    /// Picks the victim: the newest sequence of the request that runs the most
    /// sequences, so one large request gives way before others.
    fn victim(&self) -> Option<usize> {
        (0..self.running.len()).max_by_key(|&j| (self.running_in_group(self.running[j].group), j))
    }

    /// Preempts the victim and returns its slot. A victim already planned in this
    /// step loses its chunk (and gives back its token budget); later slots shift down.
    fn preempt(
        &mut self,
        kv: &mut KvBlockManager,
        batch: &mut Batch,
        budget: &mut usize,
    ) -> Option<usize> {
        let j = self.victim()?;
        if let Some(k) = batch.chunks.iter().position(|c| c.slot == j) {
            *budget += batch.chunks.remove(k).len;
        }
        for c in &mut batch.chunks {
            if c.slot > j {
                c.slot -= 1;
            }
        }
        self.requeue(j, kv, batch);
        Some(j)
    }

    /// The waiting sequence to admit next: smallest weighted share of the running
    /// slots for its tenant, then the tenant's virtual clock, then fewest running
    /// sequences in its request, then earliest in the queue.
    fn next_to_admit(&self, deferred: &HashSet<(u64, u64)>) -> Option<usize> {
        let shares = self.shares();
        let mut groups: HashMap<u64, usize> = HashMap::new();
        for s in &self.running {
            *groups.entry(s.group).or_default() += 1;
        }
        let better = |i: usize, j: usize| -> bool {
            let (a, b) = (&self.waiting[i], &self.waiting[j]);
            if a.tenant != b.tenant {
                let (sa, sb) = (shares[&a.tenant], shares[&b.tenant]);
                if sa.less(sb) || sb.less(sa) {
                    return sa.less(sb);
                }
                let (va, vb) = (self.served(a.tenant), self.served(b.tenant));
                if va != vb {
                    return va < vb;
                }
            }
            let ga = groups.get(&a.group).copied().unwrap_or(0);
            let gb = groups.get(&b.group).copied().unwrap_or(0);
            (ga, i) < (gb, j)
        };
        (0..self.waiting.len())
            .filter(|&i| {
                let w = &self.waiting[i];
                deferred.is_empty() || w.cache_limit == 0 || !deferred.contains(&sibling_key(w))
            })
            .reduce(|best, i| if better(i, best) { i } else { best })
    }

    /// Requests whose prompt a running sibling (another of its `n` choices) is still
    /// computing: their other sequences wait for its blocks to reach the prefix cache
    /// instead of computing the same prompt again. Only with prefix caching, and for
    /// prompts longer than a block.
    fn prefilling_siblings(&self, kv: &KvBlockManager) -> HashSet<(u64, u64)> {
        if !kv.prefix_caching() {
            return HashSet::new();
        }
        let bs = kv.block_size();
        self.running
            .iter()
            .filter(|s| s.computed < s.prompt_len && s.prompt_len > bs)
            .map(sibling_key)
            .collect()
    }

    /// Moves running sequence `j` back to the front of the queue, freeing its blocks.
    fn requeue(&mut self, j: usize, kv: &mut KvBlockManager, batch: &mut Batch) {
        let mut seq = self.running.remove(j);
        kv.free(&mut seq.blocks);
        seq.computed = 0;
        seq.draft.clear();
        seq.preempted += 1;
        self.preemptions += 1;
        batch.preempted.push(seq.id);
        self.waiting.push_front(seq);
    }

    /// Plans the next model step.
    pub fn step(&mut self, kv: &mut KvBlockManager) -> Batch {
        let mut batch = Batch::default();
        let mut budget = self.cfg.max_batch_tokens;

        // 0. Fairness: a tenant waiting below its share takes a slot from the tenant
        //    furthest above its own (at most one per step; the next steps continue).
        if let Some(j) = self.fairness_victim() {
            self.requeue(j, kv, &mut batch);
        }
        let fairness_preempted = batch.preempted.len();

        // 1. Running sequences, oldest first: one decode token, or the next prefill chunk.
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let seq = &mut self.running[i];
            let n = (seq.tokens.len() - seq.computed).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let start = seq.computed;
            kv.release_outside_window(&mut seq.blocks, start);
            // A decode step with a draft verifies it in the same forward, if the
            // budget and the pool allow; otherwise the draft is dropped.
            if n == 1 && !seq.draft.is_empty() {
                let d = seq.draft.len().min(budget - 1);
                if d > 0 && kv.allocate(&mut seq.blocks, start, start + 1 + d) {
                    seq.draft.truncate(d);
                    batch.chunks.push(ScheduledChunk {
                        slot: i,
                        id: seq.id,
                        start,
                        len: 1 + d,
                        sample: true,
                        draft: d,
                    });
                    budget -= 1 + d;
                    i += 1;
                    continue;
                }
                seq.draft.clear();
            }
            loop {
                let seq = &mut self.running[i];
                if kv.allocate(&mut seq.blocks, start, start + n) {
                    batch.chunks.push(ScheduledChunk {
                        slot: i,
                        id: seq.id,
                        start,
                        len: n,
                        sample: start + n == seq.tokens.len(),
                        draft: 0,
                    });
                    budget -= n;
                    i += 1;
                    break;
                }
                // Out of blocks: the victim gives its blocks back; retry unless the
                // victim was this sequence.
                match self.preempt(kv, &mut batch, &mut budget) {
                    Some(j) if j == i => break,
                    Some(j) if j < i => i -= 1,
                    Some(_) => {}
                    None => break,
                }
            }
        }

        // 2. Admit waiting sequences, fairly across requests, while blocks and budget
        //    allow, unless this step already had to preempt.
        let mut deferred = self.prefilling_siblings(kv);
        while batch.preempted.len() == fairness_preempted
            && budget > 0
            && self.running.len() < self.cfg.max_running
        {
            let Some(pick) = self.next_to_admit(&deferred) else {
                break;
            };
            let Some(mut seq) = self.waiting.remove(pick) else {
                break;
            };
            let lookup = seq.tokens.len().min(seq.cache_limit.saturating_add(1));
            let (blocks, cached) = kv.start_sequence_salted(&seq.tokens[..lookup], seq.cache_salt);
            seq.blocks = blocks;
            seq.computed = cached;
            let n = (seq.tokens.len() - cached).min(budget);
            // Keep one block per running sequence in reserve for their next decode.
            let reserve = self.running.len();
            let fits = kv.can_allocate_reserving(&seq.blocks, cached, cached + n, reserve)
                && kv.allocate(&mut seq.blocks, cached, cached + n);
            if !fits {
                kv.free(&mut seq.blocks);
                seq.computed = 0;
                self.waiting.insert(pick, seq);
                break;
            }
            if !seq.admitted_once {
                seq.cached_tokens = cached;
                seq.admitted_once = true;
                seq.queue_time = seq.arrived.elapsed();
            }
            let slot = self.running.len();
            batch.chunks.push(ScheduledChunk {
                slot,
                id: seq.id,
                start: cached,
                len: n,
                sample: cached + n == seq.tokens.len(),
                draft: 0,
            });
            budget -= n;
            if kv.prefix_caching() && seq.prompt_len > kv.block_size() && cached < seq.prompt_len {
                deferred.insert(sibling_key(&seq));
            }
            self.running.push(seq);
        }
        batch
    }

    /// Records that the batch ran: its tokens now have KV, and their full blocks are
    /// published to the prefix cache. A draft's positions count only once accepted
    /// (see [`Scheduler::accept_draft`]).
    pub fn commit(&mut self, batch: &Batch, kv: &mut KvBlockManager) {
        for c in &batch.chunks {
            let seq = &mut self.running[c.slot];
            debug_assert_eq!(seq.id, c.id);
            seq.computed = c.start + c.len - c.draft;
            kv.publish(&mut seq.blocks, &seq.tokens, seq.computed);
            let cost = c.len as f64 / f64::from(seq.weight.max(1));
            *self.served.entry(seq.tenant).or_default() += cost;
        }
    }

    /// After a verified draft: the sequence's tokens grew by the accepted drafts and
    /// the target's own next token, so the KV computed for the accepted positions is
    /// now trusted (KV written for rejected ones is overwritten by later steps; a
    /// sequence's computed length is all the cache believes). Publishes the blocks it
    /// completed.
    pub fn accept_draft(&mut self, slot: usize, kv: &mut KvBlockManager) {
        let Some(seq) = self.running.get_mut(slot) else {
            return;
        };
        let verified = seq.tokens.len().saturating_sub(1);
        if verified > seq.computed {
            seq.computed = verified;
            kv.publish(&mut seq.blocks, &seq.tokens, seq.computed);
        }
    }
}

/// A sequence's request and its prompt's hash: siblings (the `n` choices of one
/// prompt) share it; other prompts of the same request do not.
fn sibling_key(s: &SchedSeq) -> (u64, u64) {
    (s.group, s.prompt_hash ^ s.cache_salt as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake model: the next token is the last one plus one.
    fn run_to_completion(
        sched: &mut Scheduler,
        kv: &mut KvBlockManager,
        max_new: usize,
    ) -> (Vec<(SeqId, Vec<u32>)>, usize) {
        let mut done = Vec::new();
        let mut steps = 0;
        while !sched.is_idle() {
            steps += 1;
            assert!(steps < 10_000, "scheduler made no progress");
            let batch = sched.step(kv);
            assert!(
                !batch.is_empty() || !batch.preempted.is_empty(),
                "empty step while busy"
            );
            sched.commit(&batch, kv);
            let mut finished = Vec::new();
            for c in &batch.chunks {
                if c.sample {
                    let seq = &mut sched.running_mut()[c.slot];
                    let next = seq.tokens.last().unwrap() + 1;
                    seq.tokens.push(next);
                    if seq.generated() >= max_new {
                        finished.push(seq.id);
                    }
                }
            }
            for id in finished {
                let s = sched.finish(id, kv).unwrap();
                done.push((id, s.tokens[s.prompt_len..].to_vec()));
            }
        }
        (done, steps)
    }

    #[test]
    fn mixes_decode_and_chunked_prefill_under_budget() {
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 8,
            max_running: 8,
        });
        s.add(SchedSeq::new(1, vec![10; 3]));
        s.add(SchedSeq::new(2, vec![20; 12]));
        let b = s.step(&mut kv);
        assert_eq!(b.chunks.len(), 2);
        assert_eq!((b.chunks[0].len, b.chunks[0].sample), (3, true));
        assert_eq!((b.chunks[1].len, b.chunks[1].sample), (5, false));
        s.commit(&b, &mut kv);
        s.running_mut()[0].tokens.push(11);
        let b = s.step(&mut kv);
        assert_eq!(b.tokens(), 8);
        assert_eq!(
            (b.chunks[0].len, b.chunks[1].start, b.chunks[1].len),
            (1, 5, 7)
        );
        assert!(b.chunks[1].sample);
    }

    #[test]
    fn admits_first_come_first_served() {
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 4,
            max_running: 8,
        });
        for id in 0..3 {
            s.add(SchedSeq::new(id, vec![1; 4]));
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            let b = s.step(&mut kv);
            s.commit(&b, &mut kv);
            order.extend(b.chunks.iter().map(|c| c.id));
        }
        assert_eq!(order[..3], [0, 1, 2]);
    }

    #[test]
    fn preempts_newest_when_blocks_run_out_and_finishes_all() {
        // 10 blocks of 4 tokens; 4 sequences of 6 + 10 tokens need 16 blocks together.
        let mut kv = KvBlockManager::new(4, &[None], &[10], true);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 64,
            max_running: 8,
        });
        for id in 0..4u64 {
            s.add(SchedSeq::new(
                id,
                (0..6).map(|i| i + 100 * id as u32).collect(),
            ));
        }
        let (done, _) = run_to_completion(&mut s, &mut kv, 10);
        assert_eq!(done.len(), 4);
        assert!(s.preemptions > 0);
        for (id, out) in done {
            let first = 100 * id as u32 + 6;
            assert_eq!(out, (first..first + 10).collect::<Vec<_>>(), "seq {id}");
        }
        assert_eq!(kv.usage(0).used, 0, "no blocks leak");
    }

    #[test]
    fn siblings_wait_for_the_first_prefill_and_share_its_blocks() {
        // Two choices of one request (same group, same 10-token prompt) and another
        // request; blocks of 4 tokens, prefix caching on.
        let mut kv = KvBlockManager::new(4, &[None], &[32], true);
        let mut s = Scheduler::new(SchedulerConfig::default());
        for id in [1u64, 2] {
            let mut q = SchedSeq::new(id, (0..10).collect());
            q.group = 5;
            s.add(q);
        }
        s.add(SchedSeq::new(3, (50..60).collect()));
        let b = s.step(&mut kv);
        let ids: Vec<SeqId> = b.chunks.iter().map(|c| c.id).collect();
        assert_eq!(
            ids,
            [1, 3],
            "the sibling waits while the first computes the prompt"
        );
        s.commit(&b, &mut kv);
        // Next step: the sibling starts from the two full blocks now in the cache.
        let b = s.step(&mut kv);
        let sib = b.chunks.iter().find(|c| c.id == 2).expect("admitted now");
        assert_eq!((sib.start, sib.len), (8, 2));
        s.commit(&b, &mut kv);
        // Without prefix caching there is nothing to wait for.
        let mut kv = KvBlockManager::new(4, &[None], &[32], false);
        let mut s = Scheduler::new(SchedulerConfig::default());
        for id in [1u64, 2] {
            let mut q = SchedSeq::new(id, (0..10).collect());
            q.group = 5;
            s.add(q);
        }
        assert_eq!(s.step(&mut kv).chunks.len(), 2);
    }

    #[test]
    fn cancellation_frees_blocks_at_once() {
        let mut kv = KvBlockManager::new(4, &[None], &[16], false);
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.add(SchedSeq::new(7, vec![3; 9]));
        s.add(SchedSeq::new(8, vec![3; 9]));
        let b = s.step(&mut kv);
        s.commit(&b, &mut kv);
        assert_eq!(kv.usage(0).used, 6);
        assert!(s.finish(7, &mut kv).is_some());
        assert_eq!(kv.usage(0).used, 3);
        assert!(s.finish(8, &mut kv).is_some());
        assert!(s.finish(8, &mut kv).is_none());
        assert_eq!(kv.usage(0).used, 0);
    }

    #[test]
    fn repeated_prompt_hits_prefix_cache() {
        let mut kv = KvBlockManager::new(4, &[None], &[32], true);
        let mut s = Scheduler::new(SchedulerConfig::default());
        s.add(SchedSeq::new(1, (0..17).collect()));
        run_to_completion(&mut s, &mut kv, 2);
        s.add(SchedSeq::new(2, (0..17).collect()));
        let b = s.step(&mut kv);
        assert_eq!((b.chunks[0].start, b.chunks[0].len), (16, 1));
        assert_eq!(s.running()[0].cached_tokens, 16);
    }

    #[test]
    fn admission_is_fair_across_requests() {
        // Three slots: a single request (1) runs; request 10 has three sequences, two
        // of which fit; then a single request (20) arrives. When a slot frees, request
        // 20 (no sequence running) goes before request 10's third sequence, although
        // that one arrived first.
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 100,
            max_running: 3,
        });
        s.add(SchedSeq::new(1, vec![1; 2]));
        for id in 11..14 {
            s.add(SchedSeq::new(id, vec![1; 2]).in_group(10));
        }
        let b = s.step(&mut kv);
        assert_eq!(
            b.chunks.iter().map(|c| c.id).collect::<Vec<_>>(),
            [1, 11, 12]
        );
        s.commit(&b, &mut kv);
        s.add(SchedSeq::new(20, vec![1; 2]));
        s.finish(11, &mut kv);
        let b = s.step(&mut kv);
        let admitted: Vec<_> = b
            .chunks
            .iter()
            .filter(|c| c.start == 0)
            .map(|c| c.id)
            .collect();
        assert_eq!(admitted, [20]);
        assert_eq!(s.n_waiting(), 1);
    }

    #[test]
    fn preemption_takes_from_the_request_running_the_most() {
        // 7 blocks of 4: four 4-token prompts are admitted (one block each, the rest
        // kept in reserve), but their next tokens need four more blocks. Request 10
        // runs three sequences and request 1 one: request 10 gives a block up even
        // though request 1's sequence is the newest.
        let mut kv = KvBlockManager::new(4, &[None], &[7], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 100,
            max_running: 8,
        });
        for id in 11..14 {
            s.add(SchedSeq::new(id, vec![1; 4]).in_group(10));
        }
        s.add(SchedSeq::new(1, vec![1; 4]));
        let b = s.step(&mut kv);
        assert_eq!(b.chunks.len(), 4);
        s.commit(&b, &mut kv);
        for seq in s.running_mut() {
            seq.tokens.push(2);
        }
        let b = s.step(&mut kv);
        assert_eq!(b.preempted, [13], "the newest of the largest request");
        assert!(s.running().iter().any(|q| q.id == 1));
    }

    #[test]
    fn respects_max_running() {
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 100,
            max_running: 2,
        });
        for id in 0..5 {
            s.add(SchedSeq::new(id, vec![1; 2]));
        }
        let b = s.step(&mut kv);
        assert_eq!(b.chunks.len(), 2);
        assert_eq!(s.n_waiting(), 3);
    }

    /// Ids in the order they were first admitted over `steps` steps of a fake model
    /// that generates one token per step and finishes a sequence after `max_new`.
    fn admissions(
        s: &mut Scheduler,
        kv: &mut KvBlockManager,
        steps: usize,
        max_new: usize,
    ) -> Vec<SeqId> {
        let mut order = Vec::new();
        for _ in 0..steps {
            let b = s.step(kv);
            s.commit(&b, kv);
            let mut done = Vec::new();
            for c in &b.chunks {
                let seq = &mut s.running_mut()[c.slot];
                if c.start == 0 && seq.preempted == 0 && !order.contains(&c.id) {
                    order.push(c.id);
                }
                if c.sample {
                    seq.tokens.push(1);
                    if seq.generated() >= max_new {
                        done.push(seq.id);
                    }
                }
            }
            for id in done {
                s.finish(id, kv);
            }
        }
        order
    }

    #[test]
    fn a_quiet_tenant_is_admitted_at_once_despite_a_burst() {
        // Tenant 1 floods ten requests into two slots; tenant 2 sends one. Tenant 2
        // takes a slot on the next step (tenant 1's newest running sequence gives way),
        // and tenant 1's requests are admitted in their arrival order.
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 64,
            max_running: 2,
        });
        for id in 0..10 {
            s.add(SchedSeq::new(id, vec![1; 3]).for_tenant(1, 1));
        }
        let first = admissions(&mut s, &mut kv, 2, 100);
        assert_eq!(first, [0, 1]);
        s.add(SchedSeq::new(100, vec![1; 3]).for_tenant(2, 1));
        let b = s.step(&mut kv);
        assert_eq!(b.preempted, [1], "tenant 1's newest gives way");
        assert!(b.chunks.iter().any(|c| c.id == 100 && c.start == 0));
        s.commit(&b, &mut kv);
        let tenants: Vec<u64> = s.running().iter().map(|q| q.tenant).collect();
        assert_eq!(tenants, [1, 2]);
        // No trading back: tenant 1 holds its fair share (one slot) and stays put.
        let b = s.step(&mut kv);
        assert!(b.preempted.is_empty());
    }

    #[test]
    fn one_tenant_keeps_fifo_order() {
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 64,
            max_running: 2,
        });
        for id in 0..6 {
            s.add(SchedSeq::new(id, vec![1; 3]).for_tenant(7, 1));
        }
        assert_eq!(admissions(&mut s, &mut kv, 20, 2), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn admission_alternates_between_tenants_with_equal_weights() {
        // Both tenants queue four requests, tenant 1 first; one slot. FIFO would run
        // all of tenant 1's first; fair sharing alternates.
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 64,
            max_running: 1,
        });
        for id in 0..4 {
            s.add(SchedSeq::new(id, vec![1; 3]).for_tenant(1, 1));
        }
        for id in 10..14 {
            s.add(SchedSeq::new(id, vec![1; 3]).for_tenant(2, 1));
        }
        let order = admissions(&mut s, &mut kv, 40, 2);
        assert_eq!(order, [0, 10, 1, 11, 2, 12, 3, 13]);
    }

    #[test]
    fn weights_split_the_slots_in_proportion() {
        let mut kv = KvBlockManager::new(4, &[None], &[128], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 256,
            max_running: 4,
        });
        for id in 0..8 {
            s.add(SchedSeq::new(id, vec![1; 3]).for_tenant(1, 1));
        }
        for id in 10..18 {
            s.add(SchedSeq::new(id, vec![1; 3]).for_tenant(2, 3));
        }
        let b = s.step(&mut kv);
        s.commit(&b, &mut kv);
        let heavy = s.running().iter().filter(|q| q.tenant == 2).count();
        assert_eq!((heavy, s.n_running()), (3, 4));
    }

    #[test]
    fn a_returning_tenant_starts_at_the_current_virtual_time() {
        let mut kv = KvBlockManager::new(4, &[None], &[64], false);
        let mut s = Scheduler::new(SchedulerConfig {
            max_batch_tokens: 64,
            max_running: 1,
        });
        s.add(SchedSeq::new(0, vec![1; 8]).for_tenant(1, 1));
        let b = s.step(&mut kv);
        s.commit(&b, &mut kv);
        assert_eq!(s.served(1), 8.0);
        s.add(SchedSeq::new(1, vec![1; 8]).for_tenant(2, 2));
        assert_eq!(
            s.served(2),
            8.0,
            "joins at the active tenants' clock, not 0"
        );
        s.finish(0, &mut kv);
        s.finish(1, &mut kv);
        assert!(s.is_idle());
        assert_eq!(s.served(1), 0.0, "idle tenants are forgotten");
    }
}
