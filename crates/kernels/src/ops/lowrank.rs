//! The two products of a low-rank (LoRA) delta over several token rows, with each
//! weight row loaded once for all of them: `xa[k][j] = A_j · x_k` four tokens at a
//! time, and `y_k += Σ_j xa[k][j] · Bᵀ_j` with `y_k` held in registers across the rank.
//! Every output takes exactly the arithmetic of [`super::dot_f32`] /
//! [`super::axpy_f32`] (or their half-storage twins) called once per token and rank
//! row, so results are bitwise those of the one-at-a-time code and independent of how
//! many rows a batch has.

use super::{axpy_f32, axpy_half, dot_f32, dot_half, Half};

/// A factor's values: f32, or half precision (see [`Half`]).
#[derive(Debug, Clone, Copy)]
pub enum Factor<'a> {
    F32(&'a [f32]),
    Half(Half, &'a [u16]),
}

impl Factor<'_> {
    fn len(&self) -> usize {
        match self {
            Factor::F32(v) => v.len(),
            Factor::Half(_, v) => v.len(),
        }
    }
}

/// `out[k] = w[off .. off + n] · xs[k]` for the (at most four) rows of `xs`, each of
/// `n` values.
pub fn dot_rows(w: Factor, off: usize, n: usize, xs: &[&[f32]], out: &mut [f32]) {
    assert!(xs.len() <= 4 && out.len() >= xs.len() && off + n <= w.len());
    assert!(xs.iter().all(|x| x.len() == n), "dot_rows: row lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 && xs.len() > 1 {
            let mut p = [xs[0].as_ptr(); 4];
            for (p, x) in p.iter_mut().zip(xs) {
                *p = x.as_ptr();
            }
            // SAFETY: AVX2, FMA and F16C are part of the Avx2 level; every row holds n
            // values and the factor off + n (asserted).
            let s = unsafe {
                match w {
                    Factor::F32(v) => x86::dot4::<F32>(v.as_ptr().add(off) as *const u8, n, p),
                    Factor::Half(Half::F16, v) => {
                        x86::dot4::<F16>(v.as_ptr().add(off) as *const u8, n, p)
                    }
                    Factor::Half(Half::Bf16, v) => {
                        x86::dot4::<BF16>(v.as_ptr().add(off) as *const u8, n, p)
                    }
                }
            };
            out[..xs.len()].copy_from_slice(&s[..xs.len()]);
            return;
        }
    }
    for (o, x) in out.iter_mut().zip(xs) {
        *o = match w {
            Factor::F32(v) => dot_f32(&v[off..off + n], x),
            Factor::Half(k, v) => dot_half(k, &v[off..off + n], x),
        };
    }
}

/// `y[i] += Σ_j coef[j] · w[j * stride + off + i]`, `j` ascending: what one
/// [`axpy_f32`] per `j` gives, with `y` read and written once.
pub fn axpy_rows(w: Factor, stride: usize, off: usize, coef: &[f32], y: &mut [f32]) {
    let n = y.len();
    assert!(coef.is_empty() || (coef.len() - 1) * stride + off + n <= w.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: as above; the last row's range is inside the factor (asserted).
            unsafe {
                match w {
                    Factor::F32(v) => {
                        x86::axpy_rows::<F32>(v.as_ptr() as *const u8, stride, off, coef, y)
                    }
                    Factor::Half(Half::F16, v) => {
                        x86::axpy_rows::<F16>(v.as_ptr() as *const u8, stride, off, coef, y)
                    }
                    Factor::Half(Half::Bf16, v) => {
                        x86::axpy_rows::<BF16>(v.as_ptr() as *const u8, stride, off, coef, y)
                    }
                }
            }
            return;
        }
    }
    for (j, &c) in coef.iter().enumerate() {
        let at = j * stride + off;
        match w {
            Factor::F32(v) => axpy_f32(c, &v[at..at + n], y),
            Factor::Half(k, v) => axpy_half(k, c, &v[at..at + n], y),
        }
    }
}

const F32: u8 = 0;
const F16: u8 = 1;
const BF16: u8 = 2;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{F16, F32};
    use std::arch::x86_64::*;

    /// Eight values from element `i` of a factor stored as `T`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const T: u8>(p: *const u8, i: usize) -> __m256 {
        match T {
            F32 => _mm256_loadu_ps((p as *const f32).add(i)),
            F16 => _mm256_cvtph_ps(_mm_loadu_si128((p as *const u16).add(i) as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128((p as *const u16).add(i) as *const __m128i),
            ))),
        }
    }

    #[inline]
    unsafe fn one<const T: u8>(p: *const u8, i: usize) -> f32 {
        match T {
            F32 => *(p as *const f32).add(i),
            F16 => half::f16::from_bits(*(p as *const u16).add(i)).to_f32(),
            _ => f32::from_bits((*(p as *const u16).add(i) as u32) << 16),
        }
    }

    /// Four `dot_f32_avx2`s sharing the weight loads (same chunks, same reduction).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4<const T: u8>(w: *const u8, n: usize, x: [*const f32; 4]) -> [f32; 4] {
        let mut acc0 = [_mm256_setzero_ps(); 4];
        let mut acc1 = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 16 <= n {
            let (w0, w1) = (load8::<T>(w, i), load8::<T>(w, i + 8));
            for k in 0..4 {
                acc0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[k].add(i)), acc0[k]);
                acc1[k] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[k].add(i + 8)), acc1[k]);
            }
            i += 16;
        }
        if i + 8 <= n {
            let w0 = load8::<T>(w, i);
            for k in 0..4 {
                acc0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[k].add(i)), acc0[k]);
            }
            i += 8;
        }
        let mut out = [0f32; 4];
        for k in 0..4 {
            let acc = _mm256_add_ps(acc0[k], acc1[k]);
            let hi = _mm256_extractf128_ps(acc, 1);
            let lo = _mm256_castps256_ps128(acc);
            let s4 = _mm_add_ps(hi, lo);
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
            let mut s = _mm_cvtss_f32(s1);
            for t in i..n {
                s += one::<T>(w, t) * *x[k].add(t);
            }
            out[k] = s;
        }
        out
    }

    /// `axpy_f32_avx2` once per coefficient, each 8-value chunk of `y` kept in a
    /// register across them (the tail in scalar, as that kernel's).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy_rows<const T: u8>(
        w: *const u8,
        stride: usize,
        off: usize,
        coef: &[f32],
        y: &mut [f32],
    ) {
        let n = y.len();
        let py = y.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            let mut acc = _mm256_loadu_ps(py.add(i));
            for (j, &c) in coef.iter().enumerate() {
                acc = _mm256_fmadd_ps(_mm256_set1_ps(c), load8::<T>(w, j * stride + off + i), acc);
            }
            _mm256_storeu_ps(py.add(i), acc);
            i += 8;
        }
        while i < n {
            for (j, &c) in coef.iter().enumerate() {
                *py.add(i) += c * one::<T>(w, j * stride + off + i);
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_products_equal_one_call_per_row_bit_for_bit() {
        let mut seed = 9u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        };
        let (rank, n) = (5usize, 203usize);
        let wf: Vec<f32> = (0..rank * n + 7).map(|_| rnd()).collect();
        let wh: Vec<u16> = wf
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        let wb: Vec<u16> = wf.iter().map(|&v| (v.to_bits() >> 16) as u16).collect();
        let factors = [
            Factor::F32(&wf),
            Factor::Half(Half::F16, &wh),
            Factor::Half(Half::Bf16, &wb),
        ];
        let xs: Vec<Vec<f32>> = (0..4).map(|_| (0..n).map(|_| rnd()).collect()).collect();
        for w in factors {
            let wide: Vec<f32> = match w {
                Factor::F32(v) => v.to_vec(),
                Factor::Half(k, v) => v.iter().map(|&h| k.to_f32(h)).collect(),
            };
            for len in [1usize, 7, 8, 9, 16, 17, 64, n] {
                for rows in 1..=4 {
                    let x: Vec<&[f32]> = xs.iter().take(rows).map(|x| &x[..len]).collect();
                    let mut got = [0f32; 4];
                    dot_rows(w, 3, len, &x, &mut got);
                    for k in 0..rows {
                        let want = dot_f32(&wide[3..3 + len], x[k]);
                        assert_eq!(
                            got[k].to_bits(),
                            want.to_bits(),
                            "{w:?} dot len {len} row {k}"
                        );
                    }
                }
                let coef: Vec<f32> = (0..rank).map(|_| rnd()).collect();
                let mut got = xs[0][..len].to_vec();
                axpy_rows(w, n, 2, &coef, &mut got);
                let mut want = xs[0][..len].to_vec();
                for (j, &c) in coef.iter().enumerate() {
                    axpy_f32(c, &wide[j * n + 2..j * n + 2 + len], &mut want);
                }
                assert_eq!(got, want, "{w:?} axpy len {len}");
            }
        }
    }
}
