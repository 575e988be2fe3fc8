//! F16 × F32 matrix products as ggml-cpu computes them (the attention products
//! `kq = K·Q` and `kqv = Vᵀ·softmax` with flash attention off and an f16 KV cache).
//!
//! What runs in `ggml_compute_forward_mul_mat` (ggml-cpu.c) for src0 = F16:
//!
//! * F16 is not a tiled (K-quant) type and the KV cache lives in a plain CPU
//!   buffer, so no tiled or repack kernel takes the op.
//! * First llamafile attempt (only when src1 is contiguous): `llamafile_sgemm` with
//!   Atype F16, Btype F32. The AVX-512 build only has an F16×F16 tinyBLAS, so it
//!   returns false. `kq`'s src1 is a permuted (non-contiguous) view of Q and skips
//!   this attempt outright; `kqv`'s src1 (the softmax) is contiguous and tries it in
//!   vain. Either way src1 contiguity does not change the result.
//! * src1 is then converted to f16 (`ggml_cpu_fp32_to_fp16`: F16C / AVX-512
//!   `vcvtps2ph` with round-to-nearest-even, element by element, so the thread split
//!   of the conversion is irrelevant).
//! * Second llamafile attempt, F16×F16: `llamafile_sgemm` returns false for `n < 2`;
//!   for `n >= 2` it runs `tinyBLAS<16, __m512, __m512, fp16, fp16, float>` when
//!   `k = cols` is a multiple of 16 and `m = rows` is a multiple of 4 (see
//!   [`tinyblas_dot_f16`]). Otherwise ggml falls back to
//! * `ggml_vec_dot_f16` per output element (see [`vec_dot_f16`]), the only path for
//!   the decode case `n = 1`.
//!
//! Both kernels compute every output element from its own row pair with a fixed
//! lane assignment, so the result does not depend on the thread count or on the
//! tile/chunk split (tinyBLAS's `RM`×`RN` blocks and ggml's 16×16 chunks only decide
//! who computes which element).
//!
//! Dependence on `cols` (for `kqv`, the padded `n_kv`; for `kq`, the head dim):
//! element `c` always goes to lane `c % 16` (tinyBLAS) or `c % 64` (vec_dot), so
//! appending zero columns (empty cache cells hold 0 and their softmax weight is
//! exactly 0) leaves every lane sum unchanged, as long as `cols` stays a multiple of
//! 64. What `cols` does decide is the path: tinyBLAS needs `cols % 16 == 0`, and
//! `vec_dot_f16` sums the last `cols % 64` products one by one in f64. Pass exactly
//! the `ne00` ggml uses.
//!
//! Checked against llama.cpp dumps (`examples/ggml_f16.rs`): every `kq-L` and
//! `kqv-L` of a 6- and a 12-token prompt (tinyBLAS) and of a decode step (vec_dot)
//! is bit-identical. Using the wrong kernel changes 7-90 elements per `kq` tensor.
//! `kqv` with at most 16 non-zero weights cannot tell the kernels apart (every lane
//! then holds at most one non-zero product), so its path choice rests on the source.

use half::f16;

/// f16 bits → f32 (exact).
#[inline]
pub fn f16_to_f32(h: u16) -> f32 {
    f16::from_bits(h).to_f32()
}

/// f32 → f16 bits, round to nearest even (as F16C `vcvtps2ph` with imm 0).
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// `_mm512_reduce_add_ps` as GCC 12 expands it: halves 256, then 128 bits, then
/// `[0]+[2], [1]+[3]`, then the two remaining lanes.
#[inline]
fn reduce16(v: &[f32; 16]) -> f32 {
    let mut h8 = [0f32; 8];
    for i in 0..8 {
        h8[i] = v[i + 8] + v[i];
    }
    let mut h4 = [0f32; 4];
    for i in 0..4 {
        h4[i] = h8[i + 4] + h8[i];
    }
    let a = h4[0] + h4[2];
    let b = h4[1] + h4[3];
    a + b
}

/// `ggml_vec_dot_f16` (vec.cpp, AVX-512F without AVX512-FP16): four 16-lane f32
/// accumulators over steps of 64 elements, `acc[j][l] = fma(a, b, acc[j][l])` for
/// element `i + 16 j + l`; reduced as `(acc0 + acc2) + (acc1 + acc3)`, then
/// [`reduce16`]; the result is widened to f64, the `len % 64` leftovers are added
/// one by one in f64 (each product f32, exact for f16 inputs) and the sum is
/// rounded to f32.
pub fn vec_dot_f16(a: &[u16], b: &[u16]) -> f32 {
    vec_dot_f16_by(a, b, f16_to_f32)
}

/// [`vec_dot_f16`] over elements that `val` turns into the f16 values' f32.
#[inline(always)]
fn vec_dot_f16_by<T: Copy>(a: &[T], b: &[T], val: impl Fn(T) -> f32) -> f32 {
    assert_eq!(a.len(), b.len());
    let n = a.len();
    let np = n & !63;
    let mut acc = [[0f32; 16]; 4];
    for i in (0..np).step_by(64) {
        for (j, accj) in acc.iter_mut().enumerate() {
            let o = i + 16 * j;
            for (l, s) in accj.iter_mut().enumerate() {
                *s = val(a[o + l]).mul_add(val(b[o + l]), *s);
            }
        }
    }
    let mut v = [0f32; 16];
    for l in 0..16 {
        let s02 = acc[0][l] + acc[2][l];
        let s13 = acc[1][l] + acc[3][l];
        v[l] = s02 + s13;
    }
    let mut sum = reduce16(&v) as f64;
    for i in np..n {
        sum += (val(a[i]) * val(b[i])) as f64;
    }
    sum as f32
}

/// One element of llamafile's `tinyBLAS<16, __m512, __m512, fp16, fp16, float>`
/// (`gemm_bloc`): a single 16-lane accumulator, `acc[l] = fma(a, b, acc[l])` for
/// element `16 s + l`, steps in order, then `hsum` = `_mm512_reduce_add_ps`
/// ([`reduce16`]). Requires `len % 16 == 0`.
pub fn tinyblas_dot_f16(a: &[u16], b: &[u16]) -> f32 {
    tinyblas_dot_f16_by(a, b, f16_to_f32)
}

/// [`tinyblas_dot_f16`] over elements that `val` turns into the f16 values' f32.
#[inline(always)]
fn tinyblas_dot_f16_by<T: Copy>(a: &[T], b: &[T], val: impl Fn(T) -> f32) -> f32 {
    assert_eq!(a.len(), b.len());
    assert!(a.len().is_multiple_of(16));
    let mut acc = [0f32; 16];
    for (ca, cb) in a.chunks_exact(16).zip(b.chunks_exact(16)) {
        for l in 0..16 {
            acc[l] = val(ca[l]).mul_add(val(cb[l]), acc[l]);
        }
    }
    reduce16(&acc)
}

/// Whether ggml's second `llamafile_sgemm` attempt (F16×F16 tinyBLAS, AVX-512,
/// 2 threads or any other count) handles a product of `rows` × `cols` by `n` rows.
pub fn uses_tinyblas(rows: usize, cols: usize, n: usize) -> bool {
    n >= 2 && cols.is_multiple_of(16) && rows.is_multiple_of(4)
}

/// ggml MUL_MAT with src0 F16 (`w`: f16 bits, `rows` rows of `cols`) and src1 F32
/// (`x`: `n` rows of `cols`), for one src0/src1 matrix pair (ggml loops the
/// broadcast heads, `i12`, around exactly this): `out[j * rows + i] = w[i] · x[j]`.
///
/// `x` is rounded to f16 first, as ggml does. Then [`tinyblas_dot_f16`] when
/// [`uses_tinyblas`], else [`vec_dot_f16`]. Whether ggml's src1 was contiguous
/// (`kqv`) or a permuted view (`kq`) does not matter on this build (see the module
/// doc); pass the rows of the (logical) src1 in order.
pub fn mul_mat_f16(w: &[u16], rows: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    assert!(w.len() >= rows * cols);
    assert!(x.len() >= n * cols);
    assert!(out.len() >= n * rows);
    let xh: Vec<u16> = x[..n * cols].iter().map(|&v| f32_to_f16(v)).collect();
    let dot: fn(&[u16], &[u16]) -> f32 = if uses_tinyblas(rows, cols, n) {
        tinyblas_dot_f16
    } else {
        vec_dot_f16
    };
    for j in 0..n {
        let xr = &xh[j * cols..(j + 1) * cols];
        for i in 0..rows {
            out[j * rows + i] = dot(&w[i * cols..(i + 1) * cols], xr);
        }
    }
}

/// [`vec_dot_f16`] (when `tinyblas` is false) or [`tinyblas_dot_f16`] on f32 inputs
/// that already hold f16 values (an f16 KV cache kept as f32): the same arithmetic,
/// vectorised with AVX-512 when available.
pub fn dot_f16_values(a: &[f32], b: &[f32], tinyblas: bool) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni {
            // SAFETY: AVX-512F and FMA are present (checked above); lengths asserted.
            unsafe {
                return if tinyblas {
                    tinyblas_dot_avx512(a, b)
                } else {
                    vec_dot_avx512(a, b)
                };
            }
        }
    }
    // The scalar replicas on the values rounded through f16, as ggml converts them
    // (no copy: this runs once per attention cell).
    let through_f16 = |v: f32| f16_to_f32(f32_to_f16(v));
    if tinyblas {
        tinyblas_dot_f16_by(a, b, through_f16)
    } else {
        vec_dot_f16_by(a, b, through_f16)
    }
}

/// [`dot_f16_values`] of four rows against one vector (independent chains, so the
/// FMA latency overlaps); each result is bitwise that of the single-row function.
pub fn dot4_f16_values(rows: [&[f32]; 4], b: &[f32], tinyblas: bool) -> [f32; 4] {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni
            && rows.iter().all(|r| r.len() == b.len())
            && (if tinyblas {
                b.len().is_multiple_of(16)
            } else {
                b.len().is_multiple_of(64)
            })
        {
            // SAFETY: AVX-512F and FMA are present; lengths checked above.
            unsafe { return dot4_avx512(rows, b, tinyblas) };
        }
    }
    rows.map(|r| dot_f16_values(r, b, tinyblas))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::needless_range_loop)]
unsafe fn dot4_avx512(rows: [&[f32]; 4], b: &[f32], tinyblas: bool) -> [f32; 4] {
    use std::arch::x86_64::*;
    let n = b.len();
    let pb = b.as_ptr();
    let pr = rows.map(|r| r.as_ptr());
    let mut out = [0f32; 4];
    let mut lanes = [0f32; 16];
    if tinyblas {
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        while i < n {
            let vb = _mm512_loadu_ps(pb.add(i));
            for r in 0..4 {
                acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(pr[r].add(i)), vb, acc[r]);
            }
            i += 16;
        }
        for r in 0..4 {
            _mm512_storeu_ps(lanes.as_mut_ptr(), acc[r]);
            out[r] = reduce16(&lanes);
        }
    } else {
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i < n {
            for j in 0..4 {
                let vb = _mm512_loadu_ps(pb.add(i + 16 * j));
                for r in 0..4 {
                    acc[r][j] =
                        _mm512_fmadd_ps(_mm512_loadu_ps(pr[r].add(i + 16 * j)), vb, acc[r][j]);
                }
            }
            i += 64;
        }
        for r in 0..4 {
            let v = _mm512_add_ps(
                _mm512_add_ps(acc[r][0], acc[r][2]),
                _mm512_add_ps(acc[r][1], acc[r][3]),
            );
            _mm512_storeu_ps(lanes.as_mut_ptr(), v);
            out[r] = (reduce16(&lanes) as f64) as f32;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn vec_dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len();
    let np = n & !63;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i < np {
        for (j, s) in acc.iter_mut().enumerate() {
            let o = i + 16 * j;
            *s = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *s);
        }
        i += 64;
    }
    let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[2]), _mm512_add_ps(acc[1], acc[3]));
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), v);
    let mut sum = reduce16(&lanes) as f64;
    for k in np..n {
        sum += (a[k] * b[k]) as f64;
    }
    sum as f32
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn tinyblas_dot_avx512(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    assert!(a.len().is_multiple_of(16));
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < a.len() {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc);
        i += 16;
    }
    let mut lanes = [0f32; 16];
    _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
    reduce16(&lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn f32_value_dots_equal_the_f16_dots() {
        let mut s = 11u64;
        for &n in &[16usize, 64, 128, 192, 256, 80] {
            let a: Vec<u16> = (0..n).map(|_| f32_to_f16(lcg(&mut s) * 3.0)).collect();
            let b: Vec<u16> = (0..n).map(|_| f32_to_f16(lcg(&mut s))).collect();
            let (af, bf): (Vec<f32>, Vec<f32>) = (
                a.iter().map(|&h| f16_to_f32(h)).collect(),
                b.iter().map(|&h| f16_to_f32(h)).collect(),
            );
            assert_eq!(
                dot_f16_values(&af, &bf, false).to_bits(),
                vec_dot_f16(&a, &b).to_bits()
            );
            assert_eq!(
                dot_f16_values(&af, &bf, true).to_bits(),
                tinyblas_dot_f16(&a, &b).to_bits()
            );
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|k| {
                    af.iter()
                        .map(|v| v * (k as f32 + 0.5))
                        .map(|v| f16_to_f32(f32_to_f16(v)))
                        .collect()
                })
                .collect();
            for tiny in [false, true] {
                let four = dot4_f16_values([&rows[0], &rows[1], &rows[2], &rows[3]], &bf, tiny);
                for k in 0..4 {
                    assert_eq!(
                        four[k].to_bits(),
                        dot_f16_values(&rows[k], &bf, tiny).to_bits()
                    );
                }
            }
        }
    }

    #[test]
    fn close_to_f64_reference() {
        let mut s = 7u64;
        for &(rows, cols, n) in &[
            (8, 256, 1),
            (8, 256, 3),
            (5, 100, 2),
            (12, 48, 4),
            (4, 70, 1),
        ] {
            let w: Vec<u16> = (0..rows * cols).map(|_| f32_to_f16(lcg(&mut s))).collect();
            let x: Vec<f32> = (0..n * cols).map(|_| lcg(&mut s)).collect();
            let mut out = vec![0f32; rows * n];
            mul_mat_f16(&w, rows, cols, &x, n, &mut out);
            for j in 0..n {
                for i in 0..rows {
                    let mut r = 0f64;
                    let mut mag = 0f64;
                    for c in 0..cols {
                        let p = f16_to_f32(w[i * cols + c]) as f64
                            * f16_to_f32(f32_to_f16(x[j * cols + c])) as f64;
                        r += p;
                        mag += p.abs();
                    }
                    let got = out[j * rows + i] as f64;
                    assert!(
                        (got - r).abs() <= 1e-6 * mag + 1e-30,
                        "{rows}x{cols} n={n}: {got} vs {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn zero_padding_to_multiple_of_64_is_neutral() {
        let mut s = 3u64;
        let a: Vec<u16> = (0..128).map(|_| f32_to_f16(lcg(&mut s))).collect();
        let b: Vec<u16> = (0..128).map(|_| f32_to_f16(lcg(&mut s))).collect();
        let mut ap = a.clone();
        let mut bp = b.clone();
        ap.resize(256, 0);
        bp.resize(256, 0);
        assert_eq!(
            vec_dot_f16(&a, &b).to_bits(),
            vec_dot_f16(&ap, &bp).to_bits()
        );
        assert_eq!(
            tinyblas_dot_f16(&a, &b).to_bits(),
            tinyblas_dot_f16(&ap, &bp).to_bits()
        );
    }
}
