//! The forward pass in llama.cpp's arithmetic (`Numerics::Ggml`): every operation in
//! the order and rounding of ggml-cpu; nothing here may trade that for speed.
//!
//! With the replicas of `hangar_kernels::ggml`, greedy continuations equal
//! llama.cpp's token for token. Slower than the fast path.
//!
//! The graph follows llama.cpp's for Gemma 3 and the Llama family: embeddings
//! (times sqrt(d) for Gemma), per layer RMS norm → Q/K/V → Q/K norms → RoPE → Q
//! scale (Gemma) → f16 K/V → KQ over the cache padded to 256 cells → mask →
//! soft-max → KQV → output projection → post-norm (Gemma) → residual, then the FFN
//! likewise. As in llama.cpp, only the rows whose logits are wanted continue past
//! the last layer's attention. Scratch lives in the same [`Workspace`] as the fast
//! path's, so a step allocates nothing once the workspace has grown.

use crate::config::{Activation, Arch};
use crate::forward::{resize, LogitsWanted, SeqInput, Tap, Workspace};
use crate::kv::{KvCache, NO_BLOCK};
use crate::weights::{Model, Weight};
use crate::{ModelError, Observer};
use hangar_kernels::ggml::{self, ops as xops};
use hangar_kernels::ops::RopeStyle;
use hangar_kernels::{quants, ThreadPool};
use std::sync::atomic::{AtomicUsize, Ordering};

struct RowsPtr(*mut AttnRows);
// SAFETY: used only to hand each pool thread its own element.
unsafe impl Send for RowsPtr {}
unsafe impl Sync for RowsPtr {}
impl RowsPtr {
    fn get(&self) -> *mut AttnRows {
        self.0
    }
}

struct OutPtr(*mut f32);
// SAFETY: used only to hand disjoint output slices to pool threads.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}
impl OutPtr {
    fn get(&self) -> *mut f32 {
        self.0
    }
}

/// Scratch only the ggml forward uses, kept in the [`Workspace`] between calls.
#[derive(Default)]
pub(crate) struct GgmlScratch {
    /// Batch rows whose logits are wanted (llama.cpp's output ids).
    rows: Vec<usize>,
    /// The gated FFN activation (f32: ggml quantizes it inside the matmul).
    act: Vec<f32>,
    /// ggml's RoPE cache for one position.
    rope: Vec<f32>,
    /// One dequantized weight row (the plain product of types without a replica).
    wrow: Vec<f32>,
    attention: AttnScratch,
}

/// The attention's scratch.
#[derive(Default)]
struct AttnScratch {
    /// One KV head's keys, cell by cell (`used × head_dim`).
    kbuf: Vec<f32>,
    /// One KV head's values transposed (`head_dim × cells`, cells padded to 64).
    vt: Vec<f32>,
    /// Per pool thread: attention rows of one (head, token) task.
    threads: Vec<AttnRows>,
}

/// One pool thread's attention scratch.
#[derive(Default, Clone)]
struct AttnRows {
    /// The query head rounded to f16.
    qh: Vec<f32>,
    /// KQ scores, then soft-max probabilities.
    row: Vec<f32>,
    /// The probabilities rounded to f16, zero-padded for the KQV dots.
    pv: Vec<f32>,
}

/// Cells ggml's attention spans: the used cells padded to 256 (results do not depend
/// on the padding beyond that, since empty cells add exact zeros).
fn padded_cells(used: usize) -> usize {
    used.div_ceil(256).max(1) * 256
}

impl Model {
    /// `out = W · x` for `n` rows in ggml's arithmetic; `wrow` is scratch for the
    /// types without a replica.
    fn mm(
        &self,
        pool: &ThreadPool,
        w: &Weight,
        x: &[f32],
        n: usize,
        out: &mut [f32],
        wrow: &mut Vec<f32>,
    ) {
        let m = self.mat(w);
        let out = &mut out[..n * w.rows];
        if !ggml::mul_mat(pool, m.ty, m.data, w.rows, w.cols, &x[..n * w.cols], n, out) {
            // A type ggml-exact arithmetic is not written for: plain f32 products.
            resize(wrow, w.cols);
            let row = &mut wrow[..];
            for i in 0..w.rows {
                quants::dequantize_row(m.ty, m.row(i), row).expect("shape checked at load");
                for j in 0..n {
                    let xr = &x[j * w.cols..(j + 1) * w.cols];
                    out[j * w.rows + i] = row.iter().zip(xr).map(|(a, b)| a * b).sum();
                }
            }
        }
    }

    /// One sequence's attention in ggml's arithmetic: KQ over the cache (f16 values;
    /// llama.cpp pads the cells to 256, which changes nothing here but the kernel
    /// choice), mask, soft-max, probabilities rounded to f16, KQV. Only the used cells
    /// are computed: the others hold zeros in llama.cpp and add exact zeros.
    #[allow(clippy::too_many_arguments)]
    fn attend_ggml(
        &self,
        pool: &ThreadPool,
        s: &SeqInput,
        kv: &KvCache,
        kc: &[u16],
        vc: &[u16],
        g: usize,
        window: Option<usize>,
        q: &[f32],
        out: &mut [f32],
        scratch: &mut AttnScratch,
    ) {
        let cfg = &self.cfg;
        let (hd, qd, nkv) = (cfg.head_dim, cfg.q_dim(), cfg.n_kv_heads);
        let group = cfg.n_heads / nkv;
        let gemma = cfg.arch == Arch::Gemma3;
        let ts = s.tokens.len();
        let used = s.start_pos + ts;
        let cells = padded_cells(used);
        // Soft-max rows may stop at a multiple of 16 (whole masked chunks add 0), and
        // the KQV dots at a multiple of 64 (zero probabilities add exact zeros).
        let (srow, vlen) = (used.div_ceil(16) * 16, used.div_ceil(64) * 64);
        let kq_tiny = ggml::f16::uses_tinyblas(cells, hd, ts);
        let kqv_tiny = ggml::f16::uses_tinyblas(hd, cells, ts);
        let table = s.block_tables[g];
        let present = |c: usize| {
            table
                .get(c / kv.block_size())
                .is_some_and(|&b| b != NO_BLOCK)
        };
        // Zeroed as fresh buffers would be: value cells past the last used one are
        // read (times zero probabilities) by the padded KQV dots.
        resize(&mut scratch.kbuf, used * hd);
        resize(&mut scratch.vt, hd * vlen);
        scratch.kbuf.fill(0.0);
        scratch.vt.fill(0.0);
        let n_threads = pool.n_threads();
        if scratch.threads.len() < n_threads {
            scratch.threads.resize(n_threads, AttnRows::default());
        }
        for t in &mut scratch.threads[..n_threads] {
            resize(&mut t.qh, hd);
            resize(&mut t.row, srow);
            resize(&mut t.pv, vlen);
        }
        let (kbuf, vt) = (&mut scratch.kbuf, &mut scratch.vt);
        for kh in 0..nkv {
            for c in 0..used {
                if !present(c) {
                    continue;
                }
                let off = kv.offset(table, c) + kh * hd;
                for j in 0..hd {
                    kbuf[c * hd + j] = ggml::f16::f16_to_f32(kc[off + j]);
                    vt[j * vlen + c] = ggml::f16::f16_to_f32(vc[off + j]);
                }
            }
            // Tasks (query head, token), spread over the pool; each writes its own
            // slice of `out`. Per token, soft-max rows stop at a multiple of 16 past
            // its last visible cell and KQV dots at a multiple of 64: the cells after
            // hold exact zeros in llama.cpp's longer rows, which change no lane.
            let n_tasks = group * ts;
            let next = AtomicUsize::new(0);
            let out_ptr = OutPtr(out.as_mut_ptr());
            let rows_ptr = RowsPtr(scratch.threads.as_mut_ptr());
            let (kbuf, vt) = (&*kbuf, &*vt);
            pool.run(|tid, _| {
                // SAFETY: one pool thread per `tid` (< n_threads, sized above), so
                // each thread has its scratch to itself for this run.
                let AttnRows { qh, row, pv } = unsafe { &mut *rows_ptr.get().add(tid) };
                loop {
                    let task = next.fetch_add(1, Ordering::Relaxed);
                    if task >= n_tasks {
                        break;
                    }
                    let (hq, t) = (kh * group + task / ts, task % ts);
                    let p = s.start_pos + t;
                    for (d, &v) in qh
                        .iter_mut()
                        .zip(&q[t * qd + hq * hd..t * qd + (hq + 1) * hd])
                    {
                        *d = f16r(v);
                    }
                    let len = (p + 1).div_ceil(16) * 16;
                    let row = &mut row[..len];
                    // Visible cells form one range; the rest are masked.
                    let lo = window.map_or(0, |w| (p + 1).saturating_sub(w));
                    let hi = (p + 1).min(used);
                    row.fill(f32::NEG_INFINITY);
                    let krow = |c: usize| &kbuf[c * hd..(c + 1) * hd];
                    let mut c = lo;
                    while c + 4 <= hi {
                        let v = ggml::f16::dot4_f16_values(
                            [krow(c), krow(c + 1), krow(c + 2), krow(c + 3)],
                            qh,
                            kq_tiny,
                        );
                        row[c..c + 4].copy_from_slice(&v);
                        c += 4;
                    }
                    while c < hi {
                        row[c] = ggml::f16::dot_f16_values(krow(c), qh, kq_tiny);
                        c += 1;
                    }
                    if !gemma {
                        row[lo..hi].iter_mut().for_each(|v| *v *= cfg.attn_scale);
                    }
                    xops::soft_max(row);
                    let vl = (p + 1).div_ceil(64) * 64;
                    pv[..vl].fill(0.0);
                    for (d, &v) in pv.iter_mut().zip(row.iter()) {
                        *d = f16r(v);
                    }
                    // SAFETY: every task owns the disjoint slice (token t, head hq).
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out_ptr.get().add(t * qd + hq * hd), hd)
                    };
                    let vrow = |j: usize| &vt[j * vlen..j * vlen + vl];
                    for j in (0..hd).step_by(4) {
                        if j + 4 <= hd {
                            let v = ggml::f16::dot4_f16_values(
                                [vrow(j), vrow(j + 1), vrow(j + 2), vrow(j + 3)],
                                &pv[..vl],
                                kqv_tiny,
                            );
                            o[j..j + 4].copy_from_slice(&v);
                        } else {
                            for (jj, od) in o.iter_mut().enumerate().skip(j) {
                                *od = ggml::f16::dot_f16_values(vrow(jj), &pv[..vl], kqv_tiny);
                            }
                        }
                    }
                }
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_ggml(
        &self,
        pool: &ThreadPool,
        seqs: &[SeqInput],
        kv: &mut KvCache,
        ws: &mut Workspace,
        logits: &mut Vec<f32>,
        mut observer: Option<Observer>,
    ) -> Result<usize, ModelError> {
        let cfg = &self.cfg;
        let (d, qd, kvd, ff, hd) = (
            cfg.d_model,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.ffn_dim,
            cfg.head_dim,
        );
        let eps = cfg.rms_eps;
        let t_total: usize = seqs.iter().map(|s| s.tokens.len()).sum();
        let gemma = cfg.arch == Arch::Gemma3;

        // Rows whose logits are wanted (llama.cpp's output ids).
        let Workspace {
            x,
            h,
            q,
            k,
            v,
            attn,
            o,
            gate,
            up,
            positions,
            ggml:
                GgmlScratch {
                    rows,
                    act,
                    rope,
                    wrow,
                    attention,
                },
            ..
        } = ws;
        for (buf, len) in [
            (&mut *x, t_total * d),
            (&mut *h, t_total * d),
            (&mut *q, t_total * qd),
            (&mut *k, t_total * kvd),
            (&mut *v, t_total * kvd),
            (&mut *attn, t_total * qd),
            (&mut *o, t_total * d),
            (&mut *gate, t_total * ff),
            (&mut *up, t_total * ff),
            (&mut *act, t_total * ff),
        ] {
            resize(buf, len);
        }
        rows.clear();
        positions.clear();
        {
            let mut t = 0;
            for s in seqs {
                match s.logits {
                    LogitsWanted::None => {}
                    LogitsWanted::Last => rows.push(t + s.tokens.len() - 1),
                    LogitsWanted::All => rows.extend(t..t + s.tokens.len()),
                    LogitsWanted::Greedy => {
                        return Err(ModelError::BadBatch(
                            "greedy picks need the fast numerics (--numerics fast)".into(),
                        ))
                    }
                    LogitsWanted::Head => {
                        return Err(ModelError::BadBatch(
                            "the sampling head runs on a GPU backend: ask for the last logits"
                                .into(),
                        ))
                    }
                }
                positions.extend(s.start_pos..s.start_pos + s.tokens.len());
                t += s.tokens.len();
            }
        }

        let emb = self.mat(&self.tok_embd);
        for (t, &tok) in seqs.iter().flat_map(|s| s.tokens.iter()).enumerate() {
            let row = &mut x[t * d..(t + 1) * d];
            quants::dequantize_row(emb.ty, emb.row(tok as usize), row)
                .expect("shape checked at load");
            if let Some(sc) = cfg.embed_scale {
                row.iter_mut().for_each(|v| *v *= sc);
            }
        }

        let mut n = t_total;
        let n_layers = self.layers.len();

        for (li, layer) in self.layers.iter().enumerate() {
            for t in 0..n {
                xops::rms_norm_mul(
                    &x[t * d..(t + 1) * d],
                    Some(&layer.attn_norm),
                    eps,
                    &mut h[t * d..(t + 1) * d],
                );
            }
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::AttnIn, &h[..n * d], d);
            }
            self.mm(pool, &layer.wq, h, n, q, wrow);
            self.mm(pool, &layer.wk, h, n, k, wrow);
            self.mm(pool, &layer.wv, h, n, v, wrow);
            let (base, local) = if cfg.local_layers[li] {
                (cfg.rope_base_local, true)
            } else {
                (cfg.rope_base, false)
            };
            let _ = local;
            let normal = cfg.rope_style == RopeStyle::Norm;
            for t in 0..n {
                if let Some(b) = &layer.bq {
                    add(&mut q[t * qd..(t + 1) * qd], b);
                }
                if let Some(b) = &layer.bk {
                    add(&mut k[t * kvd..(t + 1) * kvd], b);
                }
                if let Some(b) = &layer.bv {
                    add(&mut v[t * kvd..(t + 1) * kvd], b);
                }
                xops::rope_cache(
                    positions[t] as i64,
                    cfg.rope_dims,
                    base,
                    1.0,
                    self.rope_freqs.as_deref(),
                    rope,
                );
                for head in q[t * qd..(t + 1) * qd].chunks_exact_mut(hd) {
                    if let Some(w) = &layer.q_norm {
                        xops::rms_norm_mul_inplace(head, Some(w), eps);
                    }
                    xops::rope_apply(head, cfg.rope_dims, rope, normal);
                    if gemma {
                        head.iter_mut().for_each(|v| *v *= cfg.attn_scale);
                    }
                }
                for head in k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd) {
                    if let Some(w) = &layer.k_norm {
                        xops::rms_norm_mul_inplace(head, Some(w), eps);
                    }
                    xops::rope_apply(head, cfg.rope_dims, rope, normal);
                }
            }
            // The f16 cache.
            let g = kv.group_of_layer(li);
            {
                let mut t = 0;
                for s in seqs {
                    let table = s.block_tables[g];
                    for i in 0..s.tokens.len() {
                        let off = kv.offset(table, s.start_pos + i);
                        let (kc, vc) = kv.layer_kv_mut(li);
                        for j in 0..kvd {
                            kc[off + j] = ggml::f16::f32_to_f16(k[t * kvd + j]);
                            vc[off + j] = ggml::f16::f32_to_f16(v[t * kvd + j]);
                        }
                        t += 1;
                    }
                }
            }
            // Attention, one sequence at a time (llama.cpp's single-sequence layout:
            // cache cell = position).
            let window = if cfg.local_layers[li] {
                cfg.sliding_window
            } else {
                None
            };
            let (kc, vc) = kv.layer_kv(li);
            let mut t0 = 0;
            for s in seqs {
                self.attend_ggml(
                    pool,
                    s,
                    kv,
                    kc,
                    vc,
                    g,
                    window,
                    &q[t0 * qd..(t0 + s.tokens.len()) * qd],
                    &mut attn[t0 * qd..(t0 + s.tokens.len()) * qd],
                    attention,
                );
                t0 += s.tokens.len();
            }
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::AttnOutIn, &attn[..n * qd], qd);
            }
            self.mm(pool, &layer.wo, attn, n, o, wrow);
            if li + 1 == n_layers && rows.len() < n {
                // llama.cpp keeps only the output rows from here on.
                for (i, &r) in rows.iter().enumerate() {
                    o.copy_within(r * d..(r + 1) * d, i * d);
                    x.copy_within(r * d..(r + 1) * d, i * d);
                }
                n = rows.len();
            }
            for t in 0..n {
                let ot = &mut o[t * d..(t + 1) * d];
                if let Some(w) = &layer.post_attn_norm {
                    xops::rms_norm_mul_inplace(ot, Some(w), eps);
                }
                add(&mut x[t * d..(t + 1) * d], ot);
            }
            for t in 0..n {
                xops::rms_norm_mul(
                    &x[t * d..(t + 1) * d],
                    Some(&layer.ffn_norm),
                    eps,
                    &mut h[t * d..(t + 1) * d],
                );
            }
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::FfnIn, &h[..n * d], d);
            }
            self.mm(pool, &layer.gate, h, n, gate, wrow);
            self.mm(pool, &layer.up, h, n, up, wrow);
            match cfg.activation {
                Activation::GeluTanh => xops::geglu(&gate[..n * ff], &up[..n * ff], act),
                Activation::Silu => {
                    for i in 0..n * ff {
                        let g = gate[i];
                        act[i] = g / (1.0 + (-g).exp()) * up[i];
                    }
                }
            }
            if let Some(obs) = observer.as_mut() {
                obs(li, Tap::FfnDownIn, &act[..n * ff], ff);
            }
            self.mm(pool, &layer.down, act, n, o, wrow);
            for t in 0..n {
                let ot = &mut o[t * d..(t + 1) * d];
                if let Some(w) = &layer.post_ffn_norm {
                    xops::rms_norm_mul_inplace(ot, Some(w), eps);
                }
                add(&mut x[t * d..(t + 1) * d], ot);
            }
        }
        if rows.len() < n {
            for (i, &r) in rows.iter().enumerate() {
                x.copy_within(r * d..(r + 1) * d, i * d);
            }
        }
        let m = rows.len();
        for t in 0..m {
            xops::rms_norm_mul(
                &x[t * d..(t + 1) * d],
                Some(&self.output_norm),
                eps,
                &mut h[t * d..(t + 1) * d],
            );
        }
        if let Some(obs) = observer.as_mut() {
            if m > 0 {
                obs(n_layers, Tap::OutputIn, &h[..m * d], d);
            }
        }
        logits.resize(m * cfg.vocab_size, 0.0);
        if m > 0 {
            self.mm(pool, &self.output, h, m, logits, wrow);
            if let Some(cap) = cfg.final_logit_softcap {
                logits
                    .iter_mut()
                    .for_each(|v| *v = (*v * (1.0 / cap)).tanh() * cap);
            }
        }
        Ok(m)
    }
}

fn f16r(v: f32) -> f32 {
    ggml::f16::f16_to_f32(ggml::f16::f32_to_f16(v))
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}
