//! Prompt-token log-probabilities from one row of logits: the target's log-softmax
//! value and the most likely alternatives. Pure arithmetic; the loop decides which
//! rows to score.

use super::request::{PromptTokenLogprob, TopLogprob};
use hangar_tokenizer::Tokenizer;

/// Log-sum-exp of a row, in f64 for a stable sum over a large vocabulary.
pub(crate) fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// The `k` most likely ids of a row, most likely first (ties: lower id first).
pub(crate) fn top_k(row: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &l) in row.iter().enumerate() {
        if best.len() == k && l <= best[k - 1].1 {
            continue;
        }
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(k);
    }
    best
}

/// Scores `target` under `row` and lists `top` alternatives.
pub(crate) fn score_row(
    row: &[f32],
    target: u32,
    top: usize,
    tok: &Tokenizer,
) -> PromptTokenLogprob {
    let lse = log_sum_exp(row);
    let lp = row
        .get(target as usize)
        .map_or(f64::NEG_INFINITY, |&l| l as f64 - lse);
    PromptTokenLogprob {
        id: target,
        token: tok.decode(&[target], false),
        logprob: Some(lp as f32),
        top_logprobs: top_k(row, top)
            .into_iter()
            .map(|(id, l)| TopLogprob {
                id,
                token: tok.decode(&[id], false),
                logprob: (l as f64 - lse) as f32,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_by_logit_and_keeps_k() {
        let row = [0.5, 3.0, -1.0, 2.0, 3.0];
        assert_eq!(top_k(&row, 3), vec![(1, 3.0), (4, 3.0), (3, 2.0)]);
        assert!(top_k(&row, 0).is_empty());
        assert_eq!(top_k(&row, 9).len(), 5);
    }

    #[test]
    fn log_sum_exp_matches_the_definition() {
        let row = [1.0f32, 2.0, 3.0];
        let want = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((log_sum_exp(&row) - want).abs() < 1e-12);
    }
}
