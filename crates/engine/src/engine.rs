//! The engine handle and its loop thread: requests go in through a channel, token
//! events come back through one channel per request.
//!
//! One thread owns the model, the KV cache, the block manager and the scheduler; each
//! step it plans a batch, runs the model once, samples, and emits events. Callers never
//! touch that state. Knows nothing about HTTP.

use crate::chat::{ChatError, ChatMessage, ChatTemplate};
use crate::kv_manager::{BlockUsage, KvBlockManager};
use crate::runtime::LoadedModel;
use crate::sampler::{SampledToken, Sampler, SamplingParams, StopMatcher};
use crate::scheduler::{Batch, SchedSeq, Scheduler, SchedulerConfig, SeqId};
use crate::EngineError;
use hangar_kernels::ThreadPool;
use hangar_models::kv::KvLayout;
use hangar_models::{KvCache, LogitsWanted, Model, SeqInput, Workspace};
use hangar_tokenizer::{IncrementalDecoder, Tokenizer};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// How the engine sizes its KV pool and batches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV memory (all groups together). Ignored when `max_tokens_in_flight` is set.
    pub kv_memory_bytes: usize,
    /// Size the pool to hold this many tokens across all sequences instead.
    pub max_tokens_in_flight: Option<usize>,
    /// Tokens one model step may process (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_running: usize,
    /// Cap on prompt + generated tokens of one sequence (the model's context by default).
    pub max_model_len: Option<usize>,
    /// Share identical prompt prefixes between requests.
    pub prefix_caching: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_memory_bytes: 1 << 30,
            max_tokens_in_flight: None,
            max_batch_tokens: 512,
            max_running: 64,
            max_model_len: None,
            prefix_caching: true,
        }
    }
}

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Token ids that end generation (in addition to the model's end-of-generation ids).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Report the chosen token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    pub skip_special_tokens: bool,
}

impl GenerateRequest {
    /// Greedy decoding of `max_tokens` tokens after `prompt`.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        GenerateRequest {
            prompt,
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            skip_special_tokens: true,
        }
    }
}

/// One alternative token and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub logprob: f32,
}

/// A generated token and the text it adds.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// Text to append (may be empty while a stop string or a UTF-8 sequence is pending).
    pub text: String,
    /// The token's own text, for logprob reports.
    pub token: String,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token, stop token or stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
}

/// What a request's stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    Token(TokenOut),
    /// The last event: `text` is any held-back text released at the end.
    Done {
        finish: Finish,
        usage: Usage,
        text: String,
    },
    /// The request failed; no more events follow.
    Error(String),
}

/// Facts about the loaded model the API layer needs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub arch: String,
    pub vocab_size: usize,
    pub ctx_len: usize,
    /// Longest prompt + generation one request may have.
    pub max_model_len: usize,
    pub kv_block_size: usize,
    /// Blocks per KV group.
    pub kv_blocks: Vec<usize>,
    pub kv_bytes: usize,
}

/// A snapshot of engine counters, for metrics.
#[derive(Debug, Clone, Default)]
pub struct EngineStats {
    pub waiting: usize,
    pub running: usize,
    /// Per KV group.
    pub kv: Vec<BlockUsage>,
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
    pub preemptions: u64,
    pub steps: u64,
    pub prompt_tokens_computed: u64,
    pub generated_tokens: u64,
}

impl EngineStats {
    /// Blocks referenced by sequences, all groups.
    pub fn kv_blocks_used(&self) -> usize {
        self.kv.iter().map(|u| u.used).sum()
    }
    pub fn kv_blocks_total(&self) -> usize {
        self.kv.iter().map(|u| u.total).sum()
    }
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queried_tokens == 0 {
            0.0
        } else {
            self.prefix_hit_tokens as f64 / self.prefix_queried_tokens as f64
        }
    }
}

#[derive(Default)]
struct SharedStats {
    waiting: AtomicUsize,
    running: AtomicUsize,
    kv_used: Vec<AtomicUsize>,
    kv_cached: Vec<AtomicUsize>,
    kv_total: Vec<usize>,
    prefix_queried: AtomicU64,
    prefix_hit: AtomicU64,
    preemptions: AtomicU64,
    steps: AtomicU64,
    prompt_computed: AtomicU64,
    generated: AtomicU64,
}

enum Command {
    Submit(SeqId, Box<GenerateRequest>, UnboundedSender<TokenEvent>),
    Cancel(SeqId),
    Shutdown,
}

/// Handle to a running engine. Cheap to share behind an `Arc`; dropping it stops the
/// loop thread (requests still running get an error event).
///
/// ```no_run
/// use hangar_engine::{Engine, EngineConfig, GenerateRequest, LoadedModel, TokenEvent};
/// let model = LoadedModel::load("model.gguf", 2).unwrap();
/// let engine = Engine::start(model, EngineConfig::default()).unwrap();
/// let prompt = engine.tokenizer().encode_prompt("Hello");
/// let (_id, mut events) = engine.submit(GenerateRequest::greedy(prompt, 8)).unwrap();
/// while let Some(ev) = events.blocking_recv() {
///     if let TokenEvent::Token(t) = ev { print!("{}", t.text) }
/// }
/// ```
pub struct Engine {
    tx: mpsc::Sender<Command>,
    next_id: AtomicU64,
    stats: Arc<SharedStats>,
    tokenizer: Arc<Tokenizer>,
    chat: Result<ChatTemplate, String>,
    info: ModelInfo,
    thread: Option<JoinHandle<()>>,
}

/// Splits a KV budget between full-attention and sliding-window groups: windowed
/// groups never need more than a window per running sequence plus one prefill chunk.
#[allow(clippy::needless_range_loop)]
fn pool_sizes(layout: &KvLayout, cfg: &EngineConfig) -> Result<Vec<usize>, EngineError> {
    let bs = cfg.block_size;
    let n = layout.n_groups();
    let window_cap =
        |w: usize| cfg.max_running * (w.div_ceil(bs) + 1) + cfg.max_batch_tokens.div_ceil(bs) + 1;
    let bytes: Vec<usize> = (0..n).map(|g| layout.block_bytes(g, bs)).collect();
    let mut blocks = vec![0usize; n];
    if let Some(t) = cfg.max_tokens_in_flight {
        let full = t.div_ceil(bs);
        for g in 0..n {
            blocks[g] = match layout.group_window[g] {
                None => full,
                Some(w) => full.min(window_cap(w)),
            };
        }
    } else {
        let m = cfg.kv_memory_bytes;
        let full_bytes: usize = (0..n)
            .filter(|&g| layout.group_window[g].is_none())
            .map(|g| bytes[g])
            .sum();
        let win_bytes: usize = (0..n)
            .filter(|&g| layout.group_window[g].is_some())
            .map(|g| bytes[g])
            .sum();
        let cap = (0..n)
            .filter_map(|g| layout.group_window[g].map(window_cap))
            .max()
            .unwrap_or(0);
        let even = m / (full_bytes + win_bytes).max(1);
        let (full, win) = if full_bytes == 0 {
            (0, m / win_bytes.max(1))
        } else if even <= cap || win_bytes == 0 {
            (even, even)
        } else {
            (m.saturating_sub(cap * win_bytes) / full_bytes, cap)
        };
        for g in 0..n {
            blocks[g] = match layout.group_window[g] {
                None => full,
                Some(w) => win.min(window_cap(w)),
            };
        }
    }
    for g in 0..n {
        let need = match layout.group_window[g] {
            None => 1,
            Some(w) => (w + cfg.max_batch_tokens).div_ceil(bs) + 2,
        };
        if blocks[g] < need {
            return Err(EngineError::Invalid(format!(
                "KV memory too small: group {g} gets {} blocks of {bs} tokens, needs at least {need}; raise --kv-memory or --max-tokens-in-flight",
                blocks[g]
            )));
        }
    }
    Ok(blocks)
}

impl Engine {
    /// Sizes the KV pool, then starts the loop thread that owns the model.
    pub fn start(loaded: LoadedModel, cfg: EngineConfig) -> Result<Engine, EngineError> {
        let LoadedModel {
            model,
            tokenizer,
            pool,
        } = loaded;
        if cfg.block_size == 0 || cfg.max_batch_tokens == 0 || cfg.max_running == 0 {
            return Err(EngineError::Invalid(
                "block size, batch tokens and running sequences must be positive".into(),
            ));
        }
        let layout = KvLayout::for_model(&model.cfg);
        let blocks = pool_sizes(&layout, &cfg)?;
        let kvm = KvBlockManager::new(
            cfg.block_size,
            &layout.group_window,
            &blocks,
            cfg.prefix_caching,
        );
        let mut max_model_len = model.cfg.ctx_len.min(kvm.max_sequence_tokens());
        if let Some(m) = cfg.max_model_len {
            max_model_len = max_model_len.min(m);
        }
        let kv = KvCache::new(&model.cfg, cfg.block_size, &blocks);
        let info = ModelInfo {
            arch: model.cfg.arch_name.clone(),
            vocab_size: model.cfg.vocab_size,
            ctx_len: model.cfg.ctx_len,
            max_model_len,
            kv_block_size: cfg.block_size,
            kv_blocks: blocks.clone(),
            kv_bytes: kv.capacity_bytes(),
        };
        let piece = |id: Option<u32>| {
            id.and_then(|i| tokenizer.id_to_token(i))
                .unwrap_or("")
                .to_string()
        };
        let template_src = model
            .gguf()
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string);
        let chat = ChatTemplate::for_model(
            template_src.as_deref(),
            &info.arch,
            &piece(tokenizer.bos_id()),
            &piece(tokenizer.eos_id()),
        )
        .map_err(|e| e.to_string());
        let tokenizer = Arc::new(tokenizer);
        let stats = Arc::new(SharedStats {
            kv_used: blocks.iter().map(|_| AtomicUsize::new(0)).collect(),
            kv_cached: blocks.iter().map(|_| AtomicUsize::new(0)).collect(),
            kv_total: blocks.clone(),
            ..Default::default()
        });
        let (tx, rx) = mpsc::channel();
        let sched_cfg = SchedulerConfig {
            max_batch_tokens: cfg.max_batch_tokens,
            max_running: cfg.max_running,
        };
        let runner = EngineLoop {
            model,
            pool,
            kv,
            kvm,
            sched: Scheduler::new(sched_cfg),
            sched_cfg,
            stats: stats.clone(),
            max_model_len,
        };
        let tok = tokenizer.clone();
        let thread = std::thread::Builder::new()
            .name("hangar-engine".into())
            .spawn(move || runner.run(&tok, rx))
            .map_err(|e| EngineError::Invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            tx,
            next_id: AtomicU64::new(1),
            stats,
            tokenizer,
            chat,
            info,
            thread: Some(thread),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Renders chat messages with the model's template and tokenizes the result.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ChatError> {
        let tmpl = self
            .chat
            .as_ref()
            .map_err(|e| ChatError::Compile(e.clone()))?;
        let text = tmpl.render(messages, true)?;
        Ok(self.tokenizer.encode(&text, false, true))
    }

    /// Queues a request. Events arrive on the receiver; dropping it cancels the request.
    pub fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<(SeqId, UnboundedReceiver<TokenEvent>), EngineError> {
        if req.prompt.is_empty() {
            return Err(EngineError::Invalid("the prompt is empty".into()));
        }
        if let Some(&id) = req
            .prompt
            .iter()
            .find(|&&id| id as usize >= self.info.vocab_size)
        {
            return Err(EngineError::Invalid(format!(
                "token id {id} is outside the vocabulary"
            )));
        }
        let total = req.prompt.len().saturating_add(req.max_tokens);
        if total > self.info.max_model_len {
            return Err(EngineError::Invalid(format!(
                "prompt ({} tokens) plus max_tokens ({}) exceeds the maximum context of {} tokens",
                req.prompt.len(),
                req.max_tokens,
                self.info.max_model_len
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (etx, erx) = unbounded_channel();
        self.tx
            .send(Command::Submit(id, Box::new(req), etx))
            .map_err(|_| EngineError::Invalid("the engine has stopped".into()))?;
        Ok((id, erx))
    }

    /// Whether the loop thread is still running.
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Cancels a request; its KV blocks are freed before the next step.
    pub fn cancel(&self, id: SeqId) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    /// Current counters.
    pub fn stats(&self) -> EngineStats {
        let s = &self.stats;
        EngineStats {
            waiting: s.waiting.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            kv: (0..s.kv_total.len())
                .map(|g| BlockUsage {
                    total: s.kv_total[g],
                    used: s.kv_used[g].load(Ordering::Relaxed),
                    cached: s.kv_cached[g].load(Ordering::Relaxed),
                })
                .collect(),
            prefix_queried_tokens: s.prefix_queried.load(Ordering::Relaxed),
            prefix_hit_tokens: s.prefix_hit.load(Ordering::Relaxed),
            preemptions: s.preemptions.load(Ordering::Relaxed),
            steps: s.steps.load(Ordering::Relaxed),
            prompt_tokens_computed: s.prompt_computed.load(Ordering::Relaxed),
            generated_tokens: s.generated.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.tx.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Per-request state the loop keeps beside the scheduler's sequence.
struct Live<'t> {
    tx: UnboundedSender<TokenEvent>,
    sampler: Sampler,
    decoder: IncrementalDecoder<'t>,
    stop: StopMatcher,
    max_tokens: usize,
    stop_ids: Vec<u32>,
    logprobs: Option<usize>,
}

struct EngineLoop {
    model: Model,
    pool: ThreadPool,
    kv: KvCache,
    kvm: KvBlockManager,
    sched: Scheduler,
    sched_cfg: SchedulerConfig,
    stats: Arc<SharedStats>,
    max_model_len: usize,
}

impl EngineLoop {
    fn run(mut self, tok: &Tokenizer, rx: mpsc::Receiver<Command>) {
        let mut live: HashMap<SeqId, Live> = HashMap::new();
        let mut ws = Workspace::default();
        let mut logits = Vec::new();
        // Finished sequences and their last event, sent once their blocks are freed.
        let mut finished: Vec<(SeqId, Option<TokenEvent>)> = Vec::new();
        let mut outbox: Vec<(UnboundedSender<TokenEvent>, TokenEvent)> = Vec::new();
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
                self.step(
                    tok,
                    &mut live,
                    &mut ws,
                    &mut logits,
                    &mut finished,
                    &mut outbox,
                )
            }));
            if step.is_err() {
                // A bug must not take the server down: fail what was in flight, start
                // over with empty block tables, keep serving.
                finished.clear();
                outbox.clear();
                self.recover(&mut live);
            }
        }
        // Shutting down: tell whoever still listens.
        for (_, l) in live.drain() {
            let _ =
                l.tx.send(TokenEvent::Error("the engine is shutting down".into()));
        }
    }

    /// One scheduling step: drop disconnected clients, plan, run the model, sample,
    /// emit events, free finished sequences.
    fn step<'t>(
        &mut self,
        tok: &'t Tokenizer,
        live: &mut HashMap<SeqId, Live<'t>>,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        finished: &mut Vec<(SeqId, Option<TokenEvent>)>,
        outbox: &mut Vec<(UnboundedSender<TokenEvent>, TokenEvent)>,
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

        let batch = self.sched.step(&mut self.kvm);
        if batch.is_empty() {
            self.publish_stats();
            if !self.sched.is_idle() {
                // Nothing fits right now (cannot happen with a sane pool); wait a bit.
                std::thread::sleep(Duration::from_millis(1));
            }
            return;
        }
        // Run the model once over every chunk.
        let result = {
            let running = self.sched.running();
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
                .map(|(c, t)| SeqInput {
                    tokens: &running[c.slot].tokens[c.start..c.start + c.len],
                    start_pos: c.start,
                    block_tables: t,
                    logits: if c.sample {
                        LogitsWanted::Last
                    } else {
                        LogitsWanted::None
                    },
                })
                .collect();
            self.model
                .forward(&self.pool, &inputs, &mut self.kv, ws, logits)
        };
        if let Err(e) = result {
            for c in &batch.chunks {
                if let Some(l) = live.remove(&c.id) {
                    let _ = l.tx.send(TokenEvent::Error(format!("model error: {e}")));
                }
            }
            for c in &batch.chunks {
                self.sched.finish(c.id, &mut self.kvm);
            }
            return;
        }
        self.sched.commit(&batch, &mut self.kvm);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let sampled = self.sample_rows(&batch, live, logits);
        for (c, s) in batch.chunks.iter().zip(sampled) {
            let seq = &mut self.sched.running_mut()[c.slot];
            if c.start < seq.prompt_len {
                let n = (c.start + c.len).min(seq.prompt_len) - c.start;
                self.stats
                    .prompt_computed
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
            if !c.sample {
                return;
            }
            let (Some(l), Some(s)) = (live.get_mut(&c.id), s) else {
                finished.push((c.id, None));
                return;
            };
            self.stats.generated.fetch_add(1, Ordering::Relaxed);
            match accept_token(l, seq, s, tok, self.max_model_len) {
                Step::Continue => {}
                Step::Finished(ev) => finished.push((c.id, ev)),
            }
        }
        for (id, ev) in finished.drain(..) {
            let l = live.remove(&id);
            self.sched.finish(id, &mut self.kvm);
            if let (Some(l), Some(ev)) = (l, ev) {
                outbox.push((l.tx, ev));
            }
        }
        // Publish first, so a client that sees the end also sees its blocks freed.
        self.publish_stats();
        for (tx, ev) in outbox.drain(..) {
            let _ = tx.send(ev);
        }
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

    /// Applies one command; `false` means shut down.
    fn handle<'t>(
        &mut self,
        cmd: Command,
        tok: &'t Tokenizer,
        live: &mut HashMap<SeqId, Live<'t>>,
    ) -> bool {
        match cmd {
            Command::Submit(id, req, tx) => {
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
                    },
                );
                self.sched.add(SchedSeq::new(id, req.prompt));
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
    /// the kernel pool (each row is a full-vocabulary softmax). Indexed like the chunks.
    fn sample_rows(
        &self,
        batch: &Batch,
        live: &mut HashMap<SeqId, Live>,
        logits: &mut [f32],
    ) -> Vec<Option<SampledToken>> {
        struct Task<'a> {
            sampler: &'a mut Sampler,
            logits: &'a mut [f32],
            history: &'a [u32],
            out: Option<SampledToken>,
        }
        let vocab = self.model.cfg.vocab_size;
        let running = self.sched.running();
        let mut rows = logits.chunks_exact_mut(vocab);
        let mut samplers: HashMap<SeqId, &mut Sampler> = live
            .iter_mut()
            .map(|(id, l)| (*id, &mut l.sampler))
            .collect();
        let mut tasks: Vec<(usize, Mutex<Task>)> = Vec::new();
        for (ci, c) in batch.chunks.iter().enumerate() {
            if !c.sample {
                continue;
            }
            let Some(row) = rows.next() else { break };
            if let Some(sampler) = samplers.remove(&c.id) {
                let task = Task {
                    sampler,
                    logits: row,
                    history: &running[c.slot].tokens,
                    out: None,
                };
                tasks.push((ci, Mutex::new(task)));
            }
        }
        let run = |t: &Mutex<Task>| {
            if let Ok(mut t) = t.lock() {
                let t = &mut *t;
                t.out = Some(t.sampler.sample(t.logits, t.history));
            }
        };
        if tasks.len() == 1 {
            run(&tasks[0].1);
        } else if tasks.len() > 1 {
            let next = AtomicUsize::new(0);
            self.pool.run(|_, _| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match tasks.get(i) {
                    Some((_, t)) => run(t),
                    None => break,
                }
            });
        }
        let mut out: Vec<Option<SampledToken>> = vec![None; batch.chunks.len()];
        for (ci, t) in tasks {
            out[ci] = t.into_inner().ok().and_then(|t| t.out);
        }
        out
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

/// What happened to a sequence after sampling.
enum Step {
    Continue,
    /// Finished (or its receiver is gone), with the final event to send.
    Finished(Option<TokenEvent>),
}

/// Appends the sampled token to `seq`, sends its token event, and checks the stop
/// conditions.
fn accept_token(
    l: &mut Live,
    seq: &mut SchedSeq,
    s: SampledToken,
    tok: &Tokenizer,
    max_model_len: usize,
) -> Step {
    let want = l.logprobs;
    seq.tokens.push(s.id);
    let generated = seq.generated();
    let is_stop_id = l.stop_ids.contains(&s.id);
    let (text, stopped) = if is_stop_id {
        (String::new(), true)
    } else {
        let piece = l.decoder.push(s.id);
        l.stop.push(&piece)
    };
    let (token, top_logprobs) = match want {
        Some(_) => (
            tok.decode(&[s.id], false),
            s.top_logprobs
                .iter()
                .map(|&(id, logprob)| TopLogprob {
                    id,
                    token: tok.decode(&[id], false),
                    logprob,
                })
                .collect(),
        ),
        None => (String::new(), Vec::new()),
    };
    let out = TokenOut {
        id: s.id,
        text,
        token,
        logprob: want.map(|_| s.logprob),
        top_logprobs,
    };
    if l.tx.send(TokenEvent::Token(out)).is_err() {
        return Step::Finished(None);
    }
    let finish = if stopped {
        Finish::Stop
    } else if generated >= l.max_tokens || seq.tokens.len() >= max_model_len {
        Finish::Length
    } else {
        return Step::Continue;
    };
    let text = if stopped {
        String::new()
    } else {
        l.stop.finish(&l.decoder.flush())
    };
    let usage = Usage {
        prompt_tokens: seq.prompt_len,
        completion_tokens: generated,
        cached_tokens: seq.cached_tokens,
    };
    Step::Finished(Some(TokenEvent::Done {
        finish,
        usage,
        text,
    }))
}
