//! GGML K-quants: Q4_K, Q5_K, Q6_K weights (256-element super-blocks) and the Q8_K
//! activation format they are dotted against.
//!
//! Layouts are bit-exact with GGUF files written by llama.cpp. The reference
//! quantizers follow ggml's search procedures (weighted scale/min search for Q4_K
//! and Q5_K, the `make_qx_quants` scale sweep for Q6_K).
//!
//! Dot products: every SIMD kernel first unpacks a weight super-block into a common
//! form (256 unsigned quants in element order, one i16 scale per 16 elements, an i16
//! coefficient per 16 elements applied to the Q8_K `bsums`), then dots it against
//! each activation row of a tile. For a weight block and a Q8_K block `y`:
//!
//! `dot = y.d * (d * Σ_g scale_g Σ_{i∈g} q_i y_i  -  dm * Σ_g coef_g bsum_g)`
//!
//! Q4_K/Q5_K: `d = d`, `dm = dmin`, `coef_g = min_{g/2}`. Q6_K: quants are stored
//! with a +32 offset, so `dm = 32 d` and `coef_g = scale_g`.

use crate::cpu::{simd_level, SimdLevel};
use hangar_formats::GgmlType;

#[cfg(target_arch = "x86_64")]
mod x86;

/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;

/// Q4_K: 4-bit quants, 8 sub-blocks of 32 with 6-bit scales and mins.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ4K {
    /// Super-block scale for the sub-block scales (f16 bits).
    pub d: u16,
    /// Super-block scale for the sub-block mins (f16 bits).
    pub dmin: u16,
    /// 8 scales and 8 mins, 6 bits each, packed (see [`unpack_scales_mins`]).
    pub scales: [u8; 12],
    /// Nibbles: byte `32c + l` holds element `64c + l` (low) and `64c + 32 + l` (high).
    pub qs: [u8; 128],
}

/// Q5_K: Q4_K plus one high bit per element.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ5K {
    pub d: u16,
    pub dmin: u16,
    pub scales: [u8; 12],
    /// Bit `2c` of byte `l`: high bit of element `64c + l`; bit `2c + 1`: of `64c + 32 + l`.
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q6_K: 6-bit quants (stored +32), 16 sub-blocks of 16 with i8 scales.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ6K {
    /// Low nibbles: for half `h`, byte `64h + l` holds elements `128h + l` (low nibble)
    /// and `128h + 64 + l` (high); byte `64h + 32 + l` holds `128h + 32 + l` and `128h + 96 + l`.
    pub ql: [u8; 128],
    /// High 2 bits: byte `32h + l`, bits `2k..2k+2` belong to element `128h + 32k + l`.
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    /// Super-block scale (f16 bits).
    pub d: u16,
}

/// Q8_K: activations, 8-bit quants with an f32 scale and sums of each 16 quants.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);

const Q8K_BYTES: usize = 292;

#[inline]
fn f16_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

#[inline]
fn f32_to_f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

/// Round to nearest, ties to even (ggml's `nearest_int`, valid for |v| < 2^22).
#[inline]
fn nearest_int(v: f32) -> i32 {
    let f = v + 12_582_912.0;
    (f.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// The 8 six-bit scales and 8 six-bit mins of a Q4_K/Q5_K block, as little-endian
/// packed bytes (`scale_j` is byte `j` of the first value).
#[inline]
pub fn unpack_scales_mins(s: &[u8; 12]) -> (u64, u64) {
    let u0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let u1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let u2 = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    let sc_lo = u0 & 0x3f3f_3f3f;
    let sc_hi = (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4);
    let m_lo = u1 & 0x3f3f_3f3f;
    let m_hi = ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4);
    (
        sc_lo as u64 | (sc_hi as u64) << 32,
        m_lo as u64 | (m_hi as u64) << 32,
    )
}

/// Scale and min of sub-block `j` (ggml's `get_scale_min_k4`), straight from the layout.
#[inline]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Packs 8 scales and 8 mins (each < 64) into the 12-byte Q4_K/Q5_K layout.
fn pack_scales_mins(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

#[inline]
fn read_block<T: Copy>(src: &[u8], i: usize) -> T {
    let sz = std::mem::size_of::<T>();
    let bytes = &src[i * sz..(i + 1) * sz];
    // SAFETY: `bytes` holds exactly size_of::<T>() bytes; T is a plain-old-data
    // repr(C) block (integers only, every bit pattern valid); unaligned read.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const T) }
}

#[inline]
fn write_block<T: Copy>(dst: &mut [u8], i: usize, b: &T) {
    let sz = std::mem::size_of::<T>();
    let bytes = &mut dst[i * sz..(i + 1) * sz];
    // SAFETY: `bytes` holds exactly size_of::<T>() bytes; blocks have no padding.
    unsafe { std::ptr::write_unaligned(bytes.as_mut_ptr() as *mut T, *b) }
}

fn type_size_of(t: GgmlType) -> usize {
    match t {
        GgmlType::Q4K => 144,
        GgmlType::Q5K => 176,
        GgmlType::Q6K => 210,
        GgmlType::Q8K => 292,
        _ => panic!("kquants: unsupported type {t}"),
    }
}

// ---------------------------------------------------------------------------------
// Dequantization
// ---------------------------------------------------------------------------------

/// Dequantizes `dst.len()` elements (a multiple of 256) from a row of type `t`.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) {
    let nb = dst.len() / QK_K;
    assert_eq!(dst.len() % QK_K, 0, "kquants: length not a multiple of 256");
    assert!(
        src.len() >= nb * type_size_of(t),
        "kquants: source row too short"
    );
    for (i, y) in dst.chunks_exact_mut(QK_K).enumerate() {
        match t {
            GgmlType::Q4K => dequant_q4k(&read_block(src, i), y),
            GgmlType::Q5K => dequant_q5k(&read_block(src, i), y),
            GgmlType::Q6K => dequant_q6k(&read_block(src, i), y),
            GgmlType::Q8K => {
                let b: BlockQ8K = read_block(src, i);
                for (o, &q) in y.iter_mut().zip(b.qs.iter()) {
                    *o = b.d * q as f32;
                }
            }
            _ => panic!("kquants::dequantize_row: unsupported type {t}"),
        }
    }
}

fn dequant_q4k(b: &BlockQ4K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, &b.scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let q = b.qs[32 * c + l];
            y[64 * c + l] = d1 * (q & 0xf) as f32 - m1;
            y[64 * c + 32 + l] = d2 * (q >> 4) as f32 - m2;
        }
    }
}

fn dequant_q5k(b: &BlockQ5K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    let dmin = f16_to_f32(b.dmin);
    for c in 0..4 {
        let (s1, m1) = scale_min_k4(2 * c, &b.scales);
        let (s2, m2) = scale_min_k4(2 * c + 1, &b.scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        for l in 0..32 {
            let q = b.qs[32 * c + l];
            let h = b.qh[l];
            let lo = (q & 0xf) | (((h >> (2 * c)) & 1) << 4);
            let hi = (q >> 4) | (((h >> (2 * c + 1)) & 1) << 4);
            y[64 * c + l] = d1 * lo as f32 - m1;
            y[64 * c + 32 + l] = d2 * hi as f32 - m2;
        }
    }
}

/// The 6-bit quant (0..64, i.e. stored +32) of element `i` of a Q6_K block.
#[inline]
fn q6k_quant(b: &BlockQ6K, i: usize) -> u8 {
    let h = i / 128;
    let k = (i % 128) / 32;
    let l = i % 32;
    let ql = b.ql[64 * h + 32 * (k & 1) + l];
    let lo = if k < 2 { ql & 0xf } else { ql >> 4 };
    let hi = (b.qh[32 * h + l] >> (2 * k)) & 3;
    lo | (hi << 4)
}

fn dequant_q6k(b: &BlockQ6K, y: &mut [f32]) {
    let d = f16_to_f32(b.d);
    for (i, o) in y.iter_mut().enumerate() {
        let q = q6k_quant(b, i) as i32 - 32;
        *o = d * b.scales[i / 16] as f32 * q as f32;
    }
}

// ---------------------------------------------------------------------------------
// Quantization
// ---------------------------------------------------------------------------------

/// Quantizes `src` (a multiple of 256 elements) into a row of type `t`.
pub fn quantize_row(t: GgmlType, src: &[f32], dst: &mut [u8]) {
    assert_eq!(src.len() % QK_K, 0, "kquants: length not a multiple of 256");
    let nb = src.len() / QK_K;
    assert!(
        dst.len() >= nb * type_size_of(t),
        "kquants: destination row too short"
    );
    for (i, x) in src.chunks_exact(QK_K).enumerate() {
        let x: &[f32; QK_K] = x.try_into().expect("256 elements");
        match t {
            GgmlType::Q4K => write_block(dst, i, &quantize_q4k(x)),
            GgmlType::Q5K => write_block(dst, i, &quantize_q5k(x)),
            GgmlType::Q6K => write_block(dst, i, &quantize_q6k(x)),
            GgmlType::Q8K => write_block(dst, i, &quantize_q8k(x)),
            _ => panic!("kquants::quantize_row: unsupported type {t}"),
        }
    }
}

/// Quantizes one block of activations to Q8_K (ggml's reference rounding), with
/// AVX-512 where available (bitwise the same block).
pub fn quantize_q8k(x: &[f32; QK_K]) -> BlockQ8K {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::simd_level() >= SimdLevel::Avx512Vnni {
        // SAFETY: AVX-512 checked; the block is 256 elements.
        if let Some(b) = unsafe { x86::quantize_q8k_512(x) } {
            return b;
        }
    }
    quantize_q8k_scalar(x)
}

/// The scalar twin of [`quantize_q8k`].
pub fn quantize_q8k_scalar(x: &[f32; QK_K]) -> BlockQ8K {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        let a = v.abs();
        if a > amax {
            amax = a;
            max = v;
        }
    }
    let mut b = BlockQ8K {
        d: 0.0,
        qs: [0; 256],
        bsums: [0; 16],
    };
    if amax == 0.0 {
        return b;
    }
    let iscale = -127.0 / max;
    for (q, &v) in b.qs.iter_mut().zip(x.iter()) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (g, s) in b.bsums.iter_mut().enumerate() {
        *s = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
    }
    b.d = 1.0 / iscale;
    b
}

/// Weighted search for the scale and min of one sub-block with quants in
/// `0..=nmax` (ggml's `make_qkx2_quants` procedure, squared error). Fills `l` and
/// returns `(scale, min)` with `x ≈ scale * l - min`, `min >= 0`.
#[allow(clippy::too_many_arguments)]
fn search_scale_min(
    x: &[f32],
    w: &[f32],
    l: &mut [u8],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = w[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        min = if x[i] < min { x[i] } else { min };
        max = if x[i] > max { x[i] } else { max };
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.iter_mut().for_each(|v| *v = 0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..n {
        let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l[i] = q as u8;
        let diff = scale * q as f32 + min - x[i];
        best += w[i] * diff * diff;
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sl, mut sl2, mut sxl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let q = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = q as u8;
            let q = q as f32;
            sl += w[i] * q;
            sl2 += w[i] * q * q;
            sxl += w[i] * q * x[i];
        }
        let det = sum_w * sl2 - sl * sl;
        if det > 0.0 {
            let mut this_scale = (sum_w * sxl - sum_x * sl) / det;
            let mut this_min = (sl2 * sum_x - sl * sxl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sxl / sl2;
            }
            let mut err = 0.0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                err += w[i] * diff * diff;
            }
            if err < best {
                l.copy_from_slice(&laux[..n]);
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Shared Q4_K/Q5_K quantization: returns d, dmin, packed scales and the quants.
fn quantize_k4_like(
    x: &[f32; QK_K],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> (u16, u16, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    let mut w = [0f32; 32];
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        for (wi, &v) in w.iter_mut().zip(xs) {
            *wi = av_x + v.abs();
        }
        let (s, m) = search_scale_min(xs, &w, &mut l[32 * j..32 * j + 32], nmax, rmin, 0.1, nstep);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        ls[j] = nearest_int(inv_scale * scales[j]).min(63) as u8;
        lm[j] = nearest_int(inv_min * mins[j]).min(63) as u8;
    }
    let packed = pack_scales_mins(&ls, &lm);
    let d = f32_to_f16(max_scale / 63.0);
    let dmin = f32_to_f16(max_min / 63.0);
    let (df, dminf) = (f16_to_f32(d), f16_to_f32(dmin));
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dd = df * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dminf * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + dm) / dd).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// Reference Q4_K quantization of one super-block.
pub fn quantize_q4k(x: &[f32; QK_K]) -> BlockQ4K {
    let (d, dmin, scales, l) = quantize_k4_like(x, 15, -1.0, 20);
    let mut qs = [0u8; 128];
    for c in 0..4 {
        for i in 0..32 {
            qs[32 * c + i] = l[64 * c + i] | (l[64 * c + 32 + i] << 4);
        }
    }
    BlockQ4K {
        d,
        dmin,
        scales,
        qs,
    }
}

/// Reference Q5_K quantization of one super-block.
pub fn quantize_q5k(x: &[f32; QK_K]) -> BlockQ5K {
    let (d, dmin, scales, l) = quantize_k4_like(x, 31, -0.5, 15);
    let mut qs = [0u8; 128];
    let mut qh = [0u8; 32];
    for c in 0..4 {
        for i in 0..32 {
            let lo = l[64 * c + i];
            let hi = l[64 * c + 32 + i];
            qh[i] |= ((lo >> 4) << (2 * c)) | ((hi >> 4) << (2 * c + 1));
            qs[32 * c + i] = (lo & 0xf) | ((hi & 0xf) << 4);
        }
    }
    BlockQ5K {
        d,
        dmin,
        scales,
        qh,
        qs,
    }
}

const GROUP_MAX_EPS: f32 = 1e-15;

/// Symmetric scale search with quants in `-nmax..nmax` (ggml's `make_qx_quants`
/// with x² weights). Writes `l` as quant + nmax and returns the scale.
fn search_scale_sym(x: &[f32], l: &mut [u8], nmax: i32) -> f32 {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.iter_mut().for_each(|v| *v = 0);
        return 0.0;
    }
    let quant = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        let q = quant(iscale, v);
        l[i] = (q + nmax) as u8;
        let w = v * v;
        sumlx += w * v * q as f32;
        suml2 += w * (q * q) as f32;
    }
    let mut scale = sumlx / suml2;
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for &v in x {
            let q = quant(iscale, v);
            let w = v * v;
            sumlx += w * v * q as f32;
            suml2 += w * (q * q) as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                l[i] = (quant(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Reference Q6_K quantization of one super-block.
pub fn quantize_q6k(x: &[f32; QK_K]) -> BlockQ6K {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    let mut max_abs = 0f32;
    for g in 0..16 {
        let s = search_scale_sym(&x[16 * g..16 * g + 16], &mut l[16 * g..16 * g + 16], 32);
        scales[g] = s;
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    let mut b = BlockQ6K {
        ql: [0; 128],
        qh: [0; 64],
        scales: [0; 16],
        d: 0,
    };
    if max_abs < GROUP_MAX_EPS {
        return b;
    }
    let iscale = -128.0 / max_scale;
    b.d = f32_to_f16(1.0 / iscale);
    for (bs, &s) in b.scales.iter_mut().zip(scales.iter()) {
        *bs = nearest_int(iscale * s).min(127) as i8;
    }
    let df = f16_to_f32(b.d);
    for g in 0..16 {
        let d = df * b.scales[g] as f32;
        if d == 0.0 {
            continue;
        }
        for i in 16 * g..16 * g + 16 {
            l[i] = (nearest_int(x[i] / d).clamp(-32, 31) + 32) as u8;
        }
    }
    for h in 0..2 {
        for i in 0..32 {
            let q = |k: usize| l[128 * h + 32 * k + i];
            b.ql[64 * h + i] = (q(0) & 0xf) | ((q(2) & 0xf) << 4);
            b.ql[64 * h + 32 + i] = (q(1) & 0xf) | ((q(3) & 0xf) << 4);
            b.qh[32 * h + i] =
                (q(0) >> 4) | ((q(1) >> 4) << 2) | ((q(2) >> 4) << 4) | ((q(3) >> 4) << 6);
        }
    }
    b
}

// ---------------------------------------------------------------------------------
// Dot products
// ---------------------------------------------------------------------------------

fn check_dot_type(t: GgmlType) {
    assert!(
        matches!(t, GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K),
        "kquants: unsupported weight type {t}"
    );
}

fn check_row(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> usize {
    check_dot_type(t);
    assert_eq!(n % QK_K, 0, "kquants: n={n} not a multiple of 256");
    let nb = n / QK_K;
    assert!(
        w.len() >= nb * type_size_of(t),
        "kquants: weight row too short"
    );
    assert!(
        a.len() >= nb * Q8K_BYTES,
        "kquants: activation row too short"
    );
    nb
}

/// Scalar reference: weight row `w` (Q4_K/Q5_K/Q6_K) dotted with Q8_K row `a`.
pub fn vec_dot_scalar(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_row(t, n, w, a);
    let mut sum = 0f32;
    for i in 0..nb {
        let y: BlockQ8K = read_block(a, i);
        sum += match t {
            GgmlType::Q4K => dot_block_q4k(&read_block(w, i), &y),
            GgmlType::Q5K => dot_block_q5k(&read_block(w, i), &y),
            _ => dot_block_q6k(&read_block(w, i), &y),
        };
    }
    sum
}

fn dot_block_q4k(b: &BlockQ4K, y: &BlockQ8K) -> f32 {
    let (mut sumi, mut summ) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b.scales);
        let (c, hi) = (j / 2, j % 2 == 1);
        let mut s = 0i32;
        let mut sy = 0i32;
        for l in 0..32 {
            let byte = b.qs[32 * c + l];
            let q = if hi { byte >> 4 } else { byte & 0xf };
            let v = y.qs[32 * j + l] as i32;
            s += q as i32 * v;
            sy += v;
        }
        sumi += sc as i32 * s;
        summ += m as i32 * sy;
    }
    y.d * (f16_to_f32(b.d) * sumi as f32 - f16_to_f32(b.dmin) * summ as f32)
}

fn dot_block_q5k(b: &BlockQ5K, y: &BlockQ8K) -> f32 {
    let (mut sumi, mut summ) = (0i32, 0i32);
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, &b.scales);
        let c = j / 2;
        let mut s = 0i32;
        let mut sy = 0i32;
        for l in 0..32 {
            let byte = b.qs[32 * c + l];
            let lo = if j % 2 == 1 { byte >> 4 } else { byte & 0xf };
            let q = lo | (((b.qh[l] >> j) & 1) << 4);
            let v = y.qs[32 * j + l] as i32;
            s += q as i32 * v;
            sy += v;
        }
        sumi += sc as i32 * s;
        summ += m as i32 * sy;
    }
    y.d * (f16_to_f32(b.d) * sumi as f32 - f16_to_f32(b.dmin) * summ as f32)
}

fn dot_block_q6k(b: &BlockQ6K, y: &BlockQ8K) -> f32 {
    let mut sumi = 0i32;
    for g in 0..16 {
        let mut s = 0i32;
        for i in 16 * g..16 * g + 16 {
            s += (q6k_quant(b, i) as i32 - 32) * y.qs[i] as i32;
        }
        sumi += b.scales[g] as i32 * s;
    }
    y.d * f16_to_f32(b.d) * sumi as f32
}

/// Whether `level` can run on this CPU.
fn level_available(level: SimdLevel) -> bool {
    level <= crate::cpu::detect()
}

/// Dot product at the best SIMD level (see `quants::vec_dot`).
#[inline]
pub fn vec_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    vec_dot_unchecked_level(simd_level(), t, n, w, a)
}

/// Dot product at an explicit SIMD level (tests and benchmarks).
/// Panics if this CPU lacks `level`.
pub fn vec_dot_with(level: SimdLevel, t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    assert!(
        level_available(level),
        "kquants: {level:?} not supported by this CPU"
    );
    vec_dot_unchecked_level(level, t, n, w, a)
}

#[inline]
fn vec_dot_unchecked_level(level: SimdLevel, t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    let nb = check_row(t, n, w, a);
    let mut out = 0f32;
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni | SimdLevel::Avx2 => {
            // SAFETY: sizes checked above; `level` is supported by this CPU.
            unsafe {
                x86::tile(
                    level,
                    t,
                    nb,
                    w.as_ptr(),
                    0,
                    1,
                    a.as_ptr(),
                    0,
                    1,
                    &mut out,
                    0,
                );
            }
        }
        _ => out = vec_dot_scalar(t, n, w, a),
    }
    out
}

/// Tile of dot products at the best SIMD level (see `quants::dot_tile`).
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
    dot_tile_unchecked_level(
        simd_level(),
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

/// Tile of dot products at an explicit SIMD level (`Scalar` loops over
/// [`vec_dot_scalar`]). Panics if this CPU lacks `level`.
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
    assert!(
        level_available(level),
        "kquants: {level:?} not supported by this CPU"
    );
    dot_tile_unchecked_level(
        level, t, n, w, w_stride, nr, a, a_stride, nc, out, out_stride,
    )
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn dot_tile_unchecked_level(
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
    check_dot_type(t);
    assert_eq!(n % QK_K, 0, "kquants: n={n} not a multiple of 256");
    if nr == 0 || nc == 0 {
        return;
    }
    let nb = n / QK_K;
    let wrow = nb * type_size_of(t);
    let arow = nb * Q8K_BYTES;
    assert!(
        nr == 1 || w_stride >= wrow,
        "kquants: weight stride too small"
    );
    assert!(
        nc == 1 || a_stride >= arow,
        "kquants: activation stride too small"
    );
    assert!(
        nr == 1 || out_stride >= nc,
        "kquants: output stride too small"
    );
    assert!(
        w.len() >= (nr - 1) * w_stride + wrow,
        "kquants: weight tile too short"
    );
    assert!(
        a.len() >= (nc - 1) * a_stride + arow,
        "kquants: activation tile too short"
    );
    assert!(
        out.len() >= (nr - 1) * out_stride + nc,
        "kquants: output tile too short"
    );
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512Vnni | SimdLevel::Avx2 => {
            // SAFETY: every row and column read or written lies inside the slices
            // (checked above); `level` is supported by this CPU.
            unsafe {
                x86::tile(
                    level,
                    t,
                    nb,
                    w.as_ptr(),
                    w_stride,
                    nr,
                    a.as_ptr(),
                    a_stride,
                    nc,
                    out.as_mut_ptr(),
                    out_stride,
                );
            }
        }
        _ => {
            for r in 0..nr {
                for c in 0..nc {
                    out[r * out_stride + c] =
                        vec_dot_scalar(t, n, &w[r * w_stride..], &a[c * a_stride..]);
                }
            }
        }
    }
}
