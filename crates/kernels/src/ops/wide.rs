//! The AVX2 dot and AXPY kernels of [`super::dot_f32`] / [`super::axpy_f32`], generic
//! over how the weight side is stored (f32, f16 or bf16, each widened to f32 exactly),
//! and their several-row forms for low-rank deltas. One implementation for all: the
//! half-storage and blocked paths must give the f32 kernels' bits, so they share the
//! chunking, the accumulator pairing and the final reduction.

use std::arch::x86_64::*;

/// Storage types (the `T` parameter).
pub(super) const F32: u8 = 0;
pub(super) const F16: u8 = 1;
pub(super) const BF16: u8 = 2;

/// Eight values from element `i` of storage `T`, as f32.
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

/// Element `i` of storage `T`, as f32.
#[inline]
unsafe fn one<const T: u8>(p: *const u8, i: usize) -> f32 {
    match T {
        F32 => *(p as *const f32).add(i),
        F16 => half::f16::from_bits(*(p as *const u16).add(i)).to_f32(),
        _ => f32::from_bits((*(p as *const u16).add(i) as u32) << 16),
    }
}

/// The sum of the two accumulators' 16 lanes, in a fixed tree.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn reduce(acc0: __m256, acc1: __m256) -> f32 {
    let acc = _mm256_add_ps(acc0, acc1);
    let s4 = _mm_add_ps(_mm256_extractf128_ps(acc, 1), _mm256_castps256_ps128(acc));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1)))
}

/// `Σ w[i] · x[k][i]` for `R` rows `x[k]` of `n` values, each row's sum in the same
/// order: 16-value chunks into two accumulators, an 8-value chunk into the first, the
/// reduction, then the tail in scalar.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot<const T: u8, const R: usize>(
    w: *const u8,
    n: usize,
    x: [*const f32; R],
) -> [f32; R] {
    let mut acc0 = [_mm256_setzero_ps(); R];
    let mut acc1 = [_mm256_setzero_ps(); R];
    let mut i = 0;
    while i + 16 <= n {
        let (w0, w1) = (load8::<T>(w, i), load8::<T>(w, i + 8));
        for k in 0..R {
            acc0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[k].add(i)), acc0[k]);
            acc1[k] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[k].add(i + 8)), acc1[k]);
        }
        i += 16;
    }
    if i + 8 <= n {
        let w0 = load8::<T>(w, i);
        for k in 0..R {
            acc0[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[k].add(i)), acc0[k]);
        }
        i += 8;
    }
    let mut out = [0f32; R];
    for k in 0..R {
        let mut s = reduce(acc0[k], acc1[k]);
        for t in i..n {
            s += one::<T>(w, t) * *x[k].add(t);
        }
        out[k] = s;
    }
    out
}

/// `y[i] += Σ_j coef[j] · w[j · stride + off + i]`, `j` ascending: one AXPY per
/// coefficient (FMA over 8-value chunks, the tail in scalar multiply-add), each chunk
/// of `y` kept in a register across them.
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
