//! AVX2 and AVX-512 VNNI kernels for K-quant weights against Q8_K activations.
//!
//! Each weight super-block is unpacked once into [`Unpacked`] (32 unsigned quants
//! per vector in element order, one i16 scale vector per 32 elements, bsum
//! coefficients) and then dotted against every activation column of the tile:
//! `maddubs` (u8 x i8 -> pairwise i16) then `madd`/`dpwssd` with the scales.
//! No i16 saturation is possible: quants <= 63 and |q8| <= 127 give pairs <= 16002.

use super::{BlockQ8K, GgmlType, SimdLevel, Q8K_BYTES, QK_K};
use std::arch::x86_64::*;

/// One weight super-block in the common unpacked form.
#[derive(Clone, Copy)]
struct Unpacked {
    /// Quants of elements `32k..32k+32`, unsigned.
    q: [__m256i; 8],
    /// i16 scales for `q[k]`: lanes 0..8 for its first 16 elements, 8..16 for the rest.
    sc: [__m256i; 8],
    /// i16 coefficients of the 16 bsums (subtracted).
    mn: __m256i,
    /// Multiplier of the scaled quant sum.
    d: __m256,
    /// Multiplier of the bsum term.
    dm: __m256,
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load_f16(p: *const u8) -> f32 {
    let bits = (p as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn loadu(p: *const u8) -> __m256i {
    _mm256_loadu_si256(p as *const __m256i)
}

/// Scale vectors for Q4_K/Q5_K: `sc[k]` broadcasts sub-block scale `k`; `mn` holds
/// each min twice (one per bsum of its sub-block).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn k4_scales(scales: *const u8) -> ([__m256i; 8], __m256i) {
    let s: &[u8; 12] = &*(scales as *const [u8; 12]);
    let (sc8, m8) = super::unpack_scales_mins(s);
    let m = _mm_cvtsi64_si128(m8 as i64);
    let mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
    let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc8 as i64)));
    let mut sc = [_mm256_setzero_si256(); 8];
    for (k, v) in sc.iter_mut().enumerate() {
        let idx = (0x0100 + 0x0202 * k as i32) as i16;
        *v = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16(idx));
    }
    (sc, mn)
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_q4k(b: *const u8) -> Unpacked {
    let d = load_f16(b);
    let dmin = load_f16(b.add(2));
    let (sc, mn) = k4_scales(b.add(4));
    let m4 = _mm256_set1_epi8(0x0f);
    let qs = b.add(16);
    let mut q = [_mm256_setzero_si256(); 8];
    for c in 0..4 {
        let raw = loadu(qs.add(32 * c));
        q[2 * c] = _mm256_and_si256(raw, m4);
        q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4);
    }
    Unpacked {
        q,
        sc,
        mn,
        d: _mm256_set1_ps(d),
        dm: _mm256_set1_ps(dmin),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_q5k(b: *const u8) -> Unpacked {
    let d = load_f16(b);
    let dmin = load_f16(b.add(2));
    let (sc, mn) = k4_scales(b.add(4));
    let m4 = _mm256_set1_epi8(0x0f);
    let bit4 = _mm256_set1_epi8(0x10);
    // Shifted right by 2 per 64 elements so bits 0/1 of each byte are the current
    // pair (16-bit shifts never move bits 0..2 across a byte boundary here).
    let mut h = loadu(b.add(16));
    let qs = b.add(48);
    let mut q = [_mm256_setzero_si256(); 8];
    for c in 0..4 {
        let raw = loadu(qs.add(32 * c));
        let lo_h = _mm256_and_si256(_mm256_slli_epi16::<4>(h), bit4);
        let hi_h = _mm256_and_si256(_mm256_slli_epi16::<3>(h), bit4);
        q[2 * c] = _mm256_or_si256(_mm256_and_si256(raw, m4), lo_h);
        q[2 * c + 1] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(raw), m4), hi_h);
        h = _mm256_srli_epi16::<2>(h);
    }
    Unpacked {
        q,
        sc,
        mn,
        d: _mm256_set1_ps(d),
        dm: _mm256_set1_ps(dmin),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn unpack_q6k(b: *const u8) -> Unpacked {
    let ql = b;
    let qh = b.add(128);
    let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
    let d = load_f16(b.add(208));
    let m4 = _mm256_set1_epi8(0x0f);
    let m30 = _mm256_set1_epi8(0x30);
    let mut q = [_mm256_setzero_si256(); 8];
    for h in 0..2 {
        let l0 = loadu(ql.add(64 * h));
        let l1 = loadu(ql.add(64 * h + 32));
        let hb = loadu(qh.add(32 * h));
        let h0 = _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30);
        let h1 = _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30);
        let h2 = _mm256_and_si256(hb, m30);
        let h3 = _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30);
        q[4 * h] = _mm256_or_si256(_mm256_and_si256(l0, m4), h0);
        q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(l1, m4), h1);
        q[4 * h + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4), h2);
        q[4 * h + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4), h3);
    }
    // sc[k]: scale 2k in the low 128-bit lane, 2k+1 in the high lane.
    let lo = _mm256_permute4x64_epi64::<0x44>(s16);
    let hi = _mm256_permute4x64_epi64::<0xee>(s16);
    let mut sc = [_mm256_setzero_si256(); 8];
    for k in 0..4 {
        let a = (0x0100 + 0x0404 * k as i32) as i16;
        let b = (0x0302 + 0x0404 * k as i32) as i16;
        let idx = _mm256_set_m128i(_mm_set1_epi16(b), _mm_set1_epi16(a));
        sc[k] = _mm256_shuffle_epi8(lo, idx);
        sc[k + 4] = _mm256_shuffle_epi8(hi, idx);
    }
    Unpacked {
        q,
        sc,
        mn: s16,
        d: _mm256_set1_ps(d),
        dm: _mm256_set1_ps(32.0 * d),
    }
}

/// `acc += y.d * (d * Σ sc*q*y - dm * Σ mn*bsums)` for one Q8_K block at `y` (AVX2).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn kernel_avx2(u: &Unpacked, y: *const u8, acc: __m256) -> __m256 {
    let qs = y.add(4);
    let mut s0 = _mm256_setzero_si256();
    let mut s1 = _mm256_setzero_si256();
    for k in (0..8).step_by(2) {
        let p0 = _mm256_maddubs_epi16(u.q[k], loadu(qs.add(32 * k)));
        let p1 = _mm256_maddubs_epi16(u.q[k + 1], loadu(qs.add(32 * k + 32)));
        s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(p0, u.sc[k]));
        s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(p1, u.sc[k + 1]));
    }
    let sumi = _mm256_add_epi32(s0, s1);
    let summ = _mm256_madd_epi16(loadu(y.add(260)), u.mn);
    let yd = _mm256_broadcast_ss(&*(y as *const f32));
    let acc = _mm256_fmadd_ps(_mm256_mul_ps(yd, u.d), _mm256_cvtepi32_ps(sumi), acc);
    _mm256_fnmadd_ps(_mm256_mul_ps(yd, u.dm), _mm256_cvtepi32_ps(summ), acc)
}

/// Weight blocks ahead to prefetch (runs into the next row, which is where the
/// matmul driver goes next; prefetches never fault).
const PF_BLOCKS: usize = 6;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn prefetch(p: *const u8) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64) as *const i8);
    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(128) as *const i8);
}

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The 512-bit form of [`Unpacked`] for the VNNI level: `q[k]` holds elements
/// `64k..64k+64`, `sc[k]` their i16 scales (one per 16 elements, per 128-bit lane).
#[derive(Clone, Copy)]
struct Unpacked512 {
    q: [__m512i; 4],
    sc: [__m512i; 4],
    mn: __m256i,
    d: __m256,
    dm: __m256,
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
unsafe fn bcast256(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(loadu(p))
}

/// Q4_K/Q5_K 512-bit scale vectors: `sc[k]` = scale 2k in lanes 0..16, 2k+1 in 16..32.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
unsafe fn k4_scales512(scales: *const u8) -> ([__m512i; 4], __m256i) {
    let s: &[u8; 12] = &*(scales as *const [u8; 12]);
    let (sc8, m8) = super::unpack_scales_mins(s);
    let m = _mm_cvtsi64_si128(m8 as i64);
    let mn = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m, m));
    let sc16 = _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc8 as i64)));
    let mut sc = [_mm512_setzero_si512(); 4];
    for (k, v) in sc.iter_mut().enumerate() {
        let a = _mm_set1_epi16((0x0100 + 0x0404 * k as i32) as i16);
        let b = _mm_set1_epi16((0x0302 + 0x0404 * k as i32) as i16);
        let idx = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set_m128i(a, a)),
            _mm256_set_m128i(b, b),
        );
        *v = _mm512_shuffle_epi8(sc16, idx);
    }
    (sc, mn)
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
unsafe fn unpack512_q4k(b: *const u8) -> Unpacked512 {
    let d = load_f16(b);
    let dmin = load_f16(b.add(2));
    let (sc, mn) = k4_scales512(b.add(4));
    let m4 = _mm512_set1_epi8(0x0f);
    let qs = b.add(16);
    let mut q = [_mm512_setzero_si512(); 4];
    for (c, v) in q.iter_mut().enumerate() {
        // [raw, raw >> 4] & 0xf: low nibbles are elements 64c.., high 64c+32..
        let raw = bcast256(qs.add(32 * c));
        *v = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(raw, 0xffff_0000, raw), m4);
    }
    Unpacked512 {
        q,
        sc,
        mn,
        d: _mm256_set1_ps(d),
        dm: _mm256_set1_ps(dmin),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
unsafe fn unpack512_q5k(b: *const u8) -> Unpacked512 {
    let d = load_f16(b);
    let dmin = load_f16(b.add(2));
    let (sc, mn) = k4_scales512(b.add(4));
    let m4 = _mm512_set1_epi8(0x0f);
    let bit4 = _mm512_set1_epi8(0x10);
    let h = bcast256(b.add(16));
    let qs = b.add(48);
    let mut q = [_mm512_setzero_si512(); 4];
    for (c, v) in q.iter_mut().enumerate() {
        let raw = bcast256(qs.add(32 * c));
        let nib = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(raw, 0xffff_0000, raw), m4);
        // High bit 2c for the low half, 2c+1 for the high half.
        let bits = _mm512_inserti64x4::<1>(
            _mm512_set1_epi8(1 << (2 * c)),
            _mm256_set1_epi8(1 << (2 * c + 1)),
        );
        let k = _mm512_test_epi8_mask(h, bits);
        *v = _mm512_mask_add_epi8(nib, k, nib, bit4);
    }
    Unpacked512 {
        q,
        sc,
        mn,
        d: _mm256_set1_ps(d),
        dm: _mm256_set1_ps(dmin),
    }
}

/// Q6_K quants in natural 512-bit order (vector j = elements 64j..64j+64).
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
unsafe fn q6k_quants512(b: *const u8) -> [__m512i; 4] {
    let ql = b;
    let qh = b.add(128);
    let m4 = _mm512_set1_epi8(0x0f);
    let m30 = _mm512_set1_epi8(0x30);
    // Per-half shift counts: elements 128h+0.. take qh bits 0-1 (<< 4), +32.. bits
    // 2-3 (<< 2); +64.. bits 4-5 (as is), +96.. bits 6-7 (>> 2).
    let sh_a = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
    let sh_b = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
    let mut q = [_mm512_setzero_si512(); 4];
    for h in 0..2 {
        let l = _mm512_loadu_si512(ql.add(64 * h) as *const _);
        let hb = bcast256(qh.add(32 * h));
        let ha = _mm512_and_si512(_mm512_sllv_epi16(hb, sh_a), m30);
        let hc = _mm512_and_si512(_mm512_srlv_epi16(hb, sh_b), m30);
        q[2 * h] = _mm512_or_si512(_mm512_and_si512(l, m4), ha);
        q[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16::<4>(l), m4), hc);
    }
    q
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
unsafe fn unpack512_q6k(b: *const u8) -> Unpacked512 {
    let q = q6k_quants512(b);
    let s16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(192) as *const __m128i));
    let d = load_f16(b.add(208));
    let sz = _mm512_castsi256_si512(s16);
    let mut sc = [_mm512_setzero_si512(); 4];
    for (k, v) in sc.iter_mut().enumerate() {
        let k = k as i16;
        let idx = _mm512_inserti64x4::<1>(
            _mm512_castsi256_si512(_mm256_set_m128i(
                _mm_set1_epi16(4 * k + 1),
                _mm_set1_epi16(4 * k),
            )),
            _mm256_set_m128i(_mm_set1_epi16(4 * k + 3), _mm_set1_epi16(4 * k + 2)),
        );
        *v = _mm512_permutexvar_epi16(idx, sz);
    }
    Unpacked512 {
        q,
        sc,
        mn: s16,
        d: _mm256_set1_ps(d),
        dm: _mm256_set1_ps(32.0 * d),
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
unsafe fn kernel512(u: &Unpacked512, y: *const u8, acc: __m256) -> __m256 {
    let qs = y.add(4);
    let y0 = _mm512_loadu_si512(qs as *const _);
    let y1 = _mm512_loadu_si512(qs.add(64) as *const _);
    let y2 = _mm512_loadu_si512(qs.add(128) as *const _);
    let y3 = _mm512_loadu_si512(qs.add(192) as *const _);
    let s0 = _mm512_dpwssd_epi32(
        _mm512_setzero_si512(),
        _mm512_maddubs_epi16(u.q[0], y0),
        u.sc[0],
    );
    let s1 = _mm512_dpwssd_epi32(
        _mm512_setzero_si512(),
        _mm512_maddubs_epi16(u.q[1], y1),
        u.sc[1],
    );
    let s0 = _mm512_dpwssd_epi32(s0, _mm512_maddubs_epi16(u.q[2], y2), u.sc[2]);
    let s1 = _mm512_dpwssd_epi32(s1, _mm512_maddubs_epi16(u.q[3], y3), u.sc[3]);
    let s = _mm512_add_epi32(s0, s1);
    let sumi = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64::<1>(s));
    let summ = _mm256_madd_epi16(loadu(y.add(260)), u.mn);
    let yd = _mm256_broadcast_ss(&*(y as *const f32));
    let acc = _mm256_fmadd_ps(_mm256_mul_ps(yd, u.d), _mm256_cvtepi32_ps(sumi), acc);
    _mm256_fnmadd_ps(_mm256_mul_ps(yd, u.dm), _mm256_cvtepi32_ps(summ), acc)
}

// ---------------------------------------------------------------------------------
// Transposed VNNI path for tiles with several activation columns.
//
// Weights and activations of a super-block are rearranged so that dword lane `i`
// (0..16) of vector `k` (0..4) holds elements `16i + 4k .. 16i + 4k + 4`: every lane
// then belongs to one 16-element scale group, four `vpdpbusd` give the 16 group sums
// directly, and the scales apply as one float vector. Activations are rearranged
// once per call (reused by all weight rows), weights once per block (reused by all
// columns).
// ---------------------------------------------------------------------------------

/// Natural order (vector j = elements 64j..64j+64) to the transposed order.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn transpose_groups(v: [__m512i; 4]) -> [__m512i; 4] {
    // Within each vector, transpose the 4x4 dwords of its 4 groups (one per 128-bit lane).
    let p = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let t0 = _mm512_permutexvar_epi32(p, v[0]);
    let t1 = _mm512_permutexvar_epi32(p, v[1]);
    let t2 = _mm512_permutexvar_epi32(p, v[2]);
    let t3 = _mm512_permutexvar_epi32(p, v[3]);
    // Then transpose the 4x4 128-bit blocks across the vectors.
    let u0 = _mm512_shuffle_i32x4::<0x44>(t0, t1);
    let u1 = _mm512_shuffle_i32x4::<0xee>(t0, t1);
    let u2 = _mm512_shuffle_i32x4::<0x44>(t2, t3);
    let u3 = _mm512_shuffle_i32x4::<0xee>(t2, t3);
    [
        _mm512_shuffle_i32x4::<0x88>(u0, u2),
        _mm512_shuffle_i32x4::<0xdd>(u0, u2),
        _mm512_shuffle_i32x4::<0x88>(u1, u3),
        _mm512_shuffle_i32x4::<0xdd>(u1, u3),
    ]
}

/// A weight block in transposed order with per-group float multipliers.
#[derive(Clone, Copy)]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
struct UnpackedT {
    q: [__m512i; 4],
    /// `d * scale_g` per group.
    dsc: __m512,
    /// Coefficient of `y.d * bsum_g` (subtracted).
    dmn: __m512,
}

/// Group multipliers of Q4_K/Q5_K: each sub-block's scale and min, twice.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn k4_group_scales(b: *const u8) -> (__m512, __m512) {
    let d = load_f16(b);
    let dmin = load_f16(b.add(2));
    let s: &[u8; 12] = &*(b.add(4) as *const [u8; 12]);
    let (sc8, m8) = super::unpack_scales_mins(s);
    let both = _mm_set_epi64x(m8 as i64, sc8 as i64);
    let sc = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(both, both));
    let mn = _mm512_cvtepu8_epi32(_mm_unpackhi_epi8(both, both));
    (
        _mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(sc)),
        _mm512_mul_ps(_mm512_set1_ps(dmin), _mm512_cvtepi32_ps(mn)),
    )
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn unpack_t_q4k(b: *const u8) -> UnpackedT {
    let (dsc, dmn) = k4_group_scales(b);
    let m4 = _mm512_set1_epi8(0x0f);
    let qs = b.add(16);
    let mut q = [_mm512_setzero_si512(); 4];
    for (c, v) in q.iter_mut().enumerate() {
        let raw = bcast256(qs.add(32 * c));
        *v = _mm512_and_si512(_mm512_mask_srli_epi16::<4>(raw, 0xffff_0000, raw), m4);
    }
    UnpackedT {
        q: transpose_groups(q),
        dsc,
        dmn,
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn unpack_t_q5k(b: *const u8) -> UnpackedT {
    let u = unpack512_q5k(b);
    let (dsc, dmn) = k4_group_scales(b);
    UnpackedT {
        q: transpose_groups(u.q),
        dsc,
        dmn,
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn unpack_t_q6k(b: *const u8) -> UnpackedT {
    let q = q6k_quants512(b);
    let d = load_f16(b.add(208));
    let s = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
        b.add(192) as *const __m128i
    )));
    let dsc = _mm512_mul_ps(_mm512_set1_ps(d), s);
    UnpackedT {
        q: transpose_groups(q),
        dsc,
        dmn: _mm512_mul_ps(_mm512_set1_ps(32.0), dsc),
    }
}

/// Zmm vectors per prepared activation block: 4 of quants, `y.d * bsums`, `y.d`.
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
const PREP: usize = 6;

/// Rearranges `nc` Q8_K rows of `nb` blocks into `buf[(c * nb + b) * PREP ..]`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn prepare_acts(nb: usize, a: *const u8, a_stride: usize, nc: usize, buf: *mut __m512i) {
    for c in 0..nc {
        for b in 0..nb {
            let y = a.add(c * a_stride + b * Q8K_BYTES);
            let qs = y.add(4);
            let v = [
                _mm512_loadu_si512(qs as *const _),
                _mm512_loadu_si512(qs.add(64) as *const _),
                _mm512_loadu_si512(qs.add(128) as *const _),
                _mm512_loadu_si512(qs.add(192) as *const _),
            ];
            let t = transpose_groups(v);
            let yd = _mm512_set1_ps((y as *const f32).read_unaligned());
            let bs = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(loadu(y.add(260))));
            let dst = buf.add((c * nb + b) * PREP);
            for (k, t) in t.iter().enumerate() {
                dst.add(k).write(*t);
            }
            dst.add(4).write(_mm512_castps_si512(_mm512_mul_ps(yd, bs)));
            dst.add(5).write(_mm512_castps_si512(yd));
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[inline]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn kernel_t(u: &UnpackedT, p: *const __m512i, acc: __m512) -> __m512 {
    let s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u.q[0], p.read());
    let s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u.q[1], p.add(1).read());
    let s0 = _mm512_dpbusd_epi32(s0, u.q[2], p.add(2).read());
    let s1 = _mm512_dpbusd_epi32(s1, u.q[3], p.add(3).read());
    let s = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));
    let yd = _mm512_castsi512_ps(p.add(5).read());
    let acc = _mm512_fmadd_ps(_mm512_mul_ps(s, yd), u.dsc, acc);
    _mm512_fnmadd_ps(_mm512_castsi512_ps(p.add(4).read()), u.dmn, acc)
}

macro_rules! tile_t_fn {
    ($cols:ident, $unpack:ident, $wbytes:expr) => {
        #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
        #[allow(clippy::too_many_arguments)]
        #[allow(dead_code)]
        unsafe fn $cols<const NC: usize>(
            nb: usize,
            w: *const u8,
            w_stride: usize,
            nr: usize,
            prep: *const __m512i,
            out: *mut f32,
            out_stride: usize,
        ) {
            for r in 0..nr {
                let wr = w.add(r * w_stride);
                let mut acc = [_mm512_setzero_ps(); NC];
                for b in 0..nb {
                    prefetch(wr.wrapping_add((b + PF_BLOCKS) * $wbytes));
                    let u = $unpack(wr.add(b * $wbytes));
                    for (c, acc) in acc.iter_mut().enumerate() {
                        *acc = kernel_t(&u, prep.add((c * nb + b) * PREP), *acc);
                    }
                }
                for (c, acc) in acc.iter().enumerate() {
                    *out.add(r * out_stride + c) = _mm512_reduce_add_ps(*acc);
                }
            }
        }
    };
}

tile_t_fn!(cols_t_q4k, unpack_t_q4k, 144);
tile_t_fn!(cols_t_q5k, unpack_t_q5k, 176);
tile_t_fn!(cols_t_q6k, unpack_t_q6k, 210);

/// Columns per transposed pass (bounded so the prepared activations stay small).
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
const T_COLS: usize = 8;

thread_local! {
    static PREP_BUF: std::cell::RefCell<Vec<__m512i>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// VNNI tile with `nc >= 2` through the transposed kernels.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
#[allow(clippy::too_many_arguments)]
#[allow(dead_code)] // transposed kernel, kept for tuning (see `tile`)
unsafe fn tile_t(
    t: GgmlType,
    nb: usize,
    w: *const u8,
    w_stride: usize,
    nr: usize,
    a: *const u8,
    a_stride: usize,
    nc: usize,
    out: *mut f32,
    out_stride: usize,
) {
    PREP_BUF.with(|cell| {
        let mut buf = cell.borrow_mut();
        let need = nc.min(T_COLS) * nb * PREP;
        if buf.len() < need {
            buf.resize(need, _mm512_setzero_si512());
        }
        let prep = buf.as_mut_ptr();
        let mut c0 = 0;
        while c0 < nc {
            let left = nc - c0;
            let chunks = left.div_ceil(T_COLS);
            let cn = left.div_ceil(chunks);
            prepare_acts(nb, a.add(c0 * a_stride), a_stride, cn, prep);
            let out = out.add(c0);
            macro_rules! go {
                ($cols:ident) => {
                    match cn {
                        1 => $cols::<1>(nb, w, w_stride, nr, prep, out, out_stride),
                        2 => $cols::<2>(nb, w, w_stride, nr, prep, out, out_stride),
                        3 => $cols::<3>(nb, w, w_stride, nr, prep, out, out_stride),
                        4 => $cols::<4>(nb, w, w_stride, nr, prep, out, out_stride),
                        5 => $cols::<5>(nb, w, w_stride, nr, prep, out, out_stride),
                        6 => $cols::<6>(nb, w, w_stride, nr, prep, out, out_stride),
                        7 => $cols::<7>(nb, w, w_stride, nr, prep, out, out_stride),
                        _ => $cols::<8>(nb, w, w_stride, nr, prep, out, out_stride),
                    }
                };
            }
            match t {
                GgmlType::Q4K => go!(cols_t_q4k),
                GgmlType::Q5K => go!(cols_t_q5k),
                _ => go!(cols_t_q6k),
            }
            c0 += cn;
        }
    });
}

/// Stamps out a tile driver for one (weight type, SIMD level): for each weight row,
/// for each super-block, unpack once and dot against `NC` activation columns.
macro_rules! tile_fn {
    ($name:ident, $cols:ident, $feat:literal, $unpack:ident, $kernel:ident, $wbytes:expr) => {
        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $cols<const NC: usize>(
            nb: usize,
            w: *const u8,
            w_stride: usize,
            nr: usize,
            a: *const u8,
            a_stride: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            for r in 0..nr {
                let wr = w.add(r * w_stride);
                let mut acc = [_mm256_setzero_ps(); NC];
                for b in 0..nb {
                    prefetch(wr.wrapping_add((b + PF_BLOCKS) * $wbytes));
                    let u = $unpack(wr.add(b * $wbytes));
                    let ab = a.add(b * Q8K_BYTES);
                    for (c, acc) in acc.iter_mut().enumerate() {
                        *acc = $kernel(&u, ab.add(c * a_stride), *acc);
                    }
                }
                for (c, acc) in acc.iter().enumerate() {
                    *out.add(r * out_stride + c) = hsum(*acc);
                }
            }
        }

        #[target_feature(enable = $feat)]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            nb: usize,
            w: *const u8,
            w_stride: usize,
            nr: usize,
            a: *const u8,
            a_stride: usize,
            nc: usize,
            out: *mut f32,
            out_stride: usize,
        ) {
            let mut c0 = 0;
            while c0 < nc {
                let left = nc - c0;
                // Balanced chunks of at most 8 columns (9 -> 5 + 4, not 8 + 1).
                let chunks = left.div_ceil(8);
                let cn = left.div_ceil(chunks);
                let (a, out) = (a.add(c0 * a_stride), out.add(c0));
                let args = (nb, w, w_stride, nr, a, a_stride, out, out_stride);
                match cn {
                    1 => $cols::<1>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                    2 => $cols::<2>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                    3 => $cols::<3>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                    4 => $cols::<4>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                    5 => $cols::<5>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                    6 => $cols::<6>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                    7 => $cols::<7>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                    _ => $cols::<8>(
                        args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7,
                    ),
                }
                c0 += cn;
            }
        }
    };
}

tile_fn!(
    tile_q4k_avx2,
    cols_q4k_avx2,
    "avx2,fma,f16c",
    unpack_q4k,
    kernel_avx2,
    144
);
tile_fn!(
    tile_q5k_avx2,
    cols_q5k_avx2,
    "avx2,fma,f16c",
    unpack_q5k,
    kernel_avx2,
    176
);
tile_fn!(
    tile_q6k_avx2,
    cols_q6k_avx2,
    "avx2,fma,f16c",
    unpack_q6k,
    kernel_avx2,
    210
);
tile_fn!(
    tile_q4k_vnni,
    cols_q4k_vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
    unpack512_q4k,
    kernel512,
    144
);
tile_fn!(
    tile_q5k_vnni,
    cols_q5k_vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
    unpack512_q5k,
    kernel512,
    176
);
tile_fn!(
    tile_q6k_vnni,
    cols_q6k_vnni,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni",
    unpack512_q6k,
    kernel512,
    210
);

/// Dispatches a tile to the kernel for `(level, t)`.
///
/// # Safety
/// The CPU must support `level` (Avx2 or Avx512Vnni); `nr` weight rows of `nb`
/// blocks at `w + r * w_stride`, `nc` Q8_K rows at `a + c * a_stride` and the
/// outputs `out[r * out_stride + c]` must all be in bounds.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn tile(
    level: SimdLevel,
    t: GgmlType,
    nb: usize,
    w: *const u8,
    w_stride: usize,
    nr: usize,
    a: *const u8,
    a_stride: usize,
    nc: usize,
    out: *mut f32,
    out_stride: usize,
) {
    let args = (nb, w, w_stride, nr, a, a_stride, nc, out, out_stride);
    macro_rules! call {
        ($f:ident) => {
            $f(
                args.0, args.1, args.2, args.3, args.4, args.5, args.6, args.7, args.8,
            )
        };
    }
    match (level, t) {
        // Every column count uses the same per-column kernel, so a token's result is
        // bitwise the same whatever batch it is in (chunked prefill, continuous
        // batching). That kernel accumulates each super-block in integers and scales
        // once, in ggml's order; this model family amplifies rounding differences, and
        // matching that order keeps greedy output closest to llama.cpp's. (The
        // transposed kernel, `tile_t`, rounds per scale group and is kept for study.)
        (SimdLevel::Avx512Vnni, GgmlType::Q4K) => call!(tile_q4k_vnni),
        (SimdLevel::Avx512Vnni, GgmlType::Q5K) => call!(tile_q5k_vnni),
        (SimdLevel::Avx512Vnni, _) => call!(tile_q6k_vnni),
        (_, GgmlType::Q4K) => call!(tile_q4k_avx2),
        (_, GgmlType::Q5K) => call!(tile_q5k_avx2),
        (_, _) => call!(tile_q6k_avx2),
    }
}

/// [`super::quantize_q8k_scalar`] on AVX-512, bit for bit: the first element of largest
/// magnitude sets the scale, products round half to even (ggml's `nearest_int`), and
/// each 16-lane vector is one of the 16 `bsums` groups. `None` (use the scalar twin)
/// when the block holds a NaN or an infinity, whose handling the scalar loop defines.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn quantize_q8k_512(x: &[f32; QK_K]) -> Option<BlockQ8K> {
    let p = x.as_ptr();
    let (mut m, mut nan) = (_mm512_setzero_ps(), 0u16);
    for g in 0..16 {
        let v = _mm512_loadu_ps(p.add(16 * g));
        nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        m = _mm512_max_ps(m, _mm512_abs_ps(v));
    }
    let amax = _mm512_reduce_max_ps(m);
    if nan != 0 || !amax.is_finite() {
        return None;
    }
    let mut b = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; 16],
    };
    if amax == 0.0 {
        return Some(b);
    }
    let va = _mm512_set1_ps(amax);
    let first = (0..16).find_map(|g| {
        let v = _mm512_abs_ps(_mm512_loadu_ps(p.add(16 * g)));
        let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(v, va);
        (hit != 0).then(|| 16 * g + hit.trailing_zeros() as usize)
    })?;
    let max = x[first];
    let iscale = -127.0 / max;
    let (vs, top) = (_mm512_set1_ps(iscale), _mm512_set1_epi32(127));
    for g in 0..16 {
        let v = _mm512_mul_ps(vs, _mm512_loadu_ps(p.add(16 * g)));
        let q = _mm512_min_epi32(
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v),
            top,
        );
        _mm_storeu_si128(
            b.qs.as_mut_ptr().add(16 * g) as *mut __m128i,
            _mm512_cvtepi32_epi8(q),
        );
        b.bsums[g] = _mm512_reduce_add_epi32(q) as i16;
    }
    b.d = 1.0 / iscale;
    Some(b)
}
