//! The forward pass with Hangar's fast kernels (`Numerics::Fast`): token ids at
//! positions → logits for a batch of sequences; buffers live in the Workspace, not per call.
//!
//! All tokens of all sequences go through each matrix together (one quantization of
//! the activations, weight blocks reused across tokens); attention runs per sequence
//! over its own block table. Scratch lives in a reusable [`Workspace`], so steady-state
//! decode allocates nothing.

use crate::config::Activation;
use crate::ggml_forward::GgmlScratch;
use crate::kv::{KvCache, NO_BLOCK};
use crate::lora::{LoraAdapter, LoraRows, LoraShape, LoraTarget};
use crate::weights::{Model, Weight};
use crate::ModelError;
use hangar_kernels::kv_format::store_row;
use hangar_kernels::ops::{self, RopeTable};
use hangar_kernels::packed::{
    greedy_pick_row, matmul_packed_greedy, matmul_packed_many, GreedyPick, Packed, PackedMatrix,
    GREEDY_MAX_TOKENS,
};
use hangar_kernels::quants;
use hangar_kernels::{attend, matmul, matmul_quantized, quantize_activations, PagedKv, ThreadPool};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which logits a sequence wants back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that is not the last).
    None,
    /// The last token's (generation).
    Last,
    /// Every token's (perplexity, prompt logprobs).
    All,
    /// The last token's greedy pick instead of its logits: the argmax over the tokens
    /// not in its skip list ([`Workspace::set_greedy_skips`]) and the logits of those
    /// in it, in [`Workspace::greedy_picks`] (one per such sequence, in batch order; no
    /// logits row). On the packed output head of the fast numerics the logits are never
    /// written ([`hangar_kernels::packed::matmul_packed_greedy`]): a 262k-token
    /// vocabulary is 1 MB of logits per sequence and step, read back for one argmax.
    Greedy,
    /// The last token's answer from a backend's sampling head (a GPU runner's
    /// `ModelRunner::head_results` in the engine): the row stays on the device. The
    /// CPU forward refuses it.
    Head,
}

/// One sequence's share of a batch.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// New tokens to process.
    pub tokens: &'a [u32],
    /// Position of `tokens[0]`; positions before it are already in the cache.
    pub start_pos: usize,
    /// One block table per KV group (see [`crate::kv::KvLayout`]).
    pub block_tables: &'a [&'a [u32]],
    pub logits: LogitsWanted,
}

/// Where an observer sees activations: the input rows of a layer's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tap {
    /// Input of attn_q / attn_k / attn_v (after the attention norm).
    AttnIn,
    /// Input of attn_output (attention result).
    AttnOutIn,
    /// Input of ffn_gate / ffn_up (after the FFN norm).
    FfnIn,
    /// Input of ffn_down (gated activation).
    FfnDownIn,
    /// Input of the output projection (after the final norm), for the rows whose
    /// logits are computed; reported with layer index `n_layers`.
    OutputIn,
}

/// Receives `(layer, tap, rows, width)`: `rows` holds `rows.len() / width` activation
/// rows (one per token of the batch). Used for importance statistics (imatrix, Wanda).
pub type Observer<'a> = &'a mut dyn FnMut(usize, Tap, &[f32], usize);

/// Tensor parallelism: called with the output of each row-parallel projection
/// (attention output, FFN down; `tokens x d_model`), which on a shard holds this
/// rank's partial sum; it must leave the sum over all ranks (an all-reduce).
pub type Reducer<'a> = &'a mut dyn FnMut(&mut [f32]) -> Result<(), String>;

/// Pipeline parallelism: the layers one stage runs, and the hidden states it starts
/// from (a later stage) or leaves for the next (a stage that does not end the model).
struct Stage<'a> {
    layers: std::ops::Range<usize>,
    hidden: &'a mut Vec<f32>,
}

/// Reusable scratch buffers for [`Model::forward`], in either numerics: after the
/// first call of a given batch shape, a forward pass allocates nothing.
#[derive(Default)]
pub struct Workspace {
    pub(crate) x: Vec<f32>,
    pub(crate) h: Vec<f32>,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) attn: Vec<f32>,
    pub(crate) o: Vec<f32>,
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    act: Vec<u8>,
    act2: Vec<u8>,
    pub(crate) positions: Vec<usize>,
    /// Per token: (sequence index, position).
    tok_seq: Vec<(usize, usize)>,
    rope_global: RopeTable,
    rope_local: RopeTable,
    scores: Vec<Vec<f32>>,
    sel: Vec<f32>,
    /// A vocabulary-parallel shard's own logits, before they are placed and summed.
    part: Vec<f32>,
    /// LoRA: the batch's rows grouped by adapter, and their scratch.
    lora: LoraRows,
    /// What only the ggml numerics use.
    pub(crate) ggml: GgmlScratch,
    /// Per [`LogitsWanted::Greedy`] sequence, in batch order: the tokens whose logits
    /// are reported instead of competing (the ones a request adjusts).
    greedy_skips: Vec<Vec<u32>>,
    greedy_picks: Vec<GreedyPick>,
}

impl Workspace {
    /// The skip lists of the next forward's [`LogitsWanted::Greedy`] sequences, in
    /// batch order (a sequence past the end skips nothing).
    pub fn set_greedy_skips(&mut self, skips: Vec<Vec<u32>>) {
        self.greedy_skips = skips;
    }

    /// The last forward's greedy picks, one per [`LogitsWanted::Greedy`] sequence.
    pub fn greedy_picks(&self) -> &[GreedyPick] {
        &self.greedy_picks
    }
}

/// A raw pointer handed to pool closures that write disjoint parts of a buffer (f32
/// activations, or u16 KV cache rows).
#[derive(Clone, Copy)]
pub(crate) struct Ptr<T = f32>(pub(crate) *mut T);
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}
impl<T> Ptr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Rows of a row-major buffer handed to pool closures, each row written by one call.
#[derive(Clone, Copy)]
struct Rows {
    ptr: Ptr,
    width: usize,
}

impl Rows {
    fn of(buf: &mut [f32], width: usize) -> Self {
        Rows {
            ptr: Ptr(buf.as_mut_ptr()),
            width,
        }
    }

    /// Row `t`.
    ///
    /// # Safety
    /// `t` is inside the buffer and no other live reference covers row `t`.
    #[allow(clippy::mut_from_ref)]
    unsafe fn row(&self, t: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.ptr.get().add(t * self.width), self.width)
    }
}

/// Token rows at or above which the per-row steps (norms, RoPE, residual adds) go over
/// the pool. From 8: at 16 rows the engine thread's serial share was ~3% of a decode
/// step (`hangar bench --tg 64 -b 16`: 775-808 -> 801-858 tok/s, six alternations);
/// below, one sequence or a few, the hand-out costs more than it saves.
const PARALLEL_ROWS: usize = 8;

/// Calls `f(t)` for every row `t < n`, over the pool for large batches (prefill). Rows
/// are independent, so the results are the same bits either way.
fn each_row(pool: &ThreadPool, n: usize, f: impl Fn(usize) + Sync) {
    if n < PARALLEL_ROWS {
        (0..n).for_each(f);
    } else {
        let chunk = n.div_ceil(pool.n_threads() * 4).max(1);
        pool.for_each_chunk(n, chunk, |a, b| (a..b).for_each(&f));
    }
}

pub(crate) fn resize(v: &mut Vec<f32>, n: usize) {
    if v.len() != n {
        v.resize(n, 0.0);
    }
}

impl Model {
    /// Runs the batch, writes K/V of the new tokens into `kv`, and fills `logits` with
    /// one row of `vocab_size` per requested logit, in batch order. Returns the number
    /// of rows.
    pub fn forward(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
    ) -> Result<usize, ModelError> {
        self.forward_observed(pool, seqs, kv, ws, logits, None)
    }

    /// As [`Model::forward`], showing the input activations of every layer's matrices
    /// to `observer`.
    pub fn forward_observed(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        observer: Option<Observer>,
    ) -> Result<usize, ModelError> {
        self.forward_inner(pool, seqs, kv, ws, logits, observer, None)
    }

    /// As [`Model::forward`], with sequence `i` run under `adapters[i]` (`None`: the
    /// base model). Each adapted projection adds `scale · B (A x)` to the rows of the
    /// sequences that use an adapter; the base rows are computed exactly as by
    /// [`Model::forward`], and a batch without adapters costs nothing extra. Fast
    /// numerics only.
    pub fn forward_lora(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        adapters: &[Option<&LoraAdapter>],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
    ) -> Result<usize, ModelError> {
        if adapters.len() != seqs.len() {
            return Err(ModelError::BadBatch(format!(
                "{} adapter choices for {} sequences",
                adapters.len(),
                seqs.len()
            )));
        }
        if adapters.iter().all(Option::is_none) {
            return self.forward(pool, seqs, kv, ws, logits);
        }
        if self.numerics == crate::Numerics::Ggml {
            return Err(ModelError::BadBatch(
                "LoRA adapters run with fast numerics (--numerics fast); llama.cpp's arithmetic has no adapter path here".into(),
            ));
        }
        let shape = LoraShape::of(&self.cfg);
        for a in adapters.iter().flatten() {
            a.check(&shape)?;
        }
        self.forward_full(pool, seqs, kv, ws, logits, None, None, None, Some(adapters))
    }

    /// As [`Model::forward`], for one rank of a tensor-parallel group: this model
    /// holds the rank's shard (its heads and FFN slice, as `hangar_parallel` writes
    /// them) and `reduce` sums the row-parallel projections over the ranks. Fast
    /// numerics only.
    pub fn forward_sharded(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        reduce: Reducer,
    ) -> Result<usize, ModelError> {
        self.forward_sharded_observed(pool, seqs, kv, ws, logits, reduce, None)
    }

    /// As [`Model::forward_sharded`], showing this rank's activations to `observer`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_sharded_observed(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        reduce: Reducer,
        observer: Option<Observer>,
    ) -> Result<usize, ModelError> {
        if self.numerics == crate::Numerics::Ggml {
            return Err(ModelError::BadBatch(
                "tensor-parallel shards run with fast numerics (llama.cpp's arithmetic is not split)".into(),
            ));
        }
        self.forward_inner(pool, seqs, kv, ws, logits, observer, Some(reduce))
    }

    /// Pipeline parallelism: runs only `layers` of the model. The first stage
    /// (`layers.start == 0`) embeds the tokens; a later stage starts from `hidden`, the
    /// previous stage's output (`tokens x d_model`). A stage that does not end the
    /// model leaves its output in `hidden` and no logits; the last one computes the
    /// logits as [`Model::forward`] does. Fast numerics only.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_stage(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        layers: std::ops::Range<usize>,
        hidden: &mut Vec<f32>,
        logits: &mut Vec<f32>,
    ) -> Result<usize, ModelError> {
        if self.numerics == crate::Numerics::Ggml {
            return Err(ModelError::BadBatch(
                "pipeline stages run with fast numerics (llama.cpp's arithmetic is not split)"
                    .into(),
            ));
        }
        if layers.start >= layers.end || layers.end > self.layers.len() {
            return Err(ModelError::BadBatch(format!(
                "stage layers {layers:?} are not a range inside the model's {} layers",
                self.layers.len()
            )));
        }
        let stage = Stage { layers, hidden };
        self.forward_full(pool, seqs, kv, ws, logits, None, None, Some(stage), None)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_inner(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        observer: Option<Observer>,
        reduce: Option<Reducer>,
    ) -> Result<usize, ModelError> {
        self.forward_full(pool, seqs, kv, ws, logits, observer, reduce, None, None)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward_full(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        mut observer: Option<Observer>,
        mut reduce: Option<Reducer>,
        mut stage: Option<Stage>,
        lora: Option<&[Option<&LoraAdapter>]>,
    ) -> Result<usize, ModelError> {
        let cfg = &self.cfg;
        self.validate(seqs, kv)?;
        let t_total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        if t_total == 0 {
            logits.clear();
            return Ok(0);
        }
        if self.numerics == crate::Numerics::Ggml {
            if kv.format() != hangar_kernels::KvFormat::F16 {
                return Err(ModelError::BadBatch(format!(
                    "llama.cpp's arithmetic (ggml numerics) reads an f16 KV cache; a {} cache needs fast numerics",
                    kv.format().name()
                )));
            }
            return self.forward_ggml(pool, seqs, kv, ws, logits, observer);
        }
        let (d, qd, kvd, ff, hd) = (
            cfg.d_model,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.ffn_dim,
            cfg.head_dim,
        );
        resize(&mut ws.x, t_total * d);
        resize(&mut ws.h, t_total * d);
        resize(&mut ws.q, t_total * qd);
        resize(&mut ws.k, t_total * kvd);
        resize(&mut ws.v, t_total * kvd);
        resize(&mut ws.attn, t_total * qd);
        resize(&mut ws.o, t_total * d);
        resize(&mut ws.gate, t_total * ff);
        resize(&mut ws.up, t_total * ff);
        ws.positions.clear();
        ws.tok_seq.clear();
        for (si, s) in seqs.iter().enumerate() {
            for i in 0..s.tokens.len() {
                ws.positions.push(s.start_pos + i);
                ws.tok_seq.push((si, s.start_pos + i));
            }
        }
        if let Some(lora) = lora {
            ws.lora.group(lora, |i| seqs[i].tokens.len());
        }
        let ff_factors = self.rope_freqs.as_deref();
        ws.rope_global
            .fill(&ws.positions, cfg.rope_base, cfg.rope_dims, ff_factors);
        if cfg.local_layers.iter().any(|&l| l) {
            ws.rope_local.fill(
                &ws.positions,
                cfg.rope_base_local,
                cfg.rope_dims,
                ff_factors,
            );
        }

        // A later pipeline stage starts from the previous stage's hidden states.
        let layers = match &stage {
            Some(st) => st.layers.clone(),
            None => 0..self.layers.len(),
        };
        if let Some(st) = stage.as_ref().filter(|st| st.layers.start > 0) {
            if st.hidden.len() != t_total * d {
                return Err(ModelError::BadBatch(format!(
                    "a pipeline stage got {} hidden values for {t_total} tokens of {d}",
                    st.hidden.len()
                )));
            }
            ws.x[..t_total * d].copy_from_slice(st.hidden);
        } else {
            self.embed(pool, seqs, ws, d);
            // Vocabulary-parallel shards looked up their own rows (zeros elsewhere):
            // the sum over ranks is every token's embedding, exactly.
            if self.tok_embd.rows < cfg.vocab_size {
                let r = reduce.as_mut().ok_or_else(|| {
                    ModelError::BadBatch(
                        "a vocabulary-parallel shard needs its ranks' all-reduce".into(),
                    )
                })?;
                r(&mut ws.x[..t_total * d]).map_err(ModelError::Collective)?;
            }
        }

        for (li, layer) in self.layers.iter().enumerate() {
            if !layers.contains(&li) {
                continue;
            }
            // Attention block.
            {
                let (x, h) = (&ws.x, Rows::of(&mut ws.h, d));
                each_row(pool, t_total, |t| {
                    // SAFETY: each row t is written by one call.
                    let h = unsafe { h.row(t) };
                    ops::rms_norm(&x[t * d..(t + 1) * d], &layer.attn_norm, cfg.rms_eps, h);
                });
            }
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::AttnIn, &ws.h, d);
            }
            self.project_shared(
                pool,
                &mut [
                    (&layer.wq, &mut ws.q),
                    (&layer.wk, &mut ws.k),
                    (&layer.wv, &mut ws.v),
                ],
                &ws.h,
                t_total,
                &mut ws.act,
                &mut ws.act2,
            );
            if let Some(lora) = lora {
                for (target, out) in [
                    (LoraTarget::Q, &mut ws.q),
                    (LoraTarget::K, &mut ws.k),
                    (LoraTarget::V, &mut ws.v),
                ] {
                    ws.lora.apply(pool, lora, li, target, &ws.h, out);
                }
            }
            {
                let rope = if cfg.local_layers[li] {
                    &ws.rope_local
                } else {
                    &ws.rope_global
                };
                let (q, k, v) = (
                    Rows::of(&mut ws.q, qd),
                    Rows::of(&mut ws.k, kvd),
                    Rows::of(&mut ws.v, kvd),
                );
                each_row(pool, t_total, |t| {
                    // SAFETY: each row t is written by one call.
                    let (q, k, v) = unsafe { (q.row(t), k.row(t), v.row(t)) };
                    if let Some(b) = &layer.bq {
                        add(q, b);
                    }
                    if let Some(b) = &layer.bk {
                        add(k, b);
                    }
                    if let Some(b) = &layer.bv {
                        add(v, b);
                    }
                    for head in q.chunks_exact_mut(hd) {
                        if let Some(w) = &layer.q_norm {
                            ops::rms_norm_inplace(head, w, cfg.rms_eps);
                        }
                        rope.apply(head, t, cfg.rope_style);
                    }
                    for head in k.chunks_exact_mut(hd) {
                        if let Some(w) = &layer.k_norm {
                            ops::rms_norm_inplace(head, w, cfg.rms_eps);
                        }
                        rope.apply(head, t, cfg.rope_style);
                    }
                    ops::round_to_f16(q);
                    ops::round_to_f16(k);
                    ops::round_to_f16(v);
                });
            }
            // K and V are kept at f16 precision, Q rounded to match (an f16 KV cache's
            // numerics, as llama.cpp's default): done per row with RoPE above.
            // Store the new keys and values (f16: already rounded, so exact; Q8_0 and
            // Q4_0 quantize the f16-rounded values, as llama.cpp quantizes its f32).
            self.store_kv(pool, li, seqs, kv, ws, t_total);
            self.attention(pool, li, seqs, kv, ws, t_total);
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::AttnOutIn, &ws.attn, qd);
            }
            self.matmul_w(pool, &layer.wo, &ws.attn, t_total, &mut ws.o, &mut ws.act);
            if let Some(lora) = lora {
                ws.lora
                    .apply(pool, lora, li, LoraTarget::O, &ws.attn, &mut ws.o);
            }
            if let Some(r) = reduce.as_mut() {
                r(&mut ws.o[..t_total * d]).map_err(ModelError::Collective)?;
            }
            // The residual add, then the feed-forward block's input norm.
            {
                let (o, x, h) = (
                    Rows::of(&mut ws.o, d),
                    Rows::of(&mut ws.x, d),
                    Rows::of(&mut ws.h, d),
                );
                each_row(pool, t_total, |t| {
                    // SAFETY: each row t is written by one call.
                    let (o, x, h) = unsafe { (o.row(t), x.row(t), h.row(t)) };
                    if let Some(w) = &layer.post_attn_norm {
                        ops::rms_norm_inplace(o, w, cfg.rms_eps);
                    }
                    add(x, o);
                    ops::rms_norm(x, &layer.ffn_norm, cfg.rms_eps, h);
                });
            }
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::FfnIn, &ws.h, d);
            }
            self.project_shared(
                pool,
                &mut [(&layer.gate, &mut ws.gate), (&layer.up, &mut ws.up)],
                &ws.h,
                t_total,
                &mut ws.act,
                &mut ws.act2,
            );
            if let Some(lora) = lora {
                for (target, out) in [
                    (LoraTarget::Gate, &mut ws.gate),
                    (LoraTarget::Up, &mut ws.up),
                ] {
                    ws.lora.apply(pool, lora, li, target, &ws.h, out);
                }
            }
            gated_activation(pool, cfg.activation, &mut ws.gate, &ws.up);
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::FfnDownIn, &ws.gate, ff);
            }
            self.matmul_w(pool, &layer.down, &ws.gate, t_total, &mut ws.o, &mut ws.act);
            if let Some(lora) = lora {
                ws.lora
                    .apply(pool, lora, li, LoraTarget::Down, &ws.gate, &mut ws.o);
            }
            if let Some(r) = reduce.as_mut() {
                r(&mut ws.o[..t_total * d]).map_err(ModelError::Collective)?;
            }
            {
                let (o, x) = (Rows::of(&mut ws.o, d), Rows::of(&mut ws.x, d));
                each_row(pool, t_total, |t| {
                    // SAFETY: each row t is written by one call.
                    let (o, x) = unsafe { (o.row(t), x.row(t)) };
                    if let Some(w) = &layer.post_ffn_norm {
                        ops::rms_norm_inplace(o, w, cfg.rms_eps);
                    }
                    add(x, o);
                });
            }
        }

        // A stage that does not end the model hands its hidden states on.
        if let Some(st) = stage
            .as_mut()
            .filter(|st| st.layers.end < self.layers.len())
        {
            st.hidden.clear();
            st.hidden.extend_from_slice(&ws.x[..t_total * d]);
            logits.clear();
            return Ok(0);
        }

        // Logits for the requested rows; greedy picks for the greedy ones.
        let mut rows = Vec::new();
        let mut greedy_rows = Vec::new();
        let mut t = 0;
        for s in seqs {
            match s.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => rows.push(t + s.tokens.len() - 1),
                LogitsWanted::All => rows.extend(t..t + s.tokens.len()),
                LogitsWanted::Greedy => greedy_rows.push(t + s.tokens.len() - 1),
                LogitsWanted::Head => {
                    return Err(ModelError::BadBatch(
                        "the sampling head runs on a GPU backend: ask for the last logits".into(),
                    ))
                }
            }
            t += s.tokens.len();
        }
        ws.greedy_picks.clear();
        if !greedy_rows.is_empty() {
            self.greedy_head(pool, &greedy_rows, ws)?;
        }
        let m = rows.len();
        resize(&mut ws.sel, m * d);
        for (i, &r) in rows.iter().enumerate() {
            ops::rms_norm(
                &ws.x[r * d..(r + 1) * d],
                &self.output_norm,
                cfg.rms_eps,
                &mut ws.sel[i * d..(i + 1) * d],
            );
        }
        if let Some(obs) = observer.as_mut() {
            if m > 0 {
                obs(self.layers.len(), Tap::OutputIn, &ws.sel[..m * d], d);
            }
        }
        let vocab = cfg.vocab_size;
        logits.resize(m * vocab, 0.0);
        if m > 0 && self.output.rows < vocab {
            // A vocabulary-parallel shard: its rows' logits in place, zeros elsewhere,
            // summed over the ranks (each value comes from exactly one rank).
            let local = self.output.rows;
            resize(&mut ws.part, m * local);
            self.matmul_w(pool, &self.output, &ws.sel, m, &mut ws.part, &mut ws.act);
            logits.fill(0.0);
            let off = cfg.vocab_offset;
            for i in 0..m {
                logits[i * vocab + off..i * vocab + off + local]
                    .copy_from_slice(&ws.part[i * local..(i + 1) * local]);
            }
            let r = reduce.as_mut().ok_or_else(|| {
                ModelError::BadBatch(
                    "a vocabulary-parallel shard needs its ranks' all-reduce".into(),
                )
            })?;
            r(&mut logits[..m * vocab]).map_err(ModelError::Collective)?;
        } else if m > 0 {
            self.matmul_w(pool, &self.output, &ws.sel, m, logits, &mut ws.act);
        }
        if m > 0 {
            if let Some(cap) = cfg.final_logit_softcap {
                logits.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
            }
        }
        Ok(m)
    }

    /// Whether [`LogitsWanted::Greedy`] skips writing logits on this model: fast
    /// numerics, a packed Q4_0/Q5_0/Q8_0 output head covering the whole vocabulary, no
    /// logit soft-capping. Elsewhere a greedy row costs a full logits row and a scalar
    /// pick, more than asking for [`LogitsWanted::Last`]; callers should ask for that.
    pub fn greedy_head_fused(&self, pool: &ThreadPool) -> bool {
        self.numerics() == crate::Numerics::Fast
            && self.cfg.final_logit_softcap.is_none()
            && self.output.rows == self.cfg.vocab_size
            && matches!(self.packed(pool, &self.output), Some(Packed::Legacy(_)))
    }

    /// The greedy picks of the hidden-state rows `rows` into `ws.greedy_picks`: on the
    /// packed output head without writing logits, else from full logits rows.
    fn greedy_head(
        &self,
        pool: &ThreadPool,
        rows: &[usize],
        ws: &mut Workspace,
    ) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        let (d, vocab, m) = (cfg.d_model, cfg.vocab_size, rows.len());
        if self.output.rows < vocab {
            return Err(ModelError::BadBatch(
                "greedy picks need the whole output head (not a vocabulary shard)".into(),
            ));
        }
        resize(&mut ws.sel, m * d);
        for (i, &r) in rows.iter().enumerate() {
            ops::rms_norm(
                &ws.x[r * d..(r + 1) * d],
                &self.output_norm,
                cfg.rms_eps,
                &mut ws.sel[i * d..(i + 1) * d],
            );
        }
        let skips = std::mem::take(&mut ws.greedy_skips);
        let skip = |i: usize| skips.get(i).map_or(&[][..], Vec::as_slice);
        let fused = match self.packed(pool, &self.output) {
            Some(Packed::Legacy(p)) if cfg.final_logit_softcap.is_none() => Some(p),
            _ => None,
        };
        if let Some(p) = fused {
            for first in (0..m).step_by(GREEDY_MAX_TOKENS) {
                let n = (m - first).min(GREEDY_MAX_TOKENS);
                let x = &ws.sel[first * d..(first + n) * d];
                quantize_activations(pool, self.output.ty, x, n, d, &mut ws.act);
                let lists: Vec<&[u32]> = (first..first + n).map(skip).collect();
                let picks = matmul_packed_greedy(pool, p, &ws.act, n, &lists);
                ws.greedy_picks.extend(picks);
            }
        } else {
            resize(&mut ws.part, m * vocab);
            let (sel, part) = (&ws.sel, &mut ws.part);
            self.matmul_w(pool, &self.output, sel, m, part, &mut ws.act);
            if let Some(cap) = cfg.final_logit_softcap {
                part.iter_mut().for_each(|v| *v = (*v / cap).tanh() * cap);
            }
            for i in 0..m {
                let row = &ws.part[i * vocab..(i + 1) * vocab];
                ws.greedy_picks.push(greedy_pick_row(row, skip(i)));
            }
        }
        ws.greedy_skips = skips;
        Ok(())
    }

    /// Several matrices applied to the same input: the activations are quantized once
    /// per distinct activation format.
    #[allow(clippy::too_many_arguments)]
    fn project_shared(
        &self,
        pool: &ThreadPool,
        outs: &mut [(&Weight, &mut Vec<f32>)],
        x: &[f32],
        t: usize,
        act: &mut Vec<u8>,
        act2: &mut Vec<u8>,
    ) {
        let first = quants::act_type(outs[0].0.ty).expect("checked at load");
        quantize_activations(pool, outs[0].0.ty, x, t, outs[0].0.cols, act);
        // All packed 32-element matrices: one pool dispatch for all of them.
        let legacy: Vec<&PackedMatrix> = outs
            .iter()
            .filter_map(|(w, _)| match self.packed(pool, w) {
                Some(Packed::Legacy(p)) => Some(p),
                _ => None,
            })
            .collect();
        if legacy.len() == outs.len() && legacy.len() > 1 {
            let mut dst: Vec<&mut [f32]> = outs
                .iter_mut()
                .map(|(w, out)| &mut out[..t * w.rows])
                .collect();
            matmul_packed_many(pool, &legacy, act, t, &mut dst);
            return;
        }
        for (w, out) in outs.iter_mut() {
            let out = &mut out[..t * w.rows];
            if quants::act_type(w.ty).expect("checked at load") == first {
                match self.packed(pool, w) {
                    Some(p) => p.matmul(pool, act, t, out),
                    None => matmul_quantized(pool, &self.mat(w), act, t, out),
                }
            } else {
                self.matmul_w(pool, w, x, t, out, act2);
            }
        }
    }

    /// `out = x · wᵀ` for `t` rows, through the packed copy of `w` when there is one.
    fn matmul_w(
        &self,
        pool: &ThreadPool,
        w: &Weight,
        x: &[f32],
        t: usize,
        out: &mut [f32],
        act: &mut Vec<u8>,
    ) {
        match self.packed(pool, w) {
            Some(p) => {
                quantize_activations(pool, w.ty, x, t, w.cols, act);
                p.matmul(pool, act, t, out);
            }
            None => matmul(pool, &self.mat(w), x, t, out, act),
        }
    }

    /// Writes the batch's new K and V rows of layer `li` into their cache blocks, rows
    /// over the pool (each token its own position; a batch that names one cache row
    /// twice is written in order on one thread).
    fn store_kv(
        &self,
        pool: &ThreadPool,
        li: usize,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &Workspace,
        t_total: usize,
    ) {
        let kvd = self.cfg.kv_dim();
        let g = kv.group_of_layer(li);
        let (format, words) = (kv.format(), kv.layout().row_words());
        let offs: Vec<usize> = ws.tok_seq[..t_total]
            .iter()
            .map(|&(si, pos)| kv.offset(seqs[si].block_tables[g], pos))
            .collect();
        let (kc, vc) = kv.layer_kv_mut(li);
        let mut sorted = offs.clone();
        sorted.sort_unstable();
        let distinct = sorted.windows(2).all(|w| w[0] != w[1]);
        let in_range = sorted
            .last()
            .is_none_or(|&o| o + words <= kc.len().min(vc.len()));
        let (k, v) = (&ws.k, &ws.v);
        if !(distinct && in_range) {
            for (t, &off) in offs.iter().enumerate() {
                store_row(
                    format,
                    &k[t * kvd..(t + 1) * kvd],
                    &mut kc[off..off + words],
                );
                store_row(
                    format,
                    &v[t * kvd..(t + 1) * kvd],
                    &mut vc[off..off + words],
                );
            }
            return;
        }
        let (kp, vp) = (Ptr(kc.as_mut_ptr()), Ptr(vc.as_mut_ptr()));
        each_row(pool, t_total, |t| {
            // SAFETY: every offset is in range and distinct (checked above): each call
            // writes its own `words`-long row of each buffer.
            let (kd, vd) = unsafe {
                (
                    std::slice::from_raw_parts_mut(kp.get().add(offs[t]), words),
                    std::slice::from_raw_parts_mut(vp.get().add(offs[t]), words),
                )
            };
            store_row(format, &k[t * kvd..(t + 1) * kvd], kd);
            store_row(format, &v[t * kvd..(t + 1) * kvd], vd);
        });
    }

    fn attention(
        &self,
        pool: &ThreadPool,
        li: usize,
        seqs: &[SeqInput],
        kv: &KvCache,
        ws: &mut Workspace,
        t_total: usize,
    ) {
        let cfg = &self.cfg;
        let (hd, nh, nkv) = (cfg.head_dim, cfg.n_heads, cfg.n_kv_heads);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let group = nh / nkv;
        let window = if cfg.local_layers[li] {
            cfg.sliding_window
        } else {
            None
        };
        let g = kv.group_of_layer(li);
        let (kc, vc) = kv.layer_kv(li);
        let format = kv.format();
        let scale = cfg.attn_scale;
        let bs = kv.block_size();
        let max_ctx = ws.tok_seq.iter().map(|&(_, p)| p + 1).max().unwrap_or(0);
        let n_threads = pool.n_threads();
        if ws.scores.len() < n_threads {
            ws.scores.resize(n_threads, Vec::new());
        }
        for s in ws.scores.iter_mut() {
            if s.len() < group * max_ctx {
                s.resize(group * max_ctx, 0.0);
            }
        }
        let scores_ptrs: Vec<Ptr> = ws.scores.iter_mut().map(|s| Ptr(s.as_mut_ptr())).collect();
        let attn = Ptr(ws.attn.as_mut_ptr());
        let q = &ws.q;
        let tok_seq = &ws.tok_seq;
        let next = AtomicUsize::new(0);
        // Tasks: (token, kv head) pairs.
        let n_tasks = t_total * nkv;
        pool.run(|tid, _| {
            let scores_base = scores_ptrs[tid];
            loop {
                let task = next.fetch_add(1, Ordering::Relaxed);
                if task >= n_tasks {
                    break;
                }
                let (t, kh) = (task / nkv, task % nkv);
                let (si, pos) = tok_seq[t];
                let table = seqs[si].block_tables[g];
                let lo = match window {
                    Some(w) => (pos + 1).saturating_sub(w),
                    None => 0,
                };
                let n = pos + 1 - lo;
                // SAFETY: each thread owns its scores buffer (sized group * max_ctx), and
                // each (token, kv head) task writes its own slice of `attn`.
                let scores =
                    unsafe { std::slice::from_raw_parts_mut(scores_base.get(), group * n) };
                let out = unsafe {
                    std::slice::from_raw_parts_mut(
                        attn.get().add(t * qd + kh * group * hd),
                        group * hd,
                    )
                };
                let qh = &q[t * qd + kh * group * hd..t * qd + (kh + 1) * group * hd];
                let paged = PagedKv {
                    k: kc,
                    v: vc,
                    table,
                    block_size: bs,
                    row_stride: format.words(kvd),
                    head_offset: kh * format.words(hd),
                    format,
                };
                attend(&paged, qh, group, hd, lo, pos + 1, scale, scores, out);
            }
        });
    }

    /// The token embeddings of the batch into `ws.x` (scaled where the model says).
    fn embed(&self, pool: &ThreadPool, seqs: &[SeqInput], ws: &mut Workspace, d: usize) {
        let emb = self.mat(&self.tok_embd);
        let emb_packed = self.packed(pool, &self.tok_embd);
        let mut t = 0;
        for s in seqs {
            for &tok in s.tokens {
                let row = &mut ws.x[t * d..(t + 1) * d];
                // A vocabulary-parallel shard holds rows vocab_offset.. only.
                let Some(local) = (tok as usize)
                    .checked_sub(self.cfg.vocab_offset)
                    .filter(|&l| l < self.tok_embd.rows)
                else {
                    row.fill(0.0);
                    t += 1;
                    continue;
                };
                match emb_packed {
                    Some(p) => p.dequantize_row(local, row),
                    None => quants::dequantize_row(emb.ty, emb.row(local), row)
                        .expect("shape checked at load"),
                }
                if let Some(sc) = self.cfg.embed_scale {
                    row.iter_mut().for_each(|v| *v *= sc);
                }
                t += 1;
            }
        }
    }

    fn validate(&self, seqs: &[SeqInput], kv: &KvCache) -> Result<(), ModelError> {
        let vocab = self.cfg.vocab_size;
        let bs = kv.block_size();
        let layout = kv.layout();
        for (i, s) in seqs.iter().enumerate() {
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(ModelError::BadToken { id, vocab });
            }
            if s.block_tables.len() != kv.n_groups() {
                return Err(ModelError::BadBatch(format!(
                    "sequence {i} has {} block tables, the cache has {} groups",
                    s.block_tables.len(),
                    kv.n_groups()
                )));
            }
            let end = s.start_pos + s.tokens.len();
            for (g, table) in s.block_tables.iter().enumerate() {
                let cap = table.len() * bs;
                if end > cap {
                    return Err(ModelError::KvFull { pos: end - 1, cap });
                }
                // Blocks that will be read: the window (or everything) up to `end`.
                let first = match layout.group_window[g] {
                    Some(w) => (s.start_pos + 1).saturating_sub(w),
                    None => 0,
                };
                for &b in &table[first / bs..end.div_ceil(bs)] {
                    if b == NO_BLOCK || b as usize >= kv.blocks_in_group(g) {
                        return Err(ModelError::BadBatch(format!(
                            "sequence {i}: block {b} in group {g} is not a valid block"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn gated_activation(pool: &ThreadPool, act: Activation, gate: &mut [f32], up: &[f32]) {
    let n = gate.len();
    let p = Ptr(gate.as_mut_ptr());
    pool.for_each_chunk(n, 4096, |s, e| {
        // SAFETY: chunks are disjoint.
        let g = unsafe { std::slice::from_raw_parts_mut(p.get().add(s), e - s) };
        match act {
            Activation::GeluTanh => ops::gelu_tanh_mul(g, &up[s..e]),
            Activation::Silu => ops::silu_mul(g, &up[s..e]),
        }
    });
}
