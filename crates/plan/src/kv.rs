//! KV-cache sizing: bytes per token and for a context and batch, honouring GQA/MQA
//! (key/value heads per layer), separate key and value head dims, sliding-window
//! layers (which keep at most `window` tokens) and the cache's element type.

use crate::error::{PlanError, Result};
use crate::shape::ModelShape;
use serde::Serialize;

/// Element type of the KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum KvDtype {
    F32,
    F16,
    BF16,
    FP8,
    /// 8-bit blocks of 32 with an f16 scale (34 bytes per 32 values).
    Q8_0,
    /// 4-bit blocks of 32 with an f16 scale (18 bytes per 32 values).
    Q4_0,
}

impl KvDtype {
    pub const ALL: [KvDtype; 6] = [
        KvDtype::F32,
        KvDtype::F16,
        KvDtype::BF16,
        KvDtype::FP8,
        KvDtype::Q8_0,
        KvDtype::Q4_0,
    ];

    /// Bytes per cached value.
    pub fn bytes_per_value(self) -> f64 {
        match self {
            KvDtype::F32 => 4.0,
            KvDtype::F16 | KvDtype::BF16 => 2.0,
            KvDtype::FP8 => 1.0,
            KvDtype::Q8_0 => 34.0 / 32.0,
            KvDtype::Q4_0 => 18.0 / 32.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::BF16 => "bf16",
            KvDtype::FP8 => "fp8",
            KvDtype::Q8_0 => "q8_0",
            KvDtype::Q4_0 => "q4_0",
        }
    }

    /// Parses `f16`, `bf16`, `fp8`, `q8_0`, ... (case-insensitive).
    pub fn parse(s: &str) -> Result<KvDtype> {
        let l = s.to_ascii_lowercase();
        let l = match l.as_str() {
            "fp16" => "f16",
            "fp32" => "f32",
            "int8" | "q8" => "q8_0",
            "int4" | "q4" => "q4_0",
            "e4m3" | "fp8_e4m3" => "fp8",
            x => x,
        };
        Self::ALL
            .into_iter()
            .find(|d| d.name() == l)
            .ok_or_else(|| PlanError::Unknown {
                what: "KV-cache type",
                input: s.to_string(),
                known: Self::ALL.map(|d| d.name()).join(", "),
            })
    }
}

/// KV-cache size for one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct KvReport {
    pub dtype: KvDtype,
    /// Bytes one token adds while it is within every window (all layers cache it).
    pub bytes_per_token: f64,
    /// Bytes one token adds once the sliding windows are full (global layers only).
    pub bytes_per_token_past_window: f64,
    pub context: u64,
    pub batch: u64,
    /// Bytes for `batch` sequences of `context` tokens.
    pub total_bytes: f64,
    pub global_layers: usize,
    pub local_layers: usize,
}

/// Bytes one layer caches per token: `kv_heads * (key_len + value_len) * bytes`.
pub fn layer_bytes_per_token(s: &ModelShape, layer: usize, dtype: KvDtype) -> f64 {
    (s.kv_heads[layer] * (s.key_len + s.value_len)) as f64 * dtype.bytes_per_value()
}

/// Tokens layer `layer` keeps for a sequence of `context` tokens.
pub fn layer_tokens(s: &ModelShape, layer: usize, context: u64) -> u64 {
    match (s.local[layer], s.sliding_window) {
        (true, Some(w)) => context.min(w as u64),
        _ => context,
    }
}

/// Bytes of the KV cache of one sequence of `context` tokens.
pub fn sequence_bytes(s: &ModelShape, dtype: KvDtype, context: u64) -> f64 {
    (0..s.n_layers)
        .map(|l| layer_bytes_per_token(s, l, dtype) * layer_tokens(s, l, context) as f64)
        .sum()
}

/// The KV cache for `batch` sequences of `context` tokens.
///
/// ```
/// use hangar_plan::{kv::{kv_cache, KvDtype}, shape::ModelShape};
/// // Llama 70B: 80 layers, 8 KV heads of 128, f16: 320 KiB per token.
/// let s = ModelShape::dense("llama", 80, 8192, 28672, 64).with_kv_heads(8);
/// let r = kv_cache(&s, KvDtype::F16, 131072, 1);
/// assert_eq!(r.bytes_per_token, 327680.0);
/// assert!((r.total_bytes / 1e9 - 42.9).abs() < 0.1);
/// ```
pub fn kv_cache(s: &ModelShape, dtype: KvDtype, context: u64, batch: u64) -> KvReport {
    let per_token: f64 = (0..s.n_layers)
        .map(|l| layer_bytes_per_token(s, l, dtype))
        .sum();
    let past: f64 = (0..s.n_layers)
        .filter(|&l| !(s.local[l] && s.sliding_window.is_some()))
        .map(|l| layer_bytes_per_token(s, l, dtype))
        .sum();
    KvReport {
        dtype,
        bytes_per_token: per_token,
        bytes_per_token_past_window: past,
        context,
        batch,
        total_bytes: sequence_bytes(s, dtype, context) * batch as f64,
        global_layers: s.n_layers - s.n_local_layers,
        local_layers: s.n_local_layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::by_name;

    #[test]
    fn llama_70b_at_128k_tokens_with_gqa_8_needs_about_42_gb() {
        let s = by_name("llama-70b").unwrap().shape;
        let r = kv_cache(&s, KvDtype::F16, 128 * 1024, 1);
        // 2 (K and V) * 80 layers * 8 heads * 128 dims * 2 bytes = 327,680 B/token.
        assert_eq!(r.bytes_per_token, 2.0 * 80.0 * 8.0 * 128.0 * 2.0);
        assert_eq!(r.total_bytes, 327_680.0 * 131_072.0);
        assert!(
            (42.0..43.5).contains(&(r.total_bytes / 1e9)),
            "{}",
            r.total_bytes
        );
    }

    #[test]
    fn multi_head_attention_caches_every_head() {
        // Llama 2 7B (MHA, 32 KV heads): 0.5 MiB per token in f16; 2 GiB for 4096 tokens.
        let s = by_name("llama-7b").unwrap().shape;
        let r = kv_cache(&s, KvDtype::F16, 4096, 1);
        assert_eq!(r.bytes_per_token, 524_288.0);
        assert_eq!(r.total_bytes, 2.0 * 1024.0 * 1024.0 * 1024.0);
    }

    #[test]
    fn batch_and_dtype_scale_linearly() {
        let s = by_name("llama-8b").unwrap().shape;
        let a = kv_cache(&s, KvDtype::F16, 8192, 1).total_bytes;
        assert_eq!(kv_cache(&s, KvDtype::F16, 8192, 4).total_bytes, 4.0 * a);
        assert_eq!(kv_cache(&s, KvDtype::FP8, 8192, 1).total_bytes, a / 2.0);
        assert_eq!(kv_cache(&s, KvDtype::F32, 8192, 1).total_bytes, a * 2.0);
    }

    #[test]
    fn sliding_window_layers_stop_growing_at_the_window() {
        // Gemma 3 270M: 18 layers, 15 local (window 512), 3 global; 1 KV head of 256.
        let s = by_name("gemma3-270m").unwrap().shape;
        assert_eq!(s.n_local_layers, 15);
        let per_layer = 2.0 * 256.0 * 2.0; // K+V, 256 dims, f16
        let r = kv_cache(&s, KvDtype::F16, 32768, 1);
        assert_eq!(r.bytes_per_token, 18.0 * per_layer);
        assert_eq!(r.bytes_per_token_past_window, 3.0 * per_layer);
        let want = per_layer * (15.0 * 512.0 + 3.0 * 32768.0);
        assert_eq!(r.total_bytes, want);
        // Below the window every layer holds every token.
        assert_eq!(
            kv_cache(&s, KvDtype::F16, 100, 1).total_bytes,
            100.0 * 18.0 * per_layer
        );
    }

    #[test]
    fn mistral_caches_at_most_its_window() {
        let s = by_name("mistral-7b").unwrap().shape;
        let at_window = kv_cache(&s, KvDtype::F16, 4096, 1).total_bytes;
        assert_eq!(kv_cache(&s, KvDtype::F16, 32768, 1).total_bytes, at_window);
    }

    #[test]
    fn parses_kv_types() {
        assert_eq!(KvDtype::parse("FP16").unwrap(), KvDtype::F16);
        assert_eq!(KvDtype::parse("q8_0").unwrap(), KvDtype::Q8_0);
        assert!(KvDtype::parse("f12").is_err());
    }
}
