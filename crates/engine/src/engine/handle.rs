//! The engine handle: what callers hold. It validates and queues requests, hands
//! out one event stream per request, and reads counters; the loop thread it starts
//! (see `core`) owns all mutable state.

use super::core::{Command, EngineCore, SharedStats};
use super::kv_sizing::{pool_sizes, EngineConfig};
use super::request::{GenerateRequest, TokenEvent};
use super::runner::{CpuRunner, ModelRunner};
use crate::chat::{ChatError, ChatMessage, ChatTemplate};
use crate::kv_manager::{BlockUsage, KvBlockManager};
use crate::runtime::LoadedModel;
use crate::sampler::{Constraint, ConstraintError, GrammarCompiler, GrammarSpec};
use crate::scheduler::{Scheduler, SchedulerConfig, SeqId};
use crate::EngineError;
use hangar_tokenizer::Tokenizer;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// Facts about the loaded model the API layer needs.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub arch: String,
    /// Where the model runs (see [`ModelRunner::device`]).
    pub device: String,
    pub vocab_size: usize,
    pub ctx_len: usize,
    /// Longest prompt + generation one request may have.
    pub max_model_len: usize,
    pub kv_block_size: usize,
    /// Blocks per KV group.
    pub kv_blocks: Vec<usize>,
    pub kv_bytes: usize,
    /// Most sequences one request may run at once (`n`, `best_of`): a share of
    /// the running slots, so no single request can take them all.
    pub max_sequences_per_request: usize,
    /// The shape LoRA adapters must have; `None` when the backend does not apply
    /// adapters (GPU, split models, llama.cpp's exact numerics).
    pub lora: Option<hangar_models::LoraShape>,
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
    /// Speculative decoding: steps that verified a draft, tokens drafted, drafted
    /// tokens accepted, and tokens emitted by those steps.
    pub spec_steps: u64,
    pub spec_drafted_tokens: u64,
    pub spec_accepted_tokens: u64,
    pub spec_emitted_tokens: u64,
    /// Steps whose drafting failed in the draft model (they decoded without drafts).
    pub spec_draft_failures: u64,
    /// Sampled tokens the backend's sampling head answered without a logits copy,
    /// and rows it copied instead (nuclei wider than its candidates).
    pub head_tokens: u64,
    pub head_rows_fetched: u64,
}

impl EngineStats {
    /// Blocks referenced by sequences, all groups.
    pub fn kv_blocks_used(&self) -> usize {
        self.kv.iter().map(|u| u.used).sum()
    }
    pub fn kv_blocks_total(&self) -> usize {
        self.kv.iter().map(|u| u.total).sum()
    }
    /// Drafted tokens the model accepted, as a share (0 before any draft).
    pub fn spec_acceptance(&self) -> f64 {
        if self.spec_drafted_tokens == 0 {
            0.0
        } else {
            self.spec_accepted_tokens as f64 / self.spec_drafted_tokens as f64
        }
    }
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queried_tokens == 0 {
            0.0
        } else {
            self.prefix_hit_tokens as f64 / self.prefix_queried_tokens as f64
        }
    }
}

type GrammarCell = std::sync::OnceLock<Result<Arc<GrammarCompiler>, ConstraintError>>;

fn build_grammar(
    cell: &GrammarCell,
    tok: &Tokenizer,
    n_vocab: usize,
) -> Result<Arc<GrammarCompiler>, ConstraintError> {
    cell.get_or_init(|| GrammarCompiler::new(tok, n_vocab).map(Arc::new))
        .clone()
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
    /// Structured output's token trie, built on first use.
    grammar: Arc<GrammarCell>,
    /// A background warm-up ([`Engine::warm_grammar`]) is still running.
    warming: Arc<std::sync::atomic::AtomicBool>,
}

impl Engine {
    /// Sizes the KV pool, then starts the loop thread that owns the model (CPU).
    pub fn start(loaded: LoadedModel, cfg: EngineConfig) -> Result<Engine, EngineError> {
        let LoadedModel {
            model,
            tokenizer,
            pool,
        } = loaded;
        let template = model
            .gguf()
            .get_str("tokenizer.chat_template")
            .ok()
            .map(str::to_string);
        let runner = CpuRunner::new(model, pool);
        Self::start_with_runner(Box::new(runner), tokenizer, template, cfg)
    }

    /// Starts the loop over any [`ModelRunner`] (a GPU backend, or a fake in tests).
    /// `chat_template` is the model's Jinja template, if it ships one.
    pub fn start_with_runner(
        runner: Box<dyn ModelRunner>,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        cfg: EngineConfig,
    ) -> Result<Engine, EngineError> {
        Self::start_with_draft(runner, tokenizer, chat_template, cfg, None)
    }

    /// As [`Engine::start_with_runner`], with a draft model for `--speculative draft`:
    /// its runner and tokenizer (checked against the target's). Its KV cache takes a
    /// quarter of `cfg.kv_memory_bytes` on top of the target's.
    pub fn start_with_draft(
        mut runner: Box<dyn ModelRunner>,
        tokenizer: Tokenizer,
        chat_template: Option<String>,
        cfg: EngineConfig,
        draft: Option<(Box<dyn ModelRunner>, Tokenizer)>,
    ) -> Result<Engine, EngineError> {
        if cfg.block_size == 0 || cfg.max_batch_tokens == 0 || cfg.max_running == 0 {
            return Err(EngineError::Invalid(
                "block size, batch tokens and running sequences must be positive".into(),
            ));
        }
        if !(cfg.max_request_share > 0.0 && cfg.max_request_share <= 1.0) {
            return Err(EngineError::Invalid(format!(
                "the per-request share of running sequences must be in (0, 1], got {}",
                cfg.max_request_share
            )));
        }
        let draft = match (cfg.speculative.mode, draft) {
            (crate::spec::SpecMode::Draft, Some((r, dt))) => Some(crate::spec::DraftPool::new(
                r,
                &dt,
                &tokenizer,
                runner.vocab_size(),
                cfg.kv_memory_bytes / 4,
            )?),
            (crate::spec::SpecMode::Draft, None) => {
                return Err(EngineError::Invalid(
                    "--speculative draft needs a draft model (--draft-model)".into(),
                ))
            }
            _ => None,
        };
        runner.set_kv_format(cfg.kv_format)?;
        let layout = runner.kv_layout();
        let blocks = pool_sizes(&layout, &cfg)?;
        let kvm = KvBlockManager::new(
            cfg.block_size,
            &layout.group_window,
            &blocks,
            cfg.prefix_caching,
        );
        let mut max_model_len = runner.ctx_len().min(kvm.max_sequence_tokens());
        if let Some(m) = cfg.max_model_len {
            max_model_len = max_model_len.min(m);
        }
        let kv_bytes = runner.allocate_kv(cfg.block_size, &blocks)?;
        let info = ModelInfo {
            arch: runner.arch().to_string(),
            device: runner.device(),
            vocab_size: runner.vocab_size(),
            ctx_len: runner.ctx_len(),
            max_model_len,
            kv_block_size: cfg.block_size,
            kv_blocks: blocks.clone(),
            kv_bytes,
            max_sequences_per_request: ((cfg.max_running as f64 * cfg.max_request_share).floor()
                as usize)
                .max(1),
            lora: runner.lora_shape(),
        };
        let chat = ChatTemplate::for_model(
            chat_template.as_deref(),
            &info.arch,
            &token_text(&tokenizer, tokenizer.bos_id()),
            &token_text(&tokenizer, tokenizer.eos_id()),
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
        let core = EngineCore {
            runner,
            kvm,
            sched: Scheduler::new(sched_cfg),
            sched_cfg,
            stats: stats.clone(),
            max_model_len,
            vocab_size: info.vocab_size,
            spec: cfg.speculative,
            draft,
        };
        let tok = tokenizer.clone();
        let thread = std::thread::Builder::new()
            .name("hangar-engine".into())
            .spawn(move || core.run(&tok, rx))
            .map_err(|e| EngineError::Invalid(format!("cannot start the engine thread: {e}")))?;
        Ok(Engine {
            tx,
            next_id: AtomicU64::new(1),
            stats,
            tokenizer,
            chat,
            info,
            thread: Some(thread),
            grammar: Arc::new(GrammarCell::new()),
            warming: Arc::default(),
        })
    }

    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The grammar compiler for structured output over this model's vocabulary
    /// (built once, on first use: the token trie takes a moment for a large
    /// vocabulary).
    pub fn grammar_compiler(&self) -> Result<Arc<GrammarCompiler>, ConstraintError> {
        build_grammar(&self.grammar, &self.tokenizer, self.info.vocab_size)
    }

    /// Starts building the grammar compiler on a background thread, so the first
    /// structured-output request does not wait for the token trie.
    /// Until it ends, [`Engine::is_warm`] is false.
    pub fn warm_grammar(&self) {
        let (cell, tok, n, warming) = (
            self.grammar.clone(),
            self.tokenizer.clone(),
            self.info.vocab_size,
            self.warming.clone(),
        );
        /// Ends the warm-up when the thread ends, however it ends (a panic included).
        struct Done(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        warming.store(true, Ordering::Release);
        let done = Done(warming.clone());
        // A thread that cannot start drops `done` with its closure: not warming.
        let _ = std::thread::Builder::new()
            .name("hangar-grammar".into())
            .spawn(move || {
                let _done = done;
                let _ = build_grammar(&cell, &tok, n);
            });
    }

    /// No warm-up is running: a server reports ready only then, so its first
    /// requests do not share the cores with the token trie's construction (~0.7 s of
    /// CPU for a 262k vocabulary).
    pub fn is_warm(&self) -> bool {
        !self.warming.load(Ordering::Acquire)
    }

    /// Compiles a grammar into a per-sequence constraint for [`GenerateRequest::constraint`].
    pub fn compile_grammar(&self, spec: &GrammarSpec) -> Result<Constraint, ConstraintError> {
        self.grammar_compiler()?.compile(spec)
    }

    /// Renders chat messages with the model's template and tokenizes the result.
    /// Message content is plain text: a `<start_of_turn>` typed by a user stays text
    /// and cannot forge a turn; only the template's own markers are special tokens.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, ChatError> {
        self.encode_chat_with(messages, false)
    }

    /// As [`Engine::encode_chat`]; `special_in_content` restores the old behaviour of
    /// parsing special-token text inside message content too (trusted callers only).
    pub fn encode_chat_with(
        &self,
        messages: &[ChatMessage],
        special_in_content: bool,
    ) -> Result<Vec<u32>, ChatError> {
        self.encode_chat_tools(messages, None, special_in_content)
    }

    /// As [`Engine::encode_chat_with`], with the request's tools given to a template
    /// that describes them itself (see [`Engine::chat_supports_tools`]).
    pub fn encode_chat_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        special_in_content: bool,
    ) -> Result<Vec<u32>, ChatError> {
        let tmpl = self
            .chat
            .as_ref()
            .map_err(|e| ChatError::Compile(e.clone()))?;
        crate::chat::encode_chat_with_tools(
            tmpl,
            &self.tokenizer,
            messages,
            tools,
            true,
            special_in_content,
        )
    }

    /// Whether the chat template renders tools itself (else callers describe them
    /// in a message of their own).
    pub fn chat_supports_tools(&self) -> bool {
        self.chat.as_ref().is_ok_and(ChatTemplate::supports_tools)
    }

    /// The chat template's Jinja source.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.chat.as_ref().ok().map(ChatTemplate::source)
    }

    /// Where the chat template came from: `model`, `builtin:<name>` or `file:<path>`.
    pub fn chat_template_origin(&self) -> Option<&str> {
        self.chat.as_ref().ok().map(|t| t.origin.as_str())
    }

    /// Replaces the model's chat template (an operator's `--chat-template` file);
    /// a template that does not compile is refused and the old one kept.
    pub fn set_chat_template(&mut self, src: &str, origin: String) -> Result<(), ChatError> {
        let tok = &self.tokenizer;
        let t = ChatTemplate::from_source(
            src.to_string(),
            &token_text(tok, tok.bos_id()),
            &token_text(tok, tok.eos_id()),
            origin,
        )?;
        self.chat = Ok(t);
        Ok(())
    }

    /// Whether this engine can run `adapter`: its backend applies adapters and the
    /// adapter's matrices fit the model.
    pub fn check_adapter(&self, adapter: &hangar_models::LoraAdapter) -> Result<(), EngineError> {
        let Some(shape) = &self.info.lora else {
            return Err(EngineError::Invalid(format!(
                "this server's model runs on {} with a backend that does not apply LoRA adapters (they need the single-process CPU runner with fast numerics)",
                self.info.device
            )));
        };
        adapter.check(shape).map_err(|e| {
            EngineError::Invalid(format!(
                "the LoRA adapter does not fit the served model: {e}"
            ))
        })
    }

    fn validate(&self, req: &GenerateRequest) -> Result<(), EngineError> {
        if let Some(a) = &req.adapter {
            self.check_adapter(a)?;
        }
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
        Ok(())
    }

    /// Queues a request. Events arrive on the receiver; dropping it cancels the request.
    pub fn submit(
        &self,
        req: GenerateRequest,
    ) -> Result<(SeqId, UnboundedReceiver<TokenEvent>), EngineError> {
        let mut out = self.submit_group(vec![req])?;
        out.pop()
            .ok_or_else(|| EngineError::Invalid("nothing was submitted".into()))
    }

    /// Queues the sequences of one client request (`n` choices) together. They form
    /// one group for fair admission: the scheduler lets no group crowd out others,
    /// and a group may hold at most [`ModelInfo::max_sequences_per_request`]
    /// sequences. All are validated before any is queued.
    pub fn submit_group(
        &self,
        reqs: Vec<GenerateRequest>,
    ) -> Result<Vec<(SeqId, UnboundedReceiver<TokenEvent>)>, EngineError> {
        let cap = self.info.max_sequences_per_request;
        if reqs.len() > cap {
            return Err(EngineError::Invalid(format!(
                "a request may run at most {cap} sequences at once (asked for {}); lower n/best_of or raise the server's per-request share",
                reqs.len()
            )));
        }
        for r in &reqs {
            self.validate(r)?;
        }
        let n = reqs.len() as u64;
        let first = self.next_id.fetch_add(n.max(1), Ordering::Relaxed);
        let mut out = Vec::with_capacity(reqs.len());
        for (i, req) in reqs.into_iter().enumerate() {
            let id = first + i as u64;
            let (etx, erx) = unbounded_channel();
            self.tx
                .send(Command::Submit {
                    id,
                    group: first,
                    req: Box::new(req),
                    events: etx,
                })
                .map_err(|_| EngineError::Invalid("the engine has stopped".into()))?;
            out.push((id, erx));
        }
        Ok(out)
    }

    /// Whether the loop thread is still running and its backend has not faulted
    /// (see [`Engine::fault`]).
    pub fn is_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished()) && self.fault().is_none()
    }

    /// The backend fault that stopped the engine taking work (a GPU context after an
    /// illegal memory access, say), if one happened.
    pub fn fault(&self) -> Option<String> {
        self.stats.fault.get().cloned()
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
            spec_steps: s.spec_steps.load(Ordering::Relaxed),
            spec_drafted_tokens: s.spec_drafted.load(Ordering::Relaxed),
            spec_accepted_tokens: s.spec_accepted.load(Ordering::Relaxed),
            spec_emitted_tokens: s.spec_emitted.load(Ordering::Relaxed),
            spec_draft_failures: s.spec_draft_failures.load(Ordering::Relaxed),
            head_tokens: s.head_tokens.load(Ordering::Relaxed),
            head_rows_fetched: s.head_rows_fetched.load(Ordering::Relaxed),
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

/// The text of a special token (BOS, EOS) for a chat template; empty when the model
/// has none.
fn token_text(tok: &Tokenizer, id: Option<u32>) -> String {
    id.and_then(|i| tok.id_to_token(i))
        .unwrap_or("")
        .to_string()
}
