//! Statistical tests of speculative verification ([`Sampler::verify`]): whatever the
//! draft proposes, emitted tokens must follow the target's processed distribution.

use super::{Sampler, SamplingParams};

/// The target distribution computed independently of the sampler: top-k over the
/// logits, then softmax at `temperature`.
fn expected(logits: &[f32], top_k: usize, temperature: f32) -> Vec<f64> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let keep = &order[..top_k.min(order.len())];
    let z: f64 = keep
        .iter()
        .map(|&i| ((logits[i] / temperature) as f64).exp())
        .sum();
    let mut p = vec![0.0; logits.len()];
    for &i in keep {
        p[i] = ((logits[i] / temperature) as f64).exp() / z;
    }
    p
}

/// Pearson's chi-square of `counts` against `p` over the cells with p > 0, and
/// whether any count fell where p = 0.
fn chi_square(counts: &[u64], p: &[f64]) -> (f64, bool) {
    let n: u64 = counts.iter().sum();
    let mut chi = 0.0;
    let mut outside = false;
    for (&c, &pi) in counts.iter().zip(p) {
        if pi > 0.0 {
            let e = pi * n as f64;
            chi += (c as f64 - e).powi(2) / e;
        } else if c > 0 {
            outside = true;
        }
    }
    (chi, outside)
}

/// Drafts from `draft_logits` with a draft sampler, verifies against `target_logits`
/// and counts what is emitted; returns (counts, acceptance rate).
fn run(
    params: &SamplingParams,
    target_logits: &[f32],
    draft_logits: &[f32],
    point_mass: bool,
    n: usize,
) -> (Vec<u64>, f64) {
    let mut target = Sampler::new(SamplingParams {
        seed: Some(1),
        ..params.clone()
    })
    .unwrap();
    let mut draft = Sampler::new(SamplingParams {
        seed: Some(2),
        ..params.clone()
    })
    .unwrap();
    let mut counts = vec![0u64; target_logits.len()];
    let mut accepted = 0;
    let mut q = Vec::new();
    for _ in 0..n {
        let x = draft
            .sample_with_dist(&mut draft_logits.to_vec(), &[], &mut q)
            .id;
        let qd = if point_mass { None } else { Some(q.as_slice()) };
        let (s, ok) = target.verify(&mut target_logits.to_vec(), &[], x, qd);
        assert_eq!(ok, s.id == x, "accepted means the draft is emitted");
        counts[s.id as usize] += 1;
        accepted += usize::from(ok);
    }
    (counts, accepted as f64 / n as f64)
}

#[test]
fn rejection_sampling_emits_the_target_distribution() {
    let target = [2.0f32, 1.5, 1.0, 0.2, -0.5, -1.0];
    // A draft that disagrees: favours the tail.
    let draft = [-1.0f32, 0.0, 0.5, 1.0, 2.0, 0.3];
    // df = 5 (6 cells), chi-square 0.999 quantile = 20.52; df = 2: 13.82.
    for (top_k, temperature, bound) in [(0, 1.0f32, 20.52), (3, 0.7, 13.82)] {
        let params = SamplingParams {
            temperature,
            top_k,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplingParams::default()
        };
        let p = expected(&target, if top_k == 0 { 6 } else { top_k }, temperature);
        for point_mass in [false, true] {
            let (counts, acc) = run(&params, &target, &draft, point_mass, 40_000);
            let (chi, outside) = chi_square(&counts, &p);
            assert!(!outside, "a token outside the target's support was emitted");
            assert!(
                chi < bound,
                "top_k {top_k} T {temperature} point mass {point_mass}: chi-square {chi:.1} >= {bound} ({counts:?} vs {p:?})"
            );
            assert!(acc > 0.0, "some drafts are accepted ({acc})");
        }
    }
}

#[test]
fn rejection_sampling_accepts_more_than_point_mass_and_all_when_equal() {
    let target = [2.0f32, 1.5, 1.0, 0.2, -0.5, -1.0];
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        ..SamplingParams::default()
    };
    // q = p: every draft is accepted (p(x)/q(x) = 1).
    let (_, acc) = run(&params, &target, &target, false, 5_000);
    assert_eq!(acc, 1.0);
    // A point-mass verification of the same drafts accepts only sum p(x)^2.
    let (_, acc_pm) = run(&params, &target, &target, true, 5_000);
    let p = expected(&target, 6, 1.0);
    let want: f64 = p.iter().map(|x| x * x).sum();
    assert!((acc_pm - want).abs() < 0.03, "{acc_pm} vs {want}");
}

#[test]
fn greedy_verification_is_argmax_after_penalties() {
    let params = SamplingParams {
        repetition_penalty: 4.0,
        penalty_last_n: 8,
        ..SamplingParams::greedy()
    };
    let mut s = Sampler::new(params).unwrap();
    // Token 0 leads, but it is in the history and the penalty demotes it to below 1.
    let logits = [2.0f32, 1.0, 0.5];
    let (t, ok) = s.verify(&mut logits.to_vec(), &[0], 0, None);
    assert_eq!((t.id, ok), (1, false));
    let (t, ok) = s.verify(&mut logits.to_vec(), &[0], 1, Some(&[(1, 1.0)]));
    assert_eq!((t.id, ok), (1, true));
}
