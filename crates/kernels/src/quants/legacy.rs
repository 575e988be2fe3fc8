//! GGML legacy 32-element block formats: Q4_0, Q5_0 and Q8_0.
//!
//! Layouts (little-endian, no padding, alignment 1):
//! - Q4_0, 18 bytes: f16 `d`, 16 bytes of nibbles. Element `j < 16` is the low nibble
//!   of byte `j`, element `16 + j` its high nibble; value = `(q - 8) * d`.
//! - Q5_0, 22 bytes: f16 `d`, u32 `qh` (bit `j` is bit 4 of element `j`), 16 bytes of
//!   nibbles as in Q4_0; value = `((q | h << 4) - 16) * d`.
//! - Q8_0, 34 bytes: f16 `d`, 32 x i8; value = `q * d`.
//!
//! Weight rows are dotted against activation rows quantized to Q8_0. The activation
//! values must lie in `[-127, 127]`, which [`quantize_row`] guarantees (GGML makes the
//! same assumption): the AVX2 path uses the sign trick of `maddubs`, which is exact
//! only without `-128` activations. The AVX-512 VNNI path is exact for every `i8`.
//!
//! SIMD strategy (AVX-512 VNNI): every weight block is unpacked once to 32 *unsigned*
//! bytes `u = w + o` (o = 8, 16, 128 for Q4_0, Q5_0, Q8_0), so `vpdpbusd(u, a)` needs no
//! per-activation sign fix-up; the offset term `-o * sum(a)` seeds the int32 accumulator.
//! For tiles, the activation block sums and scales are computed once per call and reused
//! by every weight row; the int32 block dot is then scaled by `d_w * d_a` with one FMA.

use crate::cpu::{self, SimdLevel};
use hangar_formats::GgmlType;

/// Elements per block.
pub const QK: usize = 32;

/// A Q4_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockQ4_0 {
    /// Scale, f16 bits (little-endian).
    pub d: [u8; 2],
    /// Nibbles: low nibble of byte `j` is element `j`, high nibble element `j + 16`.
    pub qs: [u8; 16],
}

/// A Q5_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockQ5_0 {
    /// Scale, f16 bits (little-endian).
    pub d: [u8; 2],
    /// Fifth bits, little-endian u32: bit `j` belongs to element `j`.
    pub qh: [u8; 4],
    /// Low four bits, laid out as in Q4_0.
    pub qs: [u8; 16],
}

/// A Q8_0 block.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockQ8_0 {
    /// Scale, f16 bits (little-endian).
    pub d: [u8; 2],
    pub qs: [i8; 32],
}

const _: () = {
    assert!(std::mem::size_of::<BlockQ4_0>() == 18 && std::mem::align_of::<BlockQ4_0>() == 1);
    assert!(std::mem::size_of::<BlockQ5_0>() == 22 && std::mem::align_of::<BlockQ5_0>() == 1);
    assert!(std::mem::size_of::<BlockQ8_0>() == 34 && std::mem::align_of::<BlockQ8_0>() == 1);
};

/// Plain-old-data blocks that may be viewed in place of bytes.
///
/// # Safety
/// Implementors are `repr(C)`, have alignment 1, no padding, and every bit pattern is valid.
unsafe trait Pod: Sized {}
unsafe impl Pod for BlockQ4_0 {}
unsafe impl Pod for BlockQ5_0 {}
unsafe impl Pod for BlockQ8_0 {}

fn as_blocks<B: Pod>(bytes: &[u8]) -> &[B] {
    let sz = std::mem::size_of::<B>();
    assert_eq!(bytes.len() % sz, 0);
    // SAFETY: B is POD with alignment 1 (trait contract); the length is a multiple of its size.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), bytes.len() / sz) }
}

fn as_blocks_mut<B: Pod>(bytes: &mut [u8]) -> &mut [B] {
    let sz = std::mem::size_of::<B>();
    assert_eq!(bytes.len() % sz, 0);
    // SAFETY: as in `as_blocks`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), bytes.len() / sz) }
}

#[inline]
fn f16_to_f32(d: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(d).to_f32()
}

#[inline]
fn f32_to_f16(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

fn block_bytes(t: GgmlType) -> usize {
    match t {
        GgmlType::Q4_0 => 18,
        GgmlType::Q5_0 => 22,
        GgmlType::Q8_0 => 34,
        t => panic!("legacy: unsupported type {t}"),
    }
}

// ---------------------------------------------------------------------------------------
// Dequantize / quantize (reference)
// ---------------------------------------------------------------------------------------

/// Dequantizes `dst.len()` elements (a multiple of 32) from the row `src` of type `t`.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) {
    assert_eq!(
        dst.len() % QK,
        0,
        "dequantize_row: length not a multiple of 32"
    );
    let nb = dst.len() / QK;
    let src = &src[..nb * block_bytes(t)];
    match t {
        GgmlType::Q4_0 => {
            for (b, y) in as_blocks::<BlockQ4_0>(src)
                .iter()
                .zip(dst.chunks_exact_mut(QK))
            {
                let d = f16_to_f32(b.d);
                for j in 0..16 {
                    y[j] = ((b.qs[j] & 0x0f) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b.qs[j] >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q5_0 => {
            for (b, y) in as_blocks::<BlockQ5_0>(src)
                .iter()
                .zip(dst.chunks_exact_mut(QK))
            {
                let d = f16_to_f32(b.d);
                let qh = u32::from_le_bytes(b.qh);
                for j in 0..16 {
                    let h0 = ((qh >> j) & 1) << 4;
                    let h1 = ((qh >> (j + 16)) & 1) << 4;
                    y[j] = (((b.qs[j] & 0x0f) as u32 | h0) as i32 - 16) as f32 * d;
                    y[j + 16] = (((b.qs[j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
                }
            }
        }
        GgmlType::Q8_0 => {
            for (b, y) in as_blocks::<BlockQ8_0>(src)
                .iter()
                .zip(dst.chunks_exact_mut(QK))
            {
                let d = f16_to_f32(b.d);
                for (y, q) in y.iter_mut().zip(b.qs) {
                    *y = q as f32 * d;
                }
            }
        }
        t => panic!("legacy::dequantize_row: unsupported type {t}"),
    }
}

/// Quantizes `src` (a multiple of 32 elements) into `dst` with GGML's reference rounding.
/// Q8_0 uses the best SIMD level; the result is bit-identical to the scalar reference.
pub fn quantize_row(t: GgmlType, src: &[f32], dst: &mut [u8]) {
    quantize_row_with(cpu::simd_level(), t, src, dst)
}

/// [`quantize_row`] at a given SIMD level (lowered to what this CPU supports).
pub fn quantize_row_with(level: SimdLevel, t: GgmlType, src: &[f32], dst: &mut [u8]) {
    assert_eq!(
        src.len() % QK,
        0,
        "quantize_row: length not a multiple of 32"
    );
    let nb = src.len() / QK;
    let dst = &mut dst[..nb * block_bytes(t)];
    match t {
        GgmlType::Q4_0 => quantize_q4_0(src, as_blocks_mut(dst)),
        GgmlType::Q5_0 => quantize_q5_0(src, as_blocks_mut(dst)),
        GgmlType::Q8_0 => {
            #[cfg(target_arch = "x86_64")]
            match level.min(cpu::detect()) {
                // SAFETY: the CPU supports the level; sizes were checked above.
                SimdLevel::Avx512Vnni => return unsafe { x86::quantize_q8_0_512(src, dst) },
                SimdLevel::Avx2 => return unsafe { x86::quantize_q8_0_avx2(src, dst) },
                SimdLevel::Scalar => {}
            }
            let _ = level;
            quantize_q8_0_scalar(src, as_blocks_mut(dst))
        }
        t => panic!("legacy::quantize_row: unsupported type {t}"),
    }
}

/// The value of largest magnitude (with its sign; the first one on ties).
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

fn quantize_q4_0(src: &[f32], dst: &mut [BlockQ4_0]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let d = signed_absmax(x) / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        for j in 0..16 {
            let q0 = ((x[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((x[j + 16] * id + 8.5) as i8).min(15) as u8;
            y.qs[j] = q0 | (q1 << 4);
        }
    }
}

fn quantize_q5_0(src: &[f32], dst: &mut [BlockQ5_0]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let d = signed_absmax(x) / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = f32_to_f16(d);
        let mut qh = 0u32;
        for j in 0..16 {
            let q0 = ((x[j] * id + 16.5) as i8).min(31) as u8;
            let q1 = ((x[j + 16] * id + 16.5) as i8).min(31) as u8;
            y.qs[j] = (q0 & 0x0f) | ((q1 & 0x0f) << 4);
            qh |= ((q0 as u32 >> 4) & 1) << j;
            qh |= ((q1 as u32 >> 4) & 1) << (j + 16);
        }
        y.qh = qh.to_le_bytes();
    }
}

fn quantize_q8_0_scalar(src: &[f32], dst: &mut [BlockQ8_0]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.iter_mut()) {
        let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        // As ggml's x86 quantizer: one division for the inverse scale, round half to
        // even. Matching its rounding exactly keeps activations bit-equal to llama.cpp's.
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        y.d = f32_to_f16(d);
        for (q, x) in y.qs.iter_mut().zip(x) {
            *q = (x * id).round_ties_even() as i8;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dot products
// ---------------------------------------------------------------------------------------

fn check_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> usize {
    debug_assert_eq!(n % QK, 0);
    assert_eq!(n % QK, 0, "vec_dot: n={n} not a multiple of 32");
    let nb = n / QK;
    assert!(
        w.len() >= nb * block_bytes(t),
        "vec_dot: weight row too short"
    );
    assert!(a.len() >= nb * 34, "vec_dot: activation row too short");
    nb
}

/// Dot product of `n` elements of weight row `w` (type `t`) with the Q8_0 row `a`.
#[inline]
pub fn vec_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    vec_dot_at(cpu::simd_level(), t, n, w, a)
}

/// [`vec_dot`] at a given SIMD level (lowered to what this CPU supports).
pub fn vec_dot_with(level: SimdLevel, t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    vec_dot_at(level.min(cpu::detect()), t, n, w, a)
}

/// `level` must be supported by this CPU (`simd_level()` or lowered by `detect()`).
#[inline]
fn vec_dot_at(level: SimdLevel, t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(t, n, w, a);
    #[cfg(target_arch = "x86_64")]
    {
        if level > SimdLevel::Scalar {
            // SAFETY: the CPU supports `level`; `check_dot` bounds every access.
            return unsafe { x86::vec_dot(level, t, nb, w.as_ptr(), a.as_ptr()) };
        }
    }
    let _ = (level, nb);
    vec_dot_scalar(t, n, w, a)
}

/// Plain-Rust reference of [`vec_dot`].
pub fn vec_dot_scalar(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_dot(t, n, w, a);
    let a = as_blocks::<BlockQ8_0>(&a[..nb * 34]);
    let w = &w[..nb * block_bytes(t)];
    let mut sum = 0.0f32;
    match t {
        GgmlType::Q4_0 => {
            for (x, y) in as_blocks::<BlockQ4_0>(w).iter().zip(a) {
                let mut isum = 0i32;
                for j in 0..16 {
                    let v0 = (x.qs[j] & 0x0f) as i32 - 8;
                    let v1 = (x.qs[j] >> 4) as i32 - 8;
                    isum += v0 * y.qs[j] as i32 + v1 * y.qs[j + 16] as i32;
                }
                sum += isum as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
            }
        }
        GgmlType::Q5_0 => {
            for (x, y) in as_blocks::<BlockQ5_0>(w).iter().zip(a) {
                let qh = u32::from_le_bytes(x.qh);
                let mut isum = 0i32;
                for j in 0..16 {
                    let h0 = (((qh >> j) & 1) << 4) as i32;
                    let h1 = (((qh >> (j + 16)) & 1) << 4) as i32;
                    let v0 = ((x.qs[j] & 0x0f) as i32 | h0) - 16;
                    let v1 = ((x.qs[j] >> 4) as i32 | h1) - 16;
                    isum += v0 * y.qs[j] as i32 + v1 * y.qs[j + 16] as i32;
                }
                sum += isum as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
            }
        }
        GgmlType::Q8_0 => {
            for (x, y) in as_blocks::<BlockQ8_0>(w).iter().zip(a) {
                let mut isum = 0i32;
                for j in 0..QK {
                    isum += x.qs[j] as i32 * y.qs[j] as i32;
                }
                sum += isum as f32 * (f16_to_f32(x.d) * f16_to_f32(y.d));
            }
        }
        t => panic!("legacy::vec_dot_scalar: unsupported type {t}"),
    }
    sum
}

/// `out[r * out_stride + c] = dot(w row r, a row c)` for `r < nr`, `c < nc`; each weight
/// block is unpacked once and used against all activation rows.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dot_tile(
    t: GgmlType,
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nc: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    dot_tile_at(
        cpu::simd_level(),
        t,
        n,
        w,
        w_stride,
        nr,
        a,
        a_stride,
        nc,
        out,
        out_stride,
    )
}

/// [`dot_tile`] at a given SIMD level (lowered to what this CPU supports).
#[allow(clippy::too_many_arguments)]
pub fn dot_tile_with(
    level: SimdLevel,
    t: GgmlType,
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nc: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let level = level.min(cpu::detect());
    dot_tile_at(
        level, t, n, w, w_stride, nr, a, a_stride, nc, out, out_stride,
    )
}

/// `level` must be supported by this CPU (`simd_level()` or lowered by `detect()`).
#[allow(clippy::too_many_arguments)]
fn dot_tile_at(
    level: SimdLevel,
    t: GgmlType,
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nc: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    assert_eq!(n % QK, 0, "dot_tile: n={n} not a multiple of 32");
    if nr == 0 || nc == 0 {
        return;
    }
    let nb = n / QK;
    let wrow = nb * block_bytes(t);
    let arow = nb * 34;
    debug_assert!(w.len() >= (nr - 1) * w_stride + wrow);
    debug_assert!(a.len() >= (nc - 1) * a_stride + arow);
    debug_assert!(out.len() >= (nr - 1) * out_stride + nc);
    assert!(
        w.len() >= (nr - 1) * w_stride + wrow,
        "dot_tile: weights too short"
    );
    assert!(
        a.len() >= (nc - 1) * a_stride + arow,
        "dot_tile: activations too short"
    );
    assert!(
        out.len() >= (nr - 1) * out_stride + nc,
        "dot_tile: output too short"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if level > SimdLevel::Scalar && nb > 0 {
            let args = x86::TileArgs {
                nb,
                w: w.as_ptr(),
                w_stride,
                nr,
                a: a.as_ptr(),
                a_stride,
                nc,
                out: out.as_mut_ptr(),
                out_stride,
            };
            // SAFETY: the CPU supports `level`; the asserts above bound every access.
            unsafe { x86::dot_tile(level, t, &args) };
            return;
        }
    }
    let _ = level;
    for r in 0..nr {
        for c in 0..nc {
            out[r * out_stride + c] =
                vec_dot_scalar(t, n, &w[r * w_stride..][..wrow], &a[c * a_stride..][..arow]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// x86-64 SIMD
// ---------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{f32_to_f16, QK};
    use crate::cpu::SimdLevel;
    use hangar_formats::GgmlType;
    use std::arch::x86_64::*;
    use std::cell::RefCell;

    const TQ4: u8 = 0;
    const TQ5: u8 = 1;
    const TQ8: u8 = 2;

    const fn bsize(t: u8) -> usize {
        match t {
            TQ4 => 18,
            TQ5 => 22,
            _ => 34,
        }
    }

    /// Maximum activation columns handled per kernel pass (accumulators in registers).
    const MAX_NC: usize = 8;
    /// AVX2: precompute activation scales when at least this many weight rows share them.
    const PREP_MIN_ROWS: usize = 3;

    /// Raw arguments of a tile; the caller has bounds-checked every access.
    pub(super) struct TileArgs {
        pub nb: usize,
        pub w: *const u8,
        pub w_stride: usize,
        pub nr: usize,
        pub a: *const u8,
        pub a_stride: usize,
        pub nc: usize,
        pub out: *mut f32,
        pub out_stride: usize,
    }

    thread_local! {
        /// Prepared activations of the current tile (AVX-512 path), reused across calls.
        static SCRATCH: RefCell<(Vec<u8>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    }

    #[inline(always)]
    unsafe fn read_u16(p: *const u8) -> u16 {
        u16::from_le((p as *const u16).read_unaligned())
    }

    #[inline(always)]
    unsafe fn read_u32(p: *const u8) -> u32 {
        u32::from_le((p as *const u32).read_unaligned())
    }

    fn type_tag(t: GgmlType) -> u8 {
        match t {
            GgmlType::Q4_0 => TQ4,
            GgmlType::Q5_0 => TQ5,
            GgmlType::Q8_0 => TQ8,
            t => panic!("legacy: unsupported type {t}"),
        }
    }

    /// One dot product of `nb` blocks; `w` and `a` hold at least `nb` blocks.
    pub(super) unsafe fn vec_dot(
        level: SimdLevel,
        t: GgmlType,
        nb: usize,
        w: *const u8,
        a: *const u8,
    ) -> f32 {
        match level {
            SimdLevel::Avx512Vnni => match type_tag(t) {
                TQ4 => vec_dot_512::<TQ4>(nb, w, a),
                TQ5 => vec_dot_512::<TQ5>(nb, w, a),
                _ => vec_dot_512::<TQ8>(nb, w, a),
            },
            SimdLevel::Avx2 => match type_tag(t) {
                TQ4 => vec_dot_avx2::<TQ4>(nb, w, a),
                TQ5 => vec_dot_avx2::<TQ5>(nb, w, a),
                _ => vec_dot_avx2::<TQ8>(nb, w, a),
            },
            SimdLevel::Scalar => unreachable!(),
        }
    }

    pub(super) unsafe fn dot_tile(level: SimdLevel, t: GgmlType, g: &TileArgs) {
        let tt = type_tag(t);
        match level {
            SimdLevel::Avx512Vnni => {
                if g.nr == 1 && g.nc == 1 {
                    *g.out = vec_dot(level, t, g.nb, g.w, g.a);
                    return;
                }
                SCRATCH.with(|s| {
                    let mut s = s.borrow_mut();
                    let (ap, da) = &mut *s;
                    prep_512(g, ap, da);
                    let (ap, da) = (ap.as_ptr(), da.as_ptr());
                    match tt {
                        TQ4 => cols_512::<TQ4>(g, ap, da),
                        TQ5 => cols_512::<TQ5>(g, ap, da),
                        _ => cols_512::<TQ8>(g, ap, da),
                    }
                })
            }
            SimdLevel::Avx2 => {
                let da = if g.nr >= PREP_MIN_ROWS {
                    Some(prep_avx2(g))
                } else {
                    None
                };
                match (tt, da.is_some()) {
                    (TQ4, true) => cols_avx2::<TQ4, true>(g, da.as_deref()),
                    (TQ4, false) => cols_avx2::<TQ4, false>(g, None),
                    (TQ5, true) => cols_avx2::<TQ5, true>(g, da.as_deref()),
                    (TQ5, false) => cols_avx2::<TQ5, false>(g, None),
                    (_, true) => cols_avx2::<TQ8, true>(g, da.as_deref()),
                    (_, false) => cols_avx2::<TQ8, false>(g, None),
                }
            }
            SimdLevel::Scalar => unreachable!(),
        }
    }

    // ------------------------------- shared helpers ---------------------------------

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_bcast(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_set1_epi16(read_u16(p) as i16))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_scalar(p: *const u8) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(read_u16(p) as i32)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// 16 packed bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn nibbles(p: *const u8) -> __m256i {
        let qs = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0f);
        _mm256_set_m128i(
            _mm_and_si128(_mm_srli_epi16::<4>(qs), m),
            _mm_and_si128(qs, m),
        )
    }

    // --------------------------------- AVX-512 VNNI ---------------------------------

    /// A weight block as 32 signed bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn unpack_i8_512<const T: u8>(p: *const u8) -> __m256i {
        match T {
            TQ4 => _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8)),
            TQ5 => {
                // (q | h << 4) - 16: subtract 16 where the fifth bit is clear.
                let q = nibbles(p.add(6));
                _mm256_mask_sub_epi8(q, !read_u32(p.add(2)), q, _mm256_set1_epi8(16))
            }
            _ => _mm256_loadu_si256(p.add(2) as *const __m256i),
        }
    }

    /// `-128 * sum(w)`, spread over the int32 lanes: the seed that turns
    /// `dpbusd(a + 128, w)` into `dot(a, w)`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn offset_seed(w: __m256i) -> __m256i {
        let z = _mm256_setzero_si256();
        _mm256_sub_epi32(z, _mm256_dpbusd_epi32(z, _mm256_set1_epi8(-128), w))
    }

    /// `acc + dot(block wb, block ab)` in 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn block_dot_512<const T: u8>(wb: *const u8, ab: *const u8, acc: __m256) -> __m256 {
        let wv = unpack_i8_512::<T>(wb);
        let av = _mm256_loadu_si256(ab.add(2) as *const __m256i);
        let av = _mm256_xor_si256(av, _mm256_set1_epi8(-128));
        let dot = _mm256_dpbusd_epi32(offset_seed(wv), av, wv);
        let s = _mm256_mul_ps(f16_bcast(wb), f16_bcast(ab));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc)
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn vec_dot_512<const T: u8>(nb: usize, w: *const u8, a: *const u8) -> f32 {
        let bs = bsize(T);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= nb {
            acc0 = block_dot_512::<T>(w.add(b * bs), a.add(b * 34), acc0);
            acc1 = block_dot_512::<T>(w.add((b + 1) * bs), a.add((b + 1) * 34), acc1);
            b += 2;
        }
        if b < nb {
            acc0 = block_dot_512::<T>(w.add(b * bs), a.add(b * 34), acc0);
        }
        hsum_ps(_mm256_add_ps(acc0, acc1))
    }

    /// Prepares the activation tile: `ap[(b * nc + c) * 32..]` = block `b` of column `c`
    /// as unsigned bytes `a + 128`, `da[b * nc + c]` its f16 scale (plus `MAX_NC` padding).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn prep_512(g: &TileArgs, ap: &mut Vec<u8>, da: &mut Vec<u16>) {
        let len = g.nb * g.nc;
        if ap.len() < len * 32 {
            ap.resize(len * 32, 0);
        }
        if da.len() < len + MAX_NC {
            da.resize(len + MAX_NC, 0);
        }
        let flip = _mm256_set1_epi8(-128);
        let (app, dap) = (ap.as_mut_ptr(), da.as_mut_ptr());
        for b in 0..g.nb {
            for c in 0..g.nc {
                let src = g.a.add(c * g.a_stride + b * 34);
                let i = b * g.nc + c;
                let v = _mm256_loadu_si256(src.add(2) as *const __m256i);
                _mm256_storeu_si256(app.add(i * 32) as *mut __m256i, _mm256_xor_si256(v, flip));
                *dap.add(i) = read_u16(src);
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn cols_512<const T: u8>(g: &TileArgs, ap: *const u8, da: *const u16) {
        let mut c0 = 0;
        while c0 < g.nc {
            let k = (g.nc - c0).min(MAX_NC);
            let f = match k {
                1 => tile_512::<T, 1>,
                2 => tile_512::<T, 2>,
                3 => tile_512::<T, 3>,
                4 => tile_512::<T, 4>,
                5 => tile_512::<T, 5>,
                6 => tile_512::<T, 6>,
                7 => tile_512::<T, 7>,
                _ => tile_512::<T, 8>,
            };
            f(g, c0, ap, da);
            c0 += k;
        }
    }

    /// Columns `c0 .. c0 + NC` of the tile, from the prepared activations.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile_512<const T: u8, const NC: usize>(
        g: &TileArgs,
        c0: usize,
        ap: *const u8,
        da: *const u16,
    ) {
        let bs = bsize(T);
        for r in 0..g.nr {
            let wr = g.w.add(r * g.w_stride);
            let mut acc = [_mm256_setzero_ps(); NC];
            for b in 0..g.nb {
                let wb = wr.add(b * bs);
                let w = unpack_i8_512::<T>(wb);
                let seed = offset_seed(w);
                let base = b * g.nc + c0;
                // d_w * d_a for the NC columns, stored to the stack and broadcast from
                // there by the FMAs' memory operands (load ports, not shuffles). The
                // empty asm makes LLVM treat the stack copy as opaque, so it does not turn
                // the broadcasts back into register shuffles.
                let mut sc = std::mem::MaybeUninit::<__m256>::uninit();
                let das = _mm256_cvtph_ps(_mm_loadu_si128(da.add(base) as *const __m128i));
                let s = _mm256_mul_ps(f16_bcast(wb), das);
                sc.as_mut_ptr().write(s);
                std::arch::asm!("/* {0} */", in(reg) sc.as_mut_ptr(), options(nostack, preserves_flags));
                let sp = sc.as_ptr() as *const f32;
                for (c, acc) in acc.iter_mut().enumerate() {
                    let av = _mm256_loadu_si256(ap.add((base + c) * 32) as *const __m256i);
                    let dot = _mm256_dpbusd_epi32(seed, av, w);
                    let sv = _mm256_broadcast_ss(&*sp.add(c));
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), sv, *acc);
                }
            }
            let orow = g.out.add(r * g.out_stride + c0);
            for (c, acc) in acc.iter().enumerate() {
                *orow.add(c) = hsum_ps(*acc);
            }
        }
    }

    // ------------------------------------ AVX2 --------------------------------------

    /// A weight block as 32 signed bytes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack_i8_avx2<const T: u8>(p: *const u8) -> __m256i {
        match T {
            TQ4 => _mm256_sub_epi8(nibbles(p.add(2)), _mm256_set1_epi8(8)),
            TQ5 => {
                // Spread the 32 bits of qh to 32 bytes, then keep 0x10 where the bit is set.
                let qh = _mm256_set1_epi32(read_u32(p.add(2)) as i32);
                let shuf = _mm256_setr_epi8(
                    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                    3, 3, 3, 3, 3, 3,
                );
                let bytes = _mm256_shuffle_epi8(qh, shuf);
                let bits = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bits), bits);
                let hb = _mm256_and_si256(set, _mm256_set1_epi8(0x10));
                _mm256_sub_epi8(_mm256_or_si256(nibbles(p.add(6)), hb), _mm256_set1_epi8(16))
            }
            _ => _mm256_loadu_si256(p.add(2) as *const __m256i),
        }
    }

    /// `acc + dot(block wb, block ab)` in 8 lanes (sign trick: activations in [-127, 127]).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_dot_avx2<const T: u8>(wb: *const u8, ab: *const u8, acc: __m256) -> __m256 {
        let w = unpack_i8_avx2::<T>(wb);
        let av = _mm256_loadu_si256(ab.add(2) as *const __m256i);
        let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(av, w));
        let dot = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        let s = _mm256_mul_ps(f16_bcast(wb), f16_bcast(ab));
        _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn vec_dot_avx2<const T: u8>(nb: usize, w: *const u8, a: *const u8) -> f32 {
        let bs = bsize(T);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b = 0;
        while b + 2 <= nb {
            acc0 = block_dot_avx2::<T>(w.add(b * bs), a.add(b * 34), acc0);
            acc1 = block_dot_avx2::<T>(w.add((b + 1) * bs), a.add((b + 1) * 34), acc1);
            b += 2;
        }
        if b < nb {
            acc0 = block_dot_avx2::<T>(w.add(b * bs), a.add(b * 34), acc0);
        }
        hsum_ps(_mm256_add_ps(acc0, acc1))
    }

    unsafe fn prep_avx2(g: &TileArgs) -> Vec<f32> {
        let mut da = vec![0.0f32; g.nc * g.nb];
        prep_avx2_fill(g, &mut da);
        da
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prep_avx2_fill(g: &TileArgs, da: &mut [f32]) {
        let mut i = 0;
        for c in 0..g.nc {
            let ac = g.a.add(c * g.a_stride);
            for b in 0..g.nb {
                da[i] = f16_scalar(ac.add(b * 34));
                i += 1;
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn cols_avx2<const T: u8, const PREP: bool>(g: &TileArgs, da: Option<&[f32]>) {
        let da = da.map_or(std::ptr::null(), |d| d.as_ptr());
        let mut c0 = 0;
        while c0 < g.nc {
            let k = (g.nc - c0).min(MAX_NC);
            let pda = if PREP { da.add(c0 * g.nb) } else { da };
            let f = match k {
                1 => tile_avx2::<T, 1, PREP>,
                2 => tile_avx2::<T, 2, PREP>,
                3 => tile_avx2::<T, 3, PREP>,
                4 => tile_avx2::<T, 4, PREP>,
                5 => tile_avx2::<T, 5, PREP>,
                6 => tile_avx2::<T, 6, PREP>,
                7 => tile_avx2::<T, 7, PREP>,
                _ => tile_avx2::<T, 8, PREP>,
            };
            f(g, c0, pda);
            c0 += k;
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn tile_avx2<const T: u8, const NC: usize, const PREP: bool>(
        g: &TileArgs,
        c0: usize,
        da: *const f32,
    ) {
        let bs = bsize(T);
        let nb = g.nb;
        let ones = _mm256_set1_epi16(1);
        let a = g.a.add(c0 * g.a_stride);
        for r in 0..g.nr {
            let wr = g.w.add(r * g.w_stride);
            let mut acc = [_mm256_setzero_ps(); NC];
            for b in 0..nb {
                let wb = wr.add(b * bs);
                let w = unpack_i8_avx2::<T>(wb);
                let wabs = _mm256_sign_epi8(w, w);
                let dw = f16_bcast(wb);
                for (c, acc) in acc.iter_mut().enumerate() {
                    let ab = a.add(c * g.a_stride + b * 34);
                    let av = _mm256_loadu_si256(ab.add(2) as *const __m256i);
                    let s = if PREP {
                        _mm256_mul_ps(dw, _mm256_set1_ps(*da.add(c * nb + b)))
                    } else {
                        _mm256_mul_ps(dw, f16_bcast(ab))
                    };
                    let p16 = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(av, w));
                    let dot = _mm256_madd_epi16(p16, ones);
                    *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, *acc);
                }
            }
            let orow = g.out.add(r * g.out_stride + c0);
            for (c, acc) in acc.iter().enumerate() {
                *orow.add(c) = hsum_ps(*acc);
            }
        }
    }

    // --------------------------------- quantize Q8_0 --------------------------------

    /// Q8_0 quantization, bit-identical to `quantize_q8_0_scalar` (round half to even).
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn quantize_q8_0_512(src: &[f32], dst: &mut [u8]) {
        debug_assert!(dst.len() >= src.len() / QK * 34);
        for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
            let v0 = _mm512_loadu_ps(x.as_ptr());
            let v1 = _mm512_loadu_ps(x.as_ptr().add(16));
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            y[..2].copy_from_slice(&f32_to_f16(d));
            let idv = _mm512_set1_ps(id);
            for (h, v) in [v0, v1].into_iter().enumerate() {
                let v = _mm512_mul_ps(v, idv);
                let r =
                    _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                let q = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(r));
                _mm_storeu_si128(y.as_mut_ptr().add(2 + 16 * h) as *mut __m128i, q);
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn quantize_q8_0_avx2(src: &[f32], dst: &mut [u8]) {
        debug_assert!(dst.len() >= src.len() / QK * 34);
        let absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
            let p = x.as_ptr();
            let v = [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ];
            let m = _mm256_max_ps(
                _mm256_max_ps(_mm256_and_ps(v[0], absm), _mm256_and_ps(v[1], absm)),
                _mm256_max_ps(_mm256_and_ps(v[2], absm), _mm256_and_ps(v[3], absm)),
            );
            let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
            let m = _mm_max_ss(m, _mm_movehdup_ps(m));
            let amax = _mm_cvtss_f32(m);
            let d = amax / 127.0;
            let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
            y[..2].copy_from_slice(&f32_to_f16(d));
            let idv = _mm256_set1_ps(id);
            let mut q = [_mm256_setzero_si256(); 4];
            for (q, v) in q.iter_mut().zip(v) {
                let v = _mm256_mul_ps(v, idv);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                *q = _mm256_cvtps_epi32(r);
            }
            let p01 = _mm256_packs_epi32(q[0], q[1]);
            let p23 = _mm256_packs_epi32(q[2], q[3]);
            let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
            _mm256_storeu_si256(y.as_mut_ptr().add(2) as *mut __m256i, b);
        }
    }
}
