//! The two products of a low-rank (LoRA) delta over several token rows, with each
//! weight row loaded once for all of them: `xa[k][j] = A_j · x_k` four tokens at a
//! time, and `y_k += Σ_j xa[k][j] · Bᵀ_j` with `y_k` held in registers across the rank.
//! Every output takes exactly the arithmetic of [`super::dot_f32`] /
//! [`super::axpy_f32`] (or their half-storage twins) called once per token and rank
//! row, so results are bitwise those of the one-at-a-time code and independent of how
//! many rows a batch has.

#[cfg(target_arch = "x86_64")]
use super::wide;
use super::{axpy_f32, axpy_half, dot_f32, dot_half, Half};

/// A factor's values: f32, or half precision (see [`Half`]).
#[derive(Debug, Clone, Copy)]
pub enum Factor<'a> {
    F32(&'a [f32]),
    Half(Half, &'a [u16]),
}

impl Factor<'_> {
    fn len(&self) -> usize {
        match self {
            Factor::F32(v) => v.len(),
            Factor::Half(_, v) => v.len(),
        }
    }
}

/// `out[k] = w[off .. off + n] · xs[k]` for the (at most four) rows of `xs`, each of
/// `n` values.
pub fn dot_rows(w: Factor, off: usize, n: usize, xs: &[&[f32]], out: &mut [f32]) {
    assert!(xs.len() <= 4 && out.len() >= xs.len() && off + n <= w.len());
    assert!(xs.iter().all(|x| x.len() == n), "dot_rows: row lengths");
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 && xs.len() > 1 {
            let mut p = [xs[0].as_ptr(); 4];
            for (p, x) in p.iter_mut().zip(xs) {
                *p = x.as_ptr();
            }
            // SAFETY: AVX2, FMA and F16C are part of the Avx2 level; every row holds n
            // values and the factor off + n (asserted).
            let s = unsafe {
                match w {
                    Factor::F32(v) => wide::dot::<{ wide::F32 }, 4>(v.as_ptr().add(off) as _, n, p),
                    Factor::Half(Half::F16, v) => {
                        wide::dot::<{ wide::F16 }, 4>(v.as_ptr().add(off) as _, n, p)
                    }
                    Factor::Half(Half::Bf16, v) => {
                        wide::dot::<{ wide::BF16 }, 4>(v.as_ptr().add(off) as _, n, p)
                    }
                }
            };
            out[..xs.len()].copy_from_slice(&s[..xs.len()]);
            return;
        }
    }
    for (o, x) in out.iter_mut().zip(xs) {
        *o = match w {
            Factor::F32(v) => dot_f32(&v[off..off + n], x),
            Factor::Half(k, v) => dot_half(k, &v[off..off + n], x),
        };
    }
}

/// `y[i] += Σ_j coef[j] · w[j * stride + off + i]`, `j` ascending: what one
/// [`axpy_f32`] per `j` gives, with `y` read and written once.
pub fn axpy_rows(w: Factor, stride: usize, off: usize, coef: &[f32], y: &mut [f32]) {
    let n = y.len();
    assert!(coef.is_empty() || (coef.len() - 1) * stride + off + n <= w.len());
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::simd_level() >= crate::SimdLevel::Avx2 {
            // SAFETY: as above; the last row's range is inside the factor (asserted).
            unsafe {
                match w {
                    Factor::F32(v) => {
                        wide::axpy_rows::<{ wide::F32 }>(v.as_ptr() as _, stride, off, coef, y)
                    }
                    Factor::Half(Half::F16, v) => {
                        wide::axpy_rows::<{ wide::F16 }>(v.as_ptr() as _, stride, off, coef, y)
                    }
                    Factor::Half(Half::Bf16, v) => {
                        wide::axpy_rows::<{ wide::BF16 }>(v.as_ptr() as _, stride, off, coef, y)
                    }
                }
            }
            return;
        }
    }
    for (j, &c) in coef.iter().enumerate() {
        let at = j * stride + off;
        match w {
            Factor::F32(v) => axpy_f32(c, &v[at..at + n], y),
            Factor::Half(k, v) => axpy_half(k, c, &v[at..at + n], y),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_products_equal_one_call_per_row_bit_for_bit() {
        let mut seed = 9u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
        };
        let (rank, n) = (5usize, 203usize);
        let wf: Vec<f32> = (0..rank * n + 7).map(|_| rnd()).collect();
        let wh: Vec<u16> = wf
            .iter()
            .map(|&v| half::f16::from_f32(v).to_bits())
            .collect();
        let wb: Vec<u16> = wf.iter().map(|&v| (v.to_bits() >> 16) as u16).collect();
        let factors = [
            Factor::F32(&wf),
            Factor::Half(Half::F16, &wh),
            Factor::Half(Half::Bf16, &wb),
        ];
        let xs: Vec<Vec<f32>> = (0..4).map(|_| (0..n).map(|_| rnd()).collect()).collect();
        for w in factors {
            let wide: Vec<f32> = match w {
                Factor::F32(v) => v.to_vec(),
                Factor::Half(k, v) => v.iter().map(|&h| k.to_f32(h)).collect(),
            };
            for len in [1usize, 7, 8, 9, 16, 17, 64, n] {
                for rows in 1..=4 {
                    let x: Vec<&[f32]> = xs.iter().take(rows).map(|x| &x[..len]).collect();
                    let mut got = [0f32; 4];
                    dot_rows(w, 3, len, &x, &mut got);
                    for k in 0..rows {
                        let want = dot_f32(&wide[3..3 + len], x[k]);
                        assert_eq!(
                            got[k].to_bits(),
                            want.to_bits(),
                            "{w:?} dot len {len} row {k}"
                        );
                    }
                }
                let coef: Vec<f32> = (0..rank).map(|_| rnd()).collect();
                let mut got = xs[0][..len].to_vec();
                axpy_rows(w, n, 2, &coef, &mut got);
                let mut want = xs[0][..len].to_vec();
                for (j, &c) in coef.iter().enumerate() {
                    axpy_f32(c, &wide[j * n + 2..j * n + 2 + len], &mut want);
                }
                assert_eq!(got, want, "{w:?} axpy len {len}");
            }
        }
    }
}
