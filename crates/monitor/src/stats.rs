//! Two-sample statistics for drift: Kolmogorov–Smirnov, population stability index,
//! Wasserstein-1, and kernel MMD with a permutation test. Pure functions over slices;
//! knows nothing about requests or windows.

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// Two-sample Kolmogorov–Smirnov test: the statistic D (largest gap between the two
/// empirical CDFs) and its two-sided p-value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct KsResult {
    pub statistic: f64,
    pub p_value: f64,
}

/// Two-sided two-sample KS test. The p-value is exact (a lattice-path count, as
/// scipy's `method="exact"`) while n·m ≤ 1 000 000 (about a millisecond), asymptotic
/// (Kolmogorov's distribution of √(nm/(n+m))·D, scipy's `method="asymp"`) above.
/// Empty input gives D = 0, p = 1 (no evidence of a difference).
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> KsResult {
    if a.is_empty() || b.is_empty() {
        return KsResult {
            statistic: 0.0,
            p_value: 1.0,
        };
    }
    let mut x: Vec<f64> = a.iter().copied().filter(|v| v.is_finite()).collect();
    let mut y: Vec<f64> = b.iter().copied().filter(|v| v.is_finite()).collect();
    if x.is_empty() || y.is_empty() {
        return KsResult {
            statistic: 0.0,
            p_value: 1.0,
        };
    }
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let (n, m) = (x.len(), y.len());
    let (mut i, mut j) = (0usize, 0usize);
    let mut d: f64 = 0.0;
    while i < n && j < m {
        let v = x[i].min(y[j]);
        while i < n && x[i] <= v {
            i += 1;
        }
        while j < m && y[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / n as f64 - j as f64 / m as f64).abs());
    }
    let p_value = if (n as u64) * (m as u64) <= 1_000_000 {
        ks_exact_pvalue(d, n, m)
    } else {
        let en = ((n * m) as f64 / (n + m) as f64).sqrt();
        kolmogorov_sf(en * d)
    };
    KsResult {
        statistic: d,
        p_value: p_value.clamp(0.0, 1.0),
    }
}

/// P(D ≥ d) for samples of sizes n and m under H0, by counting the lattice paths from
/// (0,0) to (n,m) that stay strictly inside the band |i/n − j/m| < d (the complement
/// of the event). Counts are kept as probabilities to avoid overflow.
fn ks_exact_pvalue(d: f64, n: usize, m: usize) -> f64 {
    // A path point (i, j) is outside the band when |i/n - j/m| >= d (with a small
    // tolerance so that ties at exactly d count as reaching it, as scipy does).
    let tol = 1e-12;
    let outside =
        |i: usize, j: usize| ((i as f64 / n as f64) - (j as f64 / m as f64)).abs() >= d - tol;
    if d <= 0.0 {
        return 1.0;
    }
    // Probability mass of paths staying inside; each step picks x with probability
    // proportional to remaining counts, which gives the uniform distribution over paths.
    let mut row = vec![0.0f64; m + 1];
    for i in 0..=n {
        for j in 0..=m {
            if i == 0 && j == 0 {
                row[0] = 1.0;
                continue;
            }
            if outside(i, j) {
                row[j] = 0.0;
                continue;
            }
            // Number of paths to (i,j) relative to C(i+j, i): combine weights
            // w(i-1,j)·i/(i+j) + w(i,j-1)·j/(i+j), which keeps w a probability.
            let from_up = if i > 0 {
                row[j] * i as f64 / (i + j) as f64
            } else {
                0.0
            };
            let from_left = if j > 0 {
                row[j - 1] * j as f64 / (i + j) as f64
            } else {
                0.0
            };
            row[j] = from_up + from_left;
        }
    }
    1.0 - row[m]
}

/// Survival function of the Kolmogorov distribution, Q(λ) = 2 Σ (−1)^{k−1} e^{−2k²λ²}.
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda < 0.2 {
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for k in 1..=100 {
        let kf = k as f64;
        let term = (-2.0 * kf * kf * lambda * lambda).exp();
        sum += sign * term;
        if term < 1e-16 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// Wasserstein-1 (earth mover's) distance between two empirical distributions: the
/// integral of |F_a − F_b| over the line.
pub fn wasserstein_1d(a: &[f64], b: &[f64]) -> f64 {
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    let mut x = a.to_vec();
    let mut y = b.to_vec();
    x.sort_by(f64::total_cmp);
    y.sort_by(f64::total_cmp);
    let mut all: Vec<f64> = x.iter().chain(y.iter()).copied().collect();
    all.sort_by(f64::total_cmp);
    let (n, m) = (x.len() as f64, y.len() as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut total = 0.0;
    for w in all.windows(2) {
        let v = w[0];
        while i < x.len() && x[i] <= v {
            i += 1;
        }
        while j < y.len() && y[j] <= v {
            j += 1;
        }
        total += (i as f64 / n - j as f64 / m).abs() * (w[1] - w[0]);
    }
    total
}

/// Wasserstein distance divided by the reference's standard deviation (Evidently's
/// "normed" variant: drift when ≥ 0.1). A constant reference uses 1 as its scale.
pub fn wasserstein_normed(reference: &[f64], current: &[f64]) -> f64 {
    let sd = std_dev(reference);
    let scale = if sd > 1e-12 { sd } else { 1.0 };
    wasserstein_1d(reference, current) / scale
}

fn std_dev(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64).sqrt()
}

/// Population stability index over `bins` equal-width bins spanning both samples:
/// Σ (c − r)·ln(c / r) with empty bins floored at 1e-4 (as Evidently does).
pub fn psi(reference: &[f64], current: &[f64], bins: usize) -> f64 {
    if reference.is_empty() || current.is_empty() || bins == 0 {
        return 0.0;
    }
    let lo = reference
        .iter()
        .chain(current)
        .copied()
        .fold(f64::INFINITY, f64::min);
    let hi = reference
        .iter()
        .chain(current)
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let hist = |v: &[f64]| {
        let mut h = vec![0.0f64; bins];
        for &x in v {
            let k = (((x - lo) / width) as usize).min(bins - 1);
            h[k] += 1.0;
        }
        let n = v.len() as f64;
        h.iter_mut().for_each(|c| *c = (*c / n).max(1e-4));
        h
    };
    let (r, c) = (hist(reference), hist(current));
    r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum()
}

/// Kernel two-sample test with an RBF kernel: squared MMD (unbiased estimate), the
/// bandwidth chosen by the median heuristic, and a permutation-test p-value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MmdResult {
    pub mmd2: f64,
    pub bandwidth: f64,
    pub p_value: f64,
}

/// MMD between row sets `x` and `y` (each row one embedding), with `permutations`
/// random relabellings (seeded, so results repeat). Fewer than two rows on a side
/// gives mmd2 = 0, p = 1.
pub fn mmd_rbf(x: &[Vec<f32>], y: &[Vec<f32>], permutations: usize, seed: u64) -> MmdResult {
    let (n, m) = (x.len(), y.len());
    if n < 2 || m < 2 {
        return MmdResult {
            mmd2: 0.0,
            bandwidth: 0.0,
            p_value: 1.0,
        };
    }
    let all: Vec<&[f32]> = x.iter().chain(y).map(|v| v.as_slice()).collect();
    let t = all.len();
    let mut d2 = vec![0.0f64; t * t];
    for i in 0..t {
        for j in i + 1..t {
            let s: f64 = all[i]
                .iter()
                .zip(all[j])
                .map(|(a, b)| {
                    let d = (*a - *b) as f64;
                    d * d
                })
                .sum();
            d2[i * t + j] = s;
            d2[j * t + i] = s;
        }
    }
    // Median heuristic: the kernel width is the median pairwise distance.
    let mut off: Vec<f64> = (0..t)
        .flat_map(|i| (i + 1..t).map(move |j| (i, j)))
        .map(|(i, j)| d2[i * t + j])
        .collect();
    off.sort_by(f64::total_cmp);
    let med = off[off.len() / 2].sqrt();
    let bw = if med > 1e-12 { med } else { 1.0 };
    let k: Vec<f64> = d2.iter().map(|d| (-d / (2.0 * bw * bw)).exp()).collect();
    let stat = |idx: &[usize]| {
        let (xs, ys) = idx.split_at(n);
        let mean_within = |s: &[usize]| {
            let mut sum = 0.0;
            for (a, &i) in s.iter().enumerate() {
                for &j in &s[a + 1..] {
                    sum += k[i * t + j];
                }
            }
            2.0 * sum / (s.len() * (s.len() - 1)) as f64
        };
        let mut cross = 0.0;
        for &i in xs {
            for &j in ys {
                cross += k[i * t + j];
            }
        }
        mean_within(xs) + mean_within(ys) - 2.0 * cross / (xs.len() * ys.len()) as f64
    };
    let mut idx: Vec<usize> = (0..t).collect();
    let observed = stat(&idx);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut at_least = 0usize;
    for _ in 0..permutations {
        idx.shuffle(&mut rng);
        if stat(&idx) >= observed {
            at_least += 1;
        }
    }
    MmdResult {
        mmd2: observed,
        bandwidth: bw,
        p_value: (at_least + 1) as f64 / (permutations + 1) as f64,
    }
}

/// Cosine distance (1 − cos) between the centroids of two row sets; 0 when either is
/// empty or a centroid is zero.
pub fn centroid_cosine_distance(x: &[Vec<f32>], y: &[Vec<f32>]) -> f64 {
    let centroid = |rows: &[Vec<f32>]| -> Option<Vec<f64>> {
        let dim = rows.first()?.len();
        let mut c = vec![0.0f64; dim];
        for r in rows {
            for (c, v) in c.iter_mut().zip(r) {
                *c += *v as f64;
            }
        }
        Some(c)
    };
    let (Some(a), Some(b)) = (centroid(x), centroid(y)) else {
        return 0.0;
    };
    let dot: f64 = a.iter().zip(&b).map(|(a, b)| a * b).sum();
    let na = a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let nb = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    if na < 1e-12 || nb < 1e-12 {
        return 0.0;
    }
    1.0 - dot / (na * nb)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy 1.x (`scipy.stats.ks_2samp`, `wasserstein_distance`).
    fn seq_x(n: usize, modulus: usize, mult: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * mult) % modulus) as f64 / modulus as f64)
            .collect()
    }

    #[test]
    fn ks_exact_matches_scipy_on_small_samples() {
        let a = [1.2, 3.4, 2.2, 5.1, 0.3, 4.4, 2.9, 3.3];
        let b = [2.1, 6.3, 4.8, 5.5, 7.0, 3.9, 6.1];
        let r = ks_two_sample(&a, &b);
        assert!((r.statistic - 0.6071428571428571).abs() < 1e-12, "{r:?}");
        assert!((r.p_value - 0.08702408702408701).abs() < 1e-9, "{r:?}");
        let x = seq_x(150, 1000, 7919);
        let y: Vec<f64> = (0..120)
            .map(|j| ((j * 104729) % 997) as f64 / 997.0 + 0.1)
            .collect();
        let r = ks_two_sample(&x, &y);
        assert!((r.statistic - 0.11666666666666667).abs() < 1e-12, "{r:?}");
        assert!((r.p_value - 0.30145117583205944).abs() < 1e-7, "{r:?}");
    }

    #[test]
    fn ks_asymptotic_matches_scipy_on_large_samples() {
        let x = seq_x(3000, 10007, 7919);
        let y: Vec<f64> = (0..2000)
            .map(|j| (((j * 104729) % 9973) as f64 / 9973.0).powf(1.1))
            .collect();
        let r = ks_two_sample(&x, &y);
        assert!((r.statistic - 0.03816666666666663).abs() < 1e-12, "{r:?}");
        // scipy's kstwobign.sf(sqrt(nm/(n+m)) * D): Kolmogorov's limit distribution.
        assert!((r.p_value - 0.060631097964687).abs() < 1e-9, "{r:?}");
        assert!((kolmogorov_sf(1.36) - 0.049485876755377876).abs() < 1e-9);
        assert!((kolmogorov_sf(0.5) - 0.9639452436648751).abs() < 1e-9);
    }

    #[test]
    fn ks_of_identical_samples_is_zero_and_empty_is_no_evidence() {
        let a = [1.0, 2.0, 3.0];
        let r = ks_two_sample(&a, &a);
        assert_eq!(r.statistic, 0.0);
        assert!((r.p_value - 1.0).abs() < 1e-12);
        assert_eq!(ks_two_sample(&[], &a).p_value, 1.0);
        assert_eq!(ks_two_sample(&[f64::NAN], &a).p_value, 1.0);
    }

    #[test]
    fn wasserstein_matches_scipy_and_by_hand() {
        // Two point masses two apart: the distance is 2.
        assert!((wasserstein_1d(&[0.0], &[2.0]) - 2.0).abs() < 1e-12);
        let a = [1.2, 3.4, 2.2, 5.1, 0.3, 4.4, 2.9, 3.3];
        let b = [2.1, 6.3, 4.8, 5.5, 7.0, 3.9, 6.1];
        assert!((wasserstein_1d(&a, &b) - 2.2500000000000004).abs() < 1e-12);
        assert!((wasserstein_normed(&a, &b) - 1.516088521190721).abs() < 1e-12);
        let x = seq_x(150, 1000, 7919);
        let y: Vec<f64> = (0..120)
            .map(|j| ((j * 104729) % 997) as f64 / 997.0 + 0.1)
            .collect();
        assert!((wasserstein_1d(&x, &y) - 0.08371096623202941).abs() < 1e-12);
    }

    #[test]
    fn psi_by_hand() {
        // Two bins over [0, 2]: reference 3/4 in the low bin, current 1/4.
        let r = [0.0, 0.1, 0.2, 2.0];
        let c = [0.0, 1.9, 1.8, 2.0];
        let want =
            (0.25f64 - 0.75) * (0.25f64 / 0.75).ln() + (0.75f64 - 0.25) * (0.75f64 / 0.25).ln();
        assert!((psi(&r, &c, 2) - want).abs() < 1e-12);
        assert!(psi(&r, &r, 10).abs() < 1e-12);
    }

    #[test]
    fn mmd_by_hand_and_its_permutation_test() {
        // x = {0, 1}, y = {0, 3}: squared distances 1,0,9,1,4,9 → median 4 → width 2.
        let x = vec![vec![0.0f32], vec![1.0]];
        let y = vec![vec![0.0f32], vec![3.0]];
        let k = |d2: f64| (-d2 / 8.0).exp();
        let want = k(1.0) + k(9.0) - 2.0 * (k(0.0) + k(9.0) + k(1.0) + k(4.0)) / 4.0;
        let r = mmd_rbf(&x, &y, 0, 1);
        assert!((r.bandwidth - 2.0).abs() < 1e-12);
        assert!((r.mmd2 - want).abs() < 1e-12, "{} vs {want}", r.mmd2);
        // Well separated clouds: p at its floor; the same cloud twice: p large.
        let a: Vec<Vec<f32>> = (0..40).map(|i| vec![(i % 7) as f32 * 0.1, 0.0]).collect();
        let b: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![(i % 5) as f32 * 0.1 + 3.0, 1.0])
            .collect();
        let shifted = mmd_rbf(&a, &b, 99, 7);
        assert!(shifted.p_value <= 0.011, "{shifted:?}");
        let a2: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![((i + 3) % 7) as f32 * 0.1, 0.0])
            .collect();
        let same = mmd_rbf(&a, &a2, 99, 7);
        assert!(same.p_value > 0.2, "{same:?}");
    }

    #[test]
    fn centroid_distance_is_one_minus_cosine() {
        let x = vec![vec![1.0f32, 0.0]];
        let y = vec![vec![0.0f32, 2.0]];
        assert!((centroid_cosine_distance(&x, &y) - 1.0).abs() < 1e-12);
        assert!(centroid_cosine_distance(&x, &x).abs() < 1e-12);
        assert_eq!(centroid_cosine_distance(&[], &x), 0.0);
    }
}
