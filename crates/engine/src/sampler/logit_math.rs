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
    let max = max_value(logits);
    let best = logits.iter().position(|&v| v == max).unwrap_or(0);
    (best as u32, logits[best])
}

fn max_value(logits: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if hangar_kernels::simd_level() >= hangar_kernels::SimdLevel::Avx2 {
            // SAFETY: AVX2 presence checked by simd_level.
            return unsafe { max_value_avx2(logits) };
        }
    }
    max_value_generic(logits)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_value_avx2(logits: &[f32]) -> f32 {
    max_value_generic(logits)
}

#[inline(always)]
fn max_value_generic(logits: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut it = logits.chunks_exact(16);
    for c in &mut it {
        for j in 0..16 {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = acc
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    for &v in it.remainder() {
        if v > m {
            m = v;
        }
    }
    m
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

    #[test]
    fn top_n_order() {
        let l = [1.0, 5.0, 3.0, 5.0, 2.0, 4.0];
        assert_eq!(top_n(&l, 4), vec![(5.0, 1), (5.0, 3), (4.0, 5), (3.0, 2)]);
        assert_eq!(top_n(&l, 10).len(), 6);
        assert!(top_n(&l, 0).is_empty());
    }
}
