//! Activation and scratch memory of inference: the buffers one forward pass needs
//! beside weights and KV cache. Layers run one after another, so only one layer's
//! intermediates are alive at a time; they are sized for the tokens in flight.

use crate::shape::ModelShape;
use serde::Serialize;

/// Scratch estimate for one forward pass.
#[derive(Debug, Clone, Serialize)]
pub struct ScratchReport {
    /// Tokens in flight in a prefill step: the step's token budget `chunk`, shared
    /// by the sequences being prefilled (capped by `batch * context`).
    pub prefill_tokens: u64,
    /// f32 intermediates per token of one layer (residual, norm, q/k/v, attention
    /// output, gate/up/down of the feed-forward).
    pub bytes_per_token: f64,
    /// Attention scores of one layer for the prefill chunk: `heads * chunk * keys` f32
    /// when materialized; one row of `keys` per head when the attention is fused
    /// (flash-style, streaming over the keys), which is the default.
    pub attention_scores_bytes: f64,
    /// f32 logits of the last position of each sequence.
    pub logits_bytes: f64,
    /// Prefill step total.
    pub prefill_bytes: f64,
    /// Decode step total (`batch` tokens, one per sequence).
    pub decode_bytes: f64,
}

/// Activation/scratch estimate for `batch` sequences of up to `context` tokens,
/// prefilled `chunk` tokens per step (a token budget, as vLLM's
/// `max_num_batched_tokens`).
pub fn scratch(
    s: &ModelShape,
    batch: u64,
    context: u64,
    chunk: u64,
    naive_attention: bool,
) -> ScratchReport {
    let f = 4.0; // f32 activations
    let q = (s.n_heads * s.key_len) as f64;
    let kv = (s.n_kv_heads * (s.key_len + s.value_len)) as f64;
    let attn_out = (s.n_heads * s.value_len) as f64;
    let d = s.d_model as f64;
    let ff = s.d_ff as f64;
    let per_token = f * (3.0 * d + q + kv + attn_out + 3.0 * ff);
    let chunk = chunk.min(context.saturating_mul(batch)).max(1);
    let keys = match (s.sliding_window, s.n_local_layers == s.n_layers) {
        (Some(w), true) => context.min(w as u64),
        _ => context,
    } as f64;
    let scores_for = |queries: f64| {
        let rows = if naive_attention { queries } else { 1.0 };
        f * s.n_heads as f64 * rows * keys
    };
    let logits = f * s.vocab as f64 * batch as f64;
    let prefill_tokens = chunk;
    ScratchReport {
        prefill_tokens,
        bytes_per_token: per_token,
        attention_scores_bytes: scores_for(prefill_tokens as f64),
        logits_bytes: logits,
        prefill_bytes: per_token * prefill_tokens as f64
            + scores_for(prefill_tokens as f64)
            + logits,
        decode_bytes: per_token * batch as f64 + scores_for(batch as f64) + logits,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::by_name;

    #[test]
    fn scratch_is_per_layer_and_per_token_in_flight() {
        let s = by_name("llama-7b").unwrap().shape;
        let r = scratch(&s, 1, 4096, 512, true);
        // 4 * (3*4096 + 4096 + 2*4096 + 4096 + 3*11008) per token.
        let per_token = 4.0 * (3.0 * 4096.0 + 4096.0 + 8192.0 + 4096.0 + 3.0 * 11008.0);
        assert_eq!(r.bytes_per_token, per_token);
        assert_eq!(r.attention_scores_bytes, 4.0 * 32.0 * 512.0 * 4096.0);
        assert_eq!(r.logits_bytes, 4.0 * 32000.0);
        assert_eq!(
            r.prefill_bytes,
            per_token * 512.0 + r.attention_scores_bytes + r.logits_bytes
        );
        assert!(r.decode_bytes < r.prefill_bytes);
        // The chunk is a per-step budget: a larger batch does not multiply it.
        let b8 = scratch(&s, 8, 4096, 512, true);
        assert_eq!(b8.prefill_tokens, 512);
        assert_eq!(b8.attention_scores_bytes, r.attention_scores_bytes);
        // Fused attention keeps one row of scores per head.
        let fused = scratch(&s, 1, 4096, 512, false);
        assert_eq!(fused.attention_scores_bytes, 4.0 * 32.0 * 4096.0);
    }
}
