//! Training memory: weights, gradients, optimizer states and master weights per
//! parameter for full fine-tuning in mixed precision, LoRA and QLoRA, and how ZeRO
//! stages 1/2/3 divide them over data-parallel GPUs; plus activations.
//!
//! Mixed-precision Adam keeps per parameter: bf16 weights (2 B), bf16 gradients
//! (2 B, or 4 B in f32), an f32 master copy (4 B) and two f32 moments (8 B): 16-18 B.

use crate::error::{PlanError, Result};
use crate::shape::{Model, ModelShape};
use serde::Serialize;

/// Optimizer-state bytes per trainable parameter: f32 master weights + Adam m and v.
pub const OPTIMIZER_BYTES: f64 = 12.0;
/// Bits per parameter of NF4 with double-quantized scales (QLoRA paper: 4.127).
pub const NF4_BITS: f64 = 4.127;

/// A linear module LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraModule {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraModule {
    pub const ALL: [LoraModule; 7] = [
        LoraModule::Q,
        LoraModule::K,
        LoraModule::V,
        LoraModule::O,
        LoraModule::Gate,
        LoraModule::Up,
        LoraModule::Down,
    ];

    /// Parses a comma list: `q,v`, `q,k,v,o`, `all`, `attn`, `mlp` (`q_proj` works too).
    pub fn parse_list(s: &str) -> Result<Vec<LoraModule>> {
        let mut out = Vec::new();
        for part in s.split(',').map(|p| p.trim().to_ascii_lowercase()) {
            let p = part.trim_end_matches("_proj");
            let add: &[LoraModule] = match p {
                "q" => &[LoraModule::Q],
                "k" => &[LoraModule::K],
                "v" => &[LoraModule::V],
                "o" | "out" => &[LoraModule::O],
                "gate" => &[LoraModule::Gate],
                "up" => &[LoraModule::Up],
                "down" => &[LoraModule::Down],
                "attn" => &[LoraModule::Q, LoraModule::K, LoraModule::V, LoraModule::O],
                "mlp" | "ffn" => &[LoraModule::Gate, LoraModule::Up, LoraModule::Down],
                "all" => &LoraModule::ALL,
                _ => {
                    return Err(PlanError::Unknown {
                        what: "LoRA module",
                        input: part.clone(),
                        known: "q, k, v, o, gate, up, down, attn, mlp, all".into(),
                    })
                }
            };
            for m in add {
                if !out.contains(m) {
                    out.push(*m);
                }
            }
        }
        Ok(out)
    }

    /// Input and output width of the module in one layer.
    fn dims(self, s: &ModelShape, layer: usize) -> (u64, u64) {
        let d = s.d_model as u64;
        let ff = s.d_ff as u64;
        let kv = s.kv_heads[layer] as u64;
        match self {
            LoraModule::Q => (d, (s.n_heads * s.key_len) as u64),
            LoraModule::K => (d, kv * s.key_len as u64),
            LoraModule::V => (d, kv * s.value_len as u64),
            LoraModule::O => ((s.n_heads * s.value_len) as u64, d),
            LoraModule::Gate | LoraModule::Up => (d, ff),
            LoraModule::Down => (ff, d),
        }
    }
}

/// Trainable parameters of LoRA adapters of rank `r` on `modules` in every layer:
/// each adapted `in x out` matrix gets `r * (in + out)`.
pub fn lora_params(s: &ModelShape, rank: u64, modules: &[LoraModule]) -> u64 {
    (0..s.n_layers)
        .flat_map(|l| modules.iter().map(move |m| m.dims(s, l)))
        .map(|(i, o)| rank * (i + o))
        .sum()
}

/// What a training run looks like.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOptions {
    /// Data-parallel GPUs that ZeRO shards over.
    pub gpus: u64,
    /// Keep gradients in f32 (18 B/param) instead of bf16 (16 B/param).
    pub fp32_grads: bool,
    pub lora_rank: u64,
    pub lora_modules: Vec<LoraModule>,
    pub seq_len: u64,
    pub micro_batch: u64,
    /// Activation (gradient) checkpointing: keep only each layer's input.
    pub checkpointing: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            gpus: 1,
            fp32_grads: false,
            lora_rank: 16,
            lora_modules: vec![LoraModule::Q, LoraModule::V],
            seq_len: 2048,
            micro_batch: 1,
            checkpointing: false,
        }
    }
}

/// Memory per GPU for one way of training.
#[derive(Debug, Clone, Serialize)]
pub struct TrainRow {
    pub method: String,
    pub zero_stage: u8,
    pub gpus: u64,
    pub trainable_params: u64,
    pub weights_bytes: f64,
    pub gradient_bytes: f64,
    /// Master weights and Adam moments.
    pub optimizer_bytes: f64,
    /// `None` when the model's shape is unknown.
    pub activation_bytes: Option<f64>,
    pub total_bytes: f64,
    /// Weights + gradients + optimizer per model parameter, before sharding.
    pub state_bytes_per_param: f64,
}

/// Activation bytes per GPU for one micro-batch (Korthikanti et al. 2022, with
/// fused attention so the `5as/h` score term is not kept): `34·s·b·h` per layer, or
/// `2·s·b·h` per layer plus one layer's `34·s·b·h` with checkpointing; plus f32 logits
/// and their gradient.
pub fn activation_bytes(s: &ModelShape, o: &TrainOptions) -> f64 {
    let sbh = (o.seq_len * o.micro_batch * s.d_model as u64) as f64;
    let layers = s.n_layers as f64;
    let body = if o.checkpointing {
        2.0 * sbh * layers + 34.0 * sbh
    } else {
        34.0 * sbh * layers
    };
    body + 8.0 * (o.seq_len * o.micro_batch * s.vocab as u64) as f64
}

/// Full fine-tuning at ZeRO stage `stage` (0 = plain data parallel) over `o.gpus`.
pub fn full(m: &Model, o: &TrainOptions, stage: u8) -> Result<TrainRow> {
    if stage > 3 {
        return Err(PlanError::Invalid(format!(
            "ZeRO stage {stage} does not exist (use 0-3)"
        )));
    }
    let gpus = o.gpus.max(1);
    let n = gpus as f64;
    let p = m.n_params as f64;
    let (w, g, opt) = (
        2.0 * p,
        if o.fp32_grads { 4.0 } else { 2.0 } * p,
        OPTIMIZER_BYTES * p,
    );
    let (w, g, opt) = match stage {
        0 => (w, g, opt),
        1 => (w, g, opt / n),
        2 => (w, g / n, opt / n),
        _ => (w / n, g / n, opt / n),
    };
    let act = m.shape.as_ref().map(|s| activation_bytes(s, o));
    let st = 2.0 + if o.fp32_grads { 4.0 } else { 2.0 } + OPTIMIZER_BYTES;
    Ok(TrainRow {
        method: if stage == 0 {
            "full".into()
        } else {
            format!("full ZeRO-{stage}")
        },
        zero_stage: stage,
        gpus,
        trainable_params: m.n_params,
        weights_bytes: w,
        gradient_bytes: g,
        optimizer_bytes: opt,
        activation_bytes: act,
        total_bytes: w + g + opt + act.unwrap_or(0.0),
        state_bytes_per_param: st,
    })
}

/// LoRA (`quantized = false`, frozen bf16 base) or QLoRA (`true`, NF4 base for the
/// layers' matrices). Adapters train in mixed precision (16 B per adapter parameter).
pub fn adapter(m: &Model, o: &TrainOptions, quantized: bool) -> TrainRow {
    let p = m.n_params as f64;
    let trainable = m
        .shape
        .as_ref()
        .map(|s| lora_params(s, o.lora_rank, &o.lora_modules))
        .unwrap_or(0);
    let base = if quantized {
        let matrices = m
            .shape
            .as_ref()
            .map(|s| s.layer_matrix_params() as f64)
            .unwrap_or(p);
        matrices * NF4_BITS / 8.0 + (p - matrices).max(0.0) * 2.0
    } else {
        2.0 * p
    };
    let t = trainable as f64;
    let w = base + 2.0 * t;
    let g = 2.0 * t;
    let opt = OPTIMIZER_BYTES * t;
    let act = m.shape.as_ref().map(|s| activation_bytes(s, o));
    TrainRow {
        method: format!(
            "{} r={} ({})",
            if quantized { "QLoRA" } else { "LoRA" },
            o.lora_rank,
            o.lora_modules
                .iter()
                .map(|x| format!("{x:?}").to_ascii_lowercase())
                .collect::<Vec<_>>()
                .join(",")
        ),
        zero_stage: 0,
        gpus: o.gpus.max(1),
        trainable_params: trainable,
        weights_bytes: w,
        gradient_bytes: g,
        optimizer_bytes: opt,
        activation_bytes: act,
        total_bytes: w + g + opt + act.unwrap_or(0.0),
        state_bytes_per_param: (w + g + opt) / p.max(1.0),
    }
}

/// All rows: full (ZeRO 0-3) then LoRA and QLoRA.
pub fn training_table(m: &Model, o: &TrainOptions) -> Result<Vec<TrainRow>> {
    let mut rows = (0..=3).map(|z| full(m, o, z)).collect::<Result<Vec<_>>>()?;
    rows.push(adapter(m, o, false));
    rows.push(adapter(m, o, true));
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::by_name;
    use crate::shape::ModelSource;

    #[test]
    fn full_fine_tuning_of_7b_needs_112_gb_of_state() {
        let m = Model::from_param_count(7_000_000_000, None);
        let r = full(&m, &TrainOptions::default(), 0).unwrap();
        assert_eq!(r.state_bytes_per_param, 16.0);
        assert_eq!(
            r.weights_bytes + r.gradient_bytes + r.optimizer_bytes,
            112e9
        );
        let o = TrainOptions {
            fp32_grads: true,
            ..Default::default()
        };
        assert_eq!(full(&m, &o, 0).unwrap().state_bytes_per_param, 18.0);
    }

    #[test]
    fn zero_stages_shard_what_the_paper_says() {
        // ZeRO paper, Psi = 7.5B, N = 64, K = 12: 120 GB, 31.4 GB, 16.6 GB, 1.88 GB.
        let m = Model::from_param_count(7_500_000_000, None);
        let o = TrainOptions {
            gpus: 64,
            ..Default::default()
        };
        let gb = |z| {
            let r = full(&m, &o, z).unwrap();
            (r.weights_bytes + r.gradient_bytes + r.optimizer_bytes) / 1e9
        };
        assert!((gb(0) - 120.0).abs() < 0.01);
        assert!((gb(1) - 31.4).abs() < 0.1);
        assert!((gb(2) - 16.6).abs() < 0.1);
        assert!((gb(3) - 1.875).abs() < 0.01);
        assert!(full(&m, &o, 4).is_err());
    }

    #[test]
    fn lora_counts_rank_times_in_plus_out() {
        let s = by_name("llama-7b").unwrap().shape;
        // q and v are 4096 x 4096: r * 8192 each, 32 layers; r = 8 gives 4.19M.
        assert_eq!(
            lora_params(&s, 8, &[LoraModule::Q, LoraModule::V]),
            32 * 2 * 8 * 8192
        );
        let m = Model::from_shape("l", s, ModelSource::ParamCount).unwrap();
        let o = TrainOptions {
            lora_rank: 8,
            ..Default::default()
        };
        let lora = adapter(&m, &o, false);
        let qlora = adapter(&m, &o, true);
        assert!(lora.weights_bytes > 13e9 && lora.weights_bytes < 13.6e9);
        assert!(qlora.weights_bytes < 4.2e9, "{}", qlora.weights_bytes);
        assert_eq!(lora.optimizer_bytes, 12.0 * 4_194_304.0);
    }

    #[test]
    fn parses_module_lists() {
        assert_eq!(
            LoraModule::parse_list("q_proj,v_proj").unwrap(),
            vec![LoraModule::Q, LoraModule::V]
        );
        assert_eq!(LoraModule::parse_list("all").unwrap().len(), 7);
        assert!(LoraModule::parse_list("q,x").is_err());
    }

    #[test]
    fn checkpointing_keeps_only_layer_inputs() {
        let s = by_name("llama-7b").unwrap().shape;
        let o = TrainOptions::default();
        let no = activation_bytes(&s, &o);
        let yes = activation_bytes(
            &s,
            &TrainOptions {
                checkpointing: true,
                ..o
            },
        );
        // 34*s*b*h*L = 34 * 2048 * 4096 * 32 = 9.1 GB + logits.
        assert!((no / 1e9 - 9.66).abs() < 0.05, "{no}");
        assert!(yes < no / 5.0);
    }
}
