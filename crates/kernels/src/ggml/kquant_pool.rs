//! The production ggml Q4_K/Q6_K replicas: AVX-512 (F/BW/VL/DQ + VNNI) twins of
//! [`q4k::mul_mat_q4k`] and [`q6k::mul_mat_q6k`] on the [`ThreadPool`], bitwise equal
//! to them; they must never round differently (this is not `Numerics::Fast`).
//!
//! Only the integer parts are computed differently (VNNI dot products over whole
//! sub-blocks instead of element loops; integer sums are exact, so any grouping gives
//! the same values). Every f32 operation (f16 widening, i32 -> f32 conversion, products
//! of scales, FMAs, the final subtraction or horizontal sum) is performed with the same
//! operands in the same order as in the scalar functions, lane for lane, so the results
//! are bitwise equal for every batch size `n`. Without AVX-512 VNNI (see
//! [`crate::cpu::simd_level`]) both functions call the scalar ones.
//!
//! * Q4_K: sixteen weight rows per vector (one output element per f32 lane). For each
//!   super-block the nibbles of the sixteen rows are transposed in registers so that a
//!   32-bit lane holds four quants of one row; `vpdpbusd` against a broadcast group of
//!   four activation quants then yields the exact sub-block dots of all sixteen rows.
//!   The transposed weights are reused for all `n` activation rows. The float steps per
//!   lane are the gemm (one FMA per pair of sub-blocks) or gemv (one FMA per
//!   super-block) sequences of `q4k`.
//! * Q6_K: one weight row at a time, unpacked once per block into 6-bit codes and
//!   reused for all `n` activation rows. `vpdpbusd` over 64 codes gives per-group
//!   partial dots laid out exactly like the eight i32 lanes of the AVX2 vec_dot, which
//!   the n < 8 path scales and accumulates in eight f32 lanes and reduces pairwise; the
//!   n >= 8 (tiled) path sums them to the block's integer dot and applies the
//!   `(isum * d_w)` then FMA with `d_x` of `q6k`.
//!
//! Activations are quantized once per activation row with the scalar quantizers:
//! `q6k::quantize_row_q8_k` (= `quantize_row_q8_K_ref`, used by Q6_K and by Q4_K's
//! gemv rows) and a copy of `q4k`'s private `quantize_mat_q8_K_4x8` row arithmetic for
//! Q4_K's gemm rows.

use super::{q4k, q6k};
use crate::ThreadPool;
use std::sync::OnceLock;

const QK: usize = 256;
const Q4K_BLOCK: usize = q4k::BLOCK_BYTES;
const Q6K_BLOCK: usize = q6k::Q6K_BLOCK_BYTES;
const Q8K_BLOCK: usize = q6k::Q8K_BLOCK_BYTES;

fn use_avx512() -> bool {
    cfg!(target_arch = "x86_64") && crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni
}

/// Raw output pointer shared by the workers; every worker writes disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: workers write disjoint output elements and `pool` joins them before return.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Pointer to element `k` (a method, so closures capture the whole `OutPtr`).
    fn at(self, k: usize) -> *mut f32 {
        self.0.wrapping_add(k)
    }
}

/// Quantizes the `n` rows of `x` in parallel (one call of `f` per activation row).
fn quantize_rows<T: Send + Sync>(
    pool: &ThreadPool,
    x: &[f32],
    cols: usize,
    n: usize,
    f: impl Fn(usize, &[f32]) -> T + Sync,
) -> Vec<T> {
    let slots: Vec<OnceLock<T>> = (0..n).map(|_| OnceLock::new()).collect();
    pool.for_each_chunk(n, 1, |s, e| {
        for (j, slot) in slots.iter().enumerate().take(e).skip(s) {
            let _ = slot.set(f(j, &x[j * cols..(j + 1) * cols]));
        }
    });
    slots
        .into_iter()
        .map(|s| s.into_inner().expect("every activation row quantized"))
        .collect()
}

/// `quantize_row_q8_K_ref` through `q6k::quantize_row_q8_k`: 292-byte `block_q8_K`s.
fn q8k_ref_bytes(x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / QK * Q8K_BLOCK];
    q6k::quantize_row_q8_k(x, &mut out);
    out
}

/// One activation row for Q4_K: block scales, quants, and per pair of 32-value
/// sub-blocks the two sub-block sums packed as i16 (low = even sub-block).
struct Q4Act {
    d: Vec<f32>,
    qs: Vec<i8>,
    bs_pairs: Vec<i32>,
}

fn pack_pairs(bsum32: &[i32]) -> Vec<i32> {
    bsum32
        .chunks_exact(2)
        .map(|p| ((p[0] as u32 & 0xffff) | ((p[1] as u32) << 16)) as i32)
        .collect()
}

/// The row arithmetic of `q4k`'s `quantize_row_4x8` (ggml_quantize_mat_q8_K_4x8).
fn q4_act_4x8(x: &[f32]) -> Q4Act {
    #[cfg(target_arch = "x86_64")]
    if use_avx512() {
        // SAFETY: the features were checked; the same code, with `round_ties_even`
        // inlined (vroundps) instead of a libm call.
        return unsafe { q4_act_4x8_avx512(x) };
    }
    q4_act_4x8_body(x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,sse4.1")]
unsafe fn q4_act_4x8_avx512(x: &[f32]) -> Q4Act {
    q4_act_4x8_body(x)
}

#[inline(always)]
fn q4_act_4x8_body(x: &[f32]) -> Q4Act {
    let mut d = Vec::with_capacity(x.len() / QK);
    let mut qs = vec![0i8; x.len()];
    for (blk, q) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)) {
        let amax = blk
            .iter()
            .fold(0f32, |m, v| if m > v.abs() { m } else { v.abs() });
        let positive = blk.contains(&amax);
        let iscale = if amax == 0.0 {
            0.0
        } else if positive {
            -127.0f32 / amax
        } else {
            127.0f32 / amax
        };
        for (o, &v) in q.iter_mut().zip(blk) {
            *o = (v * iscale).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
        d.push(if amax != 0.0 { 1.0 / iscale } else { 0.0 });
    }
    let bsum32: Vec<i32> = qs
        .chunks_exact(32)
        .map(|c| c.iter().map(|&q| q as i32).sum())
        .collect();
    Q4Act {
        d,
        bs_pairs: pack_pairs(&bsum32),
        qs,
    }
}

/// `quantize_row_q8_K_ref` (Q4_K's gemv rows).
fn q4_act_ref(x: &[f32]) -> Q4Act {
    let bytes = q8k_ref_bytes(x);
    let mut act = Q4Act {
        d: Vec::with_capacity(x.len() / QK),
        qs: Vec::with_capacity(x.len()),
        bs_pairs: Vec::new(),
    };
    let mut bsum32 = Vec::with_capacity(x.len() / 32);
    for b in bytes.chunks_exact(Q8K_BLOCK) {
        act.d.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        act.qs.extend(b[4..4 + QK].iter().map(|&v| v as i8));
        bsum32.extend(
            b[4..4 + QK]
                .chunks_exact(32)
                .map(|c| c.iter().map(|&v| v as i8 as i32).sum::<i32>()),
        );
    }
    act.bs_pairs = pack_pairs(&bsum32);
    act
}

/// [`q4k::mul_mat_q4k`], bit for bit, on `pool` with AVX-512 VNNI.
pub fn mul_mat_q4k_pool(
    pool: &ThreadPool,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    if !use_avx512() {
        return q4k::mul_mat_q4k(w, rows, cols, x, n, out);
    }
    assert_eq!(cols % QK, 0, "Q4_K rows must be whole super-blocks");
    let nb = cols / QK;
    let row_bytes = nb * Q4K_BLOCK;
    assert_eq!(w.len(), rows * row_bytes);
    assert_eq!(x.len(), n * cols);
    assert_eq!(out.len(), n * rows);
    if rows == 0 || n == 0 {
        return;
    }
    let n_gemm = if n > 3 { n - n % 4 } else { 0 };
    let acts = quantize_rows(pool, x, cols, n, |j, r| {
        if j < n_gemm {
            q4_act_4x8(r)
        } else {
            q4_act_ref(r)
        }
    });
    let groups = rows.div_ceil(16);
    let chunk = (groups / (4 * pool.n_threads())).max(1);
    let out = OutPtr(out.as_mut_ptr());
    pool.for_each_chunk(groups, chunk, |g0, g1| {
        let mut scratch = Vec::new();
        let mut acc = vec![[0f32; 16]; 2 * n];
        let mut dots = vec![[0i32; 16]; 8 * n];
        for g in g0..g1 {
            let r0 = 16 * g;
            let valid = (rows - r0).min(16);
            let base = if valid == 16 {
                &w[r0 * row_bytes..(r0 + 16) * row_bytes]
            } else {
                // Pad the last group to sixteen rows (zero blocks: d = 0).
                scratch.clear();
                scratch.extend_from_slice(&w[r0 * row_bytes..]);
                scratch.resize(16 * row_bytes, 0);
                &scratch[..]
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 VNNI checked by `use_avx512`; `base` holds 16 rows of
            // `nb` blocks; output rows r0..r0 + valid of each of the n columns exist.
            unsafe {
                avx512::q4k_group(
                    base.as_ptr(),
                    row_bytes,
                    nb,
                    &acts,
                    n_gemm,
                    &mut acc,
                    &mut dots,
                    out.at(r0),
                    rows,
                    valid,
                );
            }
        }
    });
}

/// [`q6k::mul_mat_q6k`], bit for bit, on `pool` with AVX-512 VNNI.
pub fn mul_mat_q6k_pool(
    pool: &ThreadPool,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    if !use_avx512() {
        return q6k::mul_mat_q6k(w, rows, cols, x, n, out);
    }
    assert!(
        cols.is_multiple_of(QK),
        "cols {cols} is not a multiple of 256"
    );
    let nb = cols / QK;
    let row_bytes = nb * Q6K_BLOCK;
    assert!(w.len() >= rows * row_bytes, "weight data too short");
    assert!(x.len() >= n * cols, "activations too short");
    assert!(out.len() >= n * rows, "output too short");
    if rows == 0 || n == 0 {
        return;
    }
    let acts: Vec<u8> = quantize_rows(pool, &x[..n * cols], cols, n, |_, r| q8k_ref_bytes(r))
        .into_iter()
        .flatten()
        .collect();
    let tiled = n >= q6k::TILED_MIN_BATCH;
    let chunk = (rows / (8 * pool.n_threads())).clamp(1, 64);
    let out = OutPtr(out.as_mut_ptr());
    pool.for_each_chunk(rows, chunk, |r0, r1| {
        let mut res = vec![0f32; n];
        let mut acc8 = vec![[0f32; 8]; n];
        for i in r0..r1 {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 VNNI checked by `use_avx512`; row i has `nb` blocks and
            // `acts` holds n rows of `nb` Q8_K blocks.
            unsafe {
                avx512::q6k_row(
                    w[i * row_bytes..(i + 1) * row_bytes].as_ptr(),
                    nb,
                    &acts,
                    tiled,
                    &mut acc8,
                    &mut res,
                );
            }
            for (j, &v) in res.iter().enumerate() {
                // SAFETY: element (j, i) belongs to this chunk's rows only.
                unsafe { *out.at(j * rows + i) = v };
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Q4Act, Q4K_BLOCK, Q6K_BLOCK, Q8K_BLOCK, QK};
    use std::arch::x86_64::*;

    /// `_mm512_permutex2var_epi32` indices that swap a vector-index bit with lane bit
    /// `lb`: the output vector whose bit is clear (`set = false`) or set.
    const fn swap_idx(lb: usize, set: bool) -> [i32; 16] {
        let mut a = [0i32; 16];
        let mut i = 0;
        while i < 16 {
            let b = (i >> lb) & 1;
            let lane = if set { i | (1 << lb) } else { i & !(1 << lb) };
            a[i] = ((b << 4) | lane) as i32;
            i += 1;
        }
        a
    }

    const SWAP_IDX: [[[i32; 16]; 2]; 3] = [
        [swap_idx(0, false), swap_idx(0, true)],
        [swap_idx(1, false), swap_idx(1, true)],
        [swap_idx(2, false), swap_idx(2, true)],
    ];

    /// Regards `v` as 16·N dwords addressed by (vector index, lane) and swaps bit `vb`
    /// of the vector index with bit `lb` of the lane index.
    #[inline(always)]
    unsafe fn swap_bits<const N: usize>(v: &mut [__m512i; N], vb: usize, lb: usize) {
        let ia = _mm512_loadu_si512(SWAP_IDX[lb][0].as_ptr() as *const _);
        let ib = _mm512_loadu_si512(SWAP_IDX[lb][1].as_ptr() as *const _);
        for a in 0..N {
            if a & (1 << vb) == 0 {
                let b = a | (1 << vb);
                let x = _mm512_permutex2var_epi32(v[a], ia, v[b]);
                let y = _mm512_permutex2var_epi32(v[a], ib, v[b]);
                v[a] = x;
                v[b] = y;
            }
        }
    }

    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }

    /// Sixteen Q4_K rows (`base`, `stride` bytes apart, `nb` blocks each) times all
    /// activation rows; writes rows `0..valid` of every output column `j` to
    /// `out[j * rows ..]`. `acc` (2n) and `dots` (8n) are scratch.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q4k_group(
        base: *const u8,
        stride: usize,
        nb: usize,
        acts: &[Q4Act],
        n_gemm: usize,
        acc: &mut [[f32; 16]],
        dots: &mut [[i32; 16]],
        out: *mut f32,
        rows: usize,
        valid: usize,
    ) {
        let n = acts.len();
        let (acc, accm) = acc.split_at_mut(n);
        for a in acc.iter_mut().chain(accm.iter_mut()) {
            *a = [0.0; 16];
        }
        let m0f = _mm512_set1_epi8(0x0f);
        let m63 = _mm512_set1_epi32(63);
        let m15 = _mm512_set1_epi32(15);
        let m3 = _mm512_set1_epi32(3);
        for b in 0..nb {
            let blk = base.add(b * Q4K_BLOCK);
            // Block headers (d, dmin, 12 scale bytes) of the 16 rows: h[k] lane r is
            // dword k of row r's header.
            let mut h = [_mm512_setzero_si512(); 4];
            for (k, hk) in h.iter_mut().enumerate() {
                let ld = |r: usize| _mm_loadu_si128(blk.add(r * stride) as *const __m128i);
                let z = _mm512_castsi128_si512(ld(k));
                let z = _mm512_inserti32x4::<1>(z, ld(k + 4));
                let z = _mm512_inserti32x4::<2>(z, ld(k + 8));
                *hk = _mm512_inserti32x4::<3>(z, ld(k + 12));
            }
            swap_bits(&mut h, 0, 0);
            swap_bits(&mut h, 1, 1);
            let d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(h[0]));
            let dmin = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(h[0])));
            let (s0, s1, s2) = (h[1], h[2], h[3]);
            let sh = |v: __m512i, c: u32| _mm512_srlv_epi32(v, _mm512_set1_epi32(c as i32));
            let mut sc = [_mm512_setzero_si512(); 8];
            let mut mn = [_mm512_setzero_si512(); 8];
            for k in 0..4u32 {
                sc[k as usize] = _mm512_and_si512(sh(s0, 8 * k), m63);
                mn[k as usize] = _mm512_and_si512(sh(s1, 8 * k), m63);
                sc[k as usize + 4] = _mm512_or_si512(
                    _mm512_and_si512(sh(s2, 8 * k), m15),
                    _mm512_slli_epi32::<4>(_mm512_and_si512(sh(s0, 8 * k + 6), m3)),
                );
                mn[k as usize + 4] = _mm512_or_si512(
                    _mm512_and_si512(sh(s2, 8 * k + 4), m15),
                    _mm512_slli_epi32::<4>(_mm512_and_si512(sh(s1, 8 * k + 6), m3)),
                );
            }
            // Mins of sub-blocks 2p and 2p + 1 as an i16 pair (for vpmaddwd).
            let mp: [__m512i; 4] = std::array::from_fn(|p| {
                _mm512_or_si512(mn[2 * p], _mm512_slli_epi32::<16>(mn[2 * p + 1]))
            });

            for l in 0..4 {
                // Quants of sub-blocks 2l (low nibbles) and 2l + 1 (high nibbles):
                // t[g] lane r = bytes 4g..4g+4 of row r's 32 bytes.
                let q = blk.add(16 + 32 * l);
                let mut t = [_mm512_setzero_si512(); 8];
                for (k, tk) in t.iter_mut().enumerate() {
                    let lo = _mm256_loadu_si256(q.add(k * stride) as *const __m256i);
                    let hi = _mm256_loadu_si256(q.add((k + 8) * stride) as *const __m256i);
                    *tk = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
                }
                swap_bits(&mut t, 0, 0);
                swap_bits(&mut t, 1, 1);
                swap_bits(&mut t, 2, 2);
                let wl: [__m512i; 8] = std::array::from_fn(|g| _mm512_and_si512(t[g], m0f));
                let wh: [__m512i; 8] =
                    std::array::from_fn(|g| _mm512_and_si512(_mm512_srli_epi32::<4>(t[g]), m0f));
                for (j, a) in acts.iter().enumerate() {
                    let y = a.qs.as_ptr().add(b * QK + 64 * l);
                    let z = _mm512_setzero_si512();
                    let (mut d0, mut d1, mut e0, mut e1) = (z, z, z, z);
                    for g in (0..8).step_by(2) {
                        d0 = _mm512_dpbusd_epi32(d0, wl[g], bcast4(y.add(4 * g)));
                        e0 = _mm512_dpbusd_epi32(e0, wl[g + 1], bcast4(y.add(4 * g + 4)));
                        d1 = _mm512_dpbusd_epi32(d1, wh[g], bcast4(y.add(32 + 4 * g)));
                        e1 = _mm512_dpbusd_epi32(e1, wh[g + 1], bcast4(y.add(36 + 4 * g)));
                    }
                    let dj = dots.as_mut_ptr().add(8 * j + 2 * l) as *mut __m512i;
                    _mm512_storeu_si512(dj, _mm512_add_epi32(d0, e0));
                    _mm512_storeu_si512(dj.add(1), _mm512_add_epi32(d1, e1));
                }
            }

            for (j, a) in acts.iter().enumerate() {
                let ad = _mm512_set1_ps(a.d[b]);
                let ds = _mm512_mul_ps(d, ad);
                let dm = _mm512_mul_ps(dmin, ad);
                let dot: [__m512i; 8] = std::array::from_fn(|s| {
                    _mm512_loadu_si512(dots[8 * j + s].as_ptr() as *const _)
                });
                let bsp = &a.bs_pairs[4 * b..4 * b + 4];
                let mut va = _mm512_loadu_ps(acc[j].as_ptr());
                let mut vm = _mm512_loadu_ps(accm[j].as_ptr());
                if j < n_gemm {
                    for p in 0..4 {
                        let isum = _mm512_add_epi32(
                            _mm512_mullo_epi32(sc[2 * p], dot[2 * p]),
                            _mm512_mullo_epi32(sc[2 * p + 1], dot[2 * p + 1]),
                        );
                        let imin = _mm512_madd_epi16(mp[p], _mm512_set1_epi32(bsp[p]));
                        va = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), ds, va);
                        vm = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), dm, vm);
                    }
                } else {
                    let mut isum = _mm512_mullo_epi32(sc[0], dot[0]);
                    for s in 1..8 {
                        isum = _mm512_add_epi32(isum, _mm512_mullo_epi32(sc[s], dot[s]));
                    }
                    let mut imin = _mm512_madd_epi16(mp[0], _mm512_set1_epi32(bsp[0]));
                    for p in 1..4 {
                        imin = _mm512_add_epi32(
                            imin,
                            _mm512_madd_epi16(mp[p], _mm512_set1_epi32(bsp[p])),
                        );
                    }
                    va = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), ds, va);
                    vm = _mm512_fmadd_ps(_mm512_cvtepi32_ps(imin), dm, vm);
                }
                _mm512_storeu_ps(acc[j].as_mut_ptr(), va);
                _mm512_storeu_ps(accm[j].as_mut_ptr(), vm);
            }
        }
        let mask: __mmask16 = if valid == 16 {
            0xffff
        } else {
            (1u16 << valid) - 1
        };
        for j in 0..n {
            let r = _mm512_sub_ps(
                _mm512_loadu_ps(acc[j].as_ptr()),
                _mm512_loadu_ps(accm[j].as_ptr()),
            );
            _mm512_mask_storeu_ps(out.add(j * rows), mask, r);
        }
    }

    /// One Q6_K row (`nb` blocks at `w`) times every activation row of `acts`
    /// (n rows of `nb` `block_q8_K`s); `res[j]` receives output column j.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
    pub(super) unsafe fn q6k_row(
        w: *const u8,
        nb: usize,
        acts: &[u8],
        tiled: bool,
        acc8: &mut [[f32; 8]],
        res: &mut [f32],
    ) {
        let n = res.len();
        let a_row = nb * Q8K_BLOCK;
        for a in acc8.iter_mut() {
            *a = [0.0; 8];
        }
        for r in res.iter_mut() {
            *r = 0.0;
        }
        let m0f = _mm512_set1_epi8(0x0f);
        let m30 = _mm512_set1_epi8(0x30);
        // Per 16-bit lane shift counts: lower 32 bytes / upper 32 bytes.
        let shl_42 = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
        let shr_02 = _mm512_inserti64x4::<1>(_mm512_set1_epi16(0), _mm256_set1_epi16(2));
        let sc_idx: [__m512i; 4] = std::array::from_fn(|k| {
            let k = 4 * k as i32;
            _mm512_set_epi32(
                k + 3,
                k + 3,
                k + 3,
                k + 3,
                k + 2,
                k + 2,
                k + 2,
                k + 2,
                k + 1,
                k + 1,
                k + 1,
                k + 1,
                k,
                k,
                k,
                k,
            )
        });
        for b in 0..nb {
            let blk = w.add(b * Q6K_BLOCK);
            let dbits = (blk.add(208) as *const u16).read_unaligned();
            let wd = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(dbits as i32)));
            // 6-bit codes of elements 64k..64k+64 in c[k].
            let mut c = [_mm512_setzero_si512(); 4];
            for hh in 0..2 {
                let ql = _mm512_loadu_si512(blk.add(64 * hh) as *const _);
                let qh = _mm512_broadcast_i64x4(_mm256_loadu_si256(
                    blk.add(128 + 32 * hh) as *const __m256i
                ));
                c[2 * hh] = _mm512_or_si512(
                    _mm512_and_si512(ql, m0f),
                    _mm512_and_si512(_mm512_sllv_epi16(qh, shl_42), m30),
                );
                c[2 * hh + 1] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_srli_epi16::<4>(ql), m0f),
                    _mm512_and_si512(_mm512_srlv_epi16(qh, shr_02), m30),
                );
            }
            let scb = _mm_loadu_si128(blk.add(192) as *const __m128i);
            let sc32 = _mm512_cvtepi8_epi32(scb);
            let sck: [__m512i; 4] =
                std::array::from_fn(|k| _mm512_permutexvar_epi32(sc_idx[k], sc32));
            let sc16 = _mm256_cvtepi8_epi16(scb);
            for j in 0..n {
                let ab = acts.as_ptr().add(j * a_row + b * Q8K_BLOCK);
                let yd = (ab as *const f32).read_unaligned();
                let y = ab.add(4);
                let z = _mm512_setzero_si512();
                let mut v = _mm512_mullo_epi32(
                    _mm512_dpbusd_epi32(z, c[0], _mm512_loadu_si512(y as *const _)),
                    sck[0],
                );
                for k in 1..4 {
                    let p =
                        _mm512_dpbusd_epi32(z, c[k], _mm512_loadu_si512(y.add(64 * k) as *const _));
                    v = _mm512_add_epi32(v, _mm512_mullo_epi32(p, sck[k]));
                }
                // Lane p: groups' partial dots (even + odd groups), minus the -32 offset.
                let lanes =
                    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
                let bs = _mm256_loadu_si256(ab.add(4 + QK) as *const __m256i);
                let corr = _mm256_slli_epi32::<5>(_mm256_madd_epi16(sc16, bs));
                let lanes = _mm256_sub_epi32(lanes, corr);
                if tiled {
                    let s4 = _mm_add_epi32(
                        _mm256_castsi256_si128(lanes),
                        _mm256_extracti128_si256::<1>(lanes),
                    );
                    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
                    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2));
                    let isum = _mm_cvtsi128_si32(s1);
                    let r = isum as f32 * wd;
                    res[j] = r.mul_add(yd, res[j]);
                } else {
                    let d = _mm256_set1_ps(yd * wd);
                    let a = _mm256_loadu_ps(acc8[j].as_ptr());
                    let a = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(lanes), a);
                    _mm256_storeu_ps(acc8[j].as_mut_ptr(), a);
                }
            }
        }
        if !tiled {
            for (r, a) in res.iter_mut().zip(acc8.iter()) {
                let a = _mm256_loadu_ps(a.as_ptr());
                // hsum_float_8: (hi + lo), then movehl, then movehdup
                let r4 = _mm_add_ps(_mm256_extractf128_ps::<1>(a), _mm256_castps256_ps128(a));
                let r2 = _mm_add_ps(r4, _mm_movehl_ps(r4, r4));
                let r1 = _mm_add_ss(r2, _mm_movehdup_ps(r2));
                *r = _mm_cvtss_f32(r1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f32(&mut self) -> f32 {
            ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
        /// A finite f16 of either sign over a wide range of exponents (subnormals
        /// included), biased towards typical scale magnitudes.
        fn f16_scale(&mut self) -> [u8; 2] {
            let v = if self.next().is_multiple_of(4) {
                let bits = (self.next() as u16) & 0x7bff; // exponent < 31: finite
                f16::from_bits(bits | (self.next() as u16 & 0x8000))
            } else {
                f16::from_f32(self.f32() * 0.02)
            };
            v.to_bits().to_le_bytes()
        }
    }

    fn rand_q4k(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut w = vec![0u8; rows * cols / QK * Q4K_BLOCK];
        for blk in w.chunks_exact_mut(Q4K_BLOCK) {
            for b in blk.iter_mut() {
                *b = rng.next() as u8;
            }
            let (d, m) = (rng.f16_scale(), rng.f16_scale());
            blk[..4].copy_from_slice(&[d[0], d[1], m[0], m[1]]);
        }
        w
    }

    fn rand_q6k(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut w = vec![0u8; rows * cols / QK * Q6K_BLOCK];
        for blk in w.chunks_exact_mut(Q6K_BLOCK) {
            for b in blk[..208].iter_mut() {
                *b = rng.next() as u8;
            }
            blk[208..].copy_from_slice(&rng.f16_scale());
        }
        w
    }

    /// Activations with the awkward cases: an all-zero block, +amax and -amax both
    /// present, exact rounding ties, wide magnitude spread.
    fn rand_x(rng: &mut Rng, n: usize, cols: usize) -> Vec<f32> {
        let mut x: Vec<f32> = (0..n * cols)
            .map(|_| rng.f32() * 2f32.powi((rng.next() % 8) as i32 - 3))
            .collect();
        for (j, row) in x.chunks_exact_mut(cols).enumerate() {
            match j % 4 {
                1 => row[..QK].iter_mut().for_each(|v| *v = 0.0),
                2 => {
                    row[5] = 9.0;
                    row[77] = -9.0;
                }
                3 => row[..QK]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(k, v)| *v = (k as f32 - 128.0) * 0.5),
                _ => {}
            }
        }
        x
    }

    fn assert_bits(got: &[f32], want: &[f32], what: &str) {
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {k}: {g} vs {w}");
        }
    }

    type MulMat = fn(&[u8], usize, usize, &[f32], usize, &mut [f32]);
    type MulMatPool = fn(&ThreadPool, &[u8], usize, usize, &[f32], usize, &mut [f32]);

    fn check(
        name: &str,
        gen: fn(&mut Rng, usize, usize) -> Vec<u8>,
        slow: MulMat,
        pooled: MulMatPool,
    ) {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let pools = [ThreadPool::new(2), ThreadPool::new(1), ThreadPool::new(3)];
        let ns: Vec<usize> = (1..=13).chain([16, 17]).collect();
        let mut case = 0;
        for cols in [256, 1024, 2048] {
            for rows in [8, 16, 48, 40, 37] {
                let w = gen(&mut rng, rows, cols);
                for &n in &ns {
                    let x = rand_x(&mut rng, n, cols);
                    let mut want = vec![0f32; n * rows];
                    slow(&w, rows, cols, &x, n, &mut want);
                    let mut got = vec![f32::NAN; n * rows];
                    pooled(&pools[case % 3], &w, rows, cols, &x, n, &mut got);
                    case += 1;
                    assert_bits(&got, &want, &format!("{name} {rows}x{cols} n={n}"));
                }
            }
        }
    }

    #[test]
    fn q4k_pool_is_bitwise_equal_to_scalar_replica() {
        check("q4k", rand_q4k, q4k::mul_mat_q4k, mul_mat_q4k_pool);
    }

    #[test]
    fn q6k_pool_is_bitwise_equal_to_scalar_replica() {
        check("q6k", rand_q6k, q6k::mul_mat_q6k, mul_mat_q6k_pool);
    }
}
