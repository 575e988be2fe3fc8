//! Logit bias and the repetition / presence / frequency penalties: the request's own
//! adjustments to the logits, made before truncation. They never draw a token.

use super::SamplingParams;

/// Adds each `logit_bias` entry to its token's logit (ids outside the vocabulary are
/// ignored).
pub(super) fn apply_bias(params: &SamplingParams, logits: &mut [f32]) {
    for &(id, bias) in &params.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += bias;
        }
    }
}

/// llama.cpp's penalties: for each token seen `c > 0` times in the window,
/// `l = l > 0 ? l / rep : l * rep`, then `l -= c * freq + presence`.
pub(super) fn apply_penalties(
    p: &SamplingParams,
    counts: &mut Vec<(u32, u32)>,
    logits: &mut [f32],
    history: &[u32],
) {
    if !p.penalties_active() || history.is_empty() {
        return;
    }
    let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
    counts.clear();
    counts.extend(window.iter().map(|&t| (t, 1)));
    counts.sort_unstable_by_key(|&(t, _)| t);
    counts.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 += b.1;
            true
        } else {
            false
        }
    });
    for &(t, c) in counts.iter() {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if *l <= 0.0 {
            *l *= p.repetition_penalty;
        } else {
            *l /= p.repetition_penalty;
        }
        *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
    }
}
