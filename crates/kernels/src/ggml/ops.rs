//! Element-wise and row operations as ggml-cpu computes them (RMS norm, RoPE,
//! soft-max with its vector `exp`, GEGLU through the f16 GELU table).

use std::sync::OnceLock;

/// `out = x / sqrt(mean(x²) + eps) * w` with ggml's rounding: squares rounded to
/// f32 and summed in f64, the mean rounded to f32, then `(x * scale) * w`.
pub fn rms_norm_mul(x: &[f32], w: Option<&[f32]>, eps: f32, out: &mut [f32]) {
    let mut sum = 0f64;
    for &v in x {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    match w {
        Some(w) => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
                *o = v * scale * g;
            }
        }
        None => {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = v * scale;
            }
        }
    }
}

/// In-place form of [`rms_norm_mul`].
pub fn rms_norm_mul_inplace(x: &mut [f32], w: Option<&[f32]>, eps: f32) {
    let mut sum = 0f64;
    for &v in x.iter() {
        sum += (v * v) as f64;
    }
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0f32 / (mean + eps).sqrt();
    match w {
        Some(w) => x.iter_mut().zip(w).for_each(|(v, &g)| *v = *v * scale * g),
        None => x.iter_mut().for_each(|v| *v *= scale),
    }
}

/// The (cos, sin) pairs ggml's RoPE cache holds for position `pos`: theta starts at
/// `pos` and is multiplied by `powf(base, -2/n_dims)` once per pair (f32), divided
/// by the optional frequency factor, times `freq_scale`.
pub fn rope_cache(
    pos: i64,
    n_dims: usize,
    base: f32,
    freq_scale: f32,
    freq_factors: Option<&[f32]>,
    cache: &mut Vec<f32>,
) {
    cache.clear();
    let theta_scale = base.powf(-2.0f32 / n_dims as f32);
    let mut theta = pos as f32;
    for i in 0..n_dims / 2 {
        let ff = freq_factors.map_or(1.0, |f| f[i]);
        let t = freq_scale * (theta / ff);
        cache.push(t.cos());
        cache.push(t.sin());
        theta *= theta_scale;
    }
}

/// NEOX-style rotation of one head (pairs `i` and `i + n_dims/2`) with a cache from
/// [`rope_cache`]; `normal` selects the adjacent-pair (GPT-J / Llama) layout.
pub fn rope_apply(x: &mut [f32], n_dims: usize, cache: &[f32], normal: bool) {
    let half = n_dims / 2;
    for i in 0..half {
        let (c, s) = (cache[2 * i], cache[2 * i + 1]);
        let (a, b) = if normal {
            (2 * i, 2 * i + 1)
        } else {
            (i, i + half)
        };
        let (x0, x1) = (x[a], x[b]);
        // GCC contracts `x0*c - x1*s` and `x0*s + x1*c` into one FMA each.
        x[a] = x0.mul_add(c, -(x1 * s));
        x[b] = x0.mul_add(s, x1 * c);
    }
}

/// ggml's AVX-512 `exp` (`ggml_v_expf`), one lane.
pub fn v_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0
    let n = z - r;
    let b = (-n).mul_add(
        f32::from_bits(0x35bf_be8e),                  // 0x1.7f7d1cp-20
        (-n).mul_add(f32::from_bits(0x3f31_7200), x), // 0x1.62e4p-1
    );
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    let u = b * b;
    let j = f32::from_bits(0x3c07_2010)
        .mul_add(b, f32::from_bits(0x3d2b_9f17)) // 0x1.0e4020p-7, 0x1.573e2ep-5
        .mul_add(
            u,
            f32::from_bits(0x3e2a_af33).mul_add(b, f32::from_bits(0x3eff_fedb)), // 0x1.555e66p-3, 0x1.fffdb6p-2
        )
        .mul_add(u, f32::from_bits(0x3f7f_fff6).mul_add(b, 1.0)); // 0x1.ffffecp-1
    scalef(j, n)
}

/// `j * 2^n` with one rounding (`vscalefps` for integral `n`).
fn scalef(j: f32, n: f32) -> f32 {
    if j.is_nan() || n.is_nan() {
        return f32::NAN;
    }
    ((j as f64) * (n as f64).exp2()) as f32
}

/// Sum of 16 lanes in the order GCC's `_mm512_reduce_add_ps` uses.
fn reduce16(v: &[f32; 16]) -> f32 {
    let mut t3 = [0f32; 8];
    for i in 0..8 {
        t3[i] = v[i + 8] + v[i];
    }
    let mut t6 = [0f32; 4];
    for i in 0..4 {
        t6[i] = t3[i + 4] + t3[i];
    }
    (t6[0] + t6[2]) + (t6[1] + t6[3])
}

/// ggml's soft-max of one row (`ggml_compute_forward_soft_max_f32` with scale 1 and
/// an additive mask already applied): vector `exp` over 16-lane chunks, chunk sums
/// accumulated in f64, a scalar `expf` tail, then a multiply by `(f32)(1/sum)`.
pub fn soft_max(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni {
            // SAFETY: AVX-512F/DQ and FMA are present (checked above).
            unsafe { soft_max_avx512(row) };
            return;
        }
    }
    soft_max_scalar(row)
}

/// Scalar twin of [`soft_max`] (the reference the AVX-512 version is tested against).
pub fn soft_max_scalar(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f64;
    let n = row.len();
    let mut i = 0;
    while i + 16 <= n {
        let mut lanes = [0f32; 16];
        for (l, v) in lanes.iter_mut().zip(&mut row[i..i + 16]) {
            *v = v_expf(*v - max);
            *l = *v;
        }
        sum += reduce16(&lanes) as f64;
        i += 16;
    }
    for v in &mut row[i..] {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// [`soft_max`] with ggml's own AVX-512 `exp` (the same operations on 16 lanes).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,fma")]
unsafe fn soft_max_avx512(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let n = row.len();
    let mut sum = 0f64;
    let mut i = 0;
    let vmax = _mm512_set1_ps(max);
    let r = _mm512_set1_ps(f32::from_bits(0x4b40_0000));
    let zero = _mm512_setzero_ps();
    while i + 16 <= n {
        let p = row.as_mut_ptr().add(i);
        let x = _mm512_sub_ps(_mm512_loadu_ps(p), vmax);
        let z = _mm512_fmadd_ps(x, _mm512_set1_ps(f32::from_bits(0x3fb8_aa3b)), r);
        let nn = _mm512_sub_ps(z, r);
        let b = _mm512_fnmadd_ps(
            nn,
            _mm512_set1_ps(f32::from_bits(0x35bf_be8e)),
            _mm512_fnmadd_ps(nn, _mm512_set1_ps(f32::from_bits(0x3f31_7200)), x),
        );
        let d = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(_mm512_abs_ps(nn), _mm512_set1_ps(192.0));
        let u = _mm512_mul_ps(b, b);
        let j = _mm512_fmadd_ps(
            _mm512_fmadd_ps(
                _mm512_fmadd_ps(
                    _mm512_set1_ps(f32::from_bits(0x3c07_2010)),
                    b,
                    _mm512_set1_ps(f32::from_bits(0x3d2b_9f17)),
                ),
                u,
                _mm512_fmadd_ps(
                    _mm512_set1_ps(f32::from_bits(0x3e2a_af33)),
                    b,
                    _mm512_set1_ps(f32::from_bits(0x3eff_fedb)),
                ),
            ),
            u,
            _mm512_fmadd_ps(
                _mm512_set1_ps(f32::from_bits(0x3f7f_fff6)),
                b,
                _mm512_set1_ps(1.0),
            ),
        );
        let mut res = _mm512_scalef_ps(j, nn);
        if d != 0 {
            let alt = _mm512_mask_blend_ps(
                _mm512_cmp_ps_mask::<_CMP_LE_OQ>(nn, zero),
                _mm512_set1_ps(f32::INFINITY),
                zero,
            );
            res = _mm512_mask_blend_ps(d, res, alt);
        }
        _mm512_storeu_ps(p, res);
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), res);
        sum += reduce16(&lanes) as f64;
        i += 16;
    }
    for v in &mut row[i..] {
        *v = (*v - max).exp();
        sum += *v as f64;
    }
    let inv = (1.0 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// GELU(tanh) as ggml's scalar `ggml_gelu_f32` evaluates it.
fn gelu_f32(x: f32) -> f32 {
    const A: f32 = 0.044715;
    const S: f32 = 0.797_884_6;
    // 1 + A*x*x is contracted to fma(A*x, x, 1).
    let inner = (A * x).mul_add(x, 1.0);
    0.5 * x * (1.0 + (S * x * inner).tanh())
}

fn gelu_table() -> &'static [u16] {
    static T: OnceLock<Vec<u16>> = OnceLock::new();
    T.get_or_init(|| {
        (0..=u16::MAX)
            .map(|b| {
                let x = half::f16::from_bits(b).to_f32();
                half::f16::from_f32(gelu_f32(x)).to_bits()
            })
            .collect()
    })
}

/// `out[i] = gelu(gate[i]) * up[i]` through ggml's f16 GELU table (`ggml_vec_geglu_f32`).
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let t = gelu_table();
    for ((o, &x), &g) in out.iter_mut().zip(gate).zip(up) {
        *o = if x <= -10.0 {
            0.0
        } else if x >= 10.0 {
            x * g
        } else {
            half::f16::from_bits(t[half::f16::from_f32(x).to_bits() as usize]).to_f32() * g
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_expf_is_close_to_exp() {
        for i in -2000..200 {
            let x = i as f32 * 0.05;
            let (g, e) = (v_expf(x) as f64, (x as f64).exp());
            assert!(
                (g - e).abs() <= 3e-7 * e + 1e-44,
                "exp({x}) = {g}, want {e}"
            );
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn soft_max_vector_equals_scalar_bitwise() {
        let mut seed = 5u32;
        for n in [16usize, 32, 48, 100, 256, 7] {
            let mut r: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    ((seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5) * 60.0
                })
                .collect();
            r[n / 2] = f32::NEG_INFINITY;
            r[0] = -150.0;
            let mut a = r.clone();
            soft_max(&mut a);
            soft_max_scalar(&mut r);
            assert!(
                a.iter().zip(&r).all(|(x, y)| x.to_bits() == y.to_bits()),
                "n={n}"
            );
        }
    }

    #[test]
    fn soft_max_sums_to_one_and_ignores_masked() {
        let mut r: Vec<f32> = (0..40).map(|i| (i as f32 * 0.37).sin() * 4.0).collect();
        r[33] = f32::NEG_INFINITY;
        soft_max(&mut r);
        let s: f32 = r.iter().sum();
        assert!((s - 1.0).abs() < 1e-5);
        assert_eq!(r[33], 0.0);
    }

    #[test]
    fn norm_and_geglu_match_plain_formulas() {
        let x: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
        let mut y = vec![0.0; 64];
        rms_norm_mul(&x, None, 1e-6, &mut y);
        let rms = (x.iter().map(|v| v * v).sum::<f32>() / 64.0).sqrt();
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b / rms).abs() < 1e-5));
        let mut o = vec![0.0; 64];
        let g: Vec<f32> = x.iter().map(|v| v * 0.1).collect();
        geglu(&g, &x, &mut o);
        for i in 0..64 {
            let want = 0.5 * g[i] * (1.0 + (0.797_884_6 * (g[i] + 0.044715 * g[i].powi(3))).tanh());
            assert!((o[i] - want * x[i]).abs() < 2e-3 * (1.0 + (want * x[i]).abs()));
        }
    }
}
