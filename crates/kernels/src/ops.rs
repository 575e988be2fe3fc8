//! Element-wise and small vector operations of a transformer forward pass: norms,
//! rotary embeddings, activations, softmax and the f32 dot/axpy used by attention.
//! Allocation-free; SIMD where it pays (dot and axpy dominate attention).

mod halves;
mod lowrank;
#[cfg(target_arch = "x86_64")]
mod wide;
pub use halves::{axpy_half, dot_half, Half};
pub use lowrank::{axpy_rows, dot_rows, Factor};

/// `out = x / rms(x) * w` (RMSNorm; `w` already holds any `1 +` offset, as GGUF stores it).
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    debug_assert_eq!(x.len(), w.len());
    let scale = rms_scale(x, eps);
    for ((o, &xv), &wv) in out.iter_mut().zip(x).zip(w) {
        *o = xv * scale * wv;
    }
}

/// `1 / sqrt(mean(x²) + eps)`, with the squares summed in f64 as ggml does (Gemma's
/// residual stream has large outliers; the wider sum keeps the norm exact). Sixteen
/// interleaved partial sums, not ggml's one chain: a chain of dependent f64 adds made
/// the norms 6.6% of a prefill (`perf`), the vector sum takes a tenth of that. The
/// order is fixed, so results are the same for every batch; ggml numerics use
/// [`crate::ggml::ops`], which keeps ggml's order.
#[inline]
fn rms_scale(x: &[f32], eps: f32) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f64; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v * v) as f64;
        }
    }
    let mut sum = 0f64;
    for a in acc {
        sum += a;
    }
    for &v in rest {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// In-place RMSNorm.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let scale = rms_scale(x, eps);
    for (xv, &wv) in x.iter_mut().zip(w) {
        *xv = *xv * scale * wv;
    }
}

/// Rotary position embedding pairing: NEOX rotates (i, i + d/2); NORM rotates (2i, 2i+1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    Neox,
    Norm,
}

/// cos/sin of `pos * freq_i` for a set of positions, computed once per forward and
/// shared by all layers and heads that use the same base.
#[derive(Debug, Default, Clone)]
pub struct RopeTable {
    half: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Fills the table for `positions`, rotating `n_rot` dims with the given base.
    /// `freq_factors` (Llama 3 style) divide each frequency when present.
    pub fn fill(
        &mut self,
        positions: &[usize],
        base: f32,
        n_rot: usize,
        freq_factors: Option<&[f32]>,
    ) {
        let half = n_rot / 2;
        self.half = half;
        self.cos.resize(positions.len() * half, 0.0);
        self.sin.resize(positions.len() * half, 0.0);
        let inv: Vec<f64> = (0..half)
            .map(|i| {
                let f = (base as f64).powf(-2.0 * i as f64 / n_rot as f64);
                match freq_factors {
                    Some(ff) => f / ff[i] as f64,
                    None => f,
                }
            })
            .collect();
        for (t, &p) in positions.iter().enumerate() {
            for (i, &f) in inv.iter().enumerate() {
                let th = p as f64 * f;
                self.cos[t * half + i] = th.cos() as f32;
                self.sin[t * half + i] = th.sin() as f32;
            }
        }
    }

    /// Rotates one head vector `x` (length >= n_rot) at table row `t`.
    #[inline]
    pub fn apply(&self, x: &mut [f32], t: usize, style: RopeStyle) {
        let h = self.half;
        let c = &self.cos[t * h..(t + 1) * h];
        let s = &self.sin[t * h..(t + 1) * h];
        match style {
            RopeStyle::Neox => {
                let (a, b) = x[..2 * h].split_at_mut(h);
                for i in 0..h {
                    let (x0, x1) = (a[i], b[i]);
                    a[i] = x0 * c[i] - x1 * s[i];
                    b[i] = x0 * s[i] + x1 * c[i];
                }
            }
            RopeStyle::Norm => {
                for i in 0..h {
                    let (x0, x1) = (x[2 * i], x[2 * i + 1]);
                    x[2 * i] = x0 * c[i] - x1 * s[i];
                    x[2 * i + 1] = x0 * s[i] + x1 * c[i];
                }
            }
        }
    }
}

/// GELU, tanh approximation (Gemma's `gelu_pytorch_tanh`).
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const C: f32 = 0.797_884_6; // sqrt(2/pi)
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}

/// SiLU (x * sigmoid(x)).
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// In-place softmax; returns nothing, leaves a probability vector.
pub fn softmax_inplace(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Dot product of two f32 slices of equal length.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            let n = a.len().min(b.len());
            // SAFETY: AVX2, FMA and F16C are part of the Avx2 level; both hold n values.
            return unsafe {
                wide::dot::<{ wide::F32 }, 1>(a.as_ptr() as *const u8, n, [b.as_ptr()])[0]
            };
        }
    }
    dot_f32_scalar(a, b)
}

/// Scalar reference for [`dot_f32`].
pub fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        for j in 0..8 {
            acc[j] += a[i + j] * b[i + j];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n8..a.len() {
        s += a[i] * b[i];
    }
    s
}

/// `y += a * x`.
#[inline]
pub fn axpy_f32(a: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            let n = x.len().min(y.len());
            // SAFETY: AVX2, FMA and F16C are part of the Avx2 level; both hold n values.
            return unsafe {
                wide::axpy_rows::<{ wide::F32 }>(x.as_ptr() as *const u8, 0, 0, &[a], &mut y[..n])
            };
        }
    }
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_dot_and_axpy_match_scalar() {
        for n in [0usize, 1, 7, 8, 15, 16, 17, 255, 256, 1000] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 7.0)
                .collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let tol = 1e-4
                * a.iter()
                    .zip(&b)
                    .map(|(x, y)| (x * y).abs() as f64)
                    .sum::<f64>()
                + 1e-6;
            assert!((dot_f32(&a, &b) as f64 - exact).abs() <= tol, "n={n}");
            assert!(
                (dot_f32_scalar(&a, &b) as f64 - exact).abs() <= tol,
                "n={n}"
            );
            let mut y1 = b.clone();
            axpy_f32(0.5, &a, &mut y1);
            for i in 0..n {
                assert!((y1[i] - (b[i] + 0.5 * a[i])).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn rope_preserves_norm_and_rotates_position_zero_not_at_all() {
        let mut t = RopeTable::default();
        t.fill(&[0, 5], 10000.0, 8, None);
        let x: Vec<f32> = (0..8).map(|i| i as f32 + 1.0).collect();
        for style in [RopeStyle::Neox, RopeStyle::Norm] {
            let mut y = x.clone();
            t.apply(&mut y, 0, style);
            assert_eq!(y, x);
            t.apply(&mut y, 1, style);
            let n0: f32 = x.iter().map(|v| v * v).sum();
            let n1: f32 = y.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3);
            assert_ne!(y, x);
        }
    }

    #[test]
    fn softmax_sums_to_one_and_norm_scales() {
        let mut x = vec![1.0, 2.0, 3.0, -1e30];
        softmax_inplace(&mut x);
        assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(x[3] == 0.0 && x[2] > x[1]);
        let mut out = vec![0.0; 2];
        rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out);
        let r = (12.5f32).sqrt();
        assert!((out[0] - 3.0 / r).abs() < 1e-6 && (out[1] - 8.0 / r).abs() < 1e-6);
    }
}

/// `exp(x)` to about 1e-7 relative error, branch-free so loops over it vectorize.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) << 23) as u32) * p
}

/// GELU(tanh) of every f16 value, rounded to f16: the table llama.cpp's GELU uses.
/// Gemma's activations pass through it in llama.cpp, so using the same table keeps our
/// numbers (and greedy choices at near-ties) aligned with the reference.
fn gelu_f16_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        // One padding entry: the AVX-512 gather reads 4 bytes at each entry.
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                half::f16::from_f32(gelu_tanh(x)).to_bits()
            })
            .chain(std::iter::once(0))
            .collect()
    })
}

/// `gate[i] = gelu_tanh(gate[i]) * up[i]`, through the f16 table (as ggml's GEGLU):
/// 0 below -10, identity above 10.
pub fn gelu_tanh_mul(gate: &mut [f32], up: &[f32]) {
    let table = gelu_f16_table();
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni {
            // SAFETY: AVX-512 (with F16C) checked by simd_level; the table has its
            // padding entry.
            done = unsafe { gelu_tanh_mul_avx512(gate, up, table) };
        }
    }
    for (g, &u) in gate[done..].iter_mut().zip(&up[done..]) {
        let x = *g;
        *g = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            half::f16::from_bits(table[half::f16::from_f32(x).to_bits() as usize]).to_f32() * u
        };
    }
}

/// [`gelu_tanh_mul`] 16 values at a time (f16 conversion, table gather, the same
/// clamps): bitwise the scalar loop. Returns how many values it did.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,f16c")]
unsafe fn gelu_tanh_mul_avx512(gate: &mut [f32], up: &[f32], table: &[u16]) -> usize {
    use std::arch::x86_64::*;
    debug_assert!(table.len() > u16::MAX as usize + 1);
    let n = gate.len().min(up.len()) / 16 * 16;
    let (lo, hi) = (_mm512_set1_ps(-10.0), _mm512_set1_ps(10.0));
    for i in (0..n).step_by(16) {
        let x = _mm512_loadu_ps(gate.as_ptr().add(i));
        let u = _mm512_loadu_ps(up.as_ptr().add(i));
        let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let idx = _mm512_cvtepu16_epi32(h);
        let e = _mm512_i32gather_epi32::<2>(idx, table.as_ptr() as *const _);
        let g = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(e));
        let mut r = _mm512_mul_ps(g, u);
        r = _mm512_mask_mov_ps(
            r,
            _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, lo),
            _mm512_setzero_ps(),
        );
        r = _mm512_mask_mov_ps(
            r,
            _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, hi),
            _mm512_mul_ps(x, u),
        );
        _mm512_storeu_ps(gate.as_mut_ptr().add(i), r);
    }
    n
}

/// Rounds every value to the nearest f16 (what an f16 KV cache or an f16 matmul
/// operand stores), keeping f32 storage.
pub fn round_to_f16(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: F16C is part of the Avx2 level (checked by simd_level).
            return unsafe { round_to_f16_f16c(x) };
        }
    }
    for v in x.iter_mut() {
        *v = half::f16::from_f32(*v).to_f32();
    }
}

/// `dst[i]` = the f16 bits of `src[i]` (round to nearest even): an f16 KV cache's store.
pub fn f32_to_f16_bits(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_f16_bits: lengths differ");
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: F16C is part of the Avx2 level (checked by simd_level); equal
            // lengths asserted above.
            return unsafe { f32_to_f16_bits_f16c(src, dst) };
        }
    }
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = half::f16::from_f32(v).to_bits();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f32_to_f16_bits_f16c(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
        _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
        i += 8;
    }
    while i < n {
        dst[i] = half::f16::from_f32(src[i]).to_bits();
        i += 1;
    }
}

/// `dst[i]` = the value of the f16 bits `src[i]`.
pub fn f16_bits_to_f32(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "f16_bits_to_f32: lengths differ");
    for (d, &b) in dst.iter_mut().zip(src) {
        *d = half::f16::from_bits(b).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn round_to_f16_f16c(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let p = x.as_mut_ptr();
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p.add(i)));
        _mm256_storeu_ps(p.add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    while i < n {
        *p.add(i) = half::f16::from_f32(*p.add(i)).to_f32();
        i += 1;
    }
}

/// `gate[i] = silu(gate[i]) * up[i]`.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: AVX2+FMA presence checked by simd_level.
            return unsafe { silu_mul_avx2(gate, up) };
        }
    }
    silu_mul_generic(gate, up)
}

#[inline(always)]
fn silu_mul_generic(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp_fast(-*g)) * u;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    silu_mul_generic(gate, up)
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    /// The scalar GEGLU (table lookup per value), the reference for the SIMD one.
    fn gelu_mul_scalar(x: f32, u: f32) -> f32 {
        let table = gelu_f16_table();
        if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * u
        } else {
            half::f16::from_bits(table[half::f16::from_f32(x).to_bits() as usize]).to_f32() * u
        }
    }

    #[test]
    fn gelu_tanh_mul_simd_is_bitwise_the_table_lookup() {
        // Every f16 value, values between them (rounding), the clamps, specials.
        let mut xs: Vec<f32> = (0..=u16::MAX)
            .map(|b| half::f16::from_bits(b).to_f32())
            .collect();
        xs.extend((0..20_000).map(|i| (i as f32 - 10_000.0) * 1.2345e-3));
        xs.extend([
            -10.0,
            10.0,
            -10.000001,
            9.999999,
            1e30,
            -1e30,
            f32::INFINITY,
        ]);
        xs.extend([
            f32::NEG_INFINITY,
            6e-8,
            -6e-8,
            1e-10,
            70000.0,
            -70000.0,
            65519.0,
        ]);
        xs.extend([0.0, -0.0, 3.0]);
        let up: Vec<f32> = (0..xs.len()).map(|i| 0.5 + (i % 7) as f32 * 0.37).collect();
        let mut got = xs.clone();
        gelu_tanh_mul(&mut got, &up);
        for (i, (&x, &u)) in xs.iter().zip(&up).enumerate() {
            let want = gelu_mul_scalar(x, u);
            assert!(
                got[i].to_bits() == want.to_bits() || (got[i].is_nan() && want.is_nan()),
                "x = {x} (#{i}): {} vs {want}",
                got[i]
            );
        }
    }

    #[test]
    fn fast_exp_and_activations_match_libm() {
        for i in -2000..2000 {
            let x = i as f32 / 50.0;
            let e = exp_fast(x);
            assert!((e - x.exp()).abs() <= 2e-6 * x.exp(), "exp({x})");
            let mut g = [x];
            gelu_tanh_mul(&mut g, &[1.0]);
            // Through the f16 table: half-precision accuracy.
            assert!(
                (g[0] - gelu_tanh(x)).abs() < 2e-3 * (1.0 + x.abs()),
                "gelu({x})"
            );
            let mut r = [x * 1.37, x];
            round_to_f16(&mut r);
            assert_eq!(r[0], half::f16::from_f32(x * 1.37).to_f32());
            let mut s = [x];
            silu_mul(&mut s, &[2.0]);
            assert!(
                (s[0] - 2.0 * silu(x)).abs() < 1e-5 * (1.0 + x.abs()),
                "silu({x})"
            );
        }
    }
}

// ---- Vector search distances (used by hangar-vector's HNSW) ----

/// Squared Euclidean distance of two f32 slices of equal length.
#[inline]
pub fn l2_sq_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: AVX2+FMA presence checked by simd_level.
            return unsafe { l2_sq_f32_avx2(a, b) };
        }
    }
    l2_sq_f32_scalar(a, b)
}

/// Scalar reference for [`l2_sq_f32`].
pub fn l2_sq_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n8 = a.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        for j in 0..8 {
            let d = a[i + j] - b[i + j];
            acc[j] += d * d;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n8..a.len() {
        let d = a[i] - b[i];
        s += d * d;
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn l2_sq_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    while i + 16 <= n {
        let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
        let d1 = _mm256_sub_ps(
            _mm256_loadu_ps(pa.add(i + 8)),
            _mm256_loadu_ps(pb.add(i + 8)),
        );
        acc0 = _mm256_fmadd_ps(d0, d0, acc0);
        acc1 = _mm256_fmadd_ps(d1, d1, acc1);
        i += 16;
    }
    while i + 8 <= n {
        let d0 = _mm256_sub_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)));
        acc0 = _mm256_fmadd_ps(d0, d0, acc0);
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
        let d = *pa.add(i) - *pb.add(i);
        s += d * d;
        i += 1;
    }
    s
}

/// Dot product of two i8 slices of equal length (int8 scalar-quantised vectors), exact
/// in i32. Written as a widening loop the compiler vectorises (integer sums are
/// associative, so no scalar twin is needed: this is both).
#[inline]
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0i32; 16];
    let n16 = a.len() / 16 * 16;
    for (ca, cb) in a[..n16].chunks_exact(16).zip(b[..n16].chunks_exact(16)) {
        for j in 0..16 {
            acc[j] += ca[j] as i32 * cb[j] as i32;
        }
    }
    let mut s: i32 = acc.iter().sum();
    for i in n16..a.len().min(b.len()) {
        s += a[i] as i32 * b[i] as i32;
    }
    s
}

#[cfg(test)]
mod vector_distance_tests {
    use super::*;

    #[test]
    fn l2_simd_matches_scalar_on_odd_lengths() {
        for n in [1usize, 7, 8, 15, 16, 17, 50, 384, 1000] {
            let a: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..n)
                .map(|i| ((i * 53 % 97) as f32 - 40.0) / 5.0)
                .collect();
            let naive: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| ((x - y) as f64).powi(2))
                .sum();
            let (s, v) = (l2_sq_f32_scalar(&a, &b), l2_sq_f32(&a, &b));
            assert!(((s as f64) - naive).abs() <= 1e-4 * naive.max(1.0), "{n}");
            assert!(((v as f64) - naive).abs() <= 1e-4 * naive.max(1.0), "{n}");
        }
    }

    #[test]
    fn i8_dot_is_exact() {
        let a: Vec<i8> = (0..77).map(|i| (i * 31 % 255 - 127) as i8).collect();
        let b: Vec<i8> = (0..77).map(|i| (i * 17 % 255 - 127) as i8).collect();
        let naive: i32 = a.iter().zip(&b).map(|(x, y)| *x as i32 * *y as i32).sum();
        assert_eq!(dot_i8(&a, &b), naive);
    }
}

/// LayerNorm of one row: `out = (x - mean) / sqrt(var + eps) * w + b` (biased variance,
/// as `torch.nn.LayerNorm`), in place.
pub fn layer_norm_inplace(x: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = x.len().max(1) as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let inv = 1.0 / (var + eps).sqrt();
    for ((v, &g), &c) in x.iter_mut().zip(w).zip(b) {
        *v = (*v - mean) * inv * g + c;
    }
}

/// `erf(x)` to about 2e-7 absolute error (a Chebyshev fit of `erfc`, as in Numerical
/// Recipes), branch-free so loops over it vectorize.
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_204
                                + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp_fast(poly);
    (1.0 - erfc).copysign(x)
}

/// GELU in its exact (erf) form, as BERT uses: `0.5 x (1 + erf(x / sqrt 2))`, in place.
pub fn gelu_erf_inplace(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: AVX2+FMA presence checked by simd_level.
            return unsafe { gelu_erf_avx2(x) };
        }
    }
    gelu_erf_generic(x)
}

#[inline(always)]
fn gelu_erf_generic(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = 0.5 * *v * (1.0 + erf_fast(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_erf_avx2(x: &mut [f32]) {
    gelu_erf_generic(x)
}

#[cfg(test)]
mod encoder_ops_tests {
    use super::*;

    #[test]
    fn erf_matches_reference_values() {
        // erf at a few points (from tables, 9 digits).
        for (x, want) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (-1.5, -0.966_105_146),
            (2.5, 0.999_593_048),
            (4.0, 0.999_999_985),
        ] {
            assert!((erf_fast(x) as f64 - want).abs() < 3e-7, "erf({x})");
        }
        let mut g = vec![-3.0f32, 0.0, 1.0];
        gelu_erf_inplace(&mut g);
        assert!((g[2] - 0.841_344_7).abs() < 1e-6 && g[1] == 0.0 && g[0].abs() < 5e-3);
    }

    #[test]
    fn layer_norm_centres_and_scales() {
        let mut x = vec![1.0f32, 2.0, 3.0, 4.0];
        layer_norm_inplace(&mut x, &[1.0; 4], &[0.5; 4], 0.0);
        let mean: f32 = x.iter().sum::<f32>() / 4.0;
        let var: f32 = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-6 && (var - 1.0).abs() < 1e-5);
    }
}
