//! Truncation and the draw: top-k, top-p, min-p, temperature, then one weighted pick
//! from the seeded stream. Reads adjusted logits; never changes them.

use super::logit_math::{argmax, by_logit_desc, fast_exp, sum_exp, top_n_into};
use super::rng::Rng;
use super::SamplingParams;

/// Truncation (top-k, top-p, min-p), temperature and the draw.
pub(super) fn draw(
    p: &SamplingParams,
    rng: &mut Rng,
    cands: &mut Vec<(f32, u32)>,
    logits: &[f32],
    max: f32,
) -> u32 {
    let inv_t = 1.0 / p.temperature;
    if !truncate(p, cands, logits, max) {
        // No truncation at all: draw straight from the logits.
        let total = sum_exp(logits, max, inv_t);
        let target = rng.next_f64() * total;
        return walk(
            logits.iter().enumerate().map(|(i, &l)| (l, i as u32)),
            max,
            inv_t,
            target,
        )
        .unwrap_or_else(|| argmax(logits).0);
    }
    // Empty cannot happen (the maximum always survives), but never panic.
    draw_from(cands, max, inv_t, rng.next_f64()).unwrap_or_else(|| argmax(logits).0)
}

/// The weighted pick among truncated candidates at uniform `u`; `None` when there
/// are none.
pub(super) fn draw_from(cands: &[(f32, u32)], max: f32, inv_t: f32, u: f64) -> Option<u32> {
    let first = cands.first()?.1;
    let total: f64 = cands.iter().map(|&(l, _)| weight(l, max, inv_t)).sum();
    let target = u * total;
    Some(walk(cands.iter().copied(), max, inv_t, target).unwrap_or(first))
}

/// What [`truncate`] keeps, from the row's most likely tokens only: `top` is the
/// start of the row in `by_logit_desc` order (all of it when `top.len() >= n`), `z1`
/// the row's `Σ e^(l - max)`. `false` when the answer depends on tokens past `top`
/// (or nothing truncates): then the whole row is needed.
pub(super) fn truncate_top(
    p: &SamplingParams,
    top: &[(f32, u32)],
    n: usize,
    max: f32,
    z1: f64,
    cands: &mut Vec<(f32, u32)>,
) -> bool {
    let complete = top.len() >= n;
    let (min_logit, top_k) = cuts(p, n, max);
    let top_p = p.top_p;
    // The kept prefix above min-p's bar (top is sorted, so the bar cuts a prefix).
    let above = top.iter().take_while(|&&(l, _)| l >= min_logit).count();
    cands.clear();
    if top_k < n {
        if top.len() < top_k {
            return false;
        }
        cands.extend_from_slice(&top[..top_k]);
        if top_p < 1.0 {
            // As `truncate`: probabilities over the top-k set.
            let z: f64 = cands.iter().map(|&(l, _)| fast_exp(l - max) as f64).sum();
            let keep = top_p_prefix(cands, max, z, top_p).unwrap_or(cands.len());
            cands.truncate(keep);
        }
        cands.retain(|&(l, _)| l >= min_logit);
    } else if top_p < 1.0 {
        // As `lazy_top_p`: the prefix of the tokens above the bar whose mass reaches
        // top-p, else all of them.
        match top_p_prefix(&top[..above], max, z1, top_p) {
            Some(k) => cands.extend_from_slice(&top[..k]),
            None if above < top.len() || complete => cands.extend_from_slice(&top[..above]),
            None => return false,
        }
    } else if min_logit > f32::NEG_INFINITY {
        if above == top.len() && !complete {
            return false;
        }
        // min-p alone keeps the row's order.
        cands.extend_from_slice(&top[..above]);
        cands.sort_unstable_by_key(|&(_, id)| id);
    } else {
        return false;
    }
    true
}

/// The distribution [`draw`] draws from, as normalised (id, probability) pairs over
/// the tokens it could pick (the whole vocabulary when nothing truncates): what
/// speculative rejection sampling compares against a draft's distribution.
pub(super) fn distribution(
    p: &SamplingParams,
    cands: &mut Vec<(f32, u32)>,
    logits: &[f32],
    max: f32,
    out: &mut Vec<(u32, f64)>,
) {
    let inv_t = 1.0 / p.temperature;
    out.clear();
    if truncate(p, cands, logits, max) {
        out.extend(cands.iter().map(|&(l, id)| (id, weight(l, max, inv_t))));
    } else {
        out.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, weight(l, max, inv_t)))
                .filter(|&(_, w)| w > 0.0),
        );
    }
    let total: f64 = out.iter().map(|&(_, w)| w).sum();
    if out.is_empty() || total <= 0.0 {
        out.clear();
        out.push((argmax(logits).0, 1.0));
        return;
    }
    for (_, w) in out.iter_mut() {
        *w /= total;
    }
}

/// Fills `cands` with the tokens top-k, top-p and min-p keep, most likely first;
/// `false` when none of them is on (every token stays and `cands` is left alone).
fn truncate(p: &SamplingParams, cands: &mut Vec<(f32, u32)>, logits: &[f32], max: f32) -> bool {
    let n = logits.len();
    let (min_logit, top_k) = cuts(p, n, max);
    let top_p = p.top_p;
    cands.clear();

    if top_k < n {
        // Top-k by a bounded scan (small k) or partial selection, then sorted.
        if top_k <= 128 {
            top_n_into(logits, top_k, cands);
        } else {
            cands.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
            cands.select_nth_unstable_by(top_k - 1, by_logit_desc);
            cands.truncate(top_k);
            cands.sort_unstable_by(by_logit_desc);
        }
        if top_p < 1.0 {
            // Probabilities over the top-k set.
            let z: f64 = cands.iter().map(|&(l, _)| fast_exp(l - max) as f64).sum();
            let keep = top_p_prefix(cands, max, z, top_p).unwrap_or(cands.len());
            cands.truncate(keep);
        }
        cands.retain(|&(l, _)| l >= min_logit);
    } else if top_p < 1.0 {
        lazy_top_p(logits, max, min_logit, top_p, cands);
    } else if min_logit > f32::NEG_INFINITY {
        // min-p alone is a plain filter.
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l >= min_logit)
                .map(|(i, &l)| (l, i as u32)),
        );
    } else {
        return false;
    }
    true
}

/// min-p's bar (logits >= max + ln(min_p) stay; min_p = 1 keeps only the maximum) and
/// top-k's count (`n` when off) over a vocabulary of `n`.
fn cuts(p: &SamplingParams, n: usize, max: f32) -> (f32, usize) {
    let min_logit = if p.min_p > 0.0 {
        max + p.min_p.ln()
    } else {
        f32::NEG_INFINITY
    };
    let top_k = if p.top_k == 0 || p.top_k >= n {
        n
    } else {
        p.top_k
    };
    (min_logit, top_k)
}

/// The temperature-scaled, unnormalised probability of a logit (exactly 0 for -inf).
#[inline(always)]
fn weight(l: f32, max: f32, inv_t: f32) -> f64 {
    if l == f32::NEG_INFINITY {
        0.0
    } else {
        fast_exp((l - max) * inv_t) as f64
    }
}

/// The token at which the running sum of weights passes `target` (the last token
/// with a positive weight if rounding leaves it short).
fn walk(items: impl Iterator<Item = (f32, u32)>, max: f32, inv_t: f32, target: f64) -> Option<u32> {
    let mut acc = 0.0;
    let mut last = None;
    for (l, id) in items {
        let w = weight(l, max, inv_t);
        if w > 0.0 {
            acc += w;
            last = Some(id);
            if acc > target {
                return last;
            }
        }
    }
    last
}

/// Top-p (then min-p) over the whole vocabulary without sorting it: a histogram of
/// probability mass by logit finds the bucket where the cumulative mass crosses
/// `top_p`; only tokens down to (one bucket past) it are gathered and sorted.
pub(super) fn lazy_top_p(
    logits: &[f32],
    max: f32,
    min_logit: f32,
    top_p: f32,
    cands: &mut Vec<(f32, u32)>,
) {
    const BUCKETS: usize = 512;
    const WIDTH: f32 = 1.0 / 16.0; // nats per bucket; the last bucket takes the rest
    let bucket = |l: f32| (((max - l) * (1.0 / WIDTH)) as usize).min(BUCKETS - 1);
    let mut hist = [0f64; BUCKETS];
    // The top-p normaliser covers every token (top-k is off); min-p, applied after
    // top-p, only shortens the kept prefix, so tokens below its bar are never gathered.
    let z = sum_exp(logits, max, 1.0);
    for &l in logits {
        if l >= min_logit && l > f32::NEG_INFINITY {
            hist[bucket(l)] += fast_exp(l - max) as f64;
        }
    }
    let mut cum = 0.0;
    let mut crossing = None;
    for (b, &mass) in hist.iter().enumerate() {
        cum += mass / z;
        if cum >= top_p as f64 {
            crossing = Some(b);
            break;
        }
    }
    // One bucket of margin for summation-order rounding.
    let last = match crossing {
        Some(b) if b + 1 < BUCKETS - 1 => b + 1,
        _ => BUCKETS - 1,
    };
    let gather = |cands: &mut Vec<(f32, u32)>, last: usize| {
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l >= min_logit && bucket(l) <= last)
                .map(|(i, &l)| (l, i as u32)),
        );
        cands.sort_unstable_by(by_logit_desc);
    };
    gather(cands, last);
    let keep = match top_p_prefix(cands, max, z, top_p) {
        Some(k) => k,
        None if last == BUCKETS - 1 => cands.len(),
        None => {
            gather(cands, BUCKETS - 1);
            top_p_prefix(cands, max, z, top_p).unwrap_or(cands.len())
        }
    };
    cands.truncate(keep);
}

/// Length of the top-p prefix of the sorted `cands`, llama.cpp's rule: keep tokens
/// until the cumulative probability (weights over `z`) reaches `top_p`, the token
/// that reaches it included, at least one token. `None` if it never does.
pub(super) fn top_p_prefix(cands: &[(f32, u32)], max: f32, z: f64, top_p: f32) -> Option<usize> {
    let mut cum = 0f64;
    for (i, &(l, _)) in cands.iter().enumerate() {
        cum += fast_exp(l - max) as f64 / z;
        if cum >= top_p as f64 {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_top_p_equals_full_sort() {
        let n = 50_000;
        let l: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2_654_435_761) % 10_007) as f32 / 700.0 - 3.0)
            .collect();
        let (_, max) = argmax(&l);
        let z = sum_exp(&l, max, 1.0);
        let mut sorted: Vec<(f32, u32)> =
            l.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
        sorted.sort_by(by_logit_desc);
        for top_p in [0.0, 0.1, 0.5, 0.9, 0.95, 0.999, 0.999_999] {
            for min_p in [0.0, 0.01, 0.3] {
                let min_logit = if min_p > 0.0 {
                    max + (min_p as f32).ln()
                } else {
                    f32::NEG_INFINITY
                };
                let p_len = top_p_prefix(&sorted, max, z, top_p).unwrap_or(n);
                let want: Vec<(f32, u32)> = sorted[..p_len]
                    .iter()
                    .copied()
                    .filter(|&(v, _)| v >= min_logit)
                    .collect();
                let mut got = Vec::new();
                lazy_top_p(&l, max, min_logit, top_p, &mut got);
                assert_eq!(got, want, "top_p {top_p} min_p {min_p}");
            }
        }
    }
}
