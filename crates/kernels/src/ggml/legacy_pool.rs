//! The production ggml Q5_0/Q8_0 replica: the AVX-512 VNNI twin of
//! [`mul_mat_legacy`] on the kernel thread pool, bitwise identical for every `n`; it
//! must never round differently (this is not `Numerics::Fast`).
//!
//! The arithmetic is exactly the one described in [`super::legacy`]: for each
//! (weight row, activation row) pair an `__m256` accumulator whose lane `l` owns
//! elements `4l..4l+4` of every block; per block, in block order,
//! `acc = fma(dw * dx, cvt(vpdpbusd(0, |w|, sign(x, w))), acc)`, where `dw * dx`
//! is the f32 product of the two scales (a product of broadcasts is the broadcast
//! of the product), then the fixed horizontal sum
//! `((l4 + l0) + (l6 + l2)) + ((l5 + l1) + (l7 + l3))`. The integer lane sums are
//! exact, so tiling over rows, activations and threads changes nothing.
//!
//! Weights are read in place (GGUF block layout). Tiles of up to 4 weight rows
//! (a quarter of the thread's chunk apart, so that they stream sequentially) x 4
//! activation rows keep up to 16 independent FMA chains in flight; the activations
//! are quantized once with [`quantize_row_q8_0`] (in parallel for large batches).

use super::legacy::{mul_mat_legacy, quantize_row_q8_0};
use crate::{GgmlType, ThreadPool};

/// Elements per block (Q5_0 and Q8_0).
const QK: usize = 32;
/// Bytes per block_q8_0: f16 d, 32 x i8.
const Q8_0_BYTES: usize = 34;
/// Bytes per block_q5_0: f16 d, u8 qh[4], u8 qs[16].
const Q5_0_BYTES: usize = 22;

/// A raw pointer that may be shared between the pool's threads; every user
/// writes a disjoint set of elements.
#[derive(Clone, Copy)]
struct SyncPtr<T>(*mut T);
// SAFETY: only used for disjoint writes from the pool's threads, which `run`
// joins before the owner's borrow ends.
unsafe impl<T> Sync for SyncPtr<T> {}
unsafe impl<T> Send for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    #[inline]
    fn get(self) -> *mut T {
        self.0
    }
}

/// Activations quantized to Q8_0 (`n` rows of `nb` 34-byte blocks), the f32
/// scale of every block (`n * nb`, row-major), the offset correction of every
/// block's 8 lanes and, per row, whether it holds a -128 byte.
struct Acts {
    q: Vec<u8>,
    d: Vec<f32>,
    /// `-off * (sum of the lane's 4 activation bytes)`, 8 per block: with the
    /// weights offset to `w + off` (unsigned), `vpdpbusd(corr, w + off, x)` is
    /// the exact `sum(w * x)` of each lane.
    corr: Vec<i32>,
    /// Row holds a -128 byte (only from non-finite or tiny inputs): there
    /// `vpsignb` wraps, `|w| * sign(x, w) != w * x`, and the offset form
    /// would differ from ggml, so such rows take the sign-based path.
    has_min: Vec<bool>,
}

fn quantize_acts(pool: &ThreadPool, x: &[f32], n: usize, cols: usize, off: i32) -> Acts {
    let nb = cols / QK;
    let rb = nb * Q8_0_BYTES;
    let mut q = vec![0u8; n * rb];
    if n >= 2 && n * cols >= 1 << 14 && pool.n_threads() > 1 {
        let qp = SyncPtr(q.as_mut_ptr());
        let chunk = n.div_ceil(pool.n_threads() * 4).max(1);
        pool.for_each_chunk(n, chunk, |j0, j1| {
            // SAFETY: rows j0..j1 of `q` belong to this chunk alone.
            let dst =
                unsafe { std::slice::from_raw_parts_mut(qp.get().add(j0 * rb), (j1 - j0) * rb) };
            quantize_row_q8_0(&x[j0 * cols..j1 * cols], dst);
        });
    } else {
        quantize_row_q8_0(&x[..n * cols], &mut q);
    }
    let d = q
        .chunks_exact(Q8_0_BYTES)
        .map(|b| half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32())
        .collect();
    let mut corr = Vec::with_capacity(n * nb * 8);
    for b in q.chunks_exact(Q8_0_BYTES) {
        corr.extend(
            b[2..]
                .chunks_exact(4)
                .map(|g| -off * g.iter().map(|&v| v as i8 as i32).sum::<i32>()),
        );
    }
    let has_min = if rb == 0 {
        vec![false; n]
    } else {
        q.chunks_exact(rb)
            .map(|row| row.chunks_exact(Q8_0_BYTES).any(|b| b[2..].contains(&0x80)))
            .collect()
    };
    Acts {
        q,
        d,
        corr,
        has_min,
    }
}

/// `out[j * rows + i] = W[i] · x[j]`, bitwise identical to [`mul_mat_legacy`]
/// (ggml's Q5_0/Q8_0 MUL_MAT), using AVX-512 VNNI when the CPU has it (else the
/// scalar replica) and the threads of `pool`.
#[allow(clippy::too_many_arguments)]
pub fn mul_mat_legacy_pool(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let bytes = match ty {
        GgmlType::Q8_0 => Q8_0_BYTES,
        GgmlType::Q5_0 => Q5_0_BYTES,
        other => panic!("mul_mat_legacy_pool: unsupported weight type {other:?}"),
    };
    assert_eq!(cols % QK, 0, "cols must be a multiple of 32");
    let nb = cols / QK;
    assert!(w.len() >= rows * nb * bytes, "weight data too short");
    assert!(x.len() >= n * cols, "activations too short");
    assert!(out.len() >= n * rows, "output too short");
    if rows == 0 || n == 0 {
        return;
    }

    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni {
        let q5 = ty == GgmlType::Q5_0;
        let acts = quantize_acts(pool, x, n, cols, if q5 { 16 } else { 128 });
        let op = SyncPtr(out.as_mut_ptr());
        // Enough chunks for dynamic balancing; tiny products stay on one thread.
        let work = rows * nb * n;
        let chunk = if work < 1 << 13 {
            rows
        } else {
            (rows.div_ceil(pool.n_threads() * 8).next_multiple_of(4)).clamp(16, 2048)
        };
        pool.for_each_chunk(rows, chunk, |r0, r1| {
            // SAFETY: the CPU supports the target features (checked above); the
            // slices were bounds-checked above; this chunk writes only the
            // outputs of rows r0..r1.
            unsafe {
                x86::rows_range(q5, w, bytes, nb, (r0, r1), &acts, n, op.get(), rows);
            }
        });
        return;
    }
    let _ = pool;
    mul_mat_legacy(ty, w, rows, cols, x, n, out);
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Acts, Q8_0_BYTES};
    use std::arch::x86_64::*;

    /// Activation rows per panel: the weight rows of a chunk are reused across
    /// the panel while its quantized activations stay in cache.
    const PANEL: usize = 64;

    /// Rows `r0..r1` of the product into `out` (full `n x rows` layout).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn rows_range(
        q5: bool,
        w: &[u8],
        bytes: usize,
        nb: usize,
        (r0, r1): (usize, usize),
        acts: &Acts,
        n: usize,
        out: *mut f32,
        rows: usize,
    ) {
        let row_bytes = nb * bytes;
        let xrow = nb * Q8_0_BYTES;
        let mut j0 = 0;
        while j0 < n {
            let j1 = (j0 + PANEL).min(n);
            // Tiles of 4 rows `q` apart (4 sequential weight streams, which the
            // hardware prefetchers follow far better than 4 adjacent rows),
            // then the 0-3 leftover rows together.
            let q = (r1 - r0) / 4;
            let rest = (r1 - r0) % 4;
            let tiles =
                (0..q)
                    .map(|k| (r0 + k, 4, q))
                    .chain((rest > 0).then_some((r0 + 4 * q, rest, 1)));
            for (i, nr, stride) in tiles {
                let mut j = j0;
                while j < j1 {
                    let nc = (j1 - j).min(4);
                    let t = Tile {
                        w: w.as_ptr().add(i * row_bytes),
                        wstride: stride * row_bytes,
                        x: acts.q.as_ptr().add(j * xrow),
                        xrow,
                        xd: acts.d.as_ptr().add(j * nb),
                        corr: acts.corr.as_ptr().add(j * nb * 8),
                        nb,
                        out: out.add(j * rows + i),
                        rows,
                        ostride: stride,
                    };
                    let sign = acts.has_min[j..j + nc].contains(&true);
                    match (q5, sign) {
                        (false, false) => dispatch::<false, false>(nr, nc, &t),
                        (false, true) => dispatch::<false, true>(nr, nc, &t),
                        (true, false) => dispatch::<true, false>(nr, nc, &t),
                        (true, true) => dispatch::<true, true>(nr, nc, &t),
                    }
                    j += nc;
                }
            }
            j0 = j1;
        }
    }

    /// `tile::<Q5, SIGN, nr, nc>`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn dispatch<const Q5: bool, const SIGN: bool>(nr: usize, nc: usize, t: &Tile) {
        match (nr, nc) {
            (4, 4) => tile::<Q5, SIGN, 4, 4>(t),
            (4, 3) => tile::<Q5, SIGN, 4, 3>(t),
            (4, 2) => tile::<Q5, SIGN, 4, 2>(t),
            (4, 1) => tile::<Q5, SIGN, 4, 1>(t),
            (3, 4) => tile::<Q5, SIGN, 3, 4>(t),
            (3, 3) => tile::<Q5, SIGN, 3, 3>(t),
            (3, 2) => tile::<Q5, SIGN, 3, 2>(t),
            (3, 1) => tile::<Q5, SIGN, 3, 1>(t),
            (2, 4) => tile::<Q5, SIGN, 2, 4>(t),
            (2, 3) => tile::<Q5, SIGN, 2, 3>(t),
            (2, 2) => tile::<Q5, SIGN, 2, 2>(t),
            (2, 1) => tile::<Q5, SIGN, 2, 1>(t),
            (1, 4) => tile::<Q5, SIGN, 1, 4>(t),
            (1, 3) => tile::<Q5, SIGN, 1, 3>(t),
            (1, 2) => tile::<Q5, SIGN, 1, 2>(t),
            _ => tile::<Q5, SIGN, 1, 1>(t),
        }
    }

    /// One tile's operands: `R` weight rows from `w`, `wstride` bytes apart, `C`
    /// activation rows from `x` (34-byte Q8_0 blocks) with block scales `xd`;
    /// results to `out[c * rows + r * ostride]`.
    struct Tile {
        w: *const u8,
        wstride: usize,
        x: *const u8,
        xrow: usize,
        xd: *const f32,
        corr: *const i32,
        nb: usize,
        out: *mut f32,
        rows: usize,
        ostride: usize,
    }

    /// The 32 weights of one block (Q5_0 when `Q5`, else Q8_0) at `p`: signed
    /// when `SIGN`, else offset to unsigned (`w + 128` for Q8_0, `w + 16` for
    /// Q5_0).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn load_w<const Q5: bool, const SIGN: bool>(p: *const u8) -> __m256i {
        if !Q5 {
            let v = _mm256_loadu_si256(p.add(2) as *const __m256i);
            return if SIGN {
                v
            } else {
                _mm256_xor_si256(v, _mm256_set1_epi8(0x80u8 as i8))
            };
        }
        // element j < 16: low nibble of qs[j]; j >= 16: high nibble of qs[j - 16];
        // bit j of qh is the fifth bit; value = that - 16.
        let qh = (p.add(2) as *const u32).read_unaligned();
        let qs = _mm_loadu_si128(p.add(6) as *const __m128i);
        let m = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(qs, m);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(qs), m);
        let nib = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(lo), hi);
        if SIGN {
            // fifth bit set: nib + 16 - 16 = nib; clear: nib - 16
            _mm256_mask_sub_epi8(nib, !qh, nib, _mm256_set1_epi8(16))
        } else {
            _mm256_mask_add_epi8(nib, qh, nib, _mm256_set1_epi8(16))
        }
    }

    /// The f16 scale at `p`, converted exactly and broadcast.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn load_d(p: *const u8) -> __m256 {
        let h = (p as *const u16).read_unaligned();
        _mm256_cvtph_ps(_mm_set1_epi16(h as i16))
    }

    /// `hsum_float_8`: `((l4 + l0) + (l6 + l2)) + ((l5 + l1) + (l7 + l3))`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn hsum(a: __m256) -> f32 {
        let r = _mm_add_ps(_mm256_extractf128_ps::<1>(a), _mm256_castps256_ps128(a));
        let t = _mm_add_ps(r, _mm_movehl_ps(r, r));
        _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
    }

    /// `R` weight rows x `C` activation rows. `SIGN`: ggml's
    /// `vpdpbusd(|w|, sign(x, w))`; else `vpdpbusd(corr, w + off, x)`, the same
    /// exact sums when no activation byte is -128.
    #[inline]
    #[allow(clippy::needless_range_loop)] // r, c index several arrays
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile<const Q5: bool, const SIGN: bool, const R: usize, const C: usize>(t: &Tile) {
        let bytes = if Q5 { 22 } else { 34 };
        let zero = _mm256_setzero_si256();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        for b in 0..t.nb {
            let mut wv = [zero; R];
            let mut aw = [zero; R];
            let mut dw = [_mm256_setzero_ps(); R];
            for r in 0..R {
                let p = t.w.add(r * t.wstride + b * bytes);
                dw[r] = load_d(p);
                wv[r] = load_w::<Q5, SIGN>(p);
                if SIGN {
                    aw[r] = _mm256_sign_epi8(wv[r], wv[r]);
                }
            }
            for c in 0..C {
                let xv = _mm256_loadu_si256(t.x.add(c * t.xrow + b * Q8_0_BYTES + 2) as *const _);
                let dx = _mm256_set1_ps(*t.xd.add(c * t.nb + b));
                let corr = if SIGN {
                    zero
                } else {
                    _mm256_loadu_si256(t.corr.add((c * t.nb + b) * 8) as *const _)
                };
                for r in 0..R {
                    let s = if SIGN {
                        _mm256_dpbusd_epi32(zero, aw[r], _mm256_sign_epi8(xv, wv[r]))
                    } else {
                        _mm256_dpbusd_epi32(corr, wv[r], xv)
                    };
                    let d = _mm256_mul_ps(dw[r], dx);
                    acc[r][c] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[r][c]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (c, &a) in acc.iter().enumerate() {
                *t.out.add(c * t.rows + r * t.ostride) = hsum(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random blocks: any quant bytes, f16 scales of moderate size and sign.
    fn rand_weights(
        rng: &mut rand::rngs::StdRng,
        ty: GgmlType,
        rows: usize,
        cols: usize,
    ) -> Vec<u8> {
        let bytes = if ty == GgmlType::Q8_0 {
            Q8_0_BYTES
        } else {
            Q5_0_BYTES
        };
        let mut w: Vec<u8> = (0..rows * cols / QK * bytes).map(|_| rng.gen()).collect();
        for b in w.chunks_exact_mut(bytes) {
            let d: f32 = rng.gen_range(-0.05..0.05);
            b[..2].copy_from_slice(&half::f16::from_f32(d).to_le_bytes());
        }
        w
    }

    fn same(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
    }

    fn check(
        pool: &ThreadPool,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
        x: &[f32],
        w: &[u8],
    ) -> Vec<f32> {
        let mut want = vec![0f32; n * rows];
        let mut got = vec![f32::NAN; n * rows];
        mul_mat_legacy(ty, w, rows, cols, x, n, &mut want);
        mul_mat_legacy_pool(pool, ty, w, rows, cols, x, n, &mut got);
        for (k, (a, b)) in got.iter().zip(&want).enumerate() {
            assert!(
                same(*a, *b),
                "{ty:?} rows {rows} cols {cols} n {n}: out[{k}] = {a:e} ({:#x}), want {b:e} ({:#x})",
                a.to_bits(),
                b.to_bits()
            );
        }
        want
    }

    #[test]
    fn bitwise_equal_to_scalar() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let pools = [ThreadPool::new(1), ThreadPool::new(2)];
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            for cols in [32, 64, 640, 2048] {
                for rows in [1, 3, 4, 7, 37, 130] {
                    let w = rand_weights(&mut rng, ty, rows, cols);
                    for n in 1..=13 {
                        let scale = [0.01f32, 1.0, 300.0][n % 3];
                        let x: Vec<f32> = (0..n * cols)
                            .map(|_| rng.gen_range(-scale..scale))
                            .collect();
                        check(&pools[n % 2], ty, rows, cols, n, &x, &w);
                    }
                }
            }
            // large enough to use several chunks and both threads
            let (rows, cols) = (1030, 640);
            let w = rand_weights(&mut rng, ty, rows, cols);
            for n in [1, 2, 5, 70] {
                let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-3.0..3.0)).collect();
                check(&pools[1], ty, rows, cols, n, &x, &w);
            }
        }
    }

    #[test]
    fn edge_inputs() {
        // zeros, subnormals (127 / amax overflows: quantized -128s with d = 0),
        // infinities (-128 with an infinite scale), extreme weights
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let pool = ThreadPool::new(2);
        let (rows, cols, n) = (9, 128, 5);
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            let mut w = rand_weights(&mut rng, ty, rows, cols);
            if ty == GgmlType::Q8_0 {
                for b in w.chunks_exact_mut(Q8_0_BYTES).step_by(3) {
                    b[2..].fill(0x80); // -128
                }
            }
            let mut x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
            x[..32].fill(0.0);
            for (k, v) in x[32..64].iter_mut().enumerate() {
                *v = f32::from_bits(k as u32 % 3) * if k % 2 == 0 { 1.0 } else { -1.0 };
            }
            x[cols + 5] = f32::INFINITY;
            x[2 * cols + 40] = f32::NEG_INFINITY;
            // a whole block of infinities quantizes to 32 x -128 with d = inf:
            // ggml's wrapped `vpsignb` makes every lane sum -128 * sum|w| <= 0, so
            // the output is an infinity, where the true w * x sums would mix
            // signs and give NaN
            x[3 * cols + 32..3 * cols + 64].fill(f32::INFINITY);
            let want = check(&pool, ty, rows, cols, n, &x, &w);
            assert!(want[3 * rows..4 * rows].iter().any(|v| v.is_infinite()));
        }
    }
}
