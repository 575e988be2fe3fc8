//! Commands that run a model directly: generate, bench, perplexity, tokenize.

use crate::model_path;
use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_engine::sampler::SamplingParams;
use hangar_engine::{bench, perplexity, GenerateOptions, LoadedModel, ModelRunner};
use hangar_models::kv::KvFormat;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// GGUF file or registry model (name, name@3, name@production); default:
    /// $HANGAR_MODEL, else the registry's default model, else the cached default file.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Set from the global --home.
    #[arg(skip)]
    pub home: Option<PathBuf>,
    /// Kernel threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Arithmetic: `ggml` reproduces llama.cpp's CPU results bit for bit (same logits,
    /// same tokens), `fast` uses Hangar's packed kernels (default: $HANGAR_NUMERICS,
    /// else ggml for generate and perplexity, fast for bench).
    #[arg(long, value_enum)]
    pub numerics: Option<NumericsArg>,
}

/// `--numerics` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumericsArg {
    /// llama.cpp's exact float order (x86-64 AVX-512 build): identical logits and tokens.
    Ggml,
    /// Hangar's own packed kernels: fastest, same quality, not bit-identical.
    Fast,
}

/// The kernel choices the environment makes for this process: `HANGAR_NUMERICS`,
/// `HANGAR_PACK` and `HANGAR_SIMD` are read here, once, and nowhere else; the
/// libraries receive them as options.
#[derive(Debug, Clone, Copy)]
pub struct KernelEnv {
    /// `HANGAR_NUMERICS` (`fast`, `ggml`); flags win over it.
    pub numerics: Option<hangar_models::Numerics>,
    /// `HANGAR_PACK` (`0`, `legacy`, `all`; default `auto`: see [`hangar_models::Packing`]).
    pub packing: hangar_models::Packing,
    /// `HANGAR_SIMD` (`scalar`, `avx2`, `avx512`): a cap on the kernels' SIMD level.
    pub simd: Option<hangar_kernels::SimdLevel>,
    /// `HANGAR_AMX` (`0` / `1`): whether the packed kernels may use AMX tiles where the
    /// CPU has them (default: yes; results are the same bits either way).
    pub amx: Option<bool>,
}

impl KernelEnv {
    /// The environment's choices, read on first use.
    pub fn get() -> &'static KernelEnv {
        static ENV: OnceLock<KernelEnv> = OnceLock::new();
        ENV.get_or_init(|| KernelEnv::from_vars(|name| std::env::var(name).ok()))
    }

    /// Parses the three variables from `var`; an unknown value keeps the default,
    /// with a warning.
    fn from_vars(var: impl Fn(&str) -> Option<String>) -> KernelEnv {
        fn parsed<T>(
            name: &str,
            v: Option<String>,
            parse: fn(&str) -> Option<T>,
            expected: &str,
        ) -> Option<T> {
            // Set but empty counts as unset, as before.
            let v = v.filter(|v| !v.trim().is_empty())?;
            let got = parse(&v);
            if got.is_none() {
                eprintln!("warning: {name}={v:?} is not one of {expected}; ignoring it");
            }
            got
        }
        KernelEnv {
            numerics: parsed(
                "HANGAR_NUMERICS",
                var("HANGAR_NUMERICS"),
                hangar_models::Numerics::parse,
                "fast, ggml",
            ),
            packing: parsed(
                "HANGAR_PACK",
                var("HANGAR_PACK"),
                hangar_models::Packing::parse,
                "0, legacy, all, auto",
            )
            .unwrap_or_default(),
            simd: parsed(
                "HANGAR_SIMD",
                var("HANGAR_SIMD"),
                hangar_kernels::SimdLevel::parse,
                "scalar, avx2, avx512",
            ),
            amx: parsed("HANGAR_AMX", var("HANGAR_AMX"), parse_switch, "0, 1"),
        }
    }

    /// Applies the process-wide part (the SIMD cap, AMX); call once at startup.
    pub fn apply_process_wide(&self) {
        if let Some(cap) = self.simd {
            hangar_kernels::set_simd_cap(cap);
        }
        if let Some(on) = self.amx {
            hangar_kernels::set_amx(on);
        }
    }
}

/// `0`/`off`/`false` or `1`/`on`/`true`.
fn parse_switch(v: &str) -> Option<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "0" | "off" | "false" | "no" => Some(false),
        "1" | "on" | "true" | "yes" => Some(true),
        _ => None,
    }
}

/// The kernels' instruction set as reports print it (`Avx512Vnni+AMX` with tiles).
pub fn simd_name() -> String {
    let level = format!("{:?}", hangar_kernels::simd_level());
    if hangar_kernels::amx() {
        level + "+AMX"
    } else {
        level
    }
}

/// How to load a model: numerics from `--numerics`, else `$HANGAR_NUMERICS`, else
/// `default`; packing from `$HANGAR_PACK`.
pub fn load_options(
    arg: Option<NumericsArg>,
    default: hangar_models::Numerics,
) -> hangar_models::LoadOptions {
    let env = KernelEnv::get();
    let numerics = match arg {
        Some(NumericsArg::Ggml) => hangar_models::Numerics::Ggml,
        Some(NumericsArg::Fast) => hangar_models::Numerics::Fast,
        None => env.numerics.unwrap_or(default),
    };
    hangar_models::LoadOptions {
        numerics,
        packing: env.packing,
    }
}

impl ModelArgs {
    /// Loads the model; `default` numerics apply when neither `--numerics` nor
    /// `$HANGAR_NUMERICS` chooses.
    fn load(&self, default: hangar_models::Numerics) -> Result<(LoadedModel, PathBuf, f64)> {
        let path = model_path::resolve(self.model.as_deref(), self.home.clone())?;
        let t0 = Instant::now();
        let opts = load_options(self.numerics, default);
        let lm = LoadedModel::load_with(&path, self.threads, opts)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok((lm, path, t0.elapsed().as_secs_f64()))
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when a driver and GPU
    /// are found, else the CPU).
    #[arg(long, default_value = "cpu", value_parser = crate::cmd_device::parse_device)]
    pub device: hangar_cuda::Device,
    /// With --device cuda: the last N layers (and the output layer) on the GPU, the
    /// others on the CPU, like llama.cpp's -ngl (default: as many as fit).
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// The prompt.
    #[arg(long, short = 'p', conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Wrap the prompt as a user turn in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Parse special-token text such as <start_of_turn> in the prompt.
    #[arg(long)]
    pub special: bool,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set with this much probability (1 = off).
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Drop tokens less likely than min_p x the most likely (0 = off).
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Penalty for repeating recent tokens (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    #[arg(long, default_value_t = 64)]
    pub repeat_last_n: usize,
    #[arg(long, default_value_t = 0.0)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0)]
    pub frequency_penalty: f32,
    /// Add to a token's logit: ID=BIAS (repeatable).
    #[arg(long, value_parser = parse_bias)]
    pub logit_bias: Vec<(u32, f32)>,
    /// Random seed (same seed, same tokens).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Report the N most likely alternatives of each token (with --json).
    #[arg(long, default_value_t = 0)]
    pub logprobs: usize,
    /// Context size in tokens (0 = the model's).
    #[arg(long, default_value_t = 4096)]
    pub ctx: usize,
    /// Print one JSON object at the end instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Print timings to stderr.
    #[arg(long)]
    pub stats: bool,
    #[command(flatten)]
    pub spec: crate::cmd_spec::SpecArgs,
    /// How the KV cache stores K and V: f16, q8_0 or q4_0 (the quantized types need
    /// fast numerics, the default with them).
    #[arg(long, default_value = "f16", value_parser = parse_kv_type)]
    pub kv_type: KvFormat,
    /// Generate under a LoRA adapter (GGUF file, PEFT folder or registry reference);
    /// needs fast numerics, the default with it. CPU only.
    #[arg(long, value_name = "ADAPTER")]
    pub lora: Option<String>,
}

fn parse_bias(s: &str) -> Result<(u32, f32), String> {
    let (id, b) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=BIAS, got {s:?}"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("token id {id:?} is not a number"))?;
    let b: f32 = b
        .trim()
        .parse()
        .map_err(|_| format!("bias {b:?} is not a number"))?;
    Ok((id, b))
}

/// Tokenizes a prompt: as a user turn of the model's chat template with `chat`, else
/// as plain text after BOS (`special`: parse special-token text).
fn encode_prompt(lm: &LoadedModel, prompt: &str, chat: bool, special: bool) -> Result<Vec<u32>> {
    Ok(if chat {
        let tk = &lm.tokenizer;
        let piece = |id: Option<u32>| id.and_then(|i| tk.id_to_token(i)).unwrap_or("").to_string();
        let tpl = hangar_engine::chat::ChatTemplate::for_model(
            lm.model.gguf().get_str("tokenizer.chat_template").ok(),
            &lm.model.cfg.arch_name,
            &piece(tk.bos_id()),
            &piece(tk.eos_id()),
        )?;
        let text = tpl.render(
            &[hangar_engine::chat::ChatMessage::new("user", prompt)],
            true,
        )?;
        lm.tokenizer.encode(&text, false, true)
    } else {
        lm.tokenizer.encode(prompt, true, special)
    })
}

pub fn generate(a: GenerateArgs) -> Result<()> {
    let prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (None, None) => bail!("give a prompt with -p TEXT or --prompt-file FILE"),
    };
    let spec = a.spec.config()?;
    let default_numerics = if a.kv_type == KvFormat::F16 && a.lora.is_none() {
        hangar_models::Numerics::Ggml
    } else {
        hangar_models::Numerics::Fast
    };
    let (lm, _path, load_s) = a.model.load(default_numerics)?;
    let adapter = match &a.lora {
        Some(src) => {
            let shape = hangar_models::LoraShape::of(&lm.model.cfg);
            Some(
                crate::cmd_lora::load_adapter(src, &shape, a.model.home.clone())
                    .map_err(|e| anyhow::anyhow!("--lora {src}: {e}"))?
                    .0,
            )
        }
        None => None,
    };
    let draft_lm = a.spec.load_draft(a.model.threads)?;
    let mut draft = match &draft_lm {
        Some(dm) => Some(crate::cmd_spec::bind_draft(dm, &lm)?),
        None => None,
    };
    let ids = encode_prompt(&lm, &prompt, a.chat, a.special)?;
    let sampling = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k,
        top_p: a.top_p,
        min_p: a.min_p,
        repetition_penalty: a.repeat_penalty,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
        penalty_last_n: a.repeat_last_n,
        logit_bias: a.logit_bias.clone(),
        seed: a.seed,
        n_logprobs: a.logprobs,
    };
    if let Some(&(id, _)) = a
        .logit_bias
        .iter()
        .find(|(id, _)| *id as usize >= lm.model.cfg.vocab_size)
    {
        bail!(
            "--logit-bias token id {id} is outside the vocabulary (size {})",
            lm.model.cfg.vocab_size
        );
    }
    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling,
        stop: a.stop.clone(),
        stop_tokens: Vec::new(),
        ignore_eos: a.ignore_eos,
        context: a.ctx,
        prefill_chunk: 512,
        speculative: spec,
    };
    let stream = !a.json;
    let mut stdout = std::io::stdout().lock();
    let t0 = Instant::now();
    let mut first_token_s = None;
    let mut gpu = crate::cmd_device::open(&lm, a.device, a.gpu_layers)?;
    let on_text = |piece: &str| {
        first_token_s.get_or_insert(t0.elapsed().as_secs_f64());
        if stream {
            // A closed stdout (e.g. `| head`) ends generation quietly.
            return stdout
                .write_all(piece.as_bytes())
                .and_then(|_| stdout.flush())
                .is_ok();
        }
        true
    };
    let mut cpu = hangar_engine::BorrowedCpuRunner::new(&lm.model, &lm.pool);
    let base: &mut dyn ModelRunner = match gpu.as_mut() {
        Some(r) => r,
        None => &mut cpu,
    };
    let mut with_adapter;
    let runner: &mut dyn ModelRunner = match &adapter {
        Some(ad) => {
            with_adapter = hangar_engine::AdapterRunner::new(base, ad)
                .map_err(|e| anyhow::anyhow!("--lora: {e}"))?;
            &mut with_adapter
        }
        None => base,
    };
    runner.set_kv_format(a.kv_type)?;
    let g = hangar_engine::generate_on_with_draft(
        runner,
        draft.as_mut(),
        &lm.tokenizer,
        &ids,
        &opts,
        on_text,
    )?;
    if stream {
        let _ = writeln!(stdout);
    }
    let prefill_tps = g.prompt_tokens as f64 / g.prefill_time.as_secs_f64().max(1e-9);
    let decode_tps =
        g.tokens.len().saturating_sub(1) as f64 / g.decode_time.as_secs_f64().max(1e-9);
    if a.json {
        let logprobs: Vec<_> = g
            .sampled
            .iter()
            .map(|s| {
                serde_json::json!({
                    "token": s.id,
                    "text": lm.tokenizer.decode(&[s.id], false),
                    "logprob": s.logprob,
                    "top_logprobs": s.top_logprobs.iter().map(|(id, lp)| serde_json::json!({"token": id, "logprob": lp})).collect::<Vec<_>>(),
                })
            })
            .collect();
        let out = serde_json::json!({
            "text": g.text,
            "tokens": g.tokens,
            "prompt_tokens": g.prompt_tokens,
            "completion_tokens": g.tokens.len(),
            "finish_reason": g.finish,
            "logprobs": if a.logprobs > 0 { serde_json::Value::Array(logprobs) } else { serde_json::Value::Null },
            "timings": {"load_s": load_s, "prefill_tok_s": prefill_tps, "decode_tok_s": decode_tps},
            "speculative": if spec.enabled() { serde_json::to_value(g.spec)? } else { serde_json::Value::Null },
        });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&out)?)?;
    }
    if a.stats {
        eprintln!(
            "load {:.3}s | prompt {} tok, {:.1} tok/s | generated {} tok, {:.1} tok/s | load to first token {:.3}s | finish {:?}",
            load_s,
            g.prompt_tokens,
            prefill_tps,
            g.tokens.len(),
            decode_tps,
            load_s + first_token_s.unwrap_or(0.0),
            g.finish
        );
        if spec.enabled() {
            eprintln!("{}", crate::cmd_spec::stats_line(&g));
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when a driver and GPU
    /// are found, else the CPU).
    #[arg(long, default_value = "cpu", value_parser = crate::cmd_device::parse_device)]
    pub device: hangar_cuda::Device,
    /// With --device cuda: the last N layers (and the output layer) on the GPU, the
    /// others on the CPU, like llama.cpp's -ngl (default: as many as fit).
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// Prompt tokens processed in one batch (0 = skip).
    #[arg(long, default_value_t = 512)]
    pub pp: usize,
    /// Tokens decoded one at a time (0 = skip).
    #[arg(long, default_value_t = 128)]
    pub tg: usize,
    /// Decode the `tg` tokens after a context of this many tokens (llama-bench's `-d`):
    /// decode speed at long contexts, reported as `tg{tg}@d{depth}`.
    #[arg(long, default_value_t = 0)]
    pub depth: usize,
    /// Also decode `tg` tokens in each of this many sequences at once (batched decode,
    /// as a server at this many concurrent streams); 1 = skip.
    #[arg(long, short = 'b', default_value_t = 1)]
    pub batch: usize,
    /// Timed runs per test (after one warm-up); the median is reported.
    #[arg(long, short = 'r', default_value_t = 5)]
    pub runs: usize,
    #[arg(long)]
    pub json: bool,
    /// With --speculative: the prompt to decode (greedy, up to --tg tokens), A/B
    /// against plain decoding in the same run.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// With --speculative: wrap the prompt as a user turn of the chat template.
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub spec: crate::cmd_spec::SpecArgs,
    /// Split the model over this many CPU ranks (threads) and report the share of the
    /// step time spent in all-reduces (see `hangar serve --tensor-parallel`).
    #[arg(long, visible_alias = "tp", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub tensor_parallel: u32,
    /// Split the layers into this many pipeline stages (CPU threads) and report the
    /// stages' idle share beside the schedule's 1 - m/(m + n - 1).
    #[arg(long, visible_alias = "pp-stages", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub pipeline_parallel: u32,
    /// Micro-batches a step is cut into under --pipeline-parallel (at most --batch).
    #[arg(long, default_value_t = 4)]
    pub micro_batches: usize,
    /// Run under LoRA adapters (repeatable; `base` = no adapter): pp and tg use the
    /// first, the batched test gives sequence s the (s mod n)-th, so `--lora base
    /// --lora a.gguf --lora b.gguf -b 8` measures a mixed batch. CPU only.
    #[arg(long = "lora", value_name = "ADAPTER|base")]
    pub lora: Vec<String>,
}

pub fn bench(a: BenchArgs) -> Result<()> {
    let spec = a.spec.config()?;
    let (lm, path, load_s) = a.model.load(hangar_models::Numerics::Fast)?;
    if spec.enabled() {
        let file = a
            .prompt_file
            .as_ref()
            .context("--speculative in bench needs --prompt-file (the task to decode)")?;
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let ids = encode_prompt(&lm, &text, a.chat, false)?;
        let draft_lm = a.spec.load_draft(a.model.threads)?;
        let draft = match &draft_lm {
            Some(dm) => Some(crate::cmd_spec::bind_draft(dm, &lm)?),
            None => None,
        };
        let r = crate::cmd_spec::bench_spec(&lm, draft, &ids, spec, a.tg.max(1), a.runs)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "{}: {:?} K<={}{} | prompt {} tok, generated {} | plain {:.1} tok/s, speculative {:.1} tok/s ({:.2}x) | acceptance {:.1}%, {:.2} tok/step | identical: {} | runs {}",
                file.display(),
                r.mode,
                spec.draft_tokens,
                if spec.adaptive { " adaptive" } else { "" },
                r.prompt_tokens,
                r.generated,
                r.plain_tok_s,
                r.spec_tok_s,
                r.speedup,
                100.0 * r.acceptance,
                r.tokens_per_step,
                r.identical,
                r.runs
            );
        }
        return Ok(());
    }
    let gpu = crate::cmd_device::open(&lm, a.device, a.gpu_layers)?;
    let mut device = match &gpu {
        Some(r) => format!("cuda ({}, {})", r.device_name(), r.arch()),
        None => "cpu".to_string(),
    };
    let mut collective_share = None;
    let mut pipeline_idle = None;
    if a.tensor_parallel > 1 && a.pipeline_parallel > 1 {
        bail!(
            "choose --tensor-parallel or --pipeline-parallel (both at once is not supported yet)"
        );
    }
    if !a.lora.is_empty() && (gpu.is_some() || a.tensor_parallel > 1 || a.pipeline_parallel > 1) {
        bail!("--lora runs on the single-process CPU runner (no --device cuda, --tensor-parallel or --pipeline-parallel)");
    }
    let figures = match gpu {
        Some(_) if a.tensor_parallel > 1 || a.pipeline_parallel > 1 => {
            bail!("--tensor-parallel and --pipeline-parallel run on the CPU today; on GPUs they need NCCL (issue #16)")
        }
        None if a.pipeline_parallel > 1 => {
            let n = a.pipeline_parallel as usize;
            let opts = load_options(a.model.numerics, hangar_models::Numerics::Fast);
            let per_stage = (lm.pool.n_threads() / n).max(1);
            let file = std::sync::Arc::new(hangar_formats::GgufFile::open(&path)?);
            let mut pp =
                hangar_engine::PpCpuRunner::new(file, n, a.micro_batches, per_stage, opts)?;
            device = pp.device();
            let f = bench::run_on(&mut pp, a.pp, a.tg, a.batch, a.runs, a.depth)?;
            pipeline_idle = pp.take_idle_share();
            f
        }
        Some(mut r) => bench::run_on(&mut r, a.pp, a.tg, a.batch, a.runs, a.depth)?,
        None if a.tensor_parallel > 1 => {
            let n = a.tensor_parallel as usize;
            let opts = load_options(a.model.numerics, hangar_models::Numerics::Fast);
            let per_rank = (lm.pool.n_threads() / n).max(1);
            let mut tp = hangar_engine::TpCpuRunner::new(lm.model.gguf(), n, per_rank, opts)?;
            device = tp.device();
            let f = bench::run_on(&mut tp, a.pp, a.tg, a.batch, a.runs, a.depth)?;
            collective_share = tp.take_collective_share();
            f
        }
        None if !a.lora.is_empty() => {
            let shape = hangar_models::LoraShape::of(&lm.model.cfg);
            let mut loaded = Vec::new();
            for src in &a.lora {
                loaded.push(match src.as_str() {
                    "base" => None,
                    s => Some(
                        crate::cmd_lora::load_adapter(s, &shape, a.model.home.clone())
                            .map_err(|e| anyhow::anyhow!("--lora {s}: {e}"))?
                            .0,
                    ),
                });
            }
            let choices: Vec<Option<&hangar_models::LoraAdapter>> =
                loaded.iter().map(Option::as_ref).collect();
            device = format!("cpu, LoRA {}", a.lora.join(" / "));
            let mut runner = hangar_engine::BorrowedCpuRunner::new(&lm.model, &lm.pool);
            bench::run_with_adapters(&mut runner, a.pp, a.tg, a.batch, a.runs, a.depth, &choices)?
        }
        None => {
            let mut runner = hangar_engine::BorrowedCpuRunner::new(&lm.model, &lm.pool);
            bench::run_on(&mut runner, a.pp, a.tg, a.batch, a.runs, a.depth)?
        }
    };
    let report = bench::BenchReport {
        model: path.display().to_string(),
        threads: lm.pool.n_threads(),
        simd: simd_name(),
        figures,
    };
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["load_s"] = serde_json::json!(load_s);
        v["device"] = serde_json::json!(device);
        v["numerics"] = serde_json::json!(format!("{:?}", lm.model.numerics()).to_lowercase());
        v["all_reduce_share"] = serde_json::json!(collective_share);
        v["pipeline_idle_share"] = serde_json::json!(pipeline_idle.map(|(measured, schedule)| {
            serde_json::json!({"measured": measured, "schedule": schedule})
        }));
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model: {}  device: {device}  threads: {}  simd: {}  numerics: {}  load: {:.3}s",
        report.model,
        report.threads,
        report.simd,
        format!("{:?}", lm.model.numerics()).to_lowercase(),
        load_s
    );
    println!("| test     | tok/s (median) |   min   |   max   | runs |");
    println!("|----------|----------------|---------|---------|------|");
    for f in &report.figures {
        println!(
            "| {:<8} | {:>14.1} | {:>7.1} | {:>7.1} | {:>4} |",
            f.test, f.median_tok_s, f.min_tok_s, f.max_tok_s, f.runs
        );
    }
    if let Some((measured, schedule)) = pipeline_idle {
        println!(
            "pipeline idle share: measured {:.1}%, schedule 1 - m/(m + n - 1) = {:.1}% (m micro-batches per step, n = {} stages)",
            100.0 * measured,
            100.0 * schedule,
            a.pipeline_parallel
        );
    }
    if let Some(share) = collective_share {
        println!(
            "all-reduce share of the step time (rank 0, waiting for the other ranks included): {:.1}%",
            100.0 * share
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Window size in tokens (BOS + ctx-1 text tokens).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    #[arg(long)]
    pub json: bool,
    /// Where the forward pass runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu", value_parser = crate::cmd_device::parse_device)]
    pub device: hangar_cuda::Device,
    /// With --device cuda: the last N layers (and the output layer) on the GPU, the
    /// others on the CPU, like llama.cpp's -ngl (default: as many as fit).
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// How the KV cache stores K and V: f16, q8_0 or q4_0 (the quantized types need
    /// fast numerics, the default with them).
    #[arg(long, default_value = "f16", value_parser = parse_kv_type)]
    pub kv_type: KvFormat,
    /// Also score with this KV type and compare: both perplexities, the mean / p99 /
    /// max KL divergence of --kv-type's next-token distributions from this one's,
    /// and how often both rank the same token first (CPU).
    #[arg(long, value_parser = parse_kv_type)]
    pub kl_base: Option<KvFormat>,
}

/// Parses `--kv-type` values.
pub fn parse_kv_type(s: &str) -> Result<KvFormat, String> {
    KvFormat::parse(s).ok_or_else(|| format!("unknown KV type {s:?} (use f16, q8_0 or q4_0)"))
}

pub fn perplexity(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    // llama.cpp's arithmetic by default; the quantized KV types run on the fast path.
    let quantized_kv = a.kv_type != KvFormat::F16 || a.kl_base.is_some_and(|b| b != KvFormat::F16);
    let default_numerics = if quantized_kv {
        hangar_models::Numerics::Fast
    } else {
        hangar_models::Numerics::Ggml
    };
    let (lm, _, _) = a.model.load(default_numerics)?;
    let bos = lm
        .tokenizer
        .bos_id()
        .context("the model has no BOS token")?;
    let toks = lm.tokenizer.encode(&text, false, false);
    let quiet = a.json;
    let progress = |done: usize, total: usize| {
        if !quiet {
            eprint!("\rwindow {done}/{total}");
        }
    };
    if let Some(base) = a.kl_base {
        if a.device != hangar_cuda::Device::Cpu {
            bail!("--kl-base compares KV types on the CPU; drop --device");
        }
        let r = perplexity::compare_kv_formats(
            &lm.model, &lm.pool, bos, &toks, a.ctx, base, a.kv_type, progress,
        )?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            eprintln!();
            println!(
                "KV {} vs {}: perplexity {:.4} vs {:.4} ({:+.3}%), KL mean {:.6} p99 {:.6} max {:.6} nats, same top token {:.2}% over {} tokens",
                r.test,
                r.base,
                r.ppl_test,
                r.ppl_base,
                100.0 * (r.ppl_test / r.ppl_base - 1.0),
                r.kl_mean,
                r.kl_p99,
                r.kl_max,
                100.0 * r.top1_agreement,
                r.scored_tokens
            );
        }
        return Ok(());
    }
    let r = match crate::cmd_device::open(&lm, a.device, a.gpu_layers)? {
        Some(mut gpu) => {
            gpu.set_kv_format(a.kv_type)?;
            perplexity::perplexity_on(&mut gpu, bos, &toks, a.ctx, progress)?
        }
        None => {
            let mut cpu = hangar_engine::BorrowedCpuRunner::new(&lm.model, &lm.pool);
            cpu.set_kv_format(a.kv_type)?;
            perplexity::perplexity_on(&mut cpu, bos, &toks, a.ctx, progress)?
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        eprintln!();
        println!(
            "perplexity {:.4} (mean NLL {:.4}) over {} tokens in {} windows of {}",
            r.ppl, r.nll, r.scored_tokens, r.windows, r.ctx
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    pub text: String,
    /// Parse special-token text (<start_of_turn> ...).
    #[arg(long)]
    pub special: bool,
    /// Do not add BOS.
    #[arg(long)]
    pub no_bos: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn tokenize(a: TokenizeArgs) -> Result<()> {
    let (lm, _, _) = a.model.load(hangar_models::Numerics::Fast)?;
    let ids = lm.tokenizer.encode(&a.text, !a.no_bos, a.special);
    if a.json {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&i| lm.tokenizer.id_to_token(i).unwrap_or("").to_string())
            .collect();
        println!(
            "{}",
            serde_json::json!({"ids": ids, "pieces": pieces, "count": ids.len()})
        );
    } else {
        for &i in &ids {
            println!("{i:>8}  {:?}", lm.tokenizer.id_to_token(i).unwrap_or(""));
        }
        println!("{} tokens", ids.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_kernels::SimdLevel;
    use hangar_models::{Numerics, Packing};

    fn env(vars: &[(&str, &str)]) -> KernelEnv {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KernelEnv::from_vars(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn unset_variables_give_the_defaults() {
        let e = env(&[]);
        assert_eq!(e.numerics, None);
        assert_eq!(e.packing, Packing::Auto);
        assert_eq!(e.simd, None);
        assert_eq!(e.amx, None);
    }

    #[test]
    fn each_variable_becomes_its_option() {
        let e = env(&[
            ("HANGAR_NUMERICS", "ggml"),
            ("HANGAR_PACK", "all"),
            ("HANGAR_SIMD", "avx2"),
        ]);
        assert_eq!(e.numerics, Some(Numerics::Ggml));
        assert_eq!(e.packing, Packing::All);
        assert_eq!(e.simd, Some(SimdLevel::Avx2));
        assert_eq!(env(&[("HANGAR_AMX", "0")]).amx, Some(false));
        assert_eq!(env(&[("HANGAR_AMX", "on")]).amx, Some(true));
        assert_eq!(env(&[("HANGAR_AMX", "maybe")]).amx, None);
        assert_eq!(env(&[("HANGAR_PACK", "0")]).packing, Packing::None);
        assert_eq!(
            env(&[("HANGAR_SIMD", "scalar")]).simd,
            Some(SimdLevel::Scalar)
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let e = env(&[
            ("HANGAR_NUMERICS", ""),
            ("HANGAR_PACK", " "),
            ("HANGAR_SIMD", ""),
        ]);
        assert_eq!(e.numerics, None);
        assert_eq!(e.packing, Packing::Auto);
        assert_eq!(e.simd, None);
    }

    #[test]
    fn unknown_values_keep_the_defaults() {
        let e = env(&[
            ("HANGAR_NUMERICS", "turbo"),
            ("HANGAR_PACK", "yes"),
            ("HANGAR_SIMD", "neon"),
        ]);
        assert_eq!(e.numerics, None);
        assert_eq!(e.packing, Packing::Auto);
        assert_eq!(e.simd, None);
    }
}
