//! Attention of one token's query heads over a paged KV cache.
//!
//! Numerics follow an f16 KV cache: the caller stores K/V rounded to f16 and rounds
//! Q; the softmax probabilities are rounded to f16 before they weight V (as in an
//! f16 matmul), accumulations stay f32.
//!
//! The `group` query heads that share a KV head are processed together, so each key
//! and value row is loaded once for all of them; on AVX-512 the value accumulation
//! stays in registers across all keys. Scores use f32 throughout (no quantization of
//! Q or K), so results match the scalar reference to rounding.

use crate::kv_format::{load_row, KvFormat};
use crate::ops;

/// One KV head of one layer, addressed through a sequence's block table.
#[derive(Clone, Copy)]
pub struct PagedKv<'a> {
    /// The layer's key storage: `blocks * block_size` rows of `row_stride` words
    /// (f16 bits, or Q8_0/Q4_0 blocks: see [`KvFormat`]).
    pub k: &'a [u16],
    pub v: &'a [u16],
    pub table: &'a [u32],
    pub block_size: usize,
    /// Words per cache row (all KV heads of a token).
    pub row_stride: usize,
    /// Offset of this KV head inside a row, in words.
    pub head_offset: usize,
    /// How the rows are stored.
    pub format: KvFormat,
}

impl PagedKv<'_> {
    #[inline(always)]
    fn offset(&self, pos: usize) -> usize {
        let b = self.table[pos / self.block_size] as usize;
        (b * self.block_size + pos % self.block_size) * self.row_stride + self.head_offset
    }

    /// Calls `f(j, offset)` for the keys `lo..lo + n` (j counts from 0), walking the
    /// block table a block at a time: one division per block, not per key.
    #[inline(always)]
    fn for_each_row(&self, lo: usize, n: usize, mut f: impl FnMut(usize, usize)) {
        let mut j = 0;
        while j < n {
            let pos = lo + j;
            let slot = pos % self.block_size;
            let run = (self.block_size - slot).min(n - j);
            let base = (self.table[pos / self.block_size] as usize * self.block_size + slot)
                * self.row_stride
                + self.head_offset;
            for r in 0..run {
                f(j + r, base + r * self.row_stride);
            }
            j += run;
        }
    }
}

/// `out[h] = softmax(scale * q[h] · K[lo..hi]) · V[lo..hi]` for the `group` heads in
/// `q` (`group * head_dim` floats). `scores` needs `group * (hi - lo)` floats.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    kv: &PagedKv,
    q: &[f32],
    group: usize,
    head_dim: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let n = hi - lo;
    assert!(
        q.len() >= group * head_dim && out.len() >= group * head_dim && scores.len() >= group * n
    );
    if n == 0 {
        out[..group * head_dim].fill(0.0);
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni
            && head_dim.is_multiple_of(64)
            && kv.format == KvFormat::F16
        {
            // SAFETY: AVX-512F presence checked; all offsets are within the slices
            // (table entries were validated by the caller, asserted sizes above).
            unsafe {
                match group {
                    1 => return avx512::attend::<1, 4>(kv, q, head_dim, lo, n, scale, scores, out),
                    2 => return avx512::attend::<2, 4>(kv, q, head_dim, lo, n, scale, scores, out),
                    4 => return avx512::attend::<4, 4>(kv, q, head_dim, lo, n, scale, scores, out),
                    8 => return avx512::attend::<8, 2>(kv, q, head_dim, lo, n, scale, scores, out),
                    _ => {}
                }
            }
        }
    }
    attend_scalar(kv, q, group, head_dim, lo, hi, scale, scores, out)
}

/// Reference implementation of [`attend`], and its path for quantized rows (each key
/// and value row is expanded to f32 once for all `group` heads).
#[allow(clippy::too_many_arguments)]
pub fn attend_scalar(
    kv: &PagedKv,
    q: &[f32],
    group: usize,
    head_dim: usize,
    lo: usize,
    hi: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let n = hi - lo;
    let words = kv.format.words(head_dim);
    let mut row = vec![0f32; head_dim];
    for j in 0..n {
        let off = kv.offset(lo + j);
        load_row(kv.format, &kv.k[off..off + words], &mut row);
        for h in 0..group {
            scores[h * n + j] = ops::dot_f32(&q[h * head_dim..(h + 1) * head_dim], &row) * scale;
        }
    }
    for h in 0..group {
        ops::softmax_inplace(&mut scores[h * n..(h + 1) * n]);
    }
    // The probabilities meet f16 values: round them as an f16 matmul operand is.
    ops::round_to_f16(&mut scores[..group * n]);
    out[..group * head_dim].fill(0.0);
    for j in 0..n {
        let off = kv.offset(lo + j);
        load_row(kv.format, &kv.v[off..off + words], &mut row);
        for h in 0..group {
            ops::axpy_f32(
                scores[h * n + j],
                &row,
                &mut out[h * head_dim..(h + 1) * head_dim],
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)]
mod avx512 {
    use super::PagedKv;
    use crate::ops::exp_fast;
    use std::arch::x86_64::*;

    /// Keys between a key's prefetch and its use.
    const AHEAD: usize = 4;
    /// Keys whose value rows are accumulated together (16 f16 rows of 256: 8 KiB).
    const KEY_RUN: usize = 16;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    /// `G` query heads per KV head; `C` value columns of 16 floats accumulated in
    /// registers per head (G * C <= 16 keeps every accumulator in a zmm register;
    /// head_dim must be a multiple of 16 * C).
    pub(super) unsafe fn attend<const G: usize, const C: usize>(
        kv: &PagedKv,
        q: &[f32],
        hd: usize,
        lo: usize,
        n: usize,
        scale: f32,
        scores: &mut [f32],
        out: &mut [f32],
    ) {
        let (kp, vp, qp, sp) = (
            kv.k.as_ptr(),
            kv.v.as_ptr(),
            q.as_ptr(),
            scores.as_mut_ptr(),
        );
        // Scores: each key row loaded once for the G heads.
        let mut max = [f32::NEG_INFINITY; G];
        let fetch = |pos: usize| {
            let at = kv.offset(pos);
            let mut b = 0;
            while b < hd * 2 {
                _mm_prefetch::<_MM_HINT_T0>((kp.add(at) as *const i8).wrapping_add(b));
                _mm_prefetch::<_MM_HINT_T1>((vp.add(at) as *const i8).wrapping_add(b));
                b += 64;
            }
        };
        for j in 0..AHEAD.min(n) {
            fetch(lo + j);
        }
        kv.for_each_row(lo, n, |j, off| {
            // The cache rows of a serving step's many sequences come from L3: ask for
            // key j + AHEAD (into L1) and its value row (into L2, read after the
            // softmax) while key j is scored (`attn_bench` cold: ~2x hot without).
            if j + AHEAD < n {
                fetch(lo + j + AHEAD);
            }
            let key = kp.add(off);
            let mut acc = [_mm512_setzero_ps(); G];
            let mut d = 0;
            while d < hd {
                let kv16 = _mm512_cvtph_ps(_mm256_loadu_si256(key.add(d) as *const __m256i));
                for h in 0..G {
                    acc[h] = _mm512_fmadd_ps(_mm512_loadu_ps(qp.add(h * hd + d)), kv16, acc[h]);
                }
                d += 16;
            }
            for h in 0..G {
                let s = _mm512_reduce_add_ps(acc[h]) * scale;
                *sp.add(h * n + j) = s;
                if s > max[h] {
                    max[h] = s;
                }
            }
        });
        // Softmax per head (exp_fast vectorizes under this function's features).
        for h in 0..G {
            let row = std::slice::from_raw_parts_mut(sp.add(h * n), n);
            let m = max[h];
            let mut sum = 0.0f32;
            for v in row.iter_mut() {
                *v = exp_fast(*v - m);
                sum += *v;
            }
            let inv = 1.0 / sum;
            for v in row.iter_mut() {
                *v *= inv;
            }
            crate::ops::round_to_f16(row);
        }
        // Values: register-resident accumulators, C columns at a time, over runs of
        // KEY_RUN keys (the partial sums kept in `out` between runs), so a run's value
        // rows stay in L1 for all hd / (16 C) column passes instead of coming from L2
        // once per pass. Each output still sums its keys in order.
        let op = out.as_mut_ptr();
        let mut k0 = 0;
        while k0 < n {
            let run = KEY_RUN.min(n - k0);
            let mut d0 = 0;
            while d0 < hd {
                let mut acc = [[_mm512_setzero_ps(); C]; G];
                if k0 > 0 {
                    for h in 0..G {
                        for (ci, a) in acc[h].iter_mut().enumerate() {
                            *a = _mm512_loadu_ps(op.add(h * hd + d0 + ci * 16));
                        }
                    }
                }
                kv.for_each_row(lo + k0, run, |j, off| {
                    let val = vp.add(off + d0);
                    let mut vv = [_mm512_setzero_ps(); C];
                    for (ci, v) in vv.iter_mut().enumerate() {
                        *v =
                            _mm512_cvtph_ps(_mm256_loadu_si256(val.add(ci * 16) as *const __m256i));
                    }
                    for h in 0..G {
                        let p = _mm512_set1_ps(*sp.add(h * n + k0 + j));
                        for ci in 0..C {
                            acc[h][ci] = _mm512_fmadd_ps(p, vv[ci], acc[h][ci]);
                        }
                    }
                });
                for h in 0..G {
                    for (ci, a) in acc[h].iter().enumerate() {
                        _mm512_storeu_ps(op.add(h * hd + d0 + ci * 16), *a);
                    }
                }
                d0 += C * 16;
            }
            k0 += run;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_attention_matches_scalar_over_paged_blocks() {
        let (hd, nkv, bs) = (128usize, 2usize, 4usize);
        let stride = hd * nkv;
        let blocks = 16;
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let mut f16 = || half::f16::from_f32(rnd()).to_bits();
        let k: Vec<u16> = (0..blocks * bs * stride).map(|_| f16()).collect();
        let v: Vec<u16> = (0..blocks * bs * stride).map(|_| f16()).collect();
        // A scrambled block table.
        let table: Vec<u32> = vec![5, 2, 9, 0, 14, 7, 3, 11, 1, 4];
        for group in [1usize, 2, 3, 4, 8] {
            let q: Vec<f32> = (0..group * hd).map(|_| rnd() * 4.0).collect();
            for (lo, hi) in [(0usize, 1usize), (0, 17), (3, 40), (10, 11)] {
                let kv = PagedKv {
                    k: &k,
                    v: &v,
                    table: &table,
                    block_size: bs,
                    row_stride: stride,
                    head_offset: hd,
                    format: KvFormat::F16,
                };
                let n = hi - lo;
                let (mut s1, mut s2) = (vec![0.0; group * n], vec![0.0; group * n]);
                let (mut o1, mut o2) = (vec![1.0; group * hd], vec![2.0; group * hd]);
                attend(&kv, &q, group, hd, lo, hi, 0.1, &mut s1, &mut o1);
                attend_scalar(&kv, &q, group, hd, lo, hi, 0.1, &mut s2, &mut o2);
                for (a, b) in o1.iter().zip(&o2) {
                    assert!(
                        (a - b).abs() < 1e-5,
                        "group {group} range {lo}..{hi}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn quantized_rows_attend_like_their_dequantized_values() {
        // Q8_0 / Q4_0 storage: the result is the attention over the values the blocks
        // hold (computed here naively in f64 over the dequantized rows).
        use crate::kv_format::{load_row, store_row};
        let (hd, nkv, bs, blocks) = (64usize, 2usize, 4usize, 12usize);
        let mut seed = 11u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let rows = blocks * bs;
        let kf: Vec<f32> = (0..rows * nkv * hd).map(|_| rnd() * 3.0).collect();
        let vf: Vec<f32> = (0..rows * nkv * hd).map(|_| rnd() * 3.0).collect();
        let table: Vec<u32> = vec![3, 0, 7, 11, 5, 1];
        for format in [KvFormat::Q8_0, KvFormat::Q4_0] {
            let w = format.words(hd);
            let stride = nkv * w;
            let (mut k, mut v) = (vec![0u16; rows * stride], vec![0u16; rows * stride]);
            for r in 0..rows * nkv {
                store_row(
                    format,
                    &kf[r * hd..(r + 1) * hd],
                    &mut k[r * w..(r + 1) * w],
                );
                store_row(
                    format,
                    &vf[r * hd..(r + 1) * hd],
                    &mut v[r * w..(r + 1) * w],
                );
            }
            let kv = PagedKv {
                k: &k,
                v: &v,
                table: &table,
                block_size: bs,
                row_stride: stride,
                head_offset: w,
                format,
            };
            let group = 2;
            let q: Vec<f32> = (0..group * hd).map(|_| rnd()).collect();
            let (lo, hi) = (2usize, 21usize);
            let n = hi - lo;
            let (mut scores, mut out) = (vec![0.0; group * n], vec![0.0; group * hd]);
            attend(&kv, &q, group, hd, lo, hi, 0.125, &mut scores, &mut out);
            // Naive reference over the stored values of KV head 1.
            let row = |buf: &[u16], pos: usize| {
                let b = table[pos / bs] as usize * bs + pos % bs;
                let mut y = vec![0f32; hd];
                load_row(format, &buf[b * stride + w..b * stride + 2 * w], &mut y);
                y
            };
            for h in 0..group {
                let qh = &q[h * hd..(h + 1) * hd];
                let logits: Vec<f64> = (lo..hi)
                    .map(|p| {
                        let kr = row(&k, p);
                        0.125
                            * qh.iter()
                                .zip(&kr)
                                .map(|(a, b)| f64::from(a * b))
                                .sum::<f64>()
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                for d in 0..hd {
                    let want: f64 = (lo..hi)
                        .zip(&logits)
                        .map(|(p, l)| (l - m).exp() / z * f64::from(row(&v, p)[d]))
                        .sum();
                    let got = f64::from(out[h * hd + d]);
                    // The probabilities are rounded to f16 (2^-11 relative).
                    assert!(
                        (got - want).abs() < 2e-3,
                        "{format:?} head {h} dim {d}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
