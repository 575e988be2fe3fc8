//! Model hyper-parameters read from GGUF metadata, per architecture, each checked
//! against the tensors in the file before anything is sized by it.
//!
//! Owns the meaning of the `{arch}.*` keys; must not read tensor data or allocate by a
//! count the file merely claims (a hostile header must give an error, never an abort).

use crate::ModelError;
use hangar_formats::{GgufFile, MetaValue};
use hangar_kernels::ops::RopeStyle;
use std::collections::BTreeSet;

/// Architectures this crate can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gemma3,
    Llama,
    Qwen2,
    Qwen3,
}

/// Feed-forward gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluTanh,
    Silu,
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    /// `general.architecture` as written in the file.
    pub arch_name: String,
    pub n_layers: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab_size: usize,
    /// A tensor-parallel shard holds the embedding and output rows from this token id
    /// on (0 for a whole model; `hangar.tensor_parallel.vocab_start`).
    pub vocab_offset: usize,
    /// Context length the model was trained for.
    pub ctx_len: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// RoPE base of sliding-window layers (Gemma 3 uses 10 000 there).
    pub rope_base_local: f32,
    pub rope_dims: usize,
    pub rope_style: RopeStyle,
    /// Sliding window of local layers, in tokens (a query sees itself and the
    /// `window - 1` tokens before it).
    pub sliding_window: Option<usize>,
    /// `true` for layers that use the sliding window.
    pub local_layers: Vec<bool>,
    /// Multiplier applied to token embeddings (Gemma: sqrt(d_model)).
    pub embed_scale: Option<f32>,
    pub activation: Activation,
    /// Scale applied to q·k.
    pub attn_scale: f32,
    pub final_logit_softcap: Option<f32>,
}

/// Longest context a file may claim (16 Mi tokens; the largest released models claim
/// 10 Mi). Past this the number is a corrupt header, not a model.
pub const MAX_CONTEXT: usize = 1 << 24;

/// Token-id keys that must name a token of the vocabulary when present.
const SPECIAL_TOKEN_KEYS: &[&str] = &[
    "bos",
    "eos",
    "eot",
    "eom",
    "unknown",
    "seperator",
    "padding",
    "mask",
    "prefix",
    "suffix",
    "middle",
    "fim_pre",
    "fim_suf",
    "fim_mid",
    "fim_pad",
    "fim_rep",
    "fim_sep",
];

fn bad(msg: String) -> ModelError {
    ModelError::Config(msg)
}

/// An optional non-negative integer key: absent is `None`, a wrong type is an error.
fn opt_usize(f: &GgufFile, key: &str) -> Result<Option<usize>, ModelError> {
    match f.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(f.get_usize(key)?)),
    }
}

/// An optional number that must be finite and above zero (epsilons, RoPE bases,
/// soft-caps: zero or NaN there turns every logit into garbage without an error).
fn opt_positive(f: &GgufFile, key: &str) -> Result<Option<f32>, ModelError> {
    if f.get(key).is_none() {
        return Ok(None);
    }
    let v = f.get_f32(key)?;
    if v.is_finite() && v > 0.0 {
        Ok(Some(v))
    } else {
        Err(bad(format!(
            "{key} is {v}; it must be a finite number above zero"
        )))
    }
}

/// The layer indices `N` of the file's `blk.N.*` tensors (bounded by the tensor count,
/// never by `block_count`).
fn layers_in_file(f: &GgufFile) -> BTreeSet<usize> {
    f.tensors()
        .iter()
        .filter_map(|t| t.name.strip_prefix("blk.")?.split_once('.')?.0.parse().ok())
        .collect()
}

/// Checks that a present `name` tensor has `want` rows; an absent one is left for the
/// weight loader to report.
fn check_rows(f: &GgufFile, name: &str, want: usize, what: &str) -> Result<(), ModelError> {
    match f.tensor(name) {
        Some(t) if t.dims.len() == 2 && t.n_rows() != want => Err(bad(format!(
            "{what} is {want}, but {name} has {} rows",
            t.n_rows()
        ))),
        _ => Ok(()),
    }
}

impl ModelConfig {
    /// Reads the configuration of a supported architecture. Every hyper-parameter is
    /// checked (against the tensors present where it describes them) before it sizes
    /// anything.
    pub fn from_gguf(f: &GgufFile) -> Result<Self, ModelError> {
        let name = f.architecture()?.to_string();
        let arch = match name.as_str() {
            "gemma3" => Arch::Gemma3,
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            _ => return Err(ModelError::UnsupportedArch(name)),
        };
        let k = |s: &str| format!("{name}.{s}");
        let n_layers = f.get_usize(&k("block_count"))?;
        let present = layers_in_file(f);
        let contiguous =
            present.len() == n_layers && present.last() == n_layers.checked_sub(1).as_ref();
        if n_layers == 0 || !contiguous {
            return Err(bad(format!(
                "{} is {n_layers}, but the file holds tensors for {} layers{}; \
                 the header and the weights disagree (a corrupt or hand-edited file?)",
                k("block_count"),
                present.len(),
                match (present.first(), present.last()) {
                    (Some(a), Some(b)) => format!(" (blk.{a} to blk.{b})"),
                    _ => String::new(),
                }
            )));
        }
        let d_model = f.get_usize(&k("embedding_length"))?;
        let n_heads = f.get_usize(&k("attention.head_count"))?;
        let n_kv_heads = opt_usize(f, &k("attention.head_count_kv"))?.unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(bad(format!(
                "head counts {n_heads}/{n_kv_heads}: heads must be a positive multiple of KV heads"
            )));
        }
        let head_dim = match opt_usize(f, &k("attention.key_length"))? {
            Some(h) => h,
            None => d_model / n_heads,
        };
        if let Some(v) = opt_usize(f, &k("attention.value_length"))? {
            if v != head_dim {
                return Err(bad(format!(
                    "value head size {v} differs from key head size {head_dim}"
                )));
            }
        }
        let ffn_dim = f.get_usize(&k("feed_forward_length"))?;
        let ctx_len = opt_usize(f, &k("context_length"))?.unwrap_or(4096);
        if !(1..=MAX_CONTEXT).contains(&ctx_len) {
            return Err(bad(format!(
                "{} is {ctx_len}; expected 1 to {MAX_CONTEXT} tokens",
                k("context_length")
            )));
        }
        let rms_eps = opt_positive(f, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5);
        let rope_base = opt_positive(f, &k("rope.freq_base"))?.unwrap_or(10_000.0);
        let rope_dims = opt_usize(f, &k("rope.dimension_count"))?.unwrap_or(head_dim);
        let sliding_window = opt_usize(f, &k("attention.sliding_window"))?.filter(|&w| w > 0);
        if sliding_window.is_some_and(|w| w < 2) {
            return Err(bad(format!(
                "{} is 1; a window must hold at least 2 tokens (0 or absent means none)",
                k("attention.sliding_window")
            )));
        }
        let final_logit_softcap = opt_positive(f, &k("final_logit_softcapping"))?;
        if d_model == 0
            || head_dim == 0
            || ffn_dim == 0
            || rope_dims > head_dim
            || !rope_dims.is_multiple_of(2)
        {
            return Err(bad(format!(
                "layers {n_layers}, width {d_model}, head size {head_dim}, feed-forward {ffn_dim}, rope dims {rope_dims}"
            )));
        }
        let (Some(q_dim), Some(kv_dim)) = (
            n_heads.checked_mul(head_dim),
            n_kv_heads.checked_mul(head_dim),
        ) else {
            return Err(bad(format!("{n_heads} heads of size {head_dim} overflow")));
        };
        // The shapes of layer 0 against the header, so a mismatch names the key.
        if let Some(t) = f.tensor("token_embd.weight") {
            if t.row_len() != d_model {
                return Err(bad(format!(
                    "{} is {d_model}, but token_embd.weight rows hold {} values",
                    k("embedding_length"),
                    t.row_len()
                )));
            }
        }
        let heads = k("attention.head_count");
        check_rows(
            f,
            "blk.0.attn_q.weight",
            q_dim,
            &format!("{heads} × head size"),
        )?;
        check_rows(
            f,
            "blk.0.attn_k.weight",
            kv_dim,
            &format!("{heads}_kv × head size"),
        )?;
        check_rows(f, "blk.0.ffn_up.weight", ffn_dim, &k("feed_forward_length"))?;
        let vocab_size = check_vocab(f, &k("vocab_size"))?;
        let mut cfg = ModelConfig {
            arch,
            arch_name: name.clone(),
            n_layers,
            d_model,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_dim,
            vocab_size,
            vocab_offset: 0,
            ctx_len,
            rms_eps,
            rope_base,
            rope_base_local: rope_base,
            rope_dims,
            rope_style: RopeStyle::Norm,
            sliding_window: None,
            local_layers: vec![false; n_layers],
            embed_scale: None,
            activation: Activation::Silu,
            attn_scale: 1.0 / (head_dim as f32).sqrt(),
            final_logit_softcap: None,
        };
        match arch {
            Arch::Gemma3 => {
                cfg.rope_style = RopeStyle::Neox;
                cfg.activation = Activation::GeluTanh;
                cfg.embed_scale = Some((d_model as f32).sqrt());
                cfg.rope_base_local = 10_000.0;
                // Five sliding-window layers, then one global layer.
                cfg.sliding_window = sliding_window;
                if sliding_window.is_some() {
                    cfg.local_layers = (0..n_layers).map(|i| (i + 1) % 6 != 0).collect();
                }
                // Gemma 3 27B scales queries by 1/sqrt(d_model / n_heads); others by head size.
                if n_layers == 62 {
                    cfg.attn_scale = 1.0 / ((d_model / n_heads) as f32).sqrt();
                }
                cfg.final_logit_softcap = final_logit_softcap;
            }
            Arch::Qwen2 | Arch::Qwen3 => {
                cfg.rope_style = RopeStyle::Neox;
            }
            Arch::Llama => {
                // Mistral-style models may carry a uniform sliding window.
                if let Some(w) = sliding_window {
                    cfg.sliding_window = Some(w);
                    cfg.local_layers = vec![true; n_layers];
                }
            }
        }
        Ok(cfg)
    }

    /// Width of the K (and V) projection output.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }
    /// Width of the Q projection output.
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
}

/// The vocabulary size: the embedding's row count when present (authoritative), else
/// `{arch}.vocab_size` or the token list. The token list must fit the embedding, and
/// every special-token id given must name one of its tokens: an id outside would be fed
/// to the embedding (or never matched as a stop) without any error.
fn check_vocab(f: &GgufFile, vocab_key: &str) -> Result<usize, ModelError> {
    let rows = f.tensor("token_embd.weight").map(|t| t.n_rows());
    let tokens = match f.get("tokenizer.ggml.tokens") {
        None => None,
        Some(_) => Some(f.get_str_array("tokenizer.ggml.tokens")?.len()),
    };
    if let (Some(t), Some(r)) = (tokens, rows) {
        if t > r {
            return Err(bad(format!(
                "the vocabulary has {t} tokens, but token_embd.weight has only {r} rows"
            )));
        }
    }
    let vocab = match (rows, tokens) {
        (Some(r), _) => r,
        (None, t) => match opt_usize(f, vocab_key)? {
            Some(v) => v,
            None => t.unwrap_or(0),
        },
    };
    let limit = tokens.unwrap_or(vocab);
    for which in SPECIAL_TOKEN_KEYS {
        let key = format!("tokenizer.ggml.{which}_token_id");
        let Some(v) = f.get(&key) else { continue };
        let id = match v {
            MetaValue::Array(_) | MetaValue::String(_) | MetaValue::F32(_) | MetaValue::F64(_) => {
                return Err(bad(format!(
                    "{key} has type {}, expected a token id",
                    v.type_name()
                )))
            }
            _ => v.as_i64(),
        };
        match id {
            // Converters write -1 for "not set".
            Some(id) if id < 0 => {}
            Some(id) if (id as u64) < limit as u64 => {}
            _ => {
                let shown = id.map_or_else(|| format!("{v:?}"), |i| i.to_string());
                return Err(bad(format!(
                    "{key} is {shown}, outside the vocabulary of {limit} tokens"
                )));
            }
        }
    }
    Ok(vocab)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;
    use hangar_formats::gguf::MetaArray;
    use hangar_formats::{GgmlType, GgufHeader, GgufWriter};
    use std::sync::Arc;

    const D: u64 = 16;
    const HEADS: u64 = 2;
    const HD: u64 = 8;
    const FF: u64 = 32;
    const VOCAB: u64 = 10;

    /// A two-layer Gemma 3 of F32 zeros, with `edit` applied to its header.
    fn gemma(edit: impl FnOnce(&mut GgufHeader)) -> GgufFile {
        let mut h = GgufHeader::new();
        let s = |v: &str| MetaValue::String(v.into());
        h.set("general.architecture", s("gemma3"));
        for (key, v) in [
            ("block_count", 2),
            ("embedding_length", D as u32),
            ("feed_forward_length", FF as u32),
            ("attention.head_count", HEADS as u32),
            ("attention.head_count_kv", 1),
            ("attention.key_length", HD as u32),
            ("attention.value_length", HD as u32),
            ("context_length", 128),
            ("attention.sliding_window", 4),
        ] {
            h.set(&format!("gemma3.{key}"), MetaValue::U32(v));
        }
        h.set("gemma3.rope.freq_base", MetaValue::F32(1e6));
        h.set(
            "gemma3.attention.layer_norm_rms_epsilon",
            MetaValue::F32(1e-6),
        );
        h.set("tokenizer.ggml.model", s("llama"));
        let tokens = (0..VOCAB).map(|i| format!("t{i}")).collect();
        h.set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(tokens)),
        );
        h.set("tokenizer.ggml.bos_token_id", MetaValue::U32(2));
        h.set("tokenizer.ggml.eos_token_id", MetaValue::U32(1));
        h.set("tokenizer.ggml.padding_token_id", MetaValue::I32(-1));
        let mut t = |name: &str, dims: Vec<u64>| h.add_tensor(name, dims, GgmlType::F32).unwrap();
        t("token_embd.weight", vec![D, VOCAB]);
        t("output_norm.weight", vec![D]);
        for l in 0..2 {
            let n = |s: &str| format!("blk.{l}.{s}");
            for v in [
                "attn_norm",
                "post_attention_norm",
                "ffn_norm",
                "post_ffw_norm",
            ] {
                t(&n(&format!("{v}.weight")), vec![D]);
            }
            t(&n("attn_q_norm.weight"), vec![HD]);
            t(&n("attn_k_norm.weight"), vec![HD]);
            t(&n("attn_q.weight"), vec![D, HEADS * HD]);
            t(&n("attn_k.weight"), vec![D, HD]);
            t(&n("attn_v.weight"), vec![D, HD]);
            t(&n("attn_output.weight"), vec![HEADS * HD, D]);
            t(&n("ffn_gate.weight"), vec![D, FF]);
            t(&n("ffn_up.weight"), vec![D, FF]);
            t(&n("ffn_down.weight"), vec![FF, D]);
        }
        edit(&mut h);
        let mut w = GgufWriter::new(Vec::new(), &h).unwrap();
        for spec in h.tensors() {
            w.write_tensor(&vec![0u8; spec.size() as usize]).unwrap();
        }
        GgufFile::from_bytes(w.finish().unwrap()).unwrap()
    }

    /// Sets `gemma3.{key}` and expects the config to be refused with `want` in the message.
    fn refused(edit: impl FnOnce(&mut GgufHeader), want: &str) {
        let f = gemma(edit);
        let e = ModelConfig::from_gguf(&f).unwrap_err().to_string();
        assert!(e.contains(want), "expected {want:?} in: {e}");
        let f = Arc::new(f);
        assert!(Model::from_gguf(f).is_err());
    }

    fn set(key: &str, v: MetaValue) -> impl FnOnce(&mut GgufHeader) + '_ {
        move |h| h.set(key, v)
    }

    #[test]
    fn the_synthetic_model_loads() {
        let f = Arc::new(gemma(|_| {}));
        let m = Model::from_gguf(f).unwrap();
        assert_eq!((m.cfg.n_layers, m.cfg.vocab_size), (2, VOCAB as usize));
        assert_eq!(m.cfg.sliding_window, Some(4));
    }

    #[test]
    fn a_block_count_beyond_the_tensors_is_an_error_not_an_allocation() {
        // 2^31 layers: this used to allocate per-layer vectors first and abort.
        refused(
            set("gemma3.block_count", MetaValue::U32(1 << 31)),
            "gemma3.block_count is 2147483648, but the file holds tensors for 2 layers",
        );
        refused(
            set("gemma3.block_count", MetaValue::U64(u64::MAX >> 1)),
            "block_count",
        );
        refused(set("gemma3.block_count", MetaValue::U32(3)), "2 layers");
        refused(set("gemma3.block_count", MetaValue::U32(1)), "2 layers");
        refused(
            set("gemma3.block_count", MetaValue::U32(0)),
            "block_count is 0",
        );
    }

    #[test]
    fn norm_epsilon_rope_base_and_softcap_must_be_finite_and_positive() {
        for v in [f32::NAN, 0.0, -1e-6, f32::INFINITY] {
            refused(
                set("gemma3.attention.layer_norm_rms_epsilon", MetaValue::F32(v)),
                "layer_norm_rms_epsilon",
            );
            refused(
                set("gemma3.rope.freq_base", MetaValue::F32(v)),
                "rope.freq_base",
            );
            refused(
                set("gemma3.final_logit_softcapping", MetaValue::F32(v)),
                "final_logit_softcapping",
            );
        }
        refused(
            set("gemma3.rope.freq_base", MetaValue::String("1e4".into())),
            "rope.freq_base",
        );
    }

    #[test]
    fn window_and_context_must_be_sane() {
        refused(
            set("gemma3.attention.sliding_window", MetaValue::U32(1)),
            "at least 2 tokens",
        );
        let f = gemma(set("gemma3.attention.sliding_window", MetaValue::U32(0)));
        assert_eq!(ModelConfig::from_gguf(&f).unwrap().sliding_window, None);
        refused(
            set("gemma3.context_length", MetaValue::U32(0)),
            "context_length is 0",
        );
        refused(
            set("gemma3.context_length", MetaValue::U64(1 << 40)),
            "context_length",
        );
    }

    #[test]
    fn head_counts_and_widths_must_match_the_tensors() {
        refused(
            set("gemma3.attention.head_count", MetaValue::U32(4)),
            "gemma3.attention.head_count × head size is 32, but blk.0.attn_q.weight has 16 rows",
        );
        refused(
            set("gemma3.attention.head_count_kv", MetaValue::U32(2)),
            "blk.0.attn_k.weight",
        );
        refused(
            set("gemma3.embedding_length", MetaValue::U32(32)),
            "gemma3.embedding_length is 32, but token_embd.weight",
        );
        refused(
            set("gemma3.feed_forward_length", MetaValue::U32(64)),
            "feed_forward_length",
        );
        refused(
            |h: &mut GgufHeader| {
                h.set("gemma3.attention.head_count", MetaValue::U32(4));
                h.set("gemma3.attention.key_length", MetaValue::U64(1 << 62));
                h.set("gemma3.attention.value_length", MetaValue::U64(1 << 62));
            },
            "overflow",
        );
        refused(
            set(
                "gemma3.attention.head_count_kv",
                MetaValue::Array(MetaArray::U32(vec![1, 1])),
            ),
            "head_count_kv",
        );
    }

    #[test]
    fn special_token_ids_must_name_a_token() {
        refused(
            set("tokenizer.ggml.bos_token_id", MetaValue::U32(VOCAB as u32)),
            "tokenizer.ggml.bos_token_id is 10, outside the vocabulary of 10 tokens",
        );
        refused(
            set("tokenizer.ggml.eos_token_id", MetaValue::U64(u64::MAX)),
            "eos_token_id",
        );
        refused(
            set("tokenizer.ggml.eot_token_id", MetaValue::F32(1.0)),
            "eot_token_id",
        );
        refused(
            set(
                "tokenizer.ggml.tokens",
                MetaValue::Array(MetaArray::String(vec!["x".into(); 11])),
            ),
            "11 tokens, but token_embd.weight has only 10 rows",
        );
    }
}
