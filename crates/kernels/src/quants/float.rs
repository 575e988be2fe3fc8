//! Float rows: F32, F16 and BF16 (little-endian), dotted against F32 activations.
//!
//! Conversions round to nearest-even; the SIMD paths give the same bits as the scalar
//! ones (F16 via F16C, BF16 via integer rounding).

use crate::cpu::{self, SimdLevel};
use hangar_formats::GgmlType;

fn elem_bytes(t: GgmlType) -> usize {
    match t {
        GgmlType::F32 => 4,
        GgmlType::F16 | GgmlType::BF16 => 2,
        t => panic!("float: unsupported type {t}"),
    }
}

/// bf16 bits -> f32 (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// f32 -> bf16 bits, round to nearest-even; NaNs stay (quiet) NaNs.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// f16 bits -> f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// f32 -> f16 bits, round to nearest-even.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// Converts `dst.len()` elements of the row `src` of type `t` to f32.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) {
    dequantize_row_with(cpu::simd_level(), t, src, dst)
}

/// [`dequantize_row`] at a given SIMD level (lowered to what this CPU supports).
pub fn dequantize_row_with(level: SimdLevel, t: GgmlType, src: &[u8], dst: &mut [f32]) {
    let src = &src[..dst.len() * elem_bytes(t)];
    #[cfg(target_arch = "x86_64")]
    if t != GgmlType::F32 && level.min(cpu::detect()) >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX2+F16C; `src` holds `dst.len()` elements.
        unsafe { x86::dequantize_avx2(t, src, dst) };
        return;
    }
    let _ = level;
    match t {
        GgmlType::F32 => {
            for (y, x) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *y = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
            }
        }
        GgmlType::F16 => {
            for (y, x) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = f16_to_f32(u16::from_le_bytes([x[0], x[1]]));
            }
        }
        GgmlType::BF16 => {
            for (y, x) in dst.iter_mut().zip(src.chunks_exact(2)) {
                *y = bf16_to_f32(u16::from_le_bytes([x[0], x[1]]));
            }
        }
        t => panic!("float::dequantize_row: unsupported type {t}"),
    }
}

/// Converts `src` to a row of type `t` in `dst`.
pub fn quantize_row(t: GgmlType, src: &[f32], dst: &mut [u8]) {
    quantize_row_with(cpu::simd_level(), t, src, dst)
}

/// [`quantize_row`] at a given SIMD level (lowered to what this CPU supports).
pub fn quantize_row_with(level: SimdLevel, t: GgmlType, src: &[f32], dst: &mut [u8]) {
    let dst = &mut dst[..src.len() * elem_bytes(t)];
    #[cfg(target_arch = "x86_64")]
    if t != GgmlType::F32 && level.min(cpu::detect()) >= SimdLevel::Avx2 {
        // SAFETY: the CPU has AVX2+F16C; `dst` holds `src.len()` elements.
        unsafe { x86::quantize_avx2(t, src, dst) };
        return;
    }
    let _ = level;
    match t {
        GgmlType::F32 => {
            for (y, x) in dst.chunks_exact_mut(4).zip(src) {
                y.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for (y, x) in dst.chunks_exact_mut(2).zip(src) {
                y.copy_from_slice(&f32_to_f16(*x).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for (y, x) in dst.chunks_exact_mut(2).zip(src) {
                y.copy_from_slice(&f32_to_bf16(*x).to_le_bytes());
            }
        }
        t => panic!("float::quantize_row: unsupported type {t}"),
    }
}

fn check_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) {
    debug_assert!(w.len() >= n * elem_bytes(t) && a.len() >= n * 4);
    assert!(
        w.len() >= n * elem_bytes(t),
        "vec_dot: weight row too short"
    );
    assert!(a.len() >= n * 4, "vec_dot: activation row too short");
}

/// Dot product of `n` elements of the row `w` (type `t`) with the f32 row `a` (bytes).
#[inline]
pub fn vec_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    vec_dot_with(cpu::simd_level(), t, n, w, a)
}

/// [`vec_dot`] at a given SIMD level (lowered to what this CPU supports).
pub fn vec_dot_with(level: SimdLevel, t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(t, n, w, a);
    #[cfg(target_arch = "x86_64")]
    {
        let tt = match t {
            GgmlType::F32 => x86::TF32,
            GgmlType::F16 => x86::TF16,
            GgmlType::BF16 => x86::TBF16,
            t => panic!("float::vec_dot: unsupported type {t}"),
        };
        // SAFETY: the CPU supports the level; `check_dot` bounds every access.
        match level.min(cpu::detect()) {
            SimdLevel::Avx512Vnni => unsafe {
                return match tt {
                    x86::TF32 => x86::dot_512::<{ x86::TF32 }>(n, w.as_ptr(), a.as_ptr()),
                    x86::TF16 => x86::dot_512::<{ x86::TF16 }>(n, w.as_ptr(), a.as_ptr()),
                    _ => x86::dot_512::<{ x86::TBF16 }>(n, w.as_ptr(), a.as_ptr()),
                };
            },
            SimdLevel::Avx2 => unsafe {
                return match tt {
                    x86::TF32 => x86::dot_avx2::<{ x86::TF32 }>(n, w.as_ptr(), a.as_ptr()),
                    x86::TF16 => x86::dot_avx2::<{ x86::TF16 }>(n, w.as_ptr(), a.as_ptr()),
                    _ => x86::dot_avx2::<{ x86::TBF16 }>(n, w.as_ptr(), a.as_ptr()),
                };
            },
            SimdLevel::Scalar => {}
        }
    }
    let _ = level;
    vec_dot_scalar(t, n, w, a)
}

/// Plain-Rust reference of [`vec_dot`] (eight f32 partial sums).
pub fn vec_dot_scalar(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    check_dot(t, n, w, a);
    let a = a[..n * 4]
        .chunks_exact(4)
        .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]));
    let mut acc = [0.0f32; 8];
    let mut add = |i: usize, p: f32| acc[i & 7] += p;
    match t {
        GgmlType::F32 => {
            let w = w[..n * 4]
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes([x[0], x[1], x[2], x[3]]));
            w.zip(a).enumerate().for_each(|(i, (x, y))| add(i, x * y));
        }
        GgmlType::F16 => {
            let w = w[..n * 2]
                .chunks_exact(2)
                .map(|x| f16_to_f32(u16::from_le_bytes([x[0], x[1]])));
            w.zip(a).enumerate().for_each(|(i, (x, y))| add(i, x * y));
        }
        GgmlType::BF16 => {
            let w = w[..n * 2]
                .chunks_exact(2)
                .map(|x| bf16_to_f32(u16::from_le_bytes([x[0], x[1]])));
            w.zip(a).enumerate().for_each(|(i, (x, y))| add(i, x * y));
        }
        t => panic!("float::vec_dot_scalar: unsupported type {t}"),
    }
    acc.iter().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
    use hangar_formats::GgmlType;
    use std::arch::x86_64::*;

    pub const TF32: u8 = 0;
    pub const TF16: u8 = 1;
    pub const TBF16: u8 = 2;

    #[inline(always)]
    unsafe fn load_u16(p: *const u8) -> u16 {
        u16::from_le((p as *const u16).read_unaligned())
    }

    #[inline(always)]
    unsafe fn load_f32(p: *const u8) -> f32 {
        f32::from_bits(u32::from_le((p as *const u32).read_unaligned()))
    }

    #[inline(always)]
    unsafe fn scalar_w<const T: u8>(w: *const u8, i: usize) -> f32 {
        match T {
            TF32 => load_f32(w.add(4 * i)),
            TF16 => f16_to_f32(load_u16(w.add(2 * i))),
            _ => bf16_to_f32(load_u16(w.add(2 * i))),
        }
    }

    /// 16 weights from element `i` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    unsafe fn load16<const T: u8>(w: *const u8, i: usize) -> __m512 {
        match T {
            TF32 => _mm512_loadu_ps(w.add(4 * i) as *const f32),
            TF16 => _mm512_cvtph_ps(_mm256_loadu_si256(w.add(2 * i) as *const __m256i)),
            _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                _mm256_loadu_si256(w.add(2 * i) as *const __m256i),
            ))),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl")]
    pub(super) unsafe fn dot_512<const T: u8>(n: usize, w: *const u8, a: *const u8) -> f32 {
        let a = a as *const f32;
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i + 64 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 16 * k;
                *acc = _mm512_fmadd_ps(load16::<T>(w, j), _mm512_loadu_ps(a.add(j)), *acc);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(load16::<T>(w, i), _mm512_loadu_ps(a.add(i)), acc[0]);
            i += 16;
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let mut sum = _mm512_reduce_add_ps(s);
        while i < n {
            sum += scalar_w::<T>(w, i) * *a.add(i);
            i += 1;
        }
        sum
    }

    /// 8 weights from element `i` as f32.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<const T: u8>(w: *const u8, i: usize) -> __m256 {
        match T {
            TF32 => _mm256_loadu_ps(w.add(4 * i) as *const f32),
            TF16 => _mm256_cvtph_ps(_mm_loadu_si128(w.add(2 * i) as *const __m128i)),
            _ => _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
                _mm_loadu_si128(w.add(2 * i) as *const __m128i),
            ))),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_avx2<const T: u8>(n: usize, w: *const u8, a: *const u8) -> f32 {
        let a = a as *const f32;
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *acc = _mm256_fmadd_ps(load8::<T>(w, j), _mm256_loadu_ps(a.add(j)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(load8::<T>(w, i), _mm256_loadu_ps(a.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        let mut sum = _mm_cvtss_f32(s);
        while i < n {
            sum += scalar_w::<T>(w, i) * *a.add(i);
            i += 1;
        }
        sum
    }

    /// F16/BF16 -> f32; `src` holds exactly `dst.len()` elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dequantize_avx2(t: GgmlType, src: &[u8], dst: &mut [f32]) {
        let n = dst.len();
        debug_assert_eq!(src.len(), 2 * n);
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        if t == GgmlType::F16 {
            while i + 8 <= n {
                _mm256_storeu_ps(d.add(i), load8::<TF16>(s, i));
                i += 8;
            }
            for (j, y) in dst.iter_mut().enumerate().skip(i) {
                *y = f16_to_f32(load_u16(s.add(2 * j)));
            }
        } else {
            while i + 8 <= n {
                _mm256_storeu_ps(d.add(i), load8::<TBF16>(s, i));
                i += 8;
            }
            for (j, y) in dst.iter_mut().enumerate().skip(i) {
                *y = bf16_to_f32(load_u16(s.add(2 * j)));
            }
        }
    }

    /// f32 -> F16/BF16 with round-to-nearest-even; `dst` holds exactly `src.len()` elements.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_avx2(t: GgmlType, src: &[f32], dst: &mut [u8]) {
        let n = src.len();
        debug_assert_eq!(dst.len(), 2 * n);
        let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
        let mut i = 0;
        if t == GgmlType::F16 {
            while i + 8 <= n {
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(s.add(i)));
                _mm_storeu_si128(d.add(2 * i) as *mut __m128i, h);
                i += 8;
            }
            for j in i..n {
                dst[2 * j..2 * j + 2].copy_from_slice(&f32_to_f16(src[j]).to_le_bytes());
            }
        } else {
            let absm = _mm256_set1_epi32(0x7fff_ffff);
            let inf = _mm256_set1_epi32(0x7f80_0000);
            let bias = _mm256_set1_epi32(0x7fff);
            let one = _mm256_set1_epi32(1);
            let qnan = _mm256_set1_epi32(0x40);
            while i + 8 <= n {
                let u = _mm256_loadu_si256(s.add(i) as *const __m256i);
                let nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, absm), inf);
                let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(u), one);
                let r = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, _mm256_add_epi32(bias, lsb)));
                let q = _mm256_or_si256(_mm256_srli_epi32::<16>(u), qnan);
                let v = _mm256_blendv_epi8(r, q, nan);
                // 8 x u32 (< 2^16) -> 8 x u16.
                let p =
                    _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
                _mm_storeu_si128(d.add(2 * i) as *mut __m128i, p);
                i += 8;
            }
            for j in i..n {
                dst[2 * j..2 * j + 2].copy_from_slice(&f32_to_bf16(src[j]).to_le_bytes());
            }
        }
    }
}
