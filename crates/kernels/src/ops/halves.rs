//! Dot products and AXPYs over half-precision stored values (f16 or bf16) with f32
//! arithmetic: for weights kept in half precision because every value is exactly a
//! half (LoRA pairs are usually saved so). Each value converts to f32 exactly, and the
//! SIMD paths multiply and add in the same order as [`super::dot_f32`] /
//! [`super::axpy_f32`], so results are bitwise those of the f32 kernels on the
//! converted values, with half the bytes read.

/// How 16-bit values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    F16,
    Bf16,
}

impl Half {
    /// The f32 value of stored bits.
    #[inline]
    pub fn to_f32(self, h: u16) -> f32 {
        match self {
            Half::F16 => half::f16::from_bits(h).to_f32(),
            Half::Bf16 => f32::from_bits((h as u32) << 16),
        }
    }

    /// The bits of `v` if this format holds it exactly (NaN: never).
    #[inline]
    pub fn exact(self, v: f32) -> Option<u16> {
        match self {
            Half::F16 => {
                let h = half::f16::from_f32(v);
                (h.to_f32().to_bits() == v.to_bits()).then_some(h.to_bits())
            }
            Half::Bf16 => {
                (v.to_bits() & 0xffff == 0 && !v.is_nan()).then_some((v.to_bits() >> 16) as u16)
            }
        }
    }
}

/// `Σ a[i] * b[i]`, `a` stored as `kind`.
pub fn dot_half(kind: Half, a: &[u16], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: AVX2, FMA and F16C are part of the Avx2 level.
            return unsafe {
                match kind {
                    Half::F16 => x86::dot::<false>(a, b),
                    Half::Bf16 => x86::dot::<true>(a, b),
                }
            };
        }
    }
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        for j in 0..8 {
            acc[j] += kind.to_f32(a[i + j]) * b[i + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n8..a.len() {
        s += kind.to_f32(a[i]) * b[i];
    }
    s
}

/// `y += alpha * x`, `x` stored as `kind`.
pub fn axpy_half(kind: Half, alpha: f32, x: &[u16], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: AVX2, FMA and F16C are part of the Avx2 level.
            return unsafe {
                match kind {
                    Half::F16 => x86::axpy::<false>(alpha, x, y),
                    Half::Bf16 => x86::axpy::<true>(alpha, x, y),
                }
            };
        }
    }
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += alpha * kind.to_f32(xv);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Eight values at `p` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const BF16: bool>(p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        if BF16 {
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
        } else {
            _mm256_cvtph_ps(h)
        }
    }

    #[inline]
    fn one<const BF16: bool>(h: u16) -> f32 {
        if BF16 {
            f32::from_bits((h as u32) << 16)
        } else {
            half::f16::from_bits(h).to_f32()
        }
    }

    /// The same order as `dot_f32_avx2`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot<const BF16: bool>(a: &[u16], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc0 = _mm256_fmadd_ps(load8::<BF16>(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                load8::<BF16>(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            i += 16;
        }
        while i + 8 <= n {
            acc0 = _mm256_fmadd_ps(load8::<BF16>(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let hi = _mm256_extractf128_ps(acc, 1);
        let lo = _mm256_castps256_ps128(acc);
        let s4 = _mm_add_ps(hi, lo);
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, 1));
        let mut s = _mm_cvtss_f32(s1);
        while i < n {
            s += one::<BF16>(*pa.add(i)) * *pb.add(i);
            i += 1;
        }
        s
    }

    /// The same order as `axpy_f32_avx2`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn axpy<const BF16: bool>(alpha: f32, x: &[u16], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let av = _mm256_set1_ps(alpha);
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(av, load8::<BF16>(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) += alpha * one::<BF16>(*px.add(i));
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{axpy_f32, dot_f32};

    #[test]
    fn half_kernels_equal_the_f32_kernels_on_the_converted_values_bit_for_bit() {
        let mut seed = 5u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
        };
        for kind in [Half::F16, Half::Bf16] {
            for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 33, 640, 1001] {
                let bits: Vec<u16> = (0..n)
                    .map(|_| match kind {
                        Half::F16 => half::f16::from_f32(rnd()).to_bits(),
                        Half::Bf16 => (rnd().to_bits() >> 16) as u16,
                    })
                    .collect();
                let wide: Vec<f32> = bits.iter().map(|&h| kind.to_f32(h)).collect();
                for &h in &bits {
                    assert_eq!(kind.exact(kind.to_f32(h)), Some(h));
                }
                let x: Vec<f32> = (0..n).map(|_| rnd()).collect();
                assert_eq!(
                    dot_half(kind, &bits, &x).to_bits(),
                    dot_f32(&wide, &x).to_bits(),
                    "{kind:?} dot n={n}"
                );
                let (mut y1, mut y2): (Vec<f32>, Vec<f32>) = (x.clone(), x.clone());
                axpy_half(kind, 0.37, &bits, &mut y1);
                axpy_f32(0.37, &wide, &mut y2);
                assert_eq!(y1, y2, "{kind:?} axpy n={n}");
            }
        }
        // Values a format cannot hold exactly are refused.
        assert_eq!(Half::F16.exact(0.1), None);
        assert_eq!(Half::F16.exact(1e6), None);
        assert_eq!(Half::Bf16.exact(1.0 + 1.0 / 1024.0), None);
        assert_eq!(Half::F16.exact(-0.0), Some(0x8000));
        assert_eq!(Half::Bf16.exact(f32::NAN), None);
    }
}
