//! f32 GEMM for encoder models: `out = a · wᵀ + bias`, with `a` a batch of activation
//! rows and `w` a weight matrix in `nn.Linear` layout (one output feature per row).
//! Owns the AVX-512 micro-kernel and its scalar twin; knows nothing about models.
//!
//! Every output element is a 16-lane fused multiply-add chain over `k` reduced in one
//! fixed order, whatever tile it falls in, so a row's result never depends on which
//! other rows share the call (batching does not change a text's embedding).

use crate::pool::ThreadPool;

/// Lanes of the per-element accumulator (one AVX-512 register).
const LANES: usize = 16;
/// Activation rows per tile.
const MR: usize = 4;
/// Weight rows per tile.
const NR: usize = 4;

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[i * n + j] = bias[j] + Σ_p a[i * k + p] · w[j * k + p]` for `i < m`, `j < n`,
/// spread over the pool (weight rows split into chunks). Uses AVX-512 when
/// [`crate::simd_level`] allows, else [`gemm_f32_scalar`]'s arithmetic.
#[allow(clippy::too_many_arguments)]
pub fn gemm_f32(
    pool: &ThreadPool,
    a: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(a.len(), m * k, "gemm_f32: activation shape");
    assert_eq!(w.len(), n * k, "gemm_f32: weight shape");
    assert_eq!(out.len(), m * n, "gemm_f32: output shape");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "gemm_f32: bias shape");
    }
    if m == 0 || n == 0 {
        return;
    }
    let simd = avx512_available();
    let target = n.div_ceil(pool.n_threads() * 4).max(NR);
    let chunk = target.div_ceil(NR) * NR;
    let op = SendPtr(out.as_mut_ptr());
    pool.for_each_chunk(n, chunk, |j0, j1| {
        // SAFETY: columns j0..j1 of every row belong to this chunk alone; the
        // output holds m * n elements (asserted above).
        let out = unsafe { std::slice::from_raw_parts_mut(op.get(), m * n) };
        if simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 F presence checked by avx512_available.
            unsafe {
                block_avx512(a, m, k, w, n, j0, j1, bias, out)
            };
        } else {
            block_scalar(a, m, k, w, n, j0, j1, bias, out);
        }
    });
}

/// The scalar twin of [`gemm_f32`], single-threaded: same per-element arithmetic
/// (16 lane partial sums, fused multiply-adds), summed in a plain order.
pub fn gemm_f32_scalar(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    assert_eq!(a.len(), m * k, "gemm_f32_scalar: activation shape");
    assert_eq!(w.len(), n * k, "gemm_f32_scalar: weight shape");
    assert_eq!(out.len(), m * n, "gemm_f32_scalar: output shape");
    block_scalar(a, m, k, w, n, 0, n, bias, out);
}

fn avx512_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::simd_level() >= crate::SimdLevel::Avx512Vnni
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[allow(clippy::too_many_arguments)]
fn block_scalar(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    j0: usize,
    j1: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    for j in j0..j1 {
        let wr = &w[j * k..(j + 1) * k];
        let b = bias.map_or(0.0, |b| b[j]);
        for i in 0..m {
            let ar = &a[i * k..(i + 1) * k];
            let mut acc = [0f32; LANES];
            for (ca, cw) in ar.chunks(LANES).zip(wr.chunks(LANES)) {
                for l in 0..ca.len() {
                    acc[l] = ca[l].mul_add(cw[l], acc[l]);
                }
            }
            out[i * n + j] = acc.iter().sum::<f32>() + b;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block_avx512(
    a: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    n: usize,
    j0: usize,
    j1: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    let mut j = j0;
    while j < j1 {
        let nr = (j1 - j).min(NR);
        let mut i = 0;
        while i < m {
            let mr = (m - i).min(MR);
            macro_rules! go {
                ($($mr:literal, $nr:literal);*) => {
                    match (mr, nr) {
                        $(($mr, $nr) => tile_avx512::<$mr, $nr>(a, i, k, w, j, n, bias, out),)*
                        _ => unreachable!("tile sizes are 1..=4"),
                    }
                };
            }
            go!(4,4; 4,3; 4,2; 4,1; 3,4; 3,3; 3,2; 3,1; 2,4; 2,3; 2,2; 2,1; 1,4; 1,3; 1,2; 1,1);
            i += mr;
        }
        j += nr;
    }
}

/// One `R x C` tile: rows `i..i+R` of `a` against weight rows `j..j+C`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn tile_avx512<const R: usize, const C: usize>(
    a: &[f32],
    i: usize,
    k: usize,
    w: &[f32],
    j: usize,
    n: usize,
    bias: Option<&[f32]>,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let pa = a.as_ptr().add(i * k);
    let pw = w.as_ptr().add(j * k);
    let mut p = 0;
    while p + LANES <= k {
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(pw.add(c * k + p));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_loadu_ps(pa.add(r * k + p));
            for (c, s) in row.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(av, wv[c], *s);
            }
        }
        p += LANES;
    }
    if p < k {
        let mask: __mmask16 = (1u32 << (k - p)) as u16 - 1;
        let mut wv = [_mm512_setzero_ps(); C];
        for (c, v) in wv.iter_mut().enumerate() {
            *v = _mm512_maskz_loadu_ps(mask, pw.add(c * k + p));
        }
        for (r, row) in acc.iter_mut().enumerate() {
            let av = _mm512_maskz_loadu_ps(mask, pa.add(r * k + p));
            for (c, s) in row.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(av, wv[c], *s);
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (c, s) in row.iter().enumerate() {
            let b = bias.map_or(0.0, |b| b[j + c]);
            out[(i + r) * n + j + c] = _mm512_reduce_add_ps(*s) + b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 2003) as f32 - 1001.0) / 997.0)
            .collect()
    }

    #[test]
    fn simd_matches_scalar_and_exact_on_odd_shapes() {
        let pool = ThreadPool::new(2);
        for (m, k, n) in [
            (1, 1, 1),
            (3, 17, 5),
            (5, 384, 9),
            (9, 33, 13),
            (33, 64, 7),
            (2, 1536, 6),
        ] {
            let (a, w, b) = (data(m * k, 1), data(n * k, 2), data(n, 3));
            let mut fast = vec![0f32; m * n];
            let mut slow = vec![0f32; m * n];
            gemm_f32(&pool, &a, m, k, &w, n, Some(&b), &mut fast);
            gemm_f32_scalar(&a, m, k, &w, n, Some(&b), &mut slow);
            for i in 0..m {
                for j in 0..n {
                    let exact: f64 = b[j] as f64
                        + (0..k)
                            .map(|p| a[i * k + p] as f64 * w[j * k + p] as f64)
                            .sum::<f64>();
                    let tol = 1e-5 * (k as f64).sqrt() + 1e-6;
                    let (f, s) = (fast[i * n + j] as f64, slow[i * n + j] as f64);
                    assert!((f - exact).abs() <= tol, "simd ({m},{k},{n}) [{i},{j}]");
                    assert!((s - exact).abs() <= tol, "scalar ({m},{k},{n}) [{i},{j}]");
                }
            }
        }
    }

    #[test]
    fn a_row_does_not_depend_on_its_batch() {
        let pool = ThreadPool::new(2);
        let (k, n) = (40, 11);
        let w = data(n * k, 5);
        let batch = data(7 * k, 6);
        let mut all = vec![0f32; 7 * n];
        gemm_f32(&pool, &batch, 7, k, &w, n, None, &mut all);
        for i in 0..7 {
            let mut one = vec![0f32; n];
            gemm_f32(
                &pool,
                &batch[i * k..(i + 1) * k],
                1,
                k,
                &w,
                n,
                None,
                &mut one,
            );
            assert_eq!(one, all[i * n..(i + 1) * n], "row {i}");
        }
    }
}
