//! `hangar plan`: one report of weight memory, KV cache, scratch, training memory,
//! which devices fit and the pipeline bubble, as data (for `--json`) and as text.

use crate::error::{PlanError, Result};
use crate::hardware::{fit, gpus, host_memory, Demand, Fit, HostMemory};
use crate::kv::{kv_cache, KvDtype, KvReport};
use crate::pipeline::{bubble, Bubble};
use crate::roofline::{token_cost, Storage};
use crate::scratch::{scratch, ScratchReport};
use crate::shape::{Model, ModelSource};
use crate::table::Table;
use crate::training::{training_table, TrainOptions, TrainRow};
use crate::units::{fmt_bytes, fmt_count};
use crate::weights::{model_bytes, weight_table, WeightFormat, WeightRow};
use serde::Serialize;
use std::fmt::Write;

/// What to plan for, beyond the model.
#[derive(Debug, Clone, Serialize)]
pub struct PlanOptions {
    /// Tokens per sequence; `None` uses the model's trained context (4096 if unknown).
    pub context: Option<u64>,
    pub batch: u64,
    /// Prefill chunk (tokens per sequence per step).
    pub chunk: u64,
    /// Size scratch for materialized attention scores (no fused attention).
    pub naive_attention: bool,
    pub kv: KvDtype,
    /// Weight format to deploy; `None` is the file as stored, or BF16 without a file.
    pub weights: Option<WeightFormat>,
    /// Share of device memory the deployment may use.
    pub usable_fraction: f64,
    /// Runtime overhead per device, bytes.
    pub overhead_bytes: f64,
    pub max_tp: u64,
    pub train: TrainOptions,
    /// `(stages, micro_batches)` for the pipeline bubble.
    pub pipeline: Option<(u64, u64)>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            context: None,
            batch: 1,
            chunk: 512,
            naive_attention: false,
            kv: KvDtype::F16,
            weights: None,
            usable_fraction: 0.9,
            overhead_bytes: 1e9,
            max_tp: 8,
            train: TrainOptions::default(),
            pipeline: None,
        }
    }
}

/// Training memory with the devices each way fits on.
#[derive(Debug, Clone, Serialize)]
pub struct TrainFit {
    #[serde(flatten)]
    pub row: TrainRow,
    /// The smallest built-in GPU whose usable memory holds the per-GPU total.
    pub smallest_gpu: Option<String>,
}

/// Everything `hangar plan` reports.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub model: Model,
    pub options: PlanOptions,
    pub context: u64,
    pub weights: Vec<WeightRow>,
    /// Format deployed and its bytes (used for fitting).
    pub deploy_format: String,
    pub deploy_weight_bytes: f64,
    /// KV cache at `context` x `batch` in the chosen type.
    pub kv: Option<KvReport>,
    /// The same in every KV type.
    pub kv_by_dtype: Vec<KvReport>,
    pub scratch: Option<ScratchReport>,
    /// Weights + KV + scratch + overhead on one device.
    pub inference_bytes: f64,
    pub training: Vec<TrainFit>,
    pub fits: Vec<Fit>,
    pub host_memory: HostMemory,
    pub pipeline: Option<Bubble>,
    pub notes: Vec<String>,
}

/// Builds the plan for `m`, fitting onto the built-in GPUs and `host`.
pub fn plan(m: Model, o: PlanOptions, host: HostMemory) -> Result<PlanReport> {
    if o.batch == 0 || o.chunk == 0 || o.train.gpus == 0 {
        return Err(PlanError::Invalid(
            "--batch, --chunk and --gpus must be at least 1".into(),
        ));
    }
    if !(0.05..=1.0).contains(&o.usable_fraction) {
        return Err(PlanError::Invalid(
            "--gpu-util must be between 0.05 and 1".into(),
        ));
    }
    let mut notes = Vec::new();
    let context = o.context.unwrap_or_else(|| {
        m.shape
            .as_ref()
            .map(|s| s.context_length as u64)
            .filter(|&c| c > 0)
            .unwrap_or(4096)
    });
    if let Some(s) = &m.shape {
        if s.context_length > 0 && context > s.context_length as u64 {
            notes.push(format!(
                "--context {context} is past the model's trained context of {}",
                s.context_length
            ));
        }
    } else {
        notes.push(
            "only a parameter count is known: KV cache, activations and LoRA size need the shape \
             (pass --arch with a preset size, --model, or --layers/--hidden/--heads)"
                .into(),
        );
    }
    let weights = weight_table(&m);
    let (deploy_format, storage, deploy_bytes) = match (o.weights, m.stored_bytes()) {
        (Some(f), _) => (
            f.name().to_string(),
            Storage::Format(f),
            model_bytes(&m, f) as f64,
        ),
        (None, Some(b)) => ("as stored".to_string(), Storage::AsStored, b as f64),
        (None, None) => (
            "BF16".to_string(),
            Storage::Format(WeightFormat::BF16),
            model_bytes(&m, WeightFormat::BF16) as f64,
        ),
    };
    let kv = m
        .shape
        .as_ref()
        .map(|s| kv_cache(s, o.kv, context, o.batch));
    let kv_by_dtype = m
        .shape
        .as_ref()
        .map(|s| {
            KvDtype::ALL
                .iter()
                .map(|&d| kv_cache(s, d, context, o.batch))
                .collect()
        })
        .unwrap_or_default();
    let sc = m
        .shape
        .as_ref()
        .map(|s| scratch(s, o.batch, context, o.chunk, o.naive_attention));
    let inference_bytes = deploy_bytes
        + kv.as_ref().map_or(0.0, |k| k.total_bytes)
        + sc.as_ref()
            .map_or(0.0, |s| s.prefill_bytes.max(s.decode_bytes))
        + o.overhead_bytes;
    let cost = token_cost(&m, storage, o.kv, context, o.chunk);
    let demand = Demand {
        model: &m,
        weight_bytes: deploy_bytes,
        kv: o.kv,
        chunk: o.chunk,
        naive_attention: o.naive_attention,
        overhead_bytes: o.overhead_bytes,
        usable_fraction: o.usable_fraction,
        max_tp: o.max_tp,
        decode_bytes_per_token: cost.decode_bytes_per_token(),
    };
    let all_gpus = gpus();
    let mut fits: Vec<Fit> = all_gpus
        .iter()
        .map(|g| {
            fit(
                &demand,
                g.name,
                g.memory_bytes,
                Some(g.bandwidth),
                o.batch,
                context,
            )
        })
        .collect();
    if host.available_bytes > 0 {
        let host_demand = Demand {
            max_tp: 1,
            usable_fraction: 1.0,
            overhead_bytes: 0.0,
            ..demand.clone()
        };
        let mut host_fit = fit(
            &host_demand,
            "this host (RAM available)",
            host.available_bytes,
            None,
            o.batch,
            context,
        );
        // Layer offload is a GPU question.
        host_fit.gpu_layers = None;
        fits.push(host_fit);
    }
    let training = training_table(&m, &o.train)?
        .into_iter()
        .map(|row| {
            let smallest_gpu = all_gpus
                .iter()
                .filter(|g| row.total_bytes <= g.memory_bytes as f64 * o.usable_fraction)
                .min_by_key(|g| g.memory_bytes)
                .map(|g| g.name.to_string());
            TrainFit { row, smallest_gpu }
        })
        .collect();
    let pipeline = o.pipeline.map(|(n, mb)| bubble(n, mb)).transpose()?;
    Ok(PlanReport {
        model: m,
        context,
        weights,
        deploy_format,
        deploy_weight_bytes: deploy_bytes,
        kv,
        kv_by_dtype,
        scratch: sc,
        inference_bytes,
        training,
        fits,
        host_memory: host,
        pipeline,
        notes,
        options: o,
    })
}

/// Plans with this host's memory read from /proc/meminfo.
pub fn plan_here(m: Model, o: PlanOptions) -> Result<PlanReport> {
    plan(m, o, host_memory())
}

fn opt_bytes(b: Option<f64>) -> String {
    b.map(fmt_bytes).unwrap_or_else(|| "-".into())
}

impl PlanReport {
    /// The report as text tables.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let m = &self.model;
        let src = match &m.source {
            ModelSource::File { path, file_bytes } => {
                format!("file {path} ({})", fmt_bytes(*file_bytes as f64))
            }
            ModelSource::Preset { name } => format!("preset {name}"),
            ModelSource::ParamCount => "parameter count only".into(),
        };
        let _ = writeln!(
            out,
            "Model: {} — {} parameters, {src}",
            m.name,
            fmt_count(m.n_params as f64)
        );
        if let Some(s) = &m.shape {
            let win = match s.sliding_window {
                Some(w) => format!(
                    ", {} of {} layers sliding-window {w}",
                    s.n_local_layers, s.n_layers
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {} layers, d_model {}, d_ff {}, {} heads / {} KV heads, head dim {}/{}, vocab {}, context {}{win}",
                s.n_layers, s.d_model, s.d_ff, s.n_heads, s.n_kv_heads, s.key_len, s.value_len, s.vocab, s.context_length
            );
        }
        let _ = writeln!(out, "\nWeight memory");
        let mut t = Table::new(["format", "bytes", "bits/param", "note"]);
        for w in &self.weights {
            let note = if w.fallback_tensors > 0 {
                format!(
                    "{} tensors fall back (rows not a block multiple)",
                    w.fallback_tensors
                )
            } else {
                String::new()
            };
            t.row([
                w.format.clone(),
                fmt_bytes(w.bytes as f64),
                format!("{:.2}", w.bits_per_param),
                note,
            ]);
        }
        out.push_str(&t.render());

        if let Some(k) = &self.kv {
            let _ = writeln!(
                out,
                "\nKV cache at context {} x batch {}: {} ({} per token{})",
                self.context,
                self.options.batch,
                fmt_bytes(k.total_bytes),
                fmt_bytes(k.bytes_per_token),
                if k.local_layers > 0 {
                    format!(
                        ", {} once the windows are full",
                        fmt_bytes(k.bytes_per_token_past_window)
                    )
                } else {
                    String::new()
                }
            );
            let mut t = Table::new(["kv type", "per token", "total"]);
            for r in &self.kv_by_dtype {
                t.row([
                    r.dtype.name().to_string(),
                    fmt_bytes(r.bytes_per_token),
                    fmt_bytes(r.total_bytes),
                ]);
            }
            out.push_str(&t.render());
        }
        if let Some(s) = &self.scratch {
            let _ = writeln!(
                out,
                "\nActivations/scratch: prefill {} ({} tokens in flight, {} attention scores {}), decode {}",
                fmt_bytes(s.prefill_bytes),
                s.prefill_tokens,
                if self.options.naive_attention { "materialized" } else { "fused" },
                fmt_bytes(s.attention_scores_bytes),
                fmt_bytes(s.decode_bytes)
            );
        }
        let _ = writeln!(
            out,
            "\nInference on one device ({} weights + KV + scratch + {} overhead): {}",
            self.deploy_format,
            fmt_bytes(self.options.overhead_bytes),
            fmt_bytes(self.inference_bytes)
        );
        let _ = writeln!(
            out,
            "\nWhere it fits ({}% of device memory usable; tensor parallel up to {}):",
            (self.options.usable_fraction * 100.0).round(),
            self.options.max_tp
        );
        let mut t = Table::new([
            "device",
            "memory",
            "devices",
            "per device",
            "max batch",
            "max context",
            "decode bound",
            "layers on 1",
        ]);
        let n_layers = self.model.shape.as_ref().map(|s| s.n_layers);
        for f in &self.fits {
            t.row([
                f.device.clone(),
                fmt_bytes(f.memory_bytes as f64),
                f.devices_needed.map_or("no (>8)".into(), |n| n.to_string()),
                opt_bytes(f.bytes_per_device),
                f.max_batch.map_or("-".into(), |b| b.to_string()),
                f.max_context.map_or("-".into(), |c| c.to_string()),
                f.decode_tokens_per_s_bound
                    .map_or("-".into(), |r| format!("{r:.0} tok/s")),
                match (f.gpu_layers, n_layers) {
                    (Some(g), Some(n)) => format!("{g}/{n}"),
                    _ => "-".into(),
                },
            ]);
        }
        out.push_str(&t.render());

        let tr = &self.options.train;
        let _ = writeln!(
            out,
            "\nTraining (Adam, mixed precision; seq {} x micro-batch {}, {} GPUs{}):",
            tr.seq_len,
            tr.micro_batch,
            tr.gpus,
            if tr.checkpointing {
                ", activation checkpointing"
            } else {
                ""
            }
        );
        let mut t = Table::new([
            "method",
            "trainable",
            "weights",
            "grads",
            "optimizer",
            "activations",
            "per GPU",
            "B/param",
            "smallest GPU",
        ]);
        for f in &self.training {
            let r = &f.row;
            t.row([
                r.method.clone(),
                fmt_count(r.trainable_params as f64),
                fmt_bytes(r.weights_bytes),
                fmt_bytes(r.gradient_bytes),
                fmt_bytes(r.optimizer_bytes),
                opt_bytes(r.activation_bytes),
                fmt_bytes(r.total_bytes),
                format!("{:.2}", r.state_bytes_per_param),
                f.smallest_gpu.clone().unwrap_or_else(|| "none".into()),
            ]);
        }
        out.push_str(&t.render());
        if let Some(b) = &self.pipeline {
            let _ = writeln!(
                out,
                "\nPipeline bubble: {} stages, {} micro-batches: {:.1}% idle (1 - m/(m+n-1))",
                b.stages,
                b.micro_batches,
                b.idle_fraction * 100.0
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "\nnote: {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model_spec::ModelSpec;

    fn no_host() -> HostMemory {
        HostMemory {
            total_bytes: 0,
            available_bytes: 0,
        }
    }

    fn preset(name: &str) -> Model {
        ModelSpec {
            model: Some(name.into()),
            ..Default::default()
        }
        .resolve()
        .unwrap()
    }

    #[test]
    fn default_context_is_the_models_and_kv_follows_it() {
        let r = plan(preset("llama-70b"), PlanOptions::default(), no_host()).unwrap();
        assert_eq!(r.context, 131072);
        let kv = r.kv.as_ref().unwrap();
        assert!((kv.total_bytes / 1e9 - 42.95).abs() < 0.01);
        assert_eq!(r.kv_by_dtype.len(), KvDtype::ALL.len());
        assert_eq!(r.deploy_format, "BF16");
        // 141 GB of BF16 weights + 43 GB KV: no single GPU, four H100s.
        let h100 = r
            .fits
            .iter()
            .find(|f| f.device.starts_with("H100 80"))
            .unwrap();
        assert_eq!(h100.devices_needed, Some(4));
        assert!(r.render().contains("42.95 GB"));
    }

    #[test]
    fn training_rows_name_the_smallest_gpu_that_holds_them() {
        let o = PlanOptions {
            train: TrainOptions {
                gpus: 8,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = plan(preset("llama-7b"), o, no_host()).unwrap();
        let full = &r.training[0];
        assert_eq!(full.row.state_bytes_per_param, 16.0);
        // 6.74B * 16 B = 108 GB + activations: only the largest GPUs.
        assert_eq!(full.smallest_gpu.as_deref(), Some("H200 141GB"));
        let z3 = &r.training[3];
        assert!(z3.row.total_bytes < full.row.total_bytes / 4.0);
    }

    #[test]
    fn host_ram_is_a_device_when_known() {
        let host = HostMemory {
            total_bytes: 64 << 30,
            available_bytes: 32 << 30,
        };
        let r = plan(preset("gemma3-1b"), PlanOptions::default(), host).unwrap();
        let last = r.fits.last().unwrap();
        assert!(last.device.contains("host"));
        assert_eq!(last.devices_needed, Some(1));
    }

    #[test]
    fn rejects_zero_batch_and_odd_utilization() {
        let m = preset("llama-7b");
        let o = PlanOptions {
            batch: 0,
            ..Default::default()
        };
        assert!(plan(m.clone(), o, no_host()).is_err());
        let o = PlanOptions {
            usable_fraction: 2.0,
            ..Default::default()
        };
        assert!(plan(m, o, no_host()).is_err());
    }
}
