//! Model hyper-parameters read from GGUF metadata, per architecture.

use crate::ModelError;
use hangar_formats::GgufFile;
use hangar_kernels::ops::RopeStyle;

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

impl ModelConfig {
    /// Reads the configuration of a supported architecture.
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
        let d_model = f.get_usize(&k("embedding_length"))?;
        let n_heads = f.get_usize(&k("attention.head_count"))?;
        let n_kv_heads = f
            .get_usize(&k("attention.head_count_kv"))
            .unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 {
            return Err(ModelError::Config(format!(
                "head counts {n_heads}/{n_kv_heads}: heads must be a positive multiple of KV heads"
            )));
        }
        let head_dim = f
            .get_usize(&k("attention.key_length"))
            .unwrap_or(d_model / n_heads);
        if let Ok(v) = f.get_usize(&k("attention.value_length")) {
            if v != head_dim {
                return Err(ModelError::Config(format!(
                    "value head size {v} differs from key head size {head_dim}"
                )));
            }
        }
        let ffn_dim = f.get_usize(&k("feed_forward_length"))?;
        // The embedding's row count is authoritative (set when weights load).
        let vocab_size = f
            .get_usize(&k("vocab_size"))
            .or_else(|_| f.get_str_array("tokenizer.ggml.tokens").map(|t| t.len()))
            .unwrap_or(0);
        let ctx_len = f.get_usize(&k("context_length")).unwrap_or(4096);
        let rms_eps = f
            .get_f32(&k("attention.layer_norm_rms_epsilon"))
            .unwrap_or(1e-5);
        let rope_base = f.get_f32(&k("rope.freq_base")).unwrap_or(10_000.0);
        let rope_dims = f.get_usize(&k("rope.dimension_count")).unwrap_or(head_dim);
        let sliding_window = f
            .get_usize(&k("attention.sliding_window"))
            .ok()
            .filter(|&w| w > 0);
        if n_layers == 0
            || d_model == 0
            || head_dim == 0
            || rope_dims > head_dim
            || !rope_dims.is_multiple_of(2)
        {
            return Err(ModelError::Config(format!(
                "layers {n_layers}, width {d_model}, head size {head_dim}, rope dims {rope_dims}"
            )));
        }
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
                cfg.final_logit_softcap = f.get_f32(&k("final_logit_softcapping")).ok();
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
