//! Vocabulary-wide arithmetic over one row of logits: maximum, exp sums, ordering,
//! top-n selection. Pure functions; no sampling policy lives here.

use std::cmp::Ordering;

/// Higher logit first; equal logits: lower id first. A total order (NaN never
/// reaches it: logits are sanitised first).
#[inline]
pub(super) fn by_logit_desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.1.cmp(&b.1))
}

/// e^x for x <= 0 (a logit minus the maximum), to about 2e-7 relative; tiny (not
/// zero) below -87. Branch-free, so loops over it vectorise.
#[inline(always)]
pub(super) fn fast_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 0.0);
    // n = round(x / ln 2), by the 1.5 * 2^23 trick.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n: n + 127 lands in the low mantissa bits of (n + 127 + 2^23).
    let scale = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    p * scale
}

/// Σ e^((l - max) * scale), in f32 lanes folded into f64 every few thousand terms.
/// Runs over the whole vocabulary for every sampled token, so it is compiled for AVX2
/// too and picked at run time.
pub(super) fn sum_exp(logits: &[f32], max: f32, scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if hangar_kernels::simd_level() >= hangar_kernels::SimdLevel::Avx2 {
            // SAFETY: AVX2+FMA presence checked by simd_level.
            return unsafe { sum_exp_avx2(logits, max, scale) };
        }
    }
    sum_exp_generic(logits, max, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp_avx2(logits: &[f32], max: f32, scale: f32) -> f64 {
    sum_exp_generic(logits, max, scale)
}

#[inline(always)]
fn sum_exp_generic(logits: &[f32], max: f32, scale: f32) -> f64 {
    let mut total = 0f64;
    for chunk in logits.chunks(4096) {
        let mut acc = [0f32; 16];
        let mut it = chunk.chunks_exact(16);
        for c in &mut it {
            for j in 0..16 {
                acc[j] += fast_exp((c[j] - max) * scale);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for &l in it.remainder() {
            s += fast_exp((l - max) * scale);
        }
        total += s as f64;
    }
    total
}

/// Index of the largest logit (ties: lowest id) and its value. Two passes — a
/// vectorizable maximum, then the first position holding it — instead of one
/// index-tracking loop that cannot vectorize. Logits hold no NaN here.
pub(super) fn argmax(logits: &[f32]) -> (u32, f32) {
    argmax_checked(logits).0
}

/// [`argmax`], and whether the row holds a NaN (then the result means nothing): one
/// pass over the row does both.
pub(super) fn argmax_checked(logits: &[f32]) -> ((u32, f32), bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if hangar_kernels::simd_level() >= hangar_kernels::SimdLevel::Avx2 {
            // SAFETY: AVX2 presence checked by simd_level.
            return unsafe { argmax_avx2(logits) };
        }
    }
    argmax_generic(logits)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn argmax_avx2(logits: &[f32]) -> ((u32, f32), bool) {
    argmax_generic(logits)
}

/// One pass, 16 lanes each keeping its largest value and where it was first seen;
/// ties resolve to the lowest id, as a left-to-right scan would. (A max pass then a
/// search for it read a 262k-entry row twice, the second time one value at a time:
/// at 64 sequences that was most of the engine loop's own time.)
#[inline(always)]
fn argmax_generic(logits: &[f32]) -> ((u32, f32), bool) {
    let mut best = [f32::NEG_INFINITY; 16];
    let mut at: [u32; 16] = std::array::from_fn(|j| j as u32);
    let mut nan = [false; 16];
    let mut it = logits.chunks_exact(16);
    let mut base = 0u32;
    for c in &mut it {
        for j in 0..16 {
            let gt = c[j] > best[j];
            best[j] = if gt { c[j] } else { best[j] };
            at[j] = if gt { base + j as u32 } else { at[j] };
            nan[j] |= c[j].is_nan();
        }
        base += 16;
    }
    let any_nan = nan.iter().any(|&n| n) || it.remainder().iter().any(|v| v.is_nan());
    let (mut bi, mut bv) = (0u32, f32::NEG_INFINITY);
    if base > 0 {
        (bi, bv) = (at[0], best[0]);
        for j in 1..16 {
            if best[j] > bv || (best[j] == bv && at[j] < bi) {
                (bi, bv) = (at[j], best[j]);
            }
        }
    }
    for (k, &v) in it.remainder().iter().enumerate() {
        if v > bv || (base == 0 && k == 0) {
            (bi, bv) = (base + k as u32, v);
        }
    }
    ((bi, bv), any_nan)
}

/// `ln Σ exp(l)`, computed around the maximum.
pub(super) fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
    if !max.is_finite() {
        return max;
    }
    max + sum_exp(logits, max, 1.0).ln() as f32
}

/// The `k` largest logits as (logit, id), largest first (ties: lower id first).
pub(super) fn top_n(logits: &[f32], k: usize) -> Vec<(f32, u32)> {
    let mut buf = Vec::new();
    top_n_into(logits, k, &mut buf);
    buf
}

/// [`top_n`] into a reused buffer: one scan, inserting only what beats the k-th.
pub(super) fn top_n_into(logits: &[f32], k: usize, buf: &mut Vec<(f32, u32)>) {
    buf.clear();
    let k = k.min(logits.len());
    if k == 0 {
        return;
    }
    for (i, &l) in logits.iter().enumerate() {
        if buf.len() == k {
            // Strictly better than the current k-th, so ties keep the lower id.
            if l <= buf[k - 1].0 {
                continue;
            }
            buf.pop();
        }
        let item = (l, i as u32);
        let pos = buf.partition_point(|x| by_logit_desc(x, &item) == Ordering::Less);
        buf.insert(pos, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_accuracy() {
        let mut x = 0.0f32;
        while x > -80.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            assert!(((got - want) / want).abs() < 5e-7, "{x}: {got} vs {want}");
            x -= 0.0137;
        }
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    fn late_row() -> Vec<f32> {
        let mut late = vec![0.0f32; 40];
        late[39] = 1.0;
        late
    }

    #[test]
    fn argmax_is_the_first_largest_like_a_scan() {
        let scan = |l: &[f32]| {
            let mut b = 0;
            for (i, &v) in l.iter().enumerate() {
                if v > l[b] {
                    b = i;
                }
            }
            (b as u32, l[b])
        };
        let mut rng = 0x2545_F491_4F6C_DD1Du64;
        for len in [1usize, 2, 15, 16, 17, 31, 33, 100, 1000, 262_144] {
            for ties in [false, true] {
                let l: Vec<f32> = (0..len)
                    .map(|_| {
                        rng ^= rng << 13;
                        rng ^= rng >> 7;
                        rng ^= rng << 17;
                        // With ties: few distinct values, so the maximum repeats.
                        if ties {
                            (rng % 5) as f32
                        } else {
                            (rng >> 40) as f32 / 1e3 - 8e3
                        }
                    })
                    .collect();
                assert_eq!(argmax(&l), scan(&l), "len {len}, ties {ties}");
            }
        }
        let mut with_nan = vec![1.0f32; 40];
        with_nan[21] = f32::NAN;
        assert!(argmax_checked(&with_nan).1 && !argmax_checked(&late_row()).1);
        let all_masked = vec![f32::NEG_INFINITY; 40];
        assert_eq!(argmax(&all_masked), (0, f32::NEG_INFINITY));
        assert_eq!(argmax(&late_row()), (39, 1.0));
    }

    #[test]
    fn top_n_order() {
        let l = [1.0, 5.0, 3.0, 5.0, 2.0, 4.0];
        assert_eq!(top_n(&l, 4), vec![(5.0, 1), (5.0, 3), (4.0, 5), (3.0, 2)]);
        assert_eq!(top_n(&l, 10).len(), 6);
        assert!(top_n(&l, 0).is_empty());
    }
}
