//! Engine limits and how the KV budget becomes block counts per layer group.
//! Pure arithmetic over the model's KV layout; allocates nothing.

use crate::EngineError;
use hangar_models::kv::KvLayout;

/// How the engine sizes its KV pool and batches.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// Bytes of KV memory (all groups together). Ignored when `max_tokens_in_flight` is set.
    pub kv_memory_bytes: usize,
    /// Size the pool to hold this many tokens across all sequences instead.
    pub max_tokens_in_flight: Option<usize>,
    /// Tokens one model step may process (decode tokens plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Sequences running at once.
    pub max_running: usize,
    /// Cap on prompt + generated tokens of one sequence (the model's context by default).
    pub max_model_len: Option<usize>,
    /// Share identical prompt prefixes between requests.
    pub prefix_caching: bool,
    /// Largest share of `max_running` one request's sequences (`n`) may take.
    pub max_request_share: f64,
    /// Speculative decoding in the batch: `Ngram` (prompt lookup) or `Off`.
    pub speculative: crate::spec::SpecConfig,
    /// How K and V are stored: f16, or Q8_0 / Q4_0 blocks (CPU, fast numerics).
    pub kv_format: hangar_models::kv::KvFormat,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            block_size: 16,
            kv_memory_bytes: 1 << 30,
            max_tokens_in_flight: None,
            max_batch_tokens: 512,
            max_running: 64,
            max_model_len: None,
            prefix_caching: true,
            max_request_share: 0.25,
            speculative: crate::spec::SpecConfig::default(),
            kv_format: hangar_models::kv::KvFormat::F16,
        }
    }
}

/// How many sequences of the full `max_model_len` a memory budget holds, when the
/// operator set one longer than some window: the windowed groups are then sized for
/// that many windows rather than for `max_running` (which long sequences could never
/// reach), so the global group gets the rest — as `hangar plan` counts.
fn long_context_sequences(layout: &KvLayout, cfg: &EngineConfig, bytes: &[usize]) -> Option<usize> {
    let (len, bs) = (cfg.max_model_len?, cfg.block_size);
    if cfg.max_tokens_in_flight.is_some() || !layout.group_window.iter().flatten().any(|&w| w < len)
    {
        return None;
    }
    let per_seq: usize = (0..layout.n_groups())
        .map(|g| {
            let blocks = match layout.group_window[g] {
                None => len.div_ceil(bs),
                Some(w) => len.div_ceil(bs).min(w.div_ceil(bs) + 1),
            };
            blocks * bytes[g]
        })
        .sum();
    Some((cfg.kv_memory_bytes / per_seq.max(1)).clamp(1, cfg.max_running))
}

/// Splits a KV budget between full-attention and sliding-window groups: windowed
/// groups never need more than a window per running sequence plus one prefill chunk.
#[allow(clippy::needless_range_loop)]
pub(crate) fn pool_sizes(layout: &KvLayout, cfg: &EngineConfig) -> Result<Vec<usize>, EngineError> {
    let bs = cfg.block_size;
    let n = layout.n_groups();
    let bytes: Vec<usize> = (0..n).map(|g| layout.block_bytes(g, bs)).collect();
    let seqs = long_context_sequences(layout, cfg, &bytes).unwrap_or(cfg.max_running);
    let window_cap = |w: usize| seqs * (w.div_ceil(bs) + 1) + cfg.max_batch_tokens.div_ceil(bs) + 1;
    let mut blocks = vec![0usize; n];
    if let Some(t) = cfg.max_tokens_in_flight {
        let full = t.div_ceil(bs);
        for g in 0..n {
            blocks[g] = match layout.group_window[g] {
                None => full,
                Some(w) => full.min(window_cap(w)),
            };
        }
    } else {
        let m = cfg.kv_memory_bytes;
        let full_bytes: usize = (0..n)
            .filter(|&g| layout.group_window[g].is_none())
            .map(|g| bytes[g])
            .sum();
        let win_bytes: usize = (0..n)
            .filter(|&g| layout.group_window[g].is_some())
            .map(|g| bytes[g])
            .sum();
        let cap = (0..n)
            .filter_map(|g| layout.group_window[g].map(window_cap))
            .max()
            .unwrap_or(0);
        let even = m / (full_bytes + win_bytes).max(1);
        let (full, win) = if full_bytes == 0 {
            (0, m / win_bytes.max(1))
        } else if even <= cap || win_bytes == 0 {
            (even, even)
        } else {
            (m.saturating_sub(cap * win_bytes) / full_bytes, cap)
        };
        for g in 0..n {
            blocks[g] = match layout.group_window[g] {
                None => full,
                Some(w) => win.min(window_cap(w)),
            };
        }
    }
    for g in 0..n {
        let need = match layout.group_window[g] {
            None => 1,
            Some(w) => (w + cfg.max_batch_tokens).div_ceil(bs) + 2,
        };
        if blocks[g] < need {
            return Err(EngineError::Invalid(format!(
                "KV memory too small: group {g} gets {} blocks of {bs} tokens, needs at least {need}; raise --kv-memory or --max-tokens-in-flight",
                blocks[g]
            )));
        }
    }
    Ok(blocks)
}
