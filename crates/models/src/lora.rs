//! LoRA adapters in memory: per layer and projection, the low-rank pair (A, B) and
//! the scale, and the per-row delta the forward pass adds (y += scale · B (A x)).
//!
//! Owns no file format (`hangar-lora` reads and writes GGUF and PEFT adapters) and no
//! merging: an adapter here is applied beside the base weights, which stay untouched,
//! so rows of one batch can use different adapters or none.

use crate::config::{Arch, ModelConfig};
use crate::forward::Ptr;
use hangar_kernels::ops::{axpy_rows, dot_rows, Factor, Half};
use hangar_kernels::ThreadPool;
use std::sync::atomic::{AtomicU64, Ordering};

/// The projections an adapter can change, in a layer's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The GGUF tensor name inside a block (`attn_q` for `blk.N.attn_q.weight`).
    pub fn gguf_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "attn_q",
            LoraTarget::K => "attn_k",
            LoraTarget::V => "attn_v",
            LoraTarget::O => "attn_output",
            LoraTarget::Gate => "ffn_gate",
            LoraTarget::Up => "ffn_up",
            LoraTarget::Down => "ffn_down",
        }
    }

    /// The Hugging Face module name (`q_proj`, ..., `down_proj`).
    pub fn hf_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The short name used on the command line (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn short_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q",
            LoraTarget::K => "k",
            LoraTarget::V => "v",
            LoraTarget::O => "o",
            LoraTarget::Gate => "gate",
            LoraTarget::Up => "up",
            LoraTarget::Down => "down",
        }
    }

    /// Any of the three names.
    pub fn parse(s: &str) -> Option<Self> {
        LoraTarget::ALL
            .into_iter()
            .find(|t| s == t.short_name() || s == t.gguf_name() || s == t.hf_name())
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.gguf_name())
    }
}

/// Why an adapter does not fit a model.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error("layer {layer} {target}: the adapter's matrix is {got_rows}x{got_cols} (out x in), the model's is {want_rows}x{want_cols}; the adapter was made for another model")]
    Shape {
        layer: usize,
        target: LoraTarget,
        got_rows: usize,
        got_cols: usize,
        want_rows: usize,
        want_cols: usize,
    },
    #[error("the adapter has layer {layer}, the model only {n_layers} layers; the adapter was made for another model")]
    Layer { layer: usize, n_layers: usize },
    #[error("{0}")]
    Invalid(String),
}

/// The dimensions an adapter must match: what `LoraShape::of` reads from a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoraShape {
    pub arch: Arch,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
}

impl LoraShape {
    pub fn of(cfg: &ModelConfig) -> Self {
        LoraShape {
            arch: cfg.arch,
            n_layers: cfg.n_layers,
            d_model: cfg.d_model,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            ffn_dim: cfg.ffn_dim,
        }
    }

    /// `(rows, cols)` = (out, in) of a target's weight.
    pub fn dims(&self, t: LoraTarget) -> (usize, usize) {
        let (d, q, kv, ff) = (
            self.d_model,
            self.n_heads * self.head_dim,
            self.n_kv_heads * self.head_dim,
            self.ffn_dim,
        );
        match t {
            LoraTarget::Q => (q, d),
            LoraTarget::K | LoraTarget::V => (kv, d),
            LoraTarget::O => (d, q),
            LoraTarget::Gate | LoraTarget::Up => (ff, d),
            LoraTarget::Down => (d, ff),
        }
    }
}

/// A pair's values as stored: in half precision (f16, else bf16) when every value is
/// exactly one (adapters are usually trained and saved in half precision), so a step
/// streams half the bytes with the same results; in f32 otherwise.
#[derive(Clone)]
enum Values {
    F32(Vec<f32>),
    Half(Half, Vec<u16>),
}

impl Values {
    fn new(v: Vec<f32>) -> Self {
        for kind in [Half::F16, Half::Bf16] {
            let bits: Option<Vec<u16>> = v.iter().map(|&x| kind.exact(x)).collect();
            if let Some(bits) = bits {
                return Values::Half(kind, bits);
            }
        }
        Values::F32(v)
    }
    fn to_vec(&self) -> Vec<f32> {
        match self {
            Values::F32(v) => v.clone(),
            Values::Half(k, h) => h.iter().map(|&x| k.to_f32(x)).collect(),
        }
    }
    #[inline]
    fn get(&self, i: usize) -> f32 {
        match self {
            Values::F32(v) => v[i],
            Values::Half(k, h) => k.to_f32(h[i]),
        }
    }
    /// `Σ values[off + i] · x[i]`.
    #[inline]
    fn dot(&self, off: usize, x: &[f32]) -> f32 {
        let mut out = [0f32];
        dot_rows(self.factor(), off, x.len(), &[x], &mut out);
        out[0]
    }
    /// `y[i] += alpha · values[off + i]`.
    #[inline]
    fn axpy(&self, alpha: f32, off: usize, y: &mut [f32]) {
        axpy_rows(self.factor(), 0, off, &[alpha], y);
    }
    fn bytes(&self) -> usize {
        match self {
            Values::F32(v) => v.len() * 4,
            Values::Half(_, h) => h.len() * 2,
        }
    }
    fn factor(&self) -> Factor<'_> {
        match self {
            Values::F32(v) => Factor::F32(v),
            Values::Half(k, h) => Factor::Half(*k, h),
        }
    }
}

/// One low-rank pair and its scale: ΔW = scale · B·A with A `rank × cols` and B
/// `rows × rank` (row-major, as PyTorch holds them). B is kept transposed, so the
/// delta of one row is `rank` contiguous AXPYs.
#[derive(Clone)]
pub struct LoraMatrix {
    rank: usize,
    rows: usize,
    cols: usize,
    /// `alpha / rank` for adapters trained that way.
    scale: f32,
    a: Values,
    /// Bᵀ: `rank × rows`.
    bt: Values,
}

impl std::fmt::Debug for LoraMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoraMatrix({}x{}, rank {}, scale {})",
            self.rows, self.cols, self.rank, self.scale
        )
    }
}

impl LoraMatrix {
    /// From A (`rank × cols`) and B (`rows × rank`), both row-major, and the scale.
    pub fn new(
        rank: usize,
        rows: usize,
        cols: usize,
        a: Vec<f32>,
        b: &[f32],
        scale: f32,
    ) -> Result<Self, LoraError> {
        if rank == 0 || rows == 0 || cols == 0 {
            return Err(LoraError::Invalid(format!(
                "a LoRA pair needs a positive rank and size (rank {rank}, {rows}x{cols})"
            )));
        }
        if !scale.is_finite() {
            return Err(LoraError::Invalid(format!(
                "the LoRA scale is {scale}; it must be a finite number"
            )));
        }
        if Some(a.len()) != rank.checked_mul(cols) || Some(b.len()) != rows.checked_mul(rank) {
            return Err(LoraError::Invalid(format!(
                "a rank-{rank} pair for a {rows}x{cols} weight needs A of {} and B of {} values, got {} and {}",
                rank * cols,
                rows * rank,
                a.len(),
                b.len()
            )));
        }
        if let Some(bad) = a.iter().chain(b).find(|v| !v.is_finite()) {
            return Err(LoraError::Invalid(format!(
                "the LoRA pair holds a non-finite value ({bad})"
            )));
        }
        let mut bt = vec![0f32; rank * rows];
        for i in 0..rows {
            for j in 0..rank {
                bt[j * rows + i] = b[i * rank + j];
            }
        }
        Ok(LoraMatrix {
            rank,
            rows,
            cols,
            scale,
            a: Values::new(a),
            bt: Values::new(bt),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn scale(&self) -> f32 {
        self.scale
    }
    /// Output size of the weight it adapts.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input size of the weight it adapts.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// A, `rank × cols`.
    pub fn a(&self) -> Vec<f32> {
        self.a.to_vec()
    }
    /// B, `rows × rank` (row-major).
    pub fn b(&self) -> Vec<f32> {
        let mut b = vec![0f32; self.rows * self.rank];
        for j in 0..self.rank {
            for i in 0..self.rows {
                b[i * self.rank + j] = self.bt.get(j * self.rows + i);
            }
        }
        b
    }

    /// `scale · B·A` added to `w` (`rows × cols`, row-major): the merged weight.
    pub fn add_delta_to(&self, w: &mut [f32]) {
        for i in 0..self.rows {
            let row = &mut w[i * self.cols..(i + 1) * self.cols];
            for j in 0..self.rank {
                let bij = self.bt.get(j * self.rows + i) * self.scale;
                self.a.axpy(bij, j * self.cols, row);
            }
        }
    }

    /// `out += scale · B (A x)` for one row; `xa` is scratch of `rank` values. The
    /// reference the batched kernel ([`LoraRows::apply`]) is tested against.
    #[inline]
    pub fn apply_row(&self, x: &[f32], out: &mut [f32], xa: &mut [f32]) {
        for (j, v) in xa.iter_mut().enumerate().take(self.rank) {
            *v = self.scale * self.a.dot(j * self.cols, x);
        }
        for (j, &v) in xa.iter().enumerate().take(self.rank) {
            self.bt.axpy(v, j * self.rows, out);
        }
    }
}

/// Multiply-adds below which a LoRA product runs on the calling thread: a pool
/// dispatch costs more than a decode step's deltas (measured: at 8 streams, splitting
/// each product cost 30% of the step, running them inline 5%); prefill chunks split.
/// Unit tests split everything, so the chunked path is the one they check.
#[cfg(not(test))]
fn parallel_min() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("HANGAR_LORA_PARALLEL_MIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1 << 22)
    })
}
#[cfg(test)]
fn parallel_min() -> usize {
    1
}

/// A batch's token rows grouped by adapter (Punica / S-LoRA style): each group's pair
/// is streamed from memory once per step for all of its rows, so the cost of an
/// adapter does not grow with the number of sequences using it. Rows of sequences
/// without an adapter are in no group and never touched. Lives in the forward pass's
/// workspace; after the first steps it allocates nothing.
#[derive(Default)]
pub(crate) struct LoraRows {
    /// Token rows, group after group.
    rows: Vec<usize>,
    /// Per group: (a sequence using the adapter, first and end index into `rows`).
    groups: Vec<(usize, usize, usize)>,
    /// `A x` of one group's rows (`rows × rank`).
    xa: Vec<f32>,
}

impl LoraRows {
    /// Groups the rows of a batch whose sequence `i` has `len(i)` tokens and runs
    /// under `adapters[i]`.
    pub(crate) fn group(
        &mut self,
        adapters: &[Option<&LoraAdapter>],
        len: impl Fn(usize) -> usize,
    ) {
        self.rows.clear();
        self.groups.clear();
        for (si, a) in adapters.iter().enumerate() {
            let Some(a) = a else { continue };
            if self
                .groups
                .iter()
                .any(|&(rep, _, _)| adapters[rep].is_some_and(|b| b.id() == a.id()))
            {
                continue;
            }
            let start = self.rows.len();
            let mut t = 0;
            for (sj, b) in adapters.iter().enumerate() {
                if b.is_some_and(|b| b.id() == a.id()) {
                    self.rows.extend(t..t + len(sj));
                }
                t += len(sj);
            }
            self.groups.push((si, start, self.rows.len()));
        }
    }

    /// `out[t] += scale · B (A x[t])` of layer `li`'s `target` pair for every grouped
    /// row `t` (`x`: one input row per token, `out`: one output row per token). Row
    /// results do not depend on the batch: a row gets the same bits alone or grouped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn apply(
        &mut self,
        pool: &ThreadPool,
        adapters: &[Option<&LoraAdapter>],
        li: usize,
        target: LoraTarget,
        x: &[f32],
        out: &mut [f32],
    ) {
        let threads = pool.n_threads();
        for &(rep, g0, g1) in &self.groups {
            let Some(m) = adapters[rep].and_then(|a| a.get(li, target)) else {
                continue;
            };
            let toks = &self.rows[g0..g1];
            let (r, n_out, n_in, scale) = (m.rank, m.rows, m.cols, m.scale);
            let n = toks.len();
            if self.xa.len() < n * r {
                self.xa.resize(n * r, 0.0);
            }
            // Down: xa[k][j] = scale · A_j · x[toks[k]], by blocks of rows: a block's
            // inputs stay in cache while every row of A passes over them.
            let xa_p = Ptr(self.xa.as_mut_ptr());
            // Four token rows per pass over A_j (each dot as `apply_row`'s).
            let down = |k0: usize, k1: usize, j0: usize, j1: usize| {
                for j in j0..j1 {
                    for k in (k0..k1).step_by(4) {
                        let rows = (k1 - k).min(4);
                        let xs: [&[f32]; 4] = std::array::from_fn(|i| {
                            let t = toks[k + i.min(rows - 1)];
                            &x[t * n_in..(t + 1) * n_in]
                        });
                        let mut d = [0f32; 4];
                        dot_rows(m.a.factor(), j * n_in, n_in, &xs[..rows], &mut d);
                        for (i, &v) in d.iter().enumerate().take(rows) {
                            // SAFETY: element (k + i, j) of xa belongs to this chunk
                            // alone; in bounds since xa holds n × r values.
                            unsafe { *xa_p.get().add((k + i) * r + j) = scale * v };
                        }
                    }
                }
            };
            if n * r * n_in < parallel_min() {
                down(0, n, 0, r);
            } else if n >= 16 * threads {
                // Prefill: blocks of 16 token rows stay in cache while A passes.
                pool.for_each_chunk(n, 16, |k0, k1| down(k0, k1, 0, r));
            } else {
                // A few decoding rows: split the rank instead.
                pool.for_each_chunk(r, r.div_ceil(threads), |j0, j1| down(0, n, j0, j1));
            }
            // Up: out[toks[k]] += Σ_j xa[k][j] · Bᵀ_j, by column chunks; Bᵀ read once.
            // Chunks start at multiples of 16, so each element takes the same SIMD path
            // whatever the chunking (batch-invariant bits).
            let xa = &self.xa[..n * r];
            let out_p = Ptr(out.as_mut_ptr());
            let c_chunk = if n * r * n_out < parallel_min() {
                n_out
            } else {
                n_out.div_ceil(2 * threads).next_multiple_of(16)
            };
            pool.for_each_chunk(n_out, c_chunk, |c0, c1| {
                for (k, &t) in toks.iter().enumerate() {
                    // SAFETY: columns c0..c1 of row t belong to this chunk alone.
                    let o = unsafe {
                        std::slice::from_raw_parts_mut(out_p.get().add(t * n_out + c0), c1 - c0)
                    };
                    axpy_rows(m.bt.factor(), n_out, c0, &xa[k * r..(k + 1) * r], o);
                }
            });
        }
    }
}

/// Each loaded adapter's number: the prefix cache keys KV blocks by it, so blocks
/// computed under one adapter are never reused under another (or a reloaded copy).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A whole adapter: scaled pairs for some (layer, projection) slots.
pub struct LoraAdapter {
    id: u64,
    shape: LoraShape,
    /// Per layer, per target (indexed by `LoraTarget as usize`).
    layers: Vec<[Option<LoraMatrix>; 7]>,
    /// Where it came from and how it was trained (alpha, rank), for listings.
    pub description: String,
}

impl std::fmt::Debug for LoraAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoraAdapter(#{}, {} matrices, rank {})",
            self.id,
            self.n_matrices(),
            self.max_rank(),
        )
    }
}

impl LoraAdapter {
    /// An empty adapter for models of `shape`.
    pub fn new(shape: LoraShape) -> Self {
        let layers = (0..shape.n_layers).map(|_| Default::default()).collect();
        LoraAdapter {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape,
            layers,
            description: String::new(),
        }
    }

    /// Adds the pair of one slot, checking its size against the model's weight.
    pub fn insert(
        &mut self,
        layer: usize,
        target: LoraTarget,
        m: LoraMatrix,
    ) -> Result<(), LoraError> {
        if layer >= self.shape.n_layers {
            return Err(LoraError::Layer {
                layer,
                n_layers: self.shape.n_layers,
            });
        }
        let (rows, cols) = self.shape.dims(target);
        if (m.rows, m.cols) != (rows, cols) {
            return Err(LoraError::Shape {
                layer,
                target,
                got_rows: m.rows,
                got_cols: m.cols,
                want_rows: rows,
                want_cols: cols,
            });
        }
        self.layers[layer][target.index()] = Some(m);
        // Different weights, different cache identity.
        self.id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Unique per adapter in this process (changes when the adapter changes).
    pub fn id(&self) -> u64 {
        self.id
    }
    pub fn shape(&self) -> &LoraShape {
        &self.shape
    }
    pub fn get(&self, layer: usize, target: LoraTarget) -> Option<&LoraMatrix> {
        self.layers.get(layer)?[target.index()].as_ref()
    }
    /// Every pair, with its slot.
    pub fn matrices(&self) -> impl Iterator<Item = (usize, LoraTarget, &LoraMatrix)> {
        self.layers.iter().enumerate().flat_map(|(l, slots)| {
            LoraTarget::ALL
                .into_iter()
                .filter_map(move |t| slots[t.index()].as_ref().map(|m| (l, t, m)))
        })
    }
    pub fn n_matrices(&self) -> usize {
        self.matrices().count()
    }
    /// The largest rank of its pairs (0 when empty).
    pub fn max_rank(&self) -> usize {
        self.matrices().map(|(_, _, m)| m.rank).max().unwrap_or(0)
    }
    /// The projections it changes somewhere.
    pub fn targets(&self) -> Vec<LoraTarget> {
        let mut t: Vec<LoraTarget> = self.matrices().map(|(_, t, _)| t).collect();
        t.sort();
        t.dedup();
        t
    }
    /// Bytes its pairs hold.
    pub fn bytes(&self) -> usize {
        self.matrices()
            .map(|(_, _, m)| m.a.bytes() + m.bt.bytes())
            .sum()
    }

    /// Whether it fits a model of `shape` (its pairs were checked against its own
    /// shape when inserted).
    pub fn check(&self, shape: &LoraShape) -> Result<(), LoraError> {
        let own = &self.shape;
        if own.n_layers != shape.n_layers {
            return Err(LoraError::Invalid(format!(
                "the adapter was built for a model of {} layers, this one has {}",
                own.n_layers, shape.n_layers
            )));
        }
        for t in LoraTarget::ALL {
            if own.dims(t) != shape.dims(t) {
                let ((gr, gc), (wr, wc)) = (own.dims(t), shape.dims(t));
                return Err(LoraError::Shape {
                    layer: 0,
                    target: t,
                    got_rows: gr,
                    got_cols: gc,
                    want_rows: wr,
                    want_cols: wc,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_kernels::ops::{axpy_f32, dot_f32};

    fn shape() -> LoraShape {
        LoraShape {
            arch: Arch::Llama,
            n_layers: 2,
            d_model: 8,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 4,
            ffn_dim: 16,
        }
    }

    fn pair(rank: usize, rows: usize, cols: usize, seed: u32) -> LoraMatrix {
        let v = |n: usize, s: u32| -> Vec<f32> {
            (0..n)
                .map(|i| ((i as u32 * 2654435761u32).wrapping_add(s) % 1000) as f32 / 1000.0 - 0.5)
                .collect()
        };
        LoraMatrix::new(
            rank,
            rows,
            cols,
            v(rank * cols, seed),
            &v(rows * rank, seed + 7),
            2.0,
        )
        .unwrap()
    }

    #[test]
    fn row_delta_equals_the_dense_product() {
        let m = pair(3, 5, 8, 1);
        let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.1 - 0.3).collect();
        let mut dense = vec![0f32; 5 * 8];
        m.add_delta_to(&mut dense);
        let want: Vec<f32> = (0..5)
            .map(|i| (0..8).map(|c| dense[i * 8 + c] * x[c]).sum())
            .collect();
        let mut out = vec![0f32; 5];
        let mut xa = vec![0f32; 3];
        m.apply_row(&x, &mut out, &mut xa);
        for (a, b) in out.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // B round-trips through its transposed storage.
        let b = m.b();
        let again = LoraMatrix::new(3, 5, 8, m.a().to_vec(), &b, 2.0).unwrap();
        assert_eq!(again.b(), b);
    }

    #[test]
    fn half_precision_pairs_are_stored_in_half_and_give_the_f32_results() {
        let (rank, rows, cols) = (4, 40, 24);
        // f16-exact (multiples of 1/256), bf16-exact but beyond f16's range, and
        // neither (f32 kept).
        let f16_vals = |n: usize, s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 37 + s) % 256) as f32 / 256.0 - 0.5)
                .collect()
        };
        let bf16_vals = |n: usize, s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| f32::from_bits((((i * 7 + s) % 97) as u32 + 0x4780) << 16))
                .collect()
        };
        let x: Vec<f32> = (0..cols).map(|i| i as f32 * 0.03 - 0.4).collect();
        for (vals, bytes) in [
            (f16_vals(rank * (cols + rows), 3), 2),
            (bf16_vals(rank * (cols + rows), 5), 2),
            (
                pair(rank, rows, cols, 1)
                    .a()
                    .into_iter()
                    .chain(pair(rank, rows, cols, 1).b())
                    .collect(),
                4,
            ),
        ] {
            let (a, b) = vals.split_at(rank * cols);
            let m = LoraMatrix::new(rank, rows, cols, a.to_vec(), b, 0.5).unwrap();
            assert_eq!(m.a.bytes() + m.bt.bytes(), bytes * rank * (rows + cols));
            assert_eq!(m.a(), a);
            assert_eq!(m.b(), b);
            // The f32 path's arithmetic on the same values: bit for bit.
            let bt = |j: usize| -> Vec<f32> { (0..rows).map(|i| b[i * rank + j]).collect() };
            let mut want = vec![0.25f32; rows];
            for j in 0..rank {
                let v = 0.5 * dot_f32(&a[j * cols..(j + 1) * cols], &x);
                axpy_f32(v, &bt(j), &mut want);
            }
            let mut got = vec![0.25f32; rows];
            m.apply_row(&x, &mut got, &mut vec![0f32; rank]);
            assert_eq!(got, want);
        }
    }

    #[test]
    fn grouped_rows_equal_row_by_row_deltas_and_skip_base_rows() {
        let sh = shape();
        let mut a = LoraAdapter::new(sh.clone());
        let mut b = LoraAdapter::new(sh.clone());
        let (rows, cols) = sh.dims(LoraTarget::Gate);
        a.insert(1, LoraTarget::Gate, pair(3, rows, cols, 1))
            .unwrap();
        b.insert(1, LoraTarget::Gate, pair(2, rows, cols, 9))
            .unwrap();
        // Sequences of 2, 1, 3 and 2 tokens: A, base, B, A.
        let adapters = [Some(&a), None, Some(&b), Some(&a)];
        let lens = [2, 1, 3, 2];
        let n: usize = lens.iter().sum();
        let x: Vec<f32> = (0..n * cols)
            .map(|i| ((i * 37) % 11) as f32 * 0.1 - 0.5)
            .collect();
        let base: Vec<f32> = (0..n * rows).map(|i| i as f32).collect();
        let mut g = LoraRows::default();
        g.group(&adapters, |i| lens[i]);
        assert_eq!(g.groups.len(), 2);
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads);
            let mut out = base.clone();
            g.apply(&pool, &adapters, 1, LoraTarget::Gate, &x, &mut out);
            let owner = [0, 0, 1, 2, 2, 2, 3, 3];
            for t in 0..n {
                let mut want = base[t * rows..(t + 1) * rows].to_vec();
                if let Some(ad) = adapters[owner[t]] {
                    let m = ad.get(1, LoraTarget::Gate).unwrap();
                    let mut xa = vec![0f32; m.rank()];
                    m.apply_row(&x[t * cols..(t + 1) * cols], &mut want, &mut xa);
                }
                assert_eq!(
                    &out[t * rows..(t + 1) * rows],
                    &want[..],
                    "row {t}, {threads} threads"
                );
            }
            // A layer or target the adapters do not change: nothing happens.
            let mut same = base.clone();
            g.apply(&pool, &adapters, 0, LoraTarget::Gate, &x, &mut same);
            assert_eq!(same, base);
        }
    }

    #[test]
    fn refuses_wrong_sizes_and_layers() {
        let mut a = LoraAdapter::new(shape());
        let id = a.id();
        assert!(matches!(
            a.insert(0, LoraTarget::Q, pair(2, 4, 8, 0)),
            Err(LoraError::Shape { .. })
        ));
        assert!(matches!(
            a.insert(2, LoraTarget::Q, pair(2, 8, 8, 0)),
            Err(LoraError::Layer { .. })
        ));
        a.insert(1, LoraTarget::Down, pair(2, 8, 16, 0)).unwrap();
        assert_ne!(a.id(), id, "a changed adapter is a new cache identity");
        assert_eq!(a.targets(), vec![LoraTarget::Down]);
        assert!(a.get(1, LoraTarget::Down).is_some() && a.get(0, LoraTarget::Down).is_none());
        let mut other = shape();
        other.ffn_dim = 32;
        assert!(a.check(&other).is_err());
        assert!(a.check(&shape()).is_ok());
        assert!(LoraMatrix::new(1, 1, 1, vec![f32::NAN], &[1.0], 1.0).is_err());
        assert!(LoraMatrix::new(2, 1, 1, vec![1.0], &[1.0], 1.0).is_err());
        assert!(LoraMatrix::new(1, 1, 1, vec![1.0], &[1.0], f32::INFINITY).is_err());
    }

    #[test]
    fn target_names_parse() {
        for t in LoraTarget::ALL {
            assert_eq!(LoraTarget::parse(t.short_name()), Some(t));
            assert_eq!(LoraTarget::parse(t.hf_name()), Some(t));
            assert_eq!(LoraTarget::parse(t.gguf_name()), Some(t));
        }
        assert_eq!(LoraTarget::parse("lm_head"), None);
    }
}
