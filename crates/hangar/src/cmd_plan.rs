//! `hangar plan`, `hangar profile` and `hangar tokens`: argument parsing and wiring
//! of hangar-plan to the kernels (dot throughput) and the tokenizer. No formulas here.

use anyhow::{bail, Context, Result};
use hangar_formats::{GgmlType, GgufFile};
use hangar_plan::bench::{read_bench_json, Measured};
use hangar_plan::profile::{measure_dot, profile_host, DotThroughput};
use hangar_plan::profile_report::{model_roofline, ProfileReport, RooflineOptions};
use hangar_plan::tokens::{compare_rows, count_rows, render_rows, TokenRow};
use hangar_plan::units::parse_tokens;
use hangar_plan::{
    plan_here, KvDtype, LoraModule, Model, ModelSpec, PlanOptions, TrainOptions, WeightFormat,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Model selection shared by `plan` and `profile`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModelSelect {
    /// A GGUF file, or a built-in preset (llama-7b, llama-8b, llama-13b, llama-70b,
    /// mistral-7b, qwen2-7b, gemma3-270m, gemma3-1b, gemma3-4b, gemma3-27b).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Parameter count (7B, 270M, 1.5e9); with --arch picks the preset of that size.
    #[arg(long)]
    pub params: Option<String>,
    /// Architecture (llama, mistral, qwen2, gemma3).
    #[arg(long)]
    pub arch: Option<String>,
    /// Shape override: number of layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Shape override: embedding length (d_model).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Shape override: feed-forward length.
    #[arg(long)]
    pub ffn: Option<usize>,
    /// Shape override: attention heads.
    #[arg(long)]
    pub heads: Option<usize>,
    /// Shape override: key/value heads (GQA; 1 = MQA).
    #[arg(long)]
    pub kv_heads: Option<usize>,
    /// Shape override: head dimension.
    #[arg(long)]
    pub head_dim: Option<usize>,
    /// Shape override: vocabulary size.
    #[arg(long)]
    pub vocab: Option<usize>,
    /// Shape override: sliding window on every layer.
    #[arg(long)]
    pub window: Option<usize>,
}

impl ModelSelect {
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            model: self.model.clone(),
            params: self.params.clone(),
            arch: self.arch.clone(),
            layers: self.layers,
            hidden: self.hidden,
            ffn: self.ffn,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            vocab: self.vocab,
            window: self.window,
            context_length: None,
        }
    }
}

/// `hangar plan`: memory, fit and training needs of a model.
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    #[command(flatten)]
    pub select: ModelSelect,
    /// Tokens per sequence (4096, 128k); default: the model's trained context.
    #[arg(long)]
    pub context: Option<String>,
    /// Concurrent sequences.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Prefill token budget per step.
    #[arg(long, default_value_t = 512)]
    pub chunk: u64,
    /// Size scratch for materialized attention scores (default: fused attention).
    #[arg(long)]
    pub naive_attention: bool,
    /// KV-cache type: f32, f16, bf16, fp8, q8_0, q4_0.
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
    /// Weight format to deploy (F32, BF16, F16, FP8, Q8_0, Q6_K, Q5_K, Q4_K, Q4_0,
    /// INT2); default: as stored in the file, BF16 otherwise.
    #[arg(long)]
    pub weights: Option<String>,
    /// Share of GPU memory the deployment may use.
    #[arg(long, default_value_t = 0.9)]
    pub gpu_util: f64,
    /// Runtime overhead per device, GB.
    #[arg(long, default_value_t = 1.0)]
    pub overhead_gb: f64,
    /// Largest tensor-parallel group to consider.
    #[arg(long, default_value_t = 8)]
    pub max_tp: u64,
    /// Data-parallel GPUs for training (ZeRO shards over them).
    #[arg(long, default_value_t = 1)]
    pub gpus: u64,
    /// Keep gradients in f32 (18 bytes/param instead of 16).
    #[arg(long)]
    pub fp32_grads: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub lora_rank: u64,
    /// LoRA target modules: q,k,v,o,gate,up,down, or attn, mlp, all.
    #[arg(long, default_value = "q,v")]
    pub lora_modules: String,
    /// Training sequence length.
    #[arg(long, default_value = "2048")]
    pub train_seq: String,
    /// Training micro-batch per GPU.
    #[arg(long, default_value_t = 1)]
    pub micro_batch: u64,
    /// Activation checkpointing during training.
    #[arg(long)]
    pub checkpointing: bool,
    /// Pipeline stages, for the bubble (with --micro-batches).
    #[arg(long)]
    pub pipeline_stages: Option<u64>,
    /// Micro-batches per pipeline flush.
    #[arg(long)]
    pub micro_batches: Option<u64>,
    /// List the built-in model presets and GPUs, then exit.
    #[arg(long)]
    pub list: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `hangar profile`: this host's bandwidth and compute, and a model's roofline.
#[derive(clap::Args, Debug, Clone)]
pub struct ProfileArgs {
    #[command(flatten)]
    pub select: ModelSelect,
    /// Threads for the measurements (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Size of each bandwidth buffer, MiB (several times the last-level cache).
    #[arg(long, default_value_t = 256)]
    pub buffer_mib: usize,
    /// Context of the decode bound (default: the bench's test length, else 512).
    #[arg(long)]
    pub context: Option<String>,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Prompt length of the prefill bound (default: the bench's, else 512).
    #[arg(long, default_value_t = 512)]
    pub chunk: u64,
    /// KV-cache type.
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
    /// Weight format (default: as stored).
    #[arg(long)]
    pub weights: Option<String>,
    /// Measured decode tokens/s (from `hangar bench`).
    #[arg(long)]
    pub decode_tps: Option<f64>,
    /// Measured prefill tokens/s (from `hangar bench`).
    #[arg(long)]
    pub prefill_tps: Option<f64>,
    /// A file written by `hangar bench --json`.
    #[arg(long)]
    pub bench_json: Option<PathBuf>,
    /// Time the plain-Rust dot baselines instead of hangar-kernels.
    #[arg(long)]
    pub baseline: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `hangar tokens`: token counts per input.
#[derive(clap::Args, Debug, Clone)]
pub struct TokensArgs {
    /// GGUF model whose tokenizer counts (default: $HANGAR_MODEL, else the default model).
    #[arg(long, short = 'm')]
    pub model: Option<PathBuf>,
    /// Texts to count.
    pub text: Vec<String>,
    /// Files to count (UTF-8).
    #[arg(long)]
    pub file: Vec<PathBuf>,
    /// Compare one sentence in English, French, Spanish, Japanese and Chinese.
    #[arg(long)]
    pub compare: bool,
    /// Count BOS/EOS too, the way a prompt gets them (default: the text's tokens only).
    #[arg(long)]
    pub add_special: bool,
    /// Print the counts as JSON.
    #[arg(long)]
    pub json: bool,
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn list_builtins() {
    use hangar_plan::table::Table;
    let mut t = Table::new([
        "preset", "model", "arch", "layers", "d_model", "heads/kv", "context",
    ]);
    for p in hangar_plan::presets::presets() {
        let s = &p.shape;
        t.row([
            p.name.to_string(),
            p.description.to_string(),
            s.arch.clone(),
            s.n_layers.to_string(),
            s.d_model.to_string(),
            format!("{}/{}", s.n_heads, s.n_kv_heads),
            s.context_length.to_string(),
        ]);
    }
    print!("{}", t.render());
    let mut t = Table::new(["gpu", "memory", "bandwidth", "bf16 dense"]);
    for g in hangar_plan::hardware::gpus() {
        t.row([
            g.name.to_string(),
            hangar_plan::units::fmt_bytes(g.memory_bytes as f64),
            format!("{:.2} TB/s", g.bandwidth / 1e12),
            format!("{:.0} TFLOP/s", g.bf16_flops / 1e12),
        ]);
    }
    print!("\n{}", t.render());
}

/// Runs `hangar plan`.
pub fn run_plan(a: PlanArgs) -> Result<()> {
    if a.list {
        list_builtins();
        return Ok(());
    }
    let model = a.select.spec().resolve()?;
    let pipeline = match (a.pipeline_stages, a.micro_batches) {
        (Some(n), Some(m)) => Some((n, m)),
        (None, None) => None,
        _ => bail!("--pipeline-stages and --micro-batches go together"),
    };
    let o = PlanOptions {
        context: a
            .context
            .as_deref()
            .map(|c| parse_tokens("--context", c))
            .transpose()?,
        batch: a.batch,
        chunk: a.chunk,
        naive_attention: a.naive_attention,
        kv: KvDtype::parse(&a.kv_type)?,
        weights: a.weights.as_deref().map(WeightFormat::parse).transpose()?,
        usable_fraction: a.gpu_util,
        overhead_bytes: a.overhead_gb.max(0.0) * 1e9,
        max_tp: a.max_tp.max(1),
        train: TrainOptions {
            gpus: a.gpus,
            fp32_grads: a.fp32_grads,
            lora_rank: a.lora_rank,
            lora_modules: LoraModule::parse_list(&a.lora_modules)?,
            seq_len: parse_tokens("--train-seq", &a.train_seq)?,
            micro_batch: a.micro_batch,
            checkpointing: a.checkpointing,
        },
        pipeline,
    };
    let report = plan_here(model, o)?;
    if a.json {
        print_json(&report)
    } else {
        print!("{}", report.render());
        Ok(())
    }
}

/// Times hangar-kernels' dot products: Q8_0 x Q8_0 (int8) and F32 x F32, one row
/// at a time (decode) and as a 4 x 4 tile (prefill).
fn kernel_dots(threads: usize) -> Result<Vec<DotThroughput>> {
    use hangar_kernels::quants::{act_type, dot_tile, quantize_row, row_bytes, vec_dot};
    const N: usize = 4096;
    const TILE: usize = 4;
    let dur = Duration::from_millis(300);
    let rows = |t: GgmlType, seed: usize| -> Result<Vec<u8>> {
        let mut out = vec![0u8; row_bytes(t, N) * TILE];
        for (r, chunk) in out.chunks_mut(row_bytes(t, N)).enumerate() {
            let x: Vec<f32> = (0..N)
                .map(|i| (((i * 7 + r * 13 + seed) % 31) as f32 - 15.0) / 8.0)
                .collect();
            quantize_row(t, &x, chunk)?;
        }
        Ok(out)
    };
    let mut out = Vec::new();
    for (kind, wt) in [("int8", GgmlType::Q8_0), ("f32", GgmlType::F32)] {
        let at = act_type(wt)?;
        let (w, a) = (rows(wt, 1)?, rows(at, 2)?);
        let (ws, as_) = (row_bytes(wt, N), row_bytes(at, N));
        let label = format!("hangar-kernels {wt} vec_dot");
        out.push(measure_dot(
            kind,
            &label,
            threads,
            2.0 * N as f64,
            dur,
            |_| {
                let (w, a) = (w.clone(), a.clone());
                move || vec_dot(wt, N, &w[..ws], &a[..as_])
            },
        ));
        let label = format!("hangar-kernels {wt} dot_tile {TILE}x{TILE}");
        let ops = 2.0 * (N * TILE * TILE) as f64;
        out.push(measure_dot(kind, &label, threads, ops, dur, |_| {
            let (w, a) = (w.clone(), a.clone());
            let mut o = vec![0f32; TILE * TILE];
            move || {
                dot_tile(wt, N, &w, ws, TILE, &a, as_, TILE, &mut o, TILE);
                o[0]
            }
        }));
    }
    Ok(out)
}

/// `$HANGAR_MODEL`, else the default model's cache path (see scripts/fetch-default-model.sh).
fn default_model_file() -> PathBuf {
    if let Ok(p) = std::env::var("HANGAR_MODEL") {
        return PathBuf::from(p);
    }
    crate::model_path::default_model_cache().join(crate::model_path::DEFAULT_MODEL_FILE)
}

/// Runs `hangar profile`.
pub fn run_profile(a: ProfileArgs) -> Result<()> {
    let threads = a.threads.unwrap_or_else(hangar_plan::profile::cores).max(1);
    let mut measured = match &a.bench_json {
        Some(p) => read_bench_json(p)?,
        None => Measured::default(),
    };
    if a.decode_tps.is_some() {
        measured.decode_tokens_per_s = a.decode_tps;
    }
    if a.prefill_tps.is_some() {
        measured.prefill_tokens_per_s = a.prefill_tps;
    }
    let mut spec = a.select.spec();
    let explicit = spec.model.is_some() || spec.params.is_some() || spec.layers.is_some();
    if !explicit {
        let f = default_model_file();
        if f.is_file() {
            spec.model = Some(f.display().to_string());
        }
    }
    let model: Option<Model> = if spec.model.is_some() || explicit {
        Some(spec.resolve()?)
    } else {
        None
    };
    let dots = if a.baseline {
        Vec::new()
    } else {
        kernel_dots(threads)?
    };
    let host = profile_host(threads, a.buffer_mib.max(1) << 20, dots);
    let context = match &a.context {
        Some(c) => parse_tokens("--context", c)?,
        None => measured.decode_tokens.unwrap_or(512),
    };
    let roofline = match &model {
        Some(m) => {
            let o = RooflineOptions {
                context,
                prompt: measured.prefill_tokens.unwrap_or(a.chunk).max(1),
                batch: a.batch.max(1),
                chunk: measured.prefill_tokens.unwrap_or(a.chunk).max(1),
                kv: KvDtype::parse(&a.kv_type)?,
                weights: a.weights.as_deref().map(WeightFormat::parse).transpose()?,
                measured,
            };
            Some(model_roofline(&host, m, &o))
        }
        None => None,
    };
    let report = ProfileReport { host, roofline };
    if a.json {
        print_json(&report)
    } else {
        print!("{}", report.render());
        if report.roofline.is_none() {
            println!("(no model: pass --model PATH|NAME for the roofline of decode and prefill)");
        }
        Ok(())
    }
}

fn open_gguf(path: &Path) -> Result<GgufFile> {
    if !path.is_file() {
        bail!(
            "model file {} not found; pass --model PATH, or fetch the default model with scripts/fetch-default-model.sh",
            path.display()
        );
    }
    GgufFile::open(path).with_context(|| format!("opening {}", path.display()))
}

/// Runs `hangar tokens`.
pub fn run_tokens(a: TokensArgs) -> Result<()> {
    let path = a.model.clone().unwrap_or_else(default_model_file);
    let gguf = open_gguf(&path)?;
    let tok = hangar_tokenizer::Tokenizer::from_gguf(&gguf)
        .with_context(|| format!("building the tokenizer of {}", path.display()))?;
    let add_special = a.add_special;
    let count = |t: &str| Ok::<_, anyhow::Error>(tok.encode(t, add_special, false).len());
    let mut inputs: Vec<(String, String)> = a
        .text
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("text {}", i + 1), t.clone()))
        .collect();
    for f in &a.file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        inputs.push((f.display().to_string(), text));
    }
    if inputs.is_empty() && !a.compare {
        bail!("nothing to count: give texts, --file PATH, or --compare");
    }
    let rows: Vec<TokenRow> = count_rows(&inputs, count)?;
    let compare: Vec<TokenRow> = if a.compare {
        compare_rows(count)?
    } else {
        Vec::new()
    };
    if a.json {
        return print_json(&serde_json::json!({
            "model": path.display().to_string(),
            "add_special": add_special,
            "inputs": rows,
            "compare": compare,
        }));
    }
    println!("Tokenizer of {}", path.display());
    if !rows.is_empty() {
        print!("{}", render_rows(&rows, false));
    }
    if !compare.is_empty() {
        if !rows.is_empty() {
            println!();
        }
        println!("The same sentence in five languages:");
        print!("{}", render_rows(&compare, true));
    }
    Ok(())
}
