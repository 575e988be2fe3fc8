//! The engine loop: one thread owns the runner, the KV block manager, the scheduler
//! and every request's sampler. Each step is schedule → execute → update.
//!
//! Commands arrive over a channel; events leave over one channel per request. Never
//! shared with callers, so nothing on the hot path takes a lock.

use super::request::{GenerateRequest, PromptTokenLogprob, TokenEvent};
use super::runner::ModelRunner;
use super::update::{update_from_output, Live};
use crate::kv_manager::KvBlockManager;
use crate::sampler::{Constraint, HeadRequest, SampledToken, Sampler, StopMatcher};
use crate::scheduler::{Batch, SchedSeq, Scheduler, SchedulerConfig, SeqId};
use crate::spec::{ngram, DraftLength, DraftPool, DraftRequest, SpecConfig};
use hangar_models::{LogitsWanted, SeqInput};
use hangar_tokenizer::Tokenizer;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// What the handle tells the loop.
pub(crate) enum Command {
    Submit {
        id: SeqId,
        /// Sequences of one client request share a group (fair admission).
        group: u64,
        req: Box<GenerateRequest>,
        events: UnboundedSender<TokenEvent>,
    },
    Cancel(SeqId),
    Shutdown,
}

/// Counters the loop publishes and the handle reads.
#[derive(Default)]
pub(crate) struct SharedStats {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_used: Vec<AtomicUsize>,
    pub kv_cached: Vec<AtomicUsize>,
    pub kv_total: Vec<usize>,
    pub prefix_queried: AtomicU64,
    pub prefix_hit: AtomicU64,
    pub preemptions: AtomicU64,
    pub steps: AtomicU64,
    pub prompt_computed: AtomicU64,
    pub generated: AtomicU64,
    pub spec_steps: AtomicU64,
    pub spec_drafted: AtomicU64,
    pub spec_accepted: AtomicU64,
    pub spec_emitted: AtomicU64,
    pub spec_draft_failures: AtomicU64,
    pub head_tokens: AtomicU64,
    pub head_rows_fetched: AtomicU64,
    /// The backend's fault ([`crate::ModelRunner::fault`]) once a step hit one: the
    /// engine takes no more work.
    pub fault: std::sync::OnceLock<String>,
}

pub(crate) struct EngineCore {
    pub runner: Box<dyn ModelRunner>,
    pub kvm: KvBlockManager,
    pub sched: Scheduler,
    pub sched_cfg: SchedulerConfig,
    pub stats: Arc<SharedStats>,
    pub max_model_len: usize,
    pub vocab_size: usize,
    /// Speculative decoding for sequences in their decode phase.
    pub spec: SpecConfig,
    /// The draft model, with `--speculative draft`.
    pub draft: Option<DraftPool>,
}

impl EngineCore {
    pub fn run(mut self, tok: &Tokenizer, rx: mpsc::Receiver<Command>) {
        let mut live: HashMap<SeqId, Live> = HashMap::new();
        let mut logits = Vec::new();
        'outer: loop {
            // Commands: block while idle, else take what is queued.
            if self.sched.is_idle() {
                self.publish_stats();
                match rx.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd, tok, &mut live) {
                            break 'outer;
                        }
                    }
                    Err(_) => break 'outer,
                }
            }
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd, tok, &mut live) {
                            break 'outer;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => break 'outer,
                }
            }
            let step = std::panic::catch_unwind(AssertUnwindSafe(|| {
                self.step(tok, &mut live, &mut logits)
            }));
            if step.is_err() {
                // A bug must not take the server down: fail what was in flight, start
                // over with empty block tables, keep serving.
                self.recover(&mut live);
            }
        }
        // Shutting down: tell whoever still listens.
        for (_, l) in live.drain() {
            let _ =
                l.tx.send(TokenEvent::Error("the engine is shutting down".into()));
        }
    }

    /// One step: drop disconnected clients, schedule, execute, sample, update.
    fn step<'t>(
        &mut self,
        tok: &'t Tokenizer,
        live: &mut HashMap<SeqId, Live<'t>>,
        logits: &mut Vec<f32>,
    ) {
        // Clients that went away: free their blocks now.
        live.retain(|&id, l| {
            if l.tx.is_closed() {
                self.sched.finish(id, &mut self.kvm);
                false
            } else {
                true
            }
        });

        // Schedule.
        let batch = self.sched.step(&mut self.kvm);
        if batch.is_empty() {
            self.publish_stats();
            if !self.sched.is_idle() {
                // Nothing fits right now (cannot happen with a sane pool); wait a bit.
                std::thread::sleep(Duration::from_millis(1));
            }
            return;
        }

        // A chunk that verifies a draft reads it here (the scheduler keeps it until
        // this step ran; the next draft is proposed after the update).
        let drafts: Vec<Vec<u32>> = batch
            .chunks
            .iter()
            .map(|c| match c.draft {
                0 => Vec::new(),
                _ => std::mem::take(&mut self.sched.running_mut()[c.slot].draft),
            })
            .collect();

        // Execute: the model runs once over every chunk.
        let all_rows: Vec<bool> = batch
            .chunks
            .iter()
            .map(|c| {
                live.get(&c.id).is_some_and(|l| l.prompt_logprobs.is_some())
                    && c.start < self.sched.running()[c.slot].prompt_len
            })
            .collect();
        // Greedy chunks whose pick is the plain argmax after their logit bias (no
        // grammar, penalties or logprobs): the runner's greedy head picks for them
        // without writing their logits (not in a step that reports prompt logprobs,
        // whose rows are compacted by chunk).
        let greedy: Vec<Option<Vec<u32>>> =
            if self.runner.greedy_head() && !all_rows.iter().any(|&a| a) {
                batch
                    .chunks
                    .iter()
                    .map(|c| {
                        let l = live.get(&c.id)?;
                        let eligible = c.sample && c.draft == 0 && l.constraint.is_none();
                        eligible.then(|| l.sampler.greedy_skips()).flatten()
                    })
                    .collect()
            } else {
                vec![None; batch.chunks.len()]
            };
        // Sampled chunks the runner's sampling head can answer (no draft; a grammar
        // only where the first draw may ignore its mask): their rows stay on the device.
        let heads: Vec<Option<HeadRequest>> =
            if self.runner.sample_head() && !all_rows.iter().any(|&a| a) {
                let running = self.sched.running();
                batch
                    .chunks
                    .iter()
                    .zip(&greedy)
                    .map(|(c, g)| {
                        let l = live.get(&c.id)?;
                        // A grammar's sequence when its pick may be drawn before the
                        // mask (`sample_constrained`'s optimistic draw): the head's
                        // token stands if the grammar takes it, else the row is fetched.
                        let free = l.constraint.is_none() || l.sampler.exact_without_mask();
                        let eligible = c.sample && c.draft == 0 && g.is_none() && free;
                        eligible
                            .then(|| l.sampler.head_request(&running[c.slot].tokens))
                            .flatten()
                    })
                    .collect()
            } else {
                vec![None; batch.chunks.len()]
            };
        // Each chunk's LoRA adapter, taken before the grammar masks borrow `live`.
        let adapters: Vec<Option<Arc<hangar_models::LoraAdapter>>> = batch
            .chunks
            .iter()
            .map(|c| live.get(&c.id).and_then(|l| l.adapter.clone()))
            .collect();
        // Structured output: grammar masks for this step's samples are computed on
        // a side thread while the model runs (they depend only on earlier tokens).
        let mut masks: Vec<&mut Constraint> = Vec::new();
        let sampling: std::collections::HashSet<SeqId> = batch
            .chunks
            .iter()
            .filter(|c| c.sample)
            .map(|c| c.id)
            .collect();
        for (id, l) in live.iter_mut() {
            // Sequences that sample optimistically (see `sample_rows`) compute a
            // mask only when their first pick is refused.
            if l.sampler.exact_without_mask() {
                continue;
            }
            if let (Some(c), true) = (l.constraint.as_mut(), sampling.contains(id)) {
                masks.push(c);
            }
        }
        let executed = if masks.is_empty() {
            self.execute(
                &batch,
                &all_rows,
                &drafts,
                (&greedy, &heads),
                &adapters,
                logits,
            )
        } else {
            std::thread::scope(|s| {
                s.spawn(move || {
                    for c in masks {
                        // A failure is kept in the constraint and reported on use.
                        let _ = c.compute_mask();
                    }
                });
                self.execute(
                    &batch,
                    &all_rows,
                    &drafts,
                    (&greedy, &heads),
                    &adapters,
                    logits,
                )
            })
        };
        if let Err(e) = executed {
            for c in &batch.chunks {
                if let Some(l) = live.remove(&c.id) {
                    let _ = l.tx.send(TokenEvent::Error(format!("model error: {e}")));
                }
            }
            for c in &batch.chunks {
                self.sched.finish(c.id, &mut self.kvm);
            }
            if let Some(fault) = self.runner.fault() {
                // The backend is unusable: fail everything queued and take no more.
                let _ = self.stats.fault.set(fault);
                for (id, l) in live.drain() {
                    let _ = l.tx.send(TokenEvent::Error(self.fault_message()));
                    self.sched.finish(id, &mut self.kvm);
                }
            }
            self.publish_stats();
            return;
        }
        if all_rows.iter().any(|&a| a) {
            self.take_prompt_logprobs(&batch, &all_rows, tok, live, logits);
        }
        self.sched.commit(&batch, &mut self.kvm);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let from_head = self.resolve_heads(&batch, &heads, live);
        let sampled = self.sample_rows(&batch, &drafts, &greedy, from_head, live, logits);

        // Update: stops, finishes, frees, events.
        let out = update_from_output(
            &mut self.sched,
            &mut self.kvm,
            live,
            &batch,
            sampled,
            tok,
            self.max_model_len,
        );
        self.stats
            .prompt_computed
            .fetch_add(out.prompt_tokens_computed, Ordering::Relaxed);
        self.stats
            .generated
            .fetch_add(out.generated_tokens, Ordering::Relaxed);
        if out.spec_steps > 0 {
            let s = &self.stats;
            s.spec_steps.fetch_add(out.spec_steps, Ordering::Relaxed);
            s.spec_drafted
                .fetch_add(out.spec_drafted, Ordering::Relaxed);
            s.spec_accepted
                .fetch_add(out.spec_accepted, Ordering::Relaxed);
            s.spec_emitted
                .fetch_add(out.spec_emitted, Ordering::Relaxed);
        }
        self.propose_drafts(live);
        // Publish first, so a client that sees the end also sees its blocks freed.
        self.publish_stats();
        for (tx, ev) in out.events {
            let _ = tx.send(ev);
        }
    }

    /// Hands the planned batch to the runner as plain data.
    /// `all_rows[i]`: chunk `i` wants every row's logits (its prompt logprobs).
    /// `drafts[i]`: chunk `i`'s draft, fed after its one real token.
    /// `greedy[i]`: chunk `i`'s skip list when the runner's greedy head picks for it;
    /// `heads[i]`: its request when the runner's sampling head answers for it.
    fn execute(
        &mut self,
        batch: &Batch,
        all_rows: &[bool],
        drafts: &[Vec<u32>],
        (greedy, heads): (&[Option<Vec<u32>>], &[Option<HeadRequest>]),
        adapters: &[Option<Arc<hangar_models::LoraAdapter>>],
        logits: &mut Vec<f32>,
    ) -> Result<(), crate::EngineError> {
        let running = self.sched.running();
        let with_draft: Vec<Vec<u32>> = batch
            .chunks
            .iter()
            .zip(drafts)
            .map(|(c, d)| match c.draft {
                0 => Vec::new(),
                _ => std::iter::once(running[c.slot].tokens[c.start])
                    .chain(d.iter().copied())
                    .collect(),
            })
            .collect();
        let tables: Vec<Vec<&[u32]>> = batch
            .chunks
            .iter()
            .map(|c| {
                running[c.slot]
                    .blocks
                    .tables
                    .iter()
                    .map(Vec::as_slice)
                    .collect()
            })
            .collect();
        let inputs: Vec<SeqInput> = batch
            .chunks
            .iter()
            .zip(&tables)
            .zip(all_rows)
            .zip(&with_draft)
            .zip(greedy.iter().zip(heads))
            .map(|((((c, t), &all), d), (g, h))| SeqInput {
                tokens: if c.draft > 0 {
                    d
                } else {
                    &running[c.slot].tokens[c.start..c.start + c.len]
                },
                start_pos: c.start,
                block_tables: t,
                logits: if all || c.draft > 0 {
                    LogitsWanted::All
                } else if c.sample && g.is_some() {
                    LogitsWanted::Greedy
                } else if c.sample && h.is_some() {
                    LogitsWanted::Head
                } else if c.sample {
                    LogitsWanted::Last
                } else {
                    LogitsWanted::None
                },
            })
            .collect();
        if greedy.iter().any(Option::is_some) {
            self.runner
                .set_greedy_skips(greedy.iter().flatten().cloned().collect());
        }
        if heads.iter().any(Option::is_some) {
            self.runner
                .set_head_requests(heads.iter().flatten().cloned().collect());
        }
        if adapters.iter().all(Option::is_none) {
            return self.runner.execute(&inputs, logits);
        }
        let adapters: Vec<Option<&hangar_models::LoraAdapter>> =
            adapters.iter().map(Option::as_deref).collect();
        self.runner.execute_lora(&inputs, &adapters, logits)
    }

    /// The tokens of the chunks the sampling head answered for, indexed like the
    /// chunks: `Some` for each head chunk (`heads[i]` set), holding its token unless
    /// its request failed. A token whose answer needs more than the head's
    /// candidates (a wide nucleus) is sampled here from its row, fetched from the
    /// runner, with the same draw; a request whose row cannot be fetched fails.
    /// Under a grammar the head's token is `sample_constrained`'s optimistic draw: it
    /// stands when the grammar takes it; otherwise the row is fetched, masked and
    /// drawn again, as `sample_constrained` does on the host.
    fn resolve_heads(
        &mut self,
        batch: &Batch,
        heads: &[Option<HeadRequest>],
        live: &mut HashMap<SeqId, Live>,
    ) -> Vec<Option<Option<SampledToken>>> {
        let mut out: Vec<Option<Option<SampledToken>>> =
            heads.iter().map(|h| h.as_ref().map(|_| None)).collect();
        if heads.iter().all(Option::is_none) {
            return out;
        }
        let v = self.vocab_size;
        let results = self.runner.head_results();
        // (chunk, index among the head chunks, the grammar refused the head's token)
        // of the tokens that need their row.
        let mut need: Vec<(usize, usize, bool)> = Vec::new();
        let (mut j, mut answered) = (0, 0u64);
        for (ci, (c, req)) in batch.chunks.iter().zip(heads).enumerate() {
            let Some(req) = req else { continue };
            let (res, at) = (results.get(j), j);
            j += 1;
            let Some(l) = live.get_mut(&c.id) else {
                continue;
            };
            match res.and_then(|r| l.sampler.take_head(req, r, v)) {
                Some(t) => match l.constraint.as_mut().map(|c| c.quick_allows(t.id)) {
                    None | Some(Some(true)) => {
                        out[ci] = Some(Some(t));
                        answered += 1;
                    }
                    // Refused (or only the full mask can tell): drawn again from
                    // the masked row (the head's draw is spent, as on the host).
                    Some(_) => need.push((ci, at, true)),
                },
                None => need.push((ci, at, false)),
            }
        }
        self.stats
            .head_tokens
            .fetch_add(answered, Ordering::Relaxed);
        if need.is_empty() {
            return out;
        }
        self.stats
            .head_rows_fetched
            .fetch_add(need.len() as u64, Ordering::Relaxed);
        let which: Vec<usize> = need.iter().map(|&(_, at, _)| at).collect();
        let mut rows = Vec::with_capacity(which.len() * v);
        let fetched = self.runner.head_rows(&which, &mut rows);
        let running = self.sched.running();
        for (k, &(ci, _, refused)) in need.iter().enumerate() {
            let c = &batch.chunks[ci];
            match (&fetched, rows.get_mut(k * v..(k + 1) * v)) {
                (Ok(()), Some(row)) => {
                    if let Some(l) = live.get_mut(&c.id) {
                        let history = &running[c.slot].tokens;
                        let t = match (refused, l.constraint.as_mut()) {
                            (true, Some(g)) => {
                                g.apply(row);
                                l.sampler.sample(row, history)
                            }
                            (_, g) => {
                                crate::sampler::sample_constrained(&mut l.sampler, g, row, history)
                            }
                        };
                        out[ci] = Some(Some(t));
                    }
                }
                (fetched, _) => {
                    if let Some(l) = live.remove(&c.id) {
                        let why = match fetched {
                            Err(e) => e.to_string(),
                            Ok(()) => "the runner returned too few rows".into(),
                        };
                        let _ = l.tx.send(TokenEvent::Error(format!("model error: {why}")));
                    }
                }
            }
        }
        out
    }

    /// Records the prompt logprobs of the chunks that computed every row, then
    /// compacts `logits` back to one row per sampling chunk (what sampling expects).
    fn take_prompt_logprobs(
        &self,
        batch: &Batch,
        all_rows: &[bool],
        tok: &Tokenizer,
        live: &mut HashMap<SeqId, Live>,
        logits: &mut Vec<f32>,
    ) {
        let v = self.vocab_size;
        let running = self.sched.running();
        // Which rows to score: (sequence, position of the scored token, row, alternatives).
        let mut jobs: Vec<(SeqId, usize, usize, u32, usize)> = Vec::new();
        let mut read = 0usize;
        for (c, &all) in batch.chunks.iter().zip(all_rows) {
            if all {
                let seq = &running[c.slot];
                if let Some(l) = live.get(&c.id) {
                    let top = l.prompt_logprobs.unwrap_or(0);
                    for j in 0..c.len {
                        let next = c.start + j + 1;
                        if next >= seq.prompt_len {
                            break;
                        }
                        jobs.push((c.id, next, read + j, seq.tokens[next], top));
                    }
                }
            }
            read += rows_out(c, all);
        }
        // Each row is a full-vocabulary softmax: spread them over the runner's threads.
        let results: Vec<Mutex<Option<PromptTokenLogprob>>> =
            jobs.iter().map(|_| Mutex::new(None)).collect();
        {
            let rows: &[f32] = logits;
            self.runner.run_parallel(jobs.len(), &|i| {
                let (_, _, r, target, top) = jobs[i];
                let lp = super::prompt_lp::score_row(&rows[r * v..(r + 1) * v], target, top, tok);
                if let Ok(mut slot) = results[i].lock() {
                    *slot = Some(lp);
                }
            });
        }
        for ((id, pos, ..), res) in jobs.iter().zip(results) {
            if let (Some(l), Ok(Some(lp))) = (live.get_mut(id), res.into_inner()) {
                if let Some(slot) = l.prompt_lp.get_mut(*pos) {
                    *slot = Some(lp);
                }
            }
        }
        // Compact to what sampling reads: one row per sampling chunk, every row of a
        // chunk that verifies a draft.
        let (mut read, mut write) = (0usize, 0usize);
        for (c, &all) in batch.chunks.iter().zip(all_rows) {
            let rows = rows_out(c, all);
            let keep = if c.draft > 0 {
                rows
            } else {
                usize::from(c.sample)
            };
            let from = read + rows - keep;
            if keep > 0 && from != write {
                logits.copy_within(from * v..(from + keep) * v, write * v);
            }
            write += keep;
            read += rows;
        }
        logits.truncate(write * v);
    }

    /// After a panic inside a step: every request in flight gets an error, and the
    /// scheduler and block manager start empty (the KV memory is reused).
    fn recover(&mut self, live: &mut HashMap<SeqId, Live>) {
        for (_, l) in live.drain() {
            let _ = l.tx.send(TokenEvent::Error(
                "internal engine error; the request was dropped (the server keeps running)".into(),
            ));
        }
        let preemptions = self.sched.preemptions;
        self.sched = Scheduler::new(self.sched_cfg);
        self.sched.preemptions = preemptions;
        let (queried, hit) = (self.kvm.prefix_queried_tokens, self.kvm.prefix_hit_tokens);
        self.kvm = self.kvm.emptied();
        self.kvm.prefix_queried_tokens = queried;
        self.kvm.prefix_hit_tokens = hit;
        self.publish_stats();
    }

    /// What a request hears once the backend has faulted.
    fn fault_message(&self) -> String {
        format!(
            "the model backend failed and takes no more work ({}); restart the server",
            self.stats
                .fault
                .get()
                .map_or("unknown fault", String::as_str)
        )
    }

    /// Applies one command; `false` means shut down.
    fn handle<'t>(
        &mut self,
        cmd: Command,
        tok: &'t Tokenizer,
        live: &mut HashMap<SeqId, Live<'t>>,
    ) -> bool {
        match cmd {
            Command::Submit {
                id,
                group,
                req,
                events: tx,
            } => {
                if self.stats.fault.get().is_some() {
                    let _ = tx.send(TokenEvent::Error(self.fault_message()));
                    return true;
                }
                let req = *req;
                let sampler = match Sampler::new(req.sampling.clone()) {
                    Ok(mut s) => {
                        s.set_logprob_wanted(req.logprobs.is_some());
                        s
                    }
                    Err(e) => {
                        let _ = tx.send(TokenEvent::Error(format!(
                            "invalid sampling parameters: {e}"
                        )));
                        return true;
                    }
                };
                let mut stop_ids = req.stop_token_ids.clone();
                if !req.ignore_eos {
                    stop_ids.extend_from_slice(tok.eog_ids());
                }
                live.insert(
                    id,
                    Live {
                        tx,
                        sampler,
                        decoder: tok.incremental_decoder(req.skip_special_tokens),
                        stop: StopMatcher::new(req.stop.clone()),
                        max_tokens: req.max_tokens,
                        stop_ids,
                        logprobs: req.logprobs,
                        prompt_logprobs: req.prompt_logprobs,
                        prompt_lp: match req.prompt_logprobs {
                            Some(_) => vec![None; req.prompt.len()],
                            None => Vec::new(),
                        },
                        spec: (self.spec.enabled() && req.constraint.is_none())
                            .then(|| DraftLength::new(&self.spec)),
                        constraint: req.constraint,
                        adapter: req.adapter.clone(),
                    },
                );
                let mut seq = SchedSeq::new(id, req.prompt)
                    .in_group(group)
                    .for_tenant(req.tenant.id, req.tenant.weight);
                // KV computed under an adapter is only ever shared with its own kind.
                seq.cache_salt = req.adapter.as_ref().map_or(0, |a| u128::from(a.id()));
                if req.prompt_logprobs.is_some() {
                    seq.cache_limit = 0;
                }
                self.sched.add(seq);
                true
            }
            Command::Cancel(id) => {
                live.remove(&id);
                self.sched.finish(id, &mut self.kvm);
                true
            }
            Command::Shutdown => false,
        }
    }

    /// Samples the next token of every chunk that ends its sequence, rows spread over
    /// the runner's threads (each row is a full-vocabulary softmax). A chunk that
    /// verifies a draft walks its rows: each samples the token after the history plus
    /// the draft so far, and the walk stops at the first that differs from the draft,
    /// so sampled output keeps the target's distribution and greedy output is plain
    /// greedy's. Indexed like the chunks: the tokens each emitted, in order.
    /// Greedy chunks (`greedy[i]` set) have no logits row: their tokens come from the
    /// runner's picks.
    fn sample_rows(
        &self,
        batch: &Batch,
        drafts: &[Vec<u32>],
        greedy: &[Option<Vec<u32>>],
        from_head: Vec<Option<Option<SampledToken>>>,
        live: &mut HashMap<SeqId, Live>,
        logits: &mut [f32],
    ) -> Vec<Vec<SampledToken>> {
        struct Task<'a> {
            sampler: &'a mut Sampler,
            constraint: Option<&'a mut Constraint>,
            /// One row, or 1 + draft rows.
            logits: &'a mut [f32],
            history: &'a [u32],
            draft: &'a [u32],
            /// The draft model's distributions at the drafted positions (rejection
            /// sampling); `None` for prompt-lookup drafts.
            q: Option<&'a [Vec<(u32, f64)>]>,
            out: Vec<SampledToken>,
        }
        let v = self.vocab_size;
        let running = self.sched.running();
        let mut rest: &mut [f32] = logits;
        let mut samplers: HashMap<SeqId, (&mut Sampler, Option<&mut Constraint>)> = live
            .iter_mut()
            .map(|(id, l)| (*id, (&mut l.sampler, l.constraint.as_mut())))
            .collect();
        let mut tasks: Vec<(usize, Mutex<Task>)> = Vec::new();
        let mut out: Vec<Vec<SampledToken>> = vec![Vec::new(); batch.chunks.len()];
        let mut picks = self.runner.greedy_picks().iter();
        for (ci, c) in batch.chunks.iter().enumerate() {
            if !c.sample {
                continue;
            }
            if from_head[ci].is_some() {
                // The sampling head's chunk: no logits row (a failed one stays empty).
                out[ci].extend(from_head[ci].clone().flatten());
                continue;
            }
            if let Some(skips) = &greedy[ci] {
                let pick = picks.next();
                if let (Some(pick), Some((sampler, _))) = (pick, samplers.get(&c.id)) {
                    out[ci].push(sampler.take_greedy(pick, skips));
                }
                continue;
            }
            let rows = 1 + c.draft;
            if rest.len() < rows * v {
                break;
            }
            let (row, tail) = std::mem::take(&mut rest).split_at_mut(rows * v);
            rest = tail;
            if let Some((sampler, constraint)) = samplers.remove(&c.id) {
                let task = Task {
                    sampler,
                    constraint,
                    logits: row,
                    history: &running[c.slot].tokens,
                    draft: &drafts[ci],
                    q: self.draft.as_ref().and_then(|d| d.dists(c.id)),
                    out: Vec::new(),
                };
                tasks.push((ci, Mutex::new(task)));
            }
        }
        self.runner.run_parallel(tasks.len(), &|i| {
            if let Ok(mut t) = tasks[i].1.lock() {
                let t = &mut *t;
                if t.draft.is_empty() {
                    let s = crate::sampler::sample_constrained(
                        t.sampler,
                        t.constraint.as_deref_mut(),
                        t.logits,
                        t.history,
                    );
                    t.out.push(s);
                    return;
                }
                let mut history = t.history.to_vec();
                for (r, row) in t.logits.chunks_exact_mut(v).enumerate() {
                    let (s, matched) = match t.draft.get(r) {
                        Some(&d) => {
                            let q = t.q.and_then(|q| q.get(r)).map(Vec::as_slice);
                            t.sampler.verify(row, &history, d, q)
                        }
                        None => (t.sampler.sample(row, &history), false),
                    };
                    history.push(s.id);
                    t.out.push(s);
                    if !matched {
                        break;
                    }
                }
            }
        });
        for (ci, t) in tasks {
            if let Ok(t) = t.into_inner() {
                out[ci] = t.out;
            }
        }
        out
    }

    /// Speculative decoding: proposes the next draft of every sequence in its decode
    /// phase, by prompt lookup over its own tokens, while few enough sequences run
    /// for extra positions to be nearly free (a bigger batch is compute-bound).
    fn propose_drafts(&mut self, live: &HashMap<SeqId, Live>) {
        if !self.spec.enabled() {
            return;
        }
        let spec = self.spec;
        let on = self.sched.n_running() <= spec.max_batch;
        let max_len = self.max_model_len;
        if let Some(pool) = self.draft.as_mut() {
            let running = self.sched.running();
            pool.retain(|id| running.iter().any(|s| s.id == id));
            let mut reqs = Vec::new();
            for seq in running {
                if let Some((l, k)) = live
                    .get(&seq.id)
                    .and_then(|l| draft_len(seq, l, on, max_len))
                {
                    reqs.push(DraftRequest {
                        id: seq.id,
                        history: &seq.tokens,
                        k,
                        sampling: l.sampler.params(),
                    });
                }
            }
            let mut out = vec![Vec::new(); reqs.len()];
            // A failing draft model costs speculation, never the request: the step
            // decodes without drafts (counted on /metrics).
            if pool.propose(&reqs, &mut out).is_err() {
                self.stats
                    .spec_draft_failures
                    .fetch_add(1, Ordering::Relaxed);
                out.iter_mut().for_each(Vec::clear);
            }
            let ids: Vec<SeqId> = reqs.iter().map(|r| r.id).collect();
            for seq in self.sched.running_mut() {
                seq.draft.clear();
                if let Some(i) = ids.iter().position(|&id| id == seq.id) {
                    seq.draft = std::mem::take(&mut out[i]);
                }
            }
            return;
        }
        for seq in self.sched.running_mut() {
            seq.draft.clear();
            let Some((_, k)) = live
                .get(&seq.id)
                .and_then(|l| draft_len(seq, l, on, max_len))
            else {
                continue;
            };
            if k > 0 {
                ngram::propose(
                    &seq.tokens,
                    k,
                    spec.ngram_max,
                    spec.ngram_min,
                    &mut seq.draft,
                );
            }
        }
    }

    fn publish_stats(&self) {
        let s = &self.stats;
        s.waiting.store(self.sched.n_waiting(), Ordering::Relaxed);
        s.running.store(self.sched.n_running(), Ordering::Relaxed);
        for g in 0..self.kvm.n_groups() {
            let u = self.kvm.usage(g);
            s.kv_used[g].store(u.used, Ordering::Relaxed);
            s.kv_cached[g].store(u.cached, Ordering::Relaxed);
        }
        s.prefix_queried
            .store(self.kvm.prefix_queried_tokens, Ordering::Relaxed);
        s.prefix_hit
            .store(self.kvm.prefix_hit_tokens, Ordering::Relaxed);
        s.preemptions
            .store(self.sched.preemptions, Ordering::Relaxed);
    }
}

/// How many tokens `seq` may draft now: `None` unless it speculates (`on`: the
/// batch is small enough) and is decoding; never more than can still be emitted, the
/// target's own token coming on top.
fn draft_len<'l, 't>(
    seq: &SchedSeq,
    l: &'l Live<'t>,
    on: bool,
    max_len: usize,
) -> Option<(&'l Live<'t>, usize)> {
    let k = l.spec.as_ref()?;
    if !on || seq.generated() == 0 || seq.computed + 1 != seq.tokens.len() {
        return None;
    }
    let room = (l.max_tokens.saturating_sub(seq.generated() + 1))
        .min(max_len.saturating_sub(seq.tokens.len() + 1));
    Some((l, k.next().min(room)))
}

/// Logits rows the runner returns for chunk `c`: every position when the chunk
/// reports prompt logprobs (`all`) or verifies a draft, else one when it samples.
fn rows_out(c: &crate::scheduler::ScheduledChunk, all: bool) -> usize {
    if all || c.draft > 0 {
        c.len
    } else {
        usize::from(c.sample)
    }
}
