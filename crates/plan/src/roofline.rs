//! Roofline bounds of token generation: decode is bounded by the bytes read per
//! token over memory bandwidth, prefill by the FLOPs per token over compute.
//! Pure arithmetic; the measured inputs come from `profile` and `hangar bench`.

use crate::kv::{layer_tokens, sequence_bytes, KvDtype};
use crate::shape::{Model, TensorShape};
use crate::weights::{tensor_bytes, WeightFormat};
use serde::Serialize;

/// Work of one token.
#[derive(Debug, Clone, Serialize)]
pub struct TokenCost {
    /// Weight bytes a decode step reads (every matrix once; one row of an untied
    /// token embedding, which is gathered, not multiplied).
    pub weight_bytes_per_token: f64,
    /// KV-cache bytes a decode step reads at the given context.
    pub kv_bytes_per_token: f64,
    /// FLOPs of one decode token at the given context (2 per weight of each matrix
    /// plus attention's `QK^T` and `PV`).
    pub decode_flops_per_token: f64,
    /// FLOPs of one prefill token, averaged over a prompt of `prompt` tokens: the
    /// output projection runs for the last position only, attention sees on average
    /// half the prompt.
    pub prefill_flops_per_token: f64,
    /// Context of the decode figures.
    pub context: u64,
    /// Prompt length of the prefill figure.
    pub prompt: u64,
}

impl TokenCost {
    pub fn decode_bytes_per_token(&self) -> f64 {
        self.weight_bytes_per_token + self.kv_bytes_per_token
    }
}

/// How weights are stored for the cost: as in the file, or converted to a format.
#[derive(Debug, Clone, Copy)]
pub enum Storage {
    AsStored,
    Format(WeightFormat),
}

fn bytes(t: &TensorShape, st: Storage) -> f64 {
    match (st, t.stored_bytes) {
        (Storage::AsStored, Some(b)) => b as f64,
        (Storage::Format(f), _) => tensor_bytes(t, f) as f64,
        (Storage::AsStored, None) => tensor_bytes(t, WeightFormat::BF16) as f64,
    }
}

/// Cost of a decode token at `context` and of a prefill token in a prompt of
/// `prompt` tokens, with weights stored as `st` and a `kv` cache. Without a shape
/// (a bare parameter count) attention and KV are left out.
pub fn token_cost(m: &Model, st: Storage, kv: KvDtype, context: u64, prompt: u64) -> TokenCost {
    let Some(s) = &m.shape else {
        let w = match st {
            Storage::Format(f) => crate::weights::model_bytes(m, f) as f64,
            Storage::AsStored => 2.0 * m.n_params as f64,
        };
        let fl = 2.0 * m.n_params as f64;
        return TokenCost {
            weight_bytes_per_token: w,
            kv_bytes_per_token: 0.0,
            decode_flops_per_token: fl,
            prefill_flops_per_token: fl,
            context,
            prompt,
        };
    };
    let untied_embd = !s.tied_embeddings;
    let mut w = 0.0;
    let mut matmul_params = 0.0;
    let mut output_params = 0.0;
    for t in &m.tensors {
        let is_embd = t.name == "token_embd.weight";
        if is_embd && untied_embd {
            w += bytes(t, st) / t.dims.get(1).copied().unwrap_or(1).max(1) as f64;
            continue;
        }
        w += bytes(t, st);
        if t.name == "output.weight" || is_embd {
            output_params += t.n_elements() as f64;
        } else if t.is_matrix() {
            matmul_params += t.n_elements() as f64;
        }
    }
    let prompt_len = prompt.max(1);
    let attn = |ctx: u64| -> f64 {
        (0..s.n_layers)
            .map(|l| {
                2.0 * (s.n_heads * (s.key_len + s.value_len)) as f64
                    * layer_tokens(s, l, ctx) as f64
            })
            .sum()
    };
    TokenCost {
        weight_bytes_per_token: w,
        kv_bytes_per_token: sequence_bytes(s, kv, context),
        decode_flops_per_token: 2.0 * (matmul_params + output_params) + attn(context),
        prefill_flops_per_token: 2.0 * (matmul_params + output_params / prompt_len as f64)
            + attn(prompt_len.div_ceil(2)),
        context,
        prompt: prompt_len,
    }
}

/// A roofline bound next to a measured value.
#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    pub what: String,
    /// Tokens per second the hardware allows at best.
    pub bound_tokens_per_s: f64,
    /// Which roof binds: `memory` or `compute`.
    pub limited_by: &'static str,
    /// What `hangar bench` measured, if given.
    pub measured_tokens_per_s: Option<f64>,
    /// measured / bound: the share of the physical limit reached.
    pub efficiency: Option<f64>,
}

/// Decode bound for `batch` sequences: a step reads the weights once and each
/// sequence's KV cache, and does `batch` tokens of FLOPs.
pub fn decode_bound(
    c: &TokenCost,
    batch: u64,
    bandwidth: f64,
    flops: f64,
    measured: Option<f64>,
) -> Bound {
    let b = batch.max(1) as f64;
    let mem = bandwidth * b / (c.weight_bytes_per_token + b * c.kv_bytes_per_token).max(1.0);
    let comp = flops / c.decode_flops_per_token.max(1.0);
    bound(
        format!("decode (batch {batch}, context {})", c.context),
        mem,
        comp,
        measured,
    )
}

/// Prefill bound: FLOPs per token over compute (weights are read once per chunk,
/// so bandwidth rarely binds; it is checked with `chunk` tokens per weight read).
pub fn prefill_bound(
    c: &TokenCost,
    chunk: u64,
    bandwidth: f64,
    flops: f64,
    measured: Option<f64>,
) -> Bound {
    let mem = bandwidth * chunk.max(1) as f64 / c.weight_bytes_per_token.max(1.0);
    let comp = flops / c.prefill_flops_per_token.max(1.0);
    bound(
        format!("prefill ({} tokens)", c.prompt),
        mem,
        comp,
        measured,
    )
}

fn bound(what: String, mem: f64, comp: f64, measured: Option<f64>) -> Bound {
    let (b, by) = if mem <= comp {
        (mem, "memory")
    } else {
        (comp, "compute")
    };
    Bound {
        what,
        bound_tokens_per_s: b,
        limited_by: by,
        measured_tokens_per_s: measured,
        efficiency: measured.map(|m| m / b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::by_name;
    use crate::shape::ModelSource;

    #[test]
    fn decode_of_a_7b_bf16_model_reads_its_weights_per_token() {
        let p = by_name("llama-7b").unwrap();
        let m = Model::from_shape(p.name, p.shape, ModelSource::ParamCount).unwrap();
        let c = token_cost(&m, Storage::Format(WeightFormat::BF16), KvDtype::F16, 1, 1);
        // All weights except the gathered embedding (one row of 4096 read); norms
        // stay f32, hence the small tolerance.
        let want = 2.0 * (m.n_params as f64 - 32000.0 * 4096.0 + 4096.0);
        assert!(
            (c.weight_bytes_per_token / want - 1.0).abs() < 1e-4,
            "{}",
            c.weight_bytes_per_token
        );
        // 100 GB/s over ~13.2 GB: about 7.6 tokens/s, memory-bound.
        let b = decode_bound(&c, 1, 100e9, 1e12, Some(3.8));
        assert_eq!(b.limited_by, "memory");
        assert!((b.bound_tokens_per_s - 100e9 / c.decode_bytes_per_token()).abs() < 1e-6);
        assert!((b.efficiency.unwrap() - 3.8 / b.bound_tokens_per_s).abs() < 1e-9);
    }

    #[test]
    fn prefill_is_compute_bound_at_two_flops_per_weight() {
        let m = Model::from_param_count(1_000_000_000, None);
        let c = token_cost(
            &m,
            Storage::Format(WeightFormat::BF16),
            KvDtype::F16,
            512,
            512,
        );
        let b = prefill_bound(&c, 512, 100e9, 1e12, None);
        assert_eq!(b.limited_by, "compute");
        assert_eq!(b.bound_tokens_per_s, 500.0);
    }

    #[test]
    fn prefill_runs_the_output_projection_once_per_prompt() {
        let p = by_name("gemma3-270m").unwrap();
        let m = Model::from_shape(p.name, p.shape.clone(), ModelSource::ParamCount).unwrap();
        let c = token_cost(
            &m,
            Storage::Format(WeightFormat::Q8_0),
            KvDtype::F16,
            1,
            512,
        );
        let layers = p.shape.layer_matrix_params() as f64;
        let embd = 640.0 * 262144.0;
        // Decode: every matrix, the tied embedding as the output projection included.
        assert!(c.decode_flops_per_token > 2.0 * (layers + embd));
        let attn = c.prefill_flops_per_token - 2.0 * (layers + embd / 512.0);
        // Attention over on average 256 keys: 2 * 4 heads * 512 dims * keys per layer.
        // Every layer, local (window 512) or global, sees 256 keys here.
        let want = 18.0 * 4096.0 * 256.0;
        assert!((attn - want).abs() < 1.0, "{attn} vs {want}");
    }
}
