//! The seam between the engine loop and the model (TEI's `Backend`, vLLM's model
//! runner): the loop hands a runner one step as plain data and gets logits back.
//!
//! The runner owns the weights and the KV storage; it never schedules, samples or
//! sees requests. [`CpuRunner`] runs Hangar's CPU forward pass; [`FakeRunner`] is a
//! deterministic stand-in (next token = a function of the last) so the loop can be
//! tested without weights. A CUDA runner implements the same trait.

use crate::sampler::head::{reference, HeadRequest, HeadResult};
use crate::EngineError;
use hangar_kernels::packed::GreedyPick;
use hangar_kernels::ThreadPool;
use hangar_models::kv::{KvFormat, KvLayout};
use hangar_models::{
    KvCache, LogitsWanted, LoraAdapter, LoraShape, Model, Observer, SeqInput, Workspace,
};
use std::borrow::Borrow;

/// One model step as data: for each scheduled chunk, its tokens, where they start,
/// its block tables (one per KV group) and whether its last-token logits are wanted.
pub type StepInput<'a> = [SeqInput<'a>];

/// What the engine loop needs from a model backend.
pub trait ModelRunner: Send {
    /// Rows of the output logits.
    fn vocab_size(&self) -> usize;
    /// The model's trained context length.
    fn ctx_len(&self) -> usize;
    /// Architecture name, for `ModelInfo`.
    fn arch(&self) -> &str;
    /// Where the model runs, for `ModelInfo`, `/v1/models` and `/metrics`: `cpu`, or
    /// e.g. `cuda:0 (NVIDIA H200, sm_90a)`.
    fn device(&self) -> String {
        "cpu".into()
    }
    /// Which layers share a KV block pool and how big a block is; asked before
    /// [`ModelRunner::allocate_kv`] so the engine can size the pools.
    fn kv_layout(&self) -> KvLayout;
    /// Chooses how K and V are stored (before [`ModelRunner::kv_layout`]). Backends
    /// that only keep f16 refuse the others.
    fn set_kv_format(&mut self, format: KvFormat) -> Result<(), EngineError> {
        match format {
            KvFormat::F16 => Ok(()),
            f => Err(EngineError::Invalid(format!(
                "a {} KV cache is not supported on {}; it keeps K and V in f16 (use --kv-type f16, or run on the CPU)",
                f.name(),
                self.device()
            ))),
        }
    }
    /// Reserves KV storage for `blocks_per_group` blocks of `block_size` tokens.
    /// Returns the bytes reserved.
    fn allocate_kv(
        &mut self,
        block_size: usize,
        blocks_per_group: &[usize],
    ) -> Result<usize, EngineError>;
    /// Runs the model over every chunk, writing their KV, and leaves one row of
    /// `vocab_size` logits in `logits` for each chunk that asked for them, in order.
    fn execute(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), EngineError>;
    /// The shape LoRA adapters must have on this backend; `None` when it does not
    /// apply adapters (then requests naming one are refused before they queue).
    fn lora_shape(&self) -> Option<LoraShape> {
        None
    }
    /// As [`ModelRunner::execute`], chunk `i` running under `adapters[i]`.
    fn execute_lora(
        &mut self,
        step: &StepInput,
        adapters: &[Option<&LoraAdapter>],
        logits: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        if adapters.iter().any(Option::is_some) {
            return Err(EngineError::Invalid(format!(
                "the {} backend does not apply LoRA adapters",
                self.device()
            )));
        }
        self.execute(step, logits)
    }
    /// As [`ModelRunner::execute`], showing `observer` the input rows of each
    /// layer's matrices ([`Tap`]: `(layer, tap, rows, width)`), for comparing two
    /// backends layer by layer (`hangar device-check --layers`). A debugging path:
    /// it may be slower than `execute`.
    fn execute_observed(
        &mut self,
        _step: &StepInput,
        _logits: &mut Vec<f32>,
        _observer: Observer,
    ) -> Result<(), EngineError> {
        Err(EngineError::Invalid(format!(
            "the {} backend does not show its layers' activations",
            self.device()
        )))
    }
    /// Whether [`ModelRunner::execute`] takes [`LogitsWanted::Greedy`] chunks: no
    /// logits row for them, their picks in [`ModelRunner::greedy_picks`].
    fn greedy_head(&self) -> bool {
        false
    }
    /// The skip lists of the next step's greedy chunks, in batch order.
    fn set_greedy_skips(&mut self, _skips: Vec<Vec<u32>>) {}
    /// The last step's greedy picks, one per greedy chunk in batch order.
    fn greedy_picks(&self) -> &[GreedyPick] {
        &[]
    }
    /// Whether [`ModelRunner::execute`] takes [`LogitsWanted::Head`] chunks: no logits
    /// row for them, their sampling heads' answers in [`ModelRunner::head_results`]
    /// (see [`crate::sampler::head`]).
    fn sample_head(&self) -> bool {
        false
    }
    /// The requests of the next step's head chunks, in batch order.
    fn set_head_requests(&mut self, _reqs: Vec<HeadRequest>) {}
    /// The last step's head answers, one per head chunk in batch order.
    fn head_results(&self) -> &[HeadResult] {
        &[]
    }
    /// Appends the raw logits rows of the last step's head chunks `which` (indices in
    /// head order) to `out`: for the few tokens whose nucleus is wider than the
    /// head's candidates. Valid until the next step.
    fn head_rows(&mut self, _which: &[usize], _out: &mut Vec<f32>) -> Result<(), EngineError> {
        Err(EngineError::Invalid(format!(
            "the {} backend has no sampling head",
            self.device()
        )))
    }
    /// Runs `task(i)` for every `i < n`, in parallel where the backend has threads
    /// to spare (the loop samples rows this way).
    fn run_parallel(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        (0..n).for_each(task);
    }
    /// A fault that leaves the backend unusable (a GPU context after an illegal
    /// memory access): once a step fails with one, the engine stops taking work and
    /// reports it (the server's readiness goes to 503) instead of failing every
    /// request that follows.
    fn fault(&self) -> Option<String> {
        None
    }
}

/// The CPU backend: Hangar's forward pass over a paged KV cache in host memory.
///
/// Generic over how the model and thread pool are held: the engine owns them
/// (`CpuRunner<Model, ThreadPool>`), one-shot commands borrow them
/// ([`BorrowedCpuRunner`]), so that generate and bench run on any [`ModelRunner`]
/// through the same code.
pub struct CpuRunner<M = Model, P = ThreadPool> {
    model: M,
    pool: P,
    kv: Option<KvCache>,
    ws: Workspace,
    kv_format: KvFormat,
}

/// The KV cache once `allocate_kv` made it.
fn allocated(kv: &mut Option<KvCache>) -> Result<&mut KvCache, EngineError> {
    kv.as_mut()
        .ok_or_else(|| EngineError::Invalid("KV cache not allocated".into()))
}

/// The CPU backend over a borrowed model and pool.
pub type BorrowedCpuRunner<'a> = CpuRunner<&'a Model, &'a ThreadPool>;

impl<M: Borrow<Model>, P: Borrow<ThreadPool>> CpuRunner<M, P> {
    pub fn new(model: M, pool: P) -> Self {
        CpuRunner {
            model,
            pool,
            kv: None,
            ws: Workspace::default(),
            kv_format: KvFormat::F16,
        }
    }
    pub fn model(&self) -> &Model {
        self.model.borrow()
    }
}

impl<M: Borrow<Model> + Send, P: Borrow<ThreadPool> + Send> ModelRunner for CpuRunner<M, P> {
    fn vocab_size(&self) -> usize {
        self.model().cfg.vocab_size
    }
    fn ctx_len(&self) -> usize {
        self.model().cfg.ctx_len
    }
    fn arch(&self) -> &str {
        &self.model().cfg.arch_name
    }
    fn kv_layout(&self) -> KvLayout {
        let cfg = &self.model().cfg;
        // The format was checked against the model in `set_kv_format`.
        KvLayout::for_model_as(cfg, self.kv_format).unwrap_or_else(|_| KvLayout::for_model(cfg))
    }
    fn set_kv_format(&mut self, format: KvFormat) -> Result<(), EngineError> {
        let model = self.model();
        if format != KvFormat::F16 && model.numerics() == hangar_models::Numerics::Ggml {
            return Err(EngineError::Invalid(format!(
                "a {} KV cache needs fast numerics (--numerics fast); llama.cpp's arithmetic reads f16",
                format.name()
            )));
        }
        KvLayout::for_model_as(&model.cfg, format).map_err(EngineError::Invalid)?;
        self.kv_format = format;
        Ok(())
    }
    fn allocate_kv(
        &mut self,
        block_size: usize,
        blocks_per_group: &[usize],
    ) -> Result<usize, EngineError> {
        let kv = KvCache::with_layout(
            self.kv_layout(),
            &self.model().cfg,
            block_size,
            blocks_per_group,
        );
        let bytes = kv.capacity_bytes();
        self.kv = Some(kv);
        Ok(bytes)
    }
    fn execute(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let kv = allocated(&mut self.kv)?;
        self.model
            .borrow()
            .forward(self.pool.borrow(), step, kv, &mut self.ws, logits)
            .map(|_| ())
            .map_err(EngineError::from)
    }
    fn execute_observed(
        &mut self,
        step: &StepInput,
        logits: &mut Vec<f32>,
        observer: Observer,
    ) -> Result<(), EngineError> {
        let kv = allocated(&mut self.kv)?;
        self.model
            .borrow()
            .forward_observed(
                self.pool.borrow(),
                step,
                kv,
                &mut self.ws,
                logits,
                Some(observer),
            )
            .map(|_| ())
            .map_err(EngineError::from)
    }
    fn lora_shape(&self) -> Option<LoraShape> {
        // llama.cpp's exact arithmetic has no adapter path.
        let m = self.model();
        (m.numerics() == hangar_models::Numerics::Fast).then(|| LoraShape::of(&m.cfg))
    }
    fn execute_lora(
        &mut self,
        step: &StepInput,
        adapters: &[Option<&LoraAdapter>],
        logits: &mut Vec<f32>,
    ) -> Result<(), EngineError> {
        let kv = allocated(&mut self.kv)?;
        self.model
            .borrow()
            .forward_lora(self.pool.borrow(), step, adapters, kv, &mut self.ws, logits)
            .map(|_| ())
            .map_err(EngineError::from)
    }
    fn run_parallel(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        self.pool.borrow().for_each_index(n, task);
    }
    fn greedy_head(&self) -> bool {
        // Only where the picks come without writing logits (not in llama.cpp's exact
        // arithmetic, not on a K-quant or unpacked head).
        self.model().greedy_head_fused(self.pool.borrow())
    }
    fn set_greedy_skips(&mut self, skips: Vec<Vec<u32>>) {
        self.ws.set_greedy_skips(skips);
    }
    fn greedy_picks(&self) -> &[GreedyPick] {
        self.ws.greedy_picks()
    }
}

/// A deterministic model for testing the engine loop without weights: the logits
/// put all mass on `next(last token)`, so greedy decoding from token `t` yields
/// `next(t), next(next(t)), ...` whatever the batch. It records every step it ran.
pub struct FakeRunner {
    vocab: usize,
    ctx_len: usize,
    next: fn(u32, usize) -> u32,
    /// Per step: (sequence start position, token count, wanted logits) of each chunk.
    pub steps: Vec<Vec<(usize, usize, bool)>>,
    /// Fail the step with this index (0-based), to test error paths.
    pub fail_at_step: Option<usize>,
    /// Panic in the step with this index, to test recovery.
    pub panic_at_step: Option<usize>,
    /// Fail the step with this index with a fault that leaves the backend unusable.
    pub fault_at_step: Option<usize>,
    fault: Option<String>,
    /// Fills a logits row from (last token, position) instead of the one-hot row.
    row: Option<fn(u32, usize, &mut [f32])>,
    /// A sampling head over its rows ([`reference`]), as a GPU backend has one; it
    /// counts the rows it answered.
    head: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
    head_reqs: Vec<HeadRequest>,
    head_results: Vec<HeadResult>,
    head_rows: Vec<Vec<f32>>,
}

impl FakeRunner {
    /// `next(last, vocab)` picks the token after `last`; the default is `(last + 1) % vocab`.
    pub fn new(vocab: usize, ctx_len: usize) -> Self {
        FakeRunner {
            vocab,
            ctx_len,
            next: |t, v| (t + 1) % v as u32,
            steps: Vec::new(),
            fail_at_step: None,
            panic_at_step: None,
            fault_at_step: None,
            fault: None,
            row: None,
            head: None,
            head_reqs: Vec::new(),
            head_results: Vec::new(),
            head_rows: Vec::new(),
        }
    }
    pub fn with_next(mut self, next: fn(u32, usize) -> u32) -> Self {
        self.next = next;
        self
    }
    /// Rows from `row(last token, position, row)` instead of one-hot ones (for
    /// sampling tests, which need a spread distribution).
    pub fn with_rows(mut self, row: fn(u32, usize, &mut [f32])) -> Self {
        self.row = Some(row);
        self
    }
    /// With a sampling head ([`ModelRunner::sample_head`]) computed by
    /// [`reference`], the arithmetic a GPU head reproduces; `answered` counts the
    /// rows it answered.
    pub fn with_head(mut self, answered: std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        self.head = Some(answered);
        self
    }
    fn fill(&self, t: u32, pos: usize, out: &mut [f32]) {
        match self.row {
            Some(f) => f(t, pos, out),
            None => out[(self.next)(t, self.vocab) as usize % self.vocab] = 30.0,
        }
    }
}

impl ModelRunner for FakeRunner {
    fn vocab_size(&self) -> usize {
        self.vocab
    }
    fn ctx_len(&self) -> usize {
        self.ctx_len
    }
    fn arch(&self) -> &str {
        "fake"
    }
    fn kv_layout(&self) -> KvLayout {
        KvLayout {
            group_layers: vec![vec![0]],
            group_window: vec![None],
            kv_dim: 1,
            format: KvFormat::F16,
        }
    }
    fn fault(&self) -> Option<String> {
        self.fault.clone()
    }
    fn sample_head(&self) -> bool {
        self.head.is_some()
    }
    fn set_head_requests(&mut self, reqs: Vec<HeadRequest>) {
        self.head_reqs = reqs;
    }
    fn head_results(&self) -> &[HeadResult] {
        &self.head_results
    }
    fn head_rows(&mut self, which: &[usize], out: &mut Vec<f32>) -> Result<(), EngineError> {
        for &i in which {
            let row = self.head_rows.get(i).ok_or_else(|| {
                EngineError::Invalid(format!("FakeRunner: no head row {i} in the last step"))
            })?;
            out.extend_from_slice(row);
        }
        Ok(())
    }
    fn allocate_kv(&mut self, block_size: usize, blocks: &[usize]) -> Result<usize, EngineError> {
        Ok(blocks.iter().sum::<usize>() * block_size * 8)
    }
    fn execute(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let index = self.steps.len();
        self.steps.push(
            step.iter()
                .map(|s| {
                    let wanted = !matches!(s.logits, LogitsWanted::None);
                    (s.start_pos, s.tokens.len(), wanted)
                })
                .collect(),
        );
        if self.panic_at_step == Some(index) {
            panic!("FakeRunner: panic requested at step {index}");
        }
        if self.fault.is_some() || self.fault_at_step == Some(index) {
            let f = "FakeRunner: device fault requested".to_string();
            self.fault = Some(f.clone());
            return Err(EngineError::Invalid(f));
        }
        if self.fail_at_step == Some(index) {
            return Err(EngineError::Invalid(format!(
                "FakeRunner: failure requested at step {index}"
            )));
        }
        logits.clear();
        self.head_results.clear();
        self.head_rows.clear();
        let mut heads = 0;
        for s in step {
            let first = s.tokens.len().saturating_sub(1);
            let rows: &[u32] = match s.logits {
                LogitsWanted::None => &[],
                LogitsWanted::Last => &s.tokens[first..],
                LogitsWanted::All => s.tokens,
                LogitsWanted::Greedy => {
                    return Err(EngineError::Invalid(
                        "FakeRunner has no greedy head (greedy_head() is false)".into(),
                    ))
                }
                LogitsWanted::Head => {
                    let (Some(&t), Some(req), Some(answered)) =
                        (s.tokens.last(), self.head_reqs.get(heads), &self.head)
                    else {
                        return Err(EngineError::Invalid(
                            "FakeRunner: a head chunk without a head or a request".into(),
                        ));
                    };
                    let mut row = vec![0f32; self.vocab];
                    self.fill(t, s.start_pos + first, &mut row);
                    self.head_results.push(reference(&row, req));
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    self.head_rows.push(row);
                    heads += 1;
                    &[]
                }
            };
            let skip = if s.logits == LogitsWanted::Last {
                first
            } else {
                0
            };
            for (j, &t) in rows.iter().enumerate() {
                let start = logits.len();
                logits.resize(start + self.vocab, 0.0);
                let pos = s.start_pos + skip + j;
                self.fill(t, pos, &mut logits[start..]);
            }
        }
        Ok(())
    }
}

/// A runner whose every chunk runs under one LoRA adapter: what `hangar generate
/// --lora` hands the single-sequence generation loop. Everything else is the inner
/// runner's; the inner runner must apply adapters ([`ModelRunner::lora_shape`]).
pub struct AdapterRunner<'a> {
    inner: &'a mut dyn ModelRunner,
    adapter: &'a LoraAdapter,
}

impl<'a> AdapterRunner<'a> {
    /// Checks that `inner` applies adapters and that `adapter` fits its model.
    pub fn new(
        inner: &'a mut dyn ModelRunner,
        adapter: &'a LoraAdapter,
    ) -> Result<Self, EngineError> {
        let Some(shape) = inner.lora_shape() else {
            return Err(EngineError::Invalid(format!(
                "the {} backend with these numerics does not apply LoRA adapters (use the CPU with --numerics fast)",
                inner.device()
            )));
        };
        if adapter.shape() != &shape {
            return Err(EngineError::Invalid(
                "the adapter was made for another model shape".into(),
            ));
        }
        Ok(AdapterRunner { inner, adapter })
    }
}

impl ModelRunner for AdapterRunner<'_> {
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn ctx_len(&self) -> usize {
        self.inner.ctx_len()
    }
    fn arch(&self) -> &str {
        self.inner.arch()
    }
    fn device(&self) -> String {
        self.inner.device()
    }
    fn kv_layout(&self) -> KvLayout {
        self.inner.kv_layout()
    }
    fn set_kv_format(&mut self, format: KvFormat) -> Result<(), EngineError> {
        self.inner.set_kv_format(format)
    }
    fn allocate_kv(
        &mut self,
        block_size: usize,
        blocks_per_group: &[usize],
    ) -> Result<usize, EngineError> {
        self.inner.allocate_kv(block_size, blocks_per_group)
    }
    fn execute(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let adapters = vec![Some(self.adapter); step.len()];
        self.inner.execute_lora(step, &adapters, logits)
    }
    fn lora_shape(&self) -> Option<LoraShape> {
        self.inner.lora_shape()
    }
    fn run_parallel(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        self.inner.run_parallel(n, task)
    }
}
