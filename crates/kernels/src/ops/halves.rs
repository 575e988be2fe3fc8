//! Dot products and AXPYs over half-precision stored values (f16 or bf16) with f32
//! arithmetic: for weights kept in half precision because every value is exactly a
//! half (LoRA pairs are usually saved so). Each value converts to f32 exactly, and the
//! SIMD paths multiply and add in the same order as [`super::dot_f32`] /
//! [`super::axpy_f32`], so results are bitwise those of the f32 kernels on the
//! converted values, with half the bytes read.

#[cfg(target_arch = "x86_64")]
use super::wide;

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
            let (n, pa, pb) = (a.len().min(b.len()), a.as_ptr() as *const u8, b.as_ptr());
            return unsafe {
                match kind {
                    Half::F16 => wide::dot::<{ wide::F16 }, 1>(pa, n, [pb])[0],
                    Half::Bf16 => wide::dot::<{ wide::BF16 }, 1>(pa, n, [pb])[0],
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
            let n = x.len().min(y.len());
            let (px, y) = (x.as_ptr() as *const u8, &mut y[..n]);
            return unsafe {
                match kind {
                    Half::F16 => wide::axpy_rows::<{ wide::F16 }>(px, 0, 0, &[alpha], y),
                    Half::Bf16 => wide::axpy_rows::<{ wide::BF16 }>(px, 0, 0, &[alpha], y),
                }
            };
        }
    }
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += alpha * kind.to_f32(xv);
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
