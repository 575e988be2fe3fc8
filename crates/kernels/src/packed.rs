//! Row-interleaved copies of Q4_0 / Q5_0 / Q8_0 weight matrices for AVX-512 VNNI
//! ([`PackedMatrix`]; Q4_K / Q6_K copies are [`PackedK`], both behind [`Packed`]).
//!
//! Why: in the row-major layout every `vpdpbusd` yields partial sums of ONE output, so
//! each (row, token, block) costs an int->float conversion, a scale and a horizontal
//! reduction: about 5 vector instructions per 32 multiply-adds. Interleaving 16 rows
//! four bytes at a time puts a different ROW in each int32 lane: one `vpdpbusd` with a
//! broadcast 4-byte activation group does 64 multiply-adds for 16 rows, the int32 lanes
//! end the block holding 16 complete block dots, and one conversion plus one FMA scales
//! all 16. That is ~12 instructions per 512 multiply-adds, and no horizontal sums.
//!
//! Layout, per group of 16 rows `g` and block `b` (32 columns):
//! - `scales[(g * nb + b) * 16 + r]`: the f16 scale of row `16g + r`;
//! - quantized values, split in 8 lane groups `k` (columns `4k .. 4k + 4` of the block),
//!   each 64 values `v = 4r + j` = row `16g + r`, column `4k + j`, stored UNSIGNED
//!   (`q + o`, o = 8 / 16 / 128 for Q4_0 / Q5_0 / Q8_0), so that `vpdpbusd(w, a)` takes
//!   the signed activations directly; `-o * sum(a)` seeds the accumulator:
//!   - Q8_0: 64 bytes per `k`;
//!   - Q4_0: 64 bytes per PAIR of lane groups `(2i, 2i + 1)`: byte `v` holds value `v`
//!     of group `2i` in its low nibble and of group `2i + 1` in its high nibble (one
//!     load, one mask and one shift unpack 128 values);
//!   - Q5_0: 8 bytes per `k` of fifth bits (bit `v` of a u64) for all `k` first, then
//!     the nibbles as in Q4_0.
//!
//! Rows past the end of the matrix are zero (scale 0) and their outputs are not stored.
//! Per output, the sum runs over blocks in order: `acc = fma(float(idot_b), d_w * d_a,
//! acc)`, the same for any number of tokens, so results are batch-invariant. The
//! scalar twin [`matmul_packed_scalar`] follows the same order and must agree bit for
//! bit.

pub(crate) use crate::huge::HugeBuf;
use crate::matmul::QMatrix;
pub use crate::packed_k::{matmul_packed_k, matmul_packed_k_scalar, PackedK};
use crate::pool::ThreadPool;
use crate::quants::legacy::{BlockQ4_0, BlockQ5_0, BlockQ8_0, QK};
use crate::quants::{self, KernelError};
use hangar_formats::GgmlType;

/// Rows interleaved per group.
pub const GROUP: usize = 16;
/// Tokens per kernel call (accumulators held in registers).
const TOK_TILE: usize = 16;

/// A Q4_0 / Q5_0 / Q8_0 matrix in the row-interleaved layout (see module docs).
pub struct PackedMatrix {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    nb: usize,
    scales: Vec<u16>,
    quants: HugeBuf,
}

impl std::fmt::Debug for PackedMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedMatrix")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// Quantized bytes per (group, block).
const fn group_block_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q8_0 => 8 * 64,
        GgmlType::Q5_0 => 8 * 8 + 8 * 32,
        _ => 8 * 32,
    }
}

/// The unsigned offset added to stored values.
const fn offset(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::Q8_0 => 128,
        GgmlType::Q5_0 => 16,
        _ => 8,
    }
}

/// Whether matrices of type `ty` can be packed and run packed on this CPU.
pub fn packable(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4K | GgmlType::Q6K
    ) && crate::simd_level() >= crate::SimdLevel::Avx512Vnni
}

/// A packed matrix of any supported type.
#[derive(Debug)]
pub enum Packed {
    Legacy(PackedMatrix),
    K(PackedK),
}

impl Packed {
    /// Packs `m`, calling `done(first_row, end_row)` as source rows are copied.
    pub fn pack_with(
        pool: &ThreadPool,
        m: &QMatrix,
        done: impl Fn(usize, usize) + Sync,
    ) -> Result<Self, KernelError> {
        match m.ty {
            GgmlType::Q4K | GgmlType::Q6K => PackedK::pack_with(pool, m, done).map(Packed::K),
            _ => PackedMatrix::pack_with(pool, m, done).map(Packed::Legacy),
        }
    }

    /// `out[i * rows + r] = dot(row r, activation row i)` for `t` rows quantized by
    /// [`crate::quantize_activations`] for this matrix's type.
    pub fn matmul(&self, pool: &ThreadPool, act: &[u8], t: usize, out: &mut [f32]) {
        match self {
            Packed::Legacy(p) => matmul_packed(pool, p, act, t, out),
            Packed::K(p) => matmul_packed_k(pool, p, act, t, out),
        }
    }

    pub fn dequantize_row(&self, r: usize, dst: &mut [f32]) {
        match self {
            Packed::Legacy(p) => p.dequantize_row(r, dst),
            Packed::K(p) => p.dequantize_row(r, dst),
        }
    }
}

/// Element `e` (0..32) of a legacy block as its unsigned stored value `q + o`.
fn unsigned_value(ty: GgmlType, block: &[u8], e: usize) -> u8 {
    match ty {
        GgmlType::Q8_0 => (block[2 + e] as i8 as i16 + 128) as u8,
        GgmlType::Q4_0 => (block[2 + e % 16] >> (4 * (e / 16))) & 0x0f,
        _ => {
            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            let lo = (block[6 + e % 16] >> (4 * (e / 16))) & 0x0f;
            lo | ((((qh >> e) & 1) as u8) << 4)
        }
    }
}

fn block_size(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q8_0 => std::mem::size_of::<BlockQ8_0>(),
        GgmlType::Q5_0 => std::mem::size_of::<BlockQ5_0>(),
        _ => std::mem::size_of::<BlockQ4_0>(),
    }
}

/// Allocates `groups x group_bytes` packed bytes and fills them over the pool: each
/// 16-row group's area is zeroed, then `fill(group, row_in_group, source_row, area)`
/// runs for each of its rows; `done(first_row, end_row)` follows each chunk of groups
/// (the caller may then drop those source pages).
pub(crate) fn pack_groups(
    pool: &ThreadPool,
    m: &QMatrix,
    group_bytes: usize,
    chunk: usize,
    done: impl Fn(usize, usize) + Sync,
    fill: impl Fn(usize, usize, &[u8], &mut [u8]) + Sync,
) -> HugeBuf {
    let groups = m.rows.div_ceil(GROUP);
    let buf = HugeBuf::new(groups * group_bytes);
    let bp = SendPtr(buf.as_ptr() as *mut u8);
    pool.for_each_chunk(groups, chunk, |g0, g1| {
        for g in g0..g1 {
            // SAFETY: group g's area is written by this chunk alone; the memory is fresh,
            // so it is zeroed before a slice is formed over it.
            let area = unsafe {
                let p = bp.get().add(g * group_bytes);
                std::ptr::write_bytes(p, 0, group_bytes);
                std::slice::from_raw_parts_mut(p, group_bytes)
            };
            for r in 0..GROUP.min(m.rows - g * GROUP) {
                fill(g, r, m.row(g * GROUP + r), area);
            }
        }
        done((g0 * GROUP).min(m.rows), (g1 * GROUP).min(m.rows));
    });
    buf
}

#[derive(Clone, Copy)]
struct SendPtrU16(*mut u16);
unsafe impl Send for SendPtrU16 {}
unsafe impl Sync for SendPtrU16 {}
impl SendPtrU16 {
    fn get(self) -> *mut u16 {
        self.0
    }
}

impl PackedMatrix {
    /// Interleaves `m` (Q4_0, Q5_0 or Q8_0), splitting the work over `pool`.
    pub fn pack(pool: &ThreadPool, m: &QMatrix) -> Result<Self, KernelError> {
        Self::pack_with(pool, m, |_, _| {})
    }

    /// As [`PackedMatrix::pack`], calling `done(first_row, end_row)` as soon as those
    /// source rows have been copied (the caller may then drop their pages).
    pub fn pack_with(
        pool: &ThreadPool,
        m: &QMatrix,
        done: impl Fn(usize, usize) + Sync,
    ) -> Result<Self, KernelError> {
        if !matches!(m.ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0) {
            return Err(KernelError::Unsupported(m.ty));
        }
        quants::check_len(m.ty, m.cols)?;
        let nb = m.cols / QK;
        let groups = m.rows.div_ceil(GROUP);
        let gbb = group_block_bytes(m.ty);
        let mut scales = vec![0u16; groups * nb * GROUP];
        let sp = SendPtrU16(scales.as_mut_ptr());
        let (ty, bs) = (m.ty, block_size(m.ty));
        let q = pack_groups(pool, m, nb * gbb, 64, done, |g, r, rd, area| {
            for b in 0..nb {
                let blk = &rd[b * bs..(b + 1) * bs];
                // SAFETY: group g's scales are written only while packing group g.
                unsafe {
                    *sp.get().add((g * nb + b) * GROUP + r) = u16::from_le_bytes([blk[0], blk[1]])
                };
                let dst = &mut area[b * gbb..(b + 1) * gbb];
                if ty == GgmlType::Q8_0 {
                    // Fast path (the big output matrices): 4 bytes at a time.
                    for k in 0..8 {
                        let s = &blk[2 + 4 * k..6 + 4 * k];
                        let w = u32::from_le_bytes([s[0], s[1], s[2], s[3]]) ^ 0x8080_8080;
                        dst[k * 64 + 4 * r..k * 64 + 4 * r + 4].copy_from_slice(&w.to_le_bytes());
                    }
                    continue;
                }
                let mut u = [0u8; QK];
                for (e, u) in u.iter_mut().enumerate() {
                    *u = unsigned_value(ty, blk, e);
                }
                let nib = if ty == GgmlType::Q5_0 { 64 } else { 0 };
                for k in 0..8 {
                    for j in 0..4 {
                        let (x, v) = (u[4 * k + j], 4 * r + j);
                        dst[nib + (k / 2) * 64 + v] |= (x & 0x0f) << (4 * (k % 2));
                        if ty == GgmlType::Q5_0 {
                            dst[k * 8 + v / 8] |= (x >> 4) << (v % 8);
                        }
                    }
                }
            }
        });
        Ok(PackedMatrix {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            nb,
            scales,
            quants: q,
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Heap bytes held.
    pub fn bytes(&self) -> usize {
        self.scales.len() * 2 + self.quants.len()
    }

    fn qbytes(&self) -> &[u8] {
        // SAFETY: every byte was written by `pack` (or zeroed by `HugeBuf::new`).
        unsafe { std::slice::from_raw_parts(self.quants.as_ptr(), self.quants.len()) }
    }

    /// The stored unsigned value of row `r`, column `c`.
    fn value(&self, r: usize, c: usize) -> u8 {
        let (g, rr) = (r / GROUP, r % GROUP);
        let (b, e) = (c / QK, c % QK);
        let (k, j) = (e / 4, e % 4);
        let v = 4 * rr + j;
        let gbb = group_block_bytes(self.ty);
        let d = &self.qbytes()[(g * self.nb + b) * gbb..][..gbb];
        match self.ty {
            GgmlType::Q8_0 => d[k * 64 + v],
            _ => {
                let nib = if self.ty == GgmlType::Q5_0 { 64 } else { 0 };
                let lo = (d[nib + (k / 2) * 64 + v] >> (4 * (k % 2))) & 0x0f;
                let hi = if self.ty == GgmlType::Q5_0 {
                    (d[k * 8 + v / 8] >> (v % 8)) & 1
                } else {
                    0
                };
                lo | (hi << 4)
            }
        }
    }

    /// Row `r` as f32 (the embedding lookup of a tied output matrix).
    pub fn dequantize_row(&self, r: usize, dst: &mut [f32]) {
        assert!(r < self.rows && dst.len() == self.cols, "packed row shape");
        let (g, rr) = (r / GROUP, r % GROUP);
        let o = offset(self.ty);
        for b in 0..self.nb {
            let d = half::f16::from_bits(self.scales[(g * self.nb + b) * GROUP + rr]).to_f32();
            for e in 0..QK {
                let q = self.value(r, b * QK + e) as i32 - o;
                dst[b * QK + e] = q as f32 * d;
            }
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut u8);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(self) -> *mut u8 {
        self.0
    }
}

/// Where a group tile's outputs go.
#[derive(Clone, Copy)]
pub(crate) enum Out {
    /// The whole product: `out[token * rows + row]`.
    Matrix(*mut f32),
    /// One group's block: `buf[(token - c0) * 16 + lane]`, all 16 lanes (rows past the
    /// matrix included: the reader masks them).
    Group(*mut f32),
}

/// Per (token, block) of Q8_0 activations: the f32 scale and the offset seed.
struct ActPrep {
    /// Unique per preparation (never 0): caches keyed by it cannot outlive a product.
    id: u64,
    d: Vec<f32>,
    seed: Vec<i32>,
    /// For the AMX kernel: each (16-token tile, block)'s quantized values as one
    /// contiguous 16 x 32-byte A operand (`((tile * nb + b) * 16 + row) * 32`); empty
    /// when the tiles are not used.
    tiles: Vec<u8>,
}

/// Whether a product of `t` tokens with a matrix of `bytes` runs on AMX tiles. Tiles
/// win from 2 tokens on a matrix streamed from DRAM (the output head: fewer
/// instructions per byte keep more loads in flight; `packed_bench`, 262144 x 640 Q8_0
/// at 2 and 3 tokens 7.0-7.1 -> 5.3 ms and 8.0 -> 5.3-5.4 ms, what a speculative
/// verification of one or two drafts costs), but on a matrix that stays in
/// cache the VNNI kernel is faster below 16 tokens (`packed_bench`: 2048 x 640 Q4_0 at 8
/// tokens 0.024 vs 0.034 ms) and even at 16.
pub(crate) fn use_amx(bytes: usize, t: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::amx() && t >= amx::AMX_MIN_TOKENS && (t >= 16 || bytes >= AMX_STREAMED_BYTES)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (bytes, t);
        false
    }
}

/// Matrices at least this big are taken to stream from DRAM (twice a core's L2).
const AMX_STREAMED_BYTES: usize = 8 << 20;

fn prep(ty: GgmlType, act: &[u8], t: usize, nb: usize, tiles_wanted: bool) -> ActPrep {
    let o = offset(ty);
    let mut d = Vec::with_capacity(t * nb);
    let mut seed = Vec::with_capacity(t * nb);
    for blk in act.chunks_exact(34).take(t * nb) {
        d.push(half::f16::from_le_bytes([blk[0], blk[1]]).to_f32());
        let s: i32 = blk[2..].iter().map(|&x| x as i8 as i32).sum();
        seed.push(-o * s);
    }
    let mut tiles = Vec::new();
    if tiles_wanted {
        tiles = vec![0u8; t.div_ceil(TOK_TILE) * nb * TOK_TILE * QK];
        for (c, row) in act.chunks_exact(nb * 34).take(t).enumerate() {
            let (k, r) = (c / TOK_TILE, c % TOK_TILE);
            for (b, blk) in row.chunks_exact(34).enumerate() {
                let at = ((k * nb + b) * TOK_TILE + r) * QK;
                tiles[at..at + QK].copy_from_slice(&blk[2..]);
            }
        }
    }
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ActPrep { id, d, seed, tiles }
}

/// `out[i * p.rows + r] = dot(row r, activation row i)` for `i < t`, where `act` holds
/// `t` rows quantized to Q8_0 by [`crate::quantize_activations`].
pub fn matmul_packed(pool: &ThreadPool, p: &PackedMatrix, act: &[u8], t: usize, out: &mut [f32]) {
    let arb = quants::row_bytes(GgmlType::Q8_0, p.cols);
    assert_eq!(act.len(), t * arb, "matmul_packed: activation shape");
    assert_eq!(out.len(), t * p.rows, "matmul_packed: output shape");
    if crate::simd_level() < crate::SimdLevel::Avx512Vnni {
        return matmul_packed_scalar(p, act, t, out);
    }
    let ap = prep(p.ty, act, t, p.nb, use_amx(p.bytes(), t));
    let op = SendPtr(out.as_mut_ptr() as *mut u8);
    for_each_group_tile(pool, p.rows, t, TOK_TILE, 8, |g, c0, nc| {
        // SAFETY: AVX-512 VNNI checked above; rows of group g belong to this call
        // alone; every pointer stays inside the checked buffers.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::group_tile(
                p,
                g,
                act,
                arb,
                &ap,
                c0,
                nc,
                Out::Matrix(op.get() as *mut f32),
            )
        };
    });
}

/// [`matmul_packed`] for several matrices with the same input (Q/K/V, gate/up) in one
/// pool dispatch: one hand-out of all their row groups instead of one per matrix, so
/// the threads meet at one barrier. `outs[i]` receives matrix `i`'s `t * rows` outputs;
/// results are bitwise those of separate calls.
pub fn matmul_packed_many(
    pool: &ThreadPool,
    mats: &[&PackedMatrix],
    act: &[u8],
    t: usize,
    outs: &mut [&mut [f32]],
) {
    assert_eq!(
        mats.len(),
        outs.len(),
        "matmul_packed_many: one output per matrix"
    );
    let Some(first) = mats.first() else { return };
    if crate::simd_level() < crate::SimdLevel::Avx512Vnni || mats.len() == 1 {
        for (p, out) in mats.iter().zip(outs.iter_mut()) {
            matmul_packed(pool, p, act, t, out);
        }
        return;
    }
    let arb = quants::row_bytes(GgmlType::Q8_0, first.cols);
    assert_eq!(act.len(), t * arb, "matmul_packed_many: activation shape");
    let mut starts = Vec::with_capacity(mats.len() + 1);
    starts.push(0);
    for (p, out) in mats.iter().zip(outs.iter()) {
        assert_eq!(p.cols, first.cols, "matmul_packed_many: same input width");
        assert_eq!(out.len(), t * p.rows, "matmul_packed_many: output shape");
        starts.push(starts.last().copied().unwrap_or(0) + p.rows.div_ceil(GROUP));
    }
    // One preparation per weight type (Q, K and V usually share one): the scales and
    // AMX tiles depend on the activations alone, the offset seed on the type.
    let mut types: Vec<GgmlType> = Vec::new();
    let which: Vec<usize> = mats
        .iter()
        .map(|p| {
            types.iter().position(|&ty| ty == p.ty).unwrap_or_else(|| {
                types.push(p.ty);
                types.len() - 1
            })
        })
        .collect();
    let preps: Vec<ActPrep> = types
        .iter()
        .map(|&ty| {
            let tiles = mats.iter().any(|p| p.ty == ty && use_amx(p.bytes(), t));
            prep(ty, act, t, first.nb, tiles)
        })
        .collect();
    let ptrs: Vec<SendPtr> = outs
        .iter_mut()
        .map(|o| SendPtr(o.as_mut_ptr() as *mut u8))
        .collect();
    let total = starts[mats.len()];
    let chunk = total.div_ceil(pool.n_threads() * 8).max(1);
    pool.for_each_chunk(total, chunk, |g0, g1| {
        for gg in g0..g1 {
            let i = starts.partition_point(|&s| s <= gg) - 1;
            let g = gg - starts[i];
            let mut c0 = 0;
            while c0 < t {
                let nc = (t - c0).min(TOK_TILE);
                // SAFETY: AVX-512 VNNI checked above; group g of matrix i belongs to
                // this chunk alone; every pointer stays inside the checked buffers.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    x86::group_tile(
                        mats[i],
                        g,
                        act,
                        arb,
                        &preps[which[i]],
                        c0,
                        nc,
                        Out::Matrix(ptrs[i].get() as *mut f32),
                    )
                };
                c0 += nc;
            }
        }
    });
}

/// One token's greedy pick over a packed output matrix (see [`matmul_packed_greedy`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GreedyPick {
    /// The row with the largest output among those not skipped (ties: the lowest row;
    /// NaN counts as -inf; row 0 with -inf when every output is -inf or NaN).
    pub id: u32,
    pub value: f32,
    /// The outputs of the skipped rows, in skip-list order (NaN for an id past the
    /// matrix).
    pub skipped: Vec<f32>,
}

/// The most tokens one [`matmul_packed_greedy`] call takes (a bit per token marks the
/// row groups holding a skipped row).
pub const GREEDY_MAX_TOKENS: usize = 64;

/// For each of `t` tokens, the largest output of `p` over the rows not in `skip[c]`
/// and the outputs of the rows in it, without writing the `t x rows` outputs: greedy
/// decoding's output head (the logits of a 262k vocabulary are 16 MB at 16 tokens,
/// written and read back for one argmax each). The values are bitwise those of
/// [`matmul_packed`]; the pick is its argmax (lowest row on ties, NaN as -inf).
///
/// # Panics
/// If `t > GREEDY_MAX_TOKENS`, `skip.len() != t` or the activations do not fit.
pub fn matmul_packed_greedy(
    pool: &ThreadPool,
    p: &PackedMatrix,
    act: &[u8],
    t: usize,
    skip: &[&[u32]],
) -> Vec<GreedyPick> {
    assert!(
        t <= GREEDY_MAX_TOKENS,
        "matmul_packed_greedy: at most {GREEDY_MAX_TOKENS} tokens"
    );
    assert_eq!(
        skip.len(),
        t,
        "matmul_packed_greedy: one skip list per token"
    );
    let arb = quants::row_bytes(GgmlType::Q8_0, p.cols);
    assert_eq!(act.len(), t * arb, "matmul_packed_greedy: activation shape");
    #[cfg(target_arch = "x86_64")]
    if crate::simd_level() >= crate::SimdLevel::Avx512Vnni {
        // SAFETY: AVX-512 VNNI checked.
        return unsafe { x86::greedy(pool, p, act, arb, t, skip) };
    }
    let mut out = vec![0f32; t * p.rows];
    matmul_packed(pool, p, act, t, &mut out);
    out.chunks_exact(p.rows.max(1))
        .zip(skip)
        .map(|(row, skip)| greedy_pick_row(row, skip))
        .collect()
}

/// The greedy pick of one full row of outputs: what [`matmul_packed_greedy`] gives
/// without writing them (the first largest value outside `skip`, NaN never winning;
/// NaN reported for a skipped id past the row).
pub fn greedy_pick_row(row: &[f32], skip: &[u32]) -> GreedyPick {
    let (mut id, mut value) = (0u32, f32::NEG_INFINITY);
    for (r, &v) in row.iter().enumerate() {
        // NaN compares false: it never wins, as -inf would not.
        if v > value && !skip.contains(&(r as u32)) {
            (id, value) = (r as u32, v);
        }
    }
    let skipped = skip
        .iter()
        .map(|&s| row.get(s as usize).copied().unwrap_or(f32::NAN))
        .collect();
    GreedyPick { id, value, skipped }
}

/// Calls `f(group, first_token, tokens)` for every 16-row group of a `rows`-row matrix
/// and every tile of at most `tok_tile` of the `t` tokens, spreading the groups over
/// the pool in about `n_threads * chunks_per_thread` chunks. A group is handled by one
/// call at a time, so each call may write that group's outputs.
pub(crate) fn for_each_group_tile(
    pool: &ThreadPool,
    rows: usize,
    t: usize,
    tok_tile: usize,
    chunks_per_thread: usize,
    f: impl Fn(usize, usize, usize) + Sync,
) {
    let groups = rows.div_ceil(GROUP);
    let chunk = groups.div_ceil(pool.n_threads() * chunks_per_thread).max(1);
    pool.for_each_chunk(groups, chunk, |g0, g1| {
        for g in g0..g1 {
            let mut c0 = 0;
            while c0 < t {
                let nc = (t - c0).min(tok_tile);
                f(g, c0, nc);
                c0 += nc;
            }
        }
    });
}

/// The scalar twin of [`matmul_packed`] (same summation order, bit-identical).
pub fn matmul_packed_scalar(p: &PackedMatrix, act: &[u8], t: usize, out: &mut [f32]) {
    let arb = quants::row_bytes(GgmlType::Q8_0, p.cols);
    let ap = prep(p.ty, act, t, p.nb, false);
    for c in 0..t {
        for r in 0..p.rows {
            let (g, rr) = (r / GROUP, r % GROUP);
            let mut acc = 0f32;
            for b in 0..p.nb {
                let ab = &act[c * arb + b * 34 + 2..][..32];
                let mut dot = ap.seed[c * p.nb + b];
                for (e, &a) in ab.iter().enumerate() {
                    dot += p.value(r, b * QK + e) as i32 * a as i8 as i32;
                }
                let dw = half::f16::from_bits(p.scales[(g * p.nb + b) * GROUP + rr]).to_f32();
                acc = (dot as f32).mul_add(dw * ap.d[c * p.nb + b], acc);
            }
            out[c * p.rows + r] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[path = "packed_amx.rs"]
mod amx;

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group_tile(
        p: &PackedMatrix,
        g: usize,
        act: &[u8],
        arb: usize,
        ap: &ActPrep,
        c0: usize,
        nc: usize,
        out: Out,
    ) {
        let on_amx = !ap.tiles.is_empty() && nc >= super::amx::AMX_MIN_TOKENS;
        macro_rules! go {
            ($t:ident) => {
                match nc {
                    1 => run::<$t, 1>(on_amx, p, g, act, arb, ap, c0, out),
                    2 => run::<$t, 2>(on_amx, p, g, act, arb, ap, c0, out),
                    3 => run::<$t, 3>(on_amx, p, g, act, arb, ap, c0, out),
                    4 => run::<$t, 4>(on_amx, p, g, act, arb, ap, c0, out),
                    5 => run::<$t, 5>(on_amx, p, g, act, arb, ap, c0, out),
                    6 => run::<$t, 6>(on_amx, p, g, act, arb, ap, c0, out),
                    7 => run::<$t, 7>(on_amx, p, g, act, arb, ap, c0, out),
                    8 => run::<$t, 8>(on_amx, p, g, act, arb, ap, c0, out),
                    9 => run::<$t, 9>(on_amx, p, g, act, arb, ap, c0, out),
                    10 => run::<$t, 10>(on_amx, p, g, act, arb, ap, c0, out),
                    11 => run::<$t, 11>(on_amx, p, g, act, arb, ap, c0, out),
                    12 => run::<$t, 12>(on_amx, p, g, act, arb, ap, c0, out),
                    13 => run::<$t, 13>(on_amx, p, g, act, arb, ap, c0, out),
                    14 => run::<$t, 14>(on_amx, p, g, act, arb, ap, c0, out),
                    15 => run::<$t, 15>(on_amx, p, g, act, arb, ap, c0, out),
                    _ => run::<$t, 16>(on_amx, p, g, act, arb, ap, c0, out),
                }
            };
        }
        match p.ty {
            GgmlType::Q8_0 => go!(Q8),
            GgmlType::Q5_0 => go!(Q5),
            _ => go!(Q4),
        }
    }

    /// [`super::matmul_packed_greedy`] on AVX-512: each thread keeps, per token, the
    /// lane-wise largest output and its group over its groups (strictly greater, so
    /// the lowest row wins ties), then reduces the 16 lanes and merges.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn greedy(
        pool: &ThreadPool,
        p: &PackedMatrix,
        act: &[u8],
        arb: usize,
        t: usize,
        skip: &[&[u32]],
    ) -> Vec<GreedyPick> {
        let ap = prep(p.ty, act, t, p.nb, use_amx(p.bytes(), t));
        let groups = p.rows.div_ceil(GROUP);
        // Bit c of marks[g]: token c skips a row of group g.
        let mut marks = vec![0u64; groups];
        for (c, ids) in skip.iter().enumerate() {
            for &id in ids.iter() {
                if let Some(m) = marks.get_mut(id as usize / GROUP) {
                    *m |= 1 << c;
                }
            }
        }
        let init = |c: usize| GreedyPick {
            id: 0,
            value: f32::NEG_INFINITY,
            skipped: vec![f32::NAN; skip[c].len()],
        };
        let picks = std::sync::Mutex::new((0..t).map(init).collect::<Vec<_>>());
        let chunk = groups.div_ceil(pool.n_threads() * 8).max(1);
        pool.for_each_chunk(groups, chunk, |g0, g1| {
            let neg = _mm512_set1_ps(f32::NEG_INFINITY);
            let mut best_v = vec![neg; t];
            let mut best_g = vec![_mm512_setzero_si512(); t];
            let mut found: Vec<(usize, usize, f32)> = Vec::new();
            let mut buf = [0f32; GROUP * TOK_TILE];
            for (g, &mark) in marks.iter().enumerate().take(g1).skip(g0) {
                let valid = (p.rows - g * GROUP).min(GROUP);
                let lanes: __mmask16 = if valid == GROUP {
                    0xffff
                } else {
                    (1 << valid) - 1
                };
                let gv = _mm512_set1_epi32(g as i32);
                let mut c0 = 0;
                while c0 < t {
                    let nc = (t - c0).min(TOK_TILE);
                    group_tile(p, g, act, arb, &ap, c0, nc, Out::Group(buf.as_mut_ptr()));
                    for c in 0..nc {
                        let tok = c0 + c;
                        let v = _mm512_loadu_ps(buf.as_ptr().add(c * GROUP));
                        // NaN and rows past the matrix never win.
                        let ok = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v) & lanes;
                        let mut v = _mm512_mask_mov_ps(neg, ok, v);
                        if mark >> tok & 1 != 0 {
                            let mut drop: __mmask16 = 0;
                            for (k, &id) in skip[tok].iter().enumerate() {
                                let id = id as usize;
                                if id / GROUP == g && id < p.rows {
                                    found.push((tok, k, buf[c * GROUP + id % GROUP]));
                                    drop |= 1 << (id % GROUP);
                                }
                            }
                            v = _mm512_mask_mov_ps(v, drop, neg);
                        }
                        let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best_v[tok]);
                        best_v[tok] = _mm512_mask_mov_ps(best_v[tok], gt, v);
                        best_g[tok] = _mm512_mask_mov_epi32(best_g[tok], gt, gv);
                    }
                    c0 += nc;
                }
            }
            let Ok(mut picks) = picks.lock() else { return };
            for (tok, pick) in picks.iter_mut().enumerate() {
                let (mut vs, mut gs) = ([0f32; GROUP], [0i32; GROUP]);
                _mm512_storeu_ps(vs.as_mut_ptr(), best_v[tok]);
                _mm512_storeu_si512(gs.as_mut_ptr() as *mut _, best_g[tok]);
                for l in 0..GROUP {
                    let id = (gs[l] as usize * GROUP + l) as u32;
                    if vs[l] > pick.value || (vs[l] == pick.value && id < pick.id) {
                        (pick.id, pick.value) = (id, vs[l]);
                    }
                }
            }
            for &(tok, k, v) in &found {
                picks[tok].skipped[k] = v;
            }
        });
        picks.into_inner().unwrap_or_default()
    }

    /// [`tile`], or its AMX twin (bitwise the same results) where `on_amx`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn run<const T: u8, const NC: usize>(
        on_amx: bool,
        p: &PackedMatrix,
        g: usize,
        act: &[u8],
        arb: usize,
        ap: &ActPrep,
        c0: usize,
        out: Out,
    ) {
        if on_amx {
            super::amx::tile::<T, NC>(p, g, ap, c0, out)
        } else {
            tile::<T, NC>(p, g, act, arb, ap, c0, out)
        }
    }

    pub(super) const Q8: u8 = 0;
    const Q5: u8 = 1;
    const Q4: u8 = 2;

    pub(super) const fn tbytes(t: u8) -> usize {
        match t {
            Q8 => 8 * 64,
            Q5 => 8 * 8 + 8 * 32,
            _ => 8 * 32,
        }
    }

    /// The 8 lane groups of one (group, block) as 64 unsigned bytes each.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn fetch8<const T: u8>(q: *const u8) -> [__m512i; 8] {
        let mut w = [_mm512_setzero_si512(); 8];
        if T == Q8 {
            for (k, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_si512(q.add(k * 64) as *const _);
            }
            return w;
        }
        let nib = if T == Q5 { q.add(64) } else { q };
        let m = _mm512_set1_epi8(0x0f);
        for i in 0..4 {
            let x = _mm512_loadu_si512(nib.add(i * 64) as *const _);
            w[2 * i] = _mm512_and_si512(x, m);
            w[2 * i + 1] = _mm512_and_si512(_mm512_srli_epi16::<4>(x), m);
        }
        if T == Q5 {
            let sixteen = _mm512_set1_epi8(16);
            for (k, w) in w.iter_mut().enumerate() {
                let hi: __mmask64 = (q.add(k * 8) as *const u64).read_unaligned();
                *w = _mm512_mask_add_epi8(*w, hi, *w, sixteen);
            }
        }
        w
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const T: u8, const NC: usize>(
        p: &PackedMatrix,
        g: usize,
        act: &[u8],
        arb: usize,
        ap: &ActPrep,
        c0: usize,
        out: Out,
    ) {
        let nb = p.nb;
        let tb = tbytes(T);
        debug_assert_eq!(tb, group_block_bytes(p.ty));
        let qbase = p.quants.as_ptr().add(g * nb * tb);
        let sbase = p.scales.as_ptr().add(g * nb * GROUP);
        let abase = act.as_ptr().add(c0 * arb + 2);
        let dbase = ap.d.as_ptr().add(c0 * nb);
        let seedbase = ap.seed.as_ptr().add(c0 * nb);
        let mut acc = [_mm512_setzero_ps(); NC];
        for b in 0..nb {
            let qb = qbase.add(b * tb);
            let w = fetch8::<T>(qb);
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sbase.add(b * GROUP) as *const __m256i));
            for (c, acc) in acc.iter_mut().enumerate() {
                let a = abase.add(c * arb + b * 34) as *const i32;
                // Two chains halve the dependent vpdpbusd latency; integer, so exact.
                let mut d0 = _mm512_set1_epi32(*seedbase.add(c * nb + b));
                let mut d1 = _mm512_setzero_si512();
                d0 = _mm512_dpbusd_epi32(d0, w[0], _mm512_set1_epi32(a.read_unaligned()));
                d1 = _mm512_dpbusd_epi32(d1, w[1], _mm512_set1_epi32(a.add(1).read_unaligned()));
                d0 = _mm512_dpbusd_epi32(d0, w[2], _mm512_set1_epi32(a.add(2).read_unaligned()));
                d1 = _mm512_dpbusd_epi32(d1, w[3], _mm512_set1_epi32(a.add(3).read_unaligned()));
                d0 = _mm512_dpbusd_epi32(d0, w[4], _mm512_set1_epi32(a.add(4).read_unaligned()));
                d1 = _mm512_dpbusd_epi32(d1, w[5], _mm512_set1_epi32(a.add(5).read_unaligned()));
                d0 = _mm512_dpbusd_epi32(d0, w[6], _mm512_set1_epi32(a.add(6).read_unaligned()));
                d1 = _mm512_dpbusd_epi32(d1, w[7], _mm512_set1_epi32(a.add(7).read_unaligned()));
                let dot = _mm512_add_epi32(d0, d1);
                let s = _mm512_mul_ps(dw, _mm512_set1_ps(*dbase.add(c * nb + b)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, *acc);
            }
        }
        store_group(p.rows, g, c0, out, &acc);
    }

    /// Stores a 16-row group's outputs for tokens `c0..c0 + acc.len()` (`acc[c]` holds
    /// rows `16g..16g + 16` of token `c0 + c`), leaving out rows past `rows`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn store_group(rows: usize, g: usize, c0: usize, out: Out, acc: &[__m512]) {
        let out = match out {
            Out::Matrix(out) => out,
            Out::Group(buf) => {
                for (c, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(buf.add(c * GROUP), *acc);
                }
                return;
            }
        };
        let r0 = g * GROUP;
        let valid = (rows - r0).min(GROUP);
        let mask: __mmask16 = if valid == GROUP {
            0xffff
        } else {
            (1u16 << valid) - 1
        };
        for (c, acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add((c0 + c) * rows + r0), mask, *acc);
        }
    }
}
