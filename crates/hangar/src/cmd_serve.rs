//! `hangar serve`: load a model (unless `--no-model`), open the registry, start the
//! engine loop, serve the HTTP APIs until SIGTERM, then drain in-flight requests.

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_engine::{Engine, EngineConfig, LoadedModel};
use hangar_serve::{AppState, ServeConfig, Services};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Also serve KServe V2 / Open Inference Protocol over gRPC on this port, same
    /// host (0 = any free port, logged); off unless given.
    #[arg(long)]
    pub grpc_port: Option<u16>,
    /// Kernel threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Arithmetic: `ggml` (llama.cpp's exact results) or `fast` (Hangar's packed
    /// kernels; default: $HANGAR_NUMERICS, else fast for serving).
    #[arg(long, value_enum)]
    pub numerics: Option<crate::cmd_model::NumericsArg>,
    /// Where the model runs: cpu, cuda, cuda:N, or auto (CUDA when a driver and GPU
    /// are found, else the CPU).
    #[arg(long, default_value = "cpu", value_parser = crate::cmd_device::parse_device)]
    pub device: hangar_cuda::Device,
    /// With --device cuda: the last N layers (and the output layer) on the GPU, the
    /// others on the CPU, like llama.cpp's -ngl (default: as many as fit).
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// KV cache memory, e.g. 1GiB, 512MiB or bytes (default 1GiB).
    #[arg(long)]
    pub kv_memory: Option<String>,
    /// Size the KV cache to hold this many tokens across all requests instead.
    #[arg(long, conflicts_with = "kv_memory")]
    pub max_tokens_in_flight: Option<usize>,
    /// Tokens per model step (decode tokens plus prefill chunks).
    #[arg(long, default_value_t = 512)]
    pub max_batch_tokens: usize,
    /// Requests running at once (more wait in the queue).
    #[arg(long, default_value_t = 64)]
    pub max_running: usize,
    /// Largest share of --max-running that one request's sequences (`n`, a KServe
    /// batch of prompts) may take; larger requests get a 400.
    #[arg(long, default_value_t = 0.25)]
    pub max_request_share: f64,
    /// Cap on prompt + generated tokens per request (default: the model's context).
    #[arg(long)]
    pub max_model_len: Option<usize>,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Split the model over this many ranks (Megatron tensor parallelism: heads and
    /// FFN width divided, two all-reduces a layer). CPU ranks on threads today: the
    /// code path GPUs will use, not a speed-up on one CPU.
    #[arg(long, visible_alias = "tp", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub tensor_parallel: u32,
    /// Split the layers into this many pipeline stages (CPU threads today), each
    /// step cut into --micro-batches micro-batches that flow through them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64), conflicts_with = "tensor_parallel")]
    pub pipeline_parallel: u32,
    /// Micro-batches per step under --pipeline-parallel.
    #[arg(long, default_value_t = 4)]
    pub micro_batches: usize,
    /// How the KV cache stores K and V: f16, q8_0 (1.9x the tokens per byte) or q4_0
    /// (3.6x); the quantized types run on the CPU with fast numerics.
    #[arg(long, default_value = "f16", value_parser = crate::cmd_model::parse_kv_type)]
    pub kv_type: hangar_models::kv::KvFormat,
    /// Do not share identical prompt prefixes between requests.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Accepted API key (repeatable); requests then need `Authorization: Bearer KEY`.
    #[arg(
        long = "api-key",
        env = "HANGAR_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Requests waiting for admission beyond which new ones are refused with 503.
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Name clients use for the model (default: the file name without extension).
    #[arg(long)]
    pub model_name: Option<String>,
    /// Jinja chat template file to use instead of the model's own (Hugging Face
    /// conventions: messages, add_generation_prompt, bos_token; a template that reads
    /// `tools` describes a request's tools to the model itself).
    #[arg(long, value_name = "FILE")]
    pub chat_template: Option<PathBuf>,
    /// Do not mount the model registry's HTTP API (/v1/registry/...).
    #[arg(long)]
    pub no_registry_api: bool,
    /// Do not mount the MLflow-compatible tracking API (/api/2.0/mlflow/...).
    #[arg(long)]
    pub no_tracking_api: bool,
    /// Seconds a client has to send a request head (also the keep-alive idle timeout).
    #[arg(long, default_value = "10", value_parser = parse_secs)]
    pub header_timeout: Duration,
    /// Seconds a client has to send the whole request body once its head arrived.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    pub body_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Seconds to drain in-flight requests after SIGTERM / Ctrl-C before the remaining
    /// connections are closed and the process exits.
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub shutdown_timeout: Duration,
    /// Tokenize special-token text (`<start_of_turn>`, `<eos>`...) in prompts and chat
    /// message content as the special tokens, as before; by default it is plain text.
    #[arg(long)]
    pub allow_special_in_prompt: bool,
    /// Do not mount the vector database's Qdrant API (/collections/...).
    #[arg(long)]
    pub no_vector_api: bool,
    /// A LoRA adapter to serve beside the model, NAME=SOURCE (a GGUF adapter file, a
    /// PEFT folder, or a registry adapter reference); repeatable. Requests pick it
    /// with "model": "MODEL:NAME" (or "NAME"); with --allow-runtime-lora more load at
    /// run time through POST /v1/load_lora_adapter. CPU runner with fast numerics only.
    #[arg(long = "lora", value_name = "NAME=SOURCE", value_parser = parse_lora)]
    pub lora: Vec<(String, String)>,
    /// Allow POST /v1/load_lora_adapter and /v1/unload_lora_adapter (off by default,
    /// as vLLM's VLLM_ALLOW_RUNTIME_LORA_UPDATING: loading makes the server read a
    /// file or registry object its client names; pair it with --api-key).
    #[arg(long)]
    pub allow_runtime_lora: bool,
    /// Serve without a model: health, metrics, the registry and vector APIs only.
    #[arg(long, conflicts_with = "model")]
    pub no_model: bool,
    /// Seconds between the samples of the dashboard's history (/ui, /v1/monitor/timeseries).
    #[arg(long, default_value = "2", value_parser = parse_secs)]
    pub sample_interval: Duration,
    #[command(flatten)]
    pub monitor: crate::cmd_monitor::MonitorArgs,
    /// Speculative decoding in the batch (`--speculative ngram`: prompt lookup, per
    /// sequence, while at most --spec-max-batch sequences run).
    #[command(flatten)]
    pub spec: crate::cmd_spec::SpecArgs,
    /// Also serve this embedding model (registry name or Hugging Face folder) on
    /// POST /v1/embeddings and POST /embed; alone with --no-model.
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Poll the registry stage the model was started from (`--model name@production`)
    /// and reload when it names another version.
    #[arg(long)]
    pub reload_on_stage_change: bool,
    /// Seconds between those polls.
    #[arg(long, default_value = "5", value_parser = parse_secs)]
    pub reload_poll: Duration,
    /// Seconds between SIGTERM and closing the listener, during which readiness probes
    /// already fail but requests are still served (lets a load balancer notice).
    #[arg(long, default_value = "0", value_parser = parse_delay)]
    pub drain_delay: Duration,
    /// Hangar home, set from the global --home.
    #[arg(skip)]
    pub home: Option<PathBuf>,
    /// The registry version the model was resolved to, with the reference as given
    /// (set by main when --model names the registry).
    #[arg(skip)]
    pub registry_origin: Option<(String, crate::model_path::RegistryOrigin)>,
}

/// Parses `--lora NAME=SOURCE`.
fn parse_lora(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, p)) if !n.trim().is_empty() && !p.trim().is_empty() => {
            Ok((n.trim().to_string(), p.trim().to_string()))
        }
        _ => Err(format!(
            "{s:?}: expected NAME=SOURCE (e.g. --lora sql=adapters/sql.gguf)"
        )),
    }
}

/// Loads the `--lora` adapters for `engine` into the set requests choose from; the
/// same loader serves POST /v1/load_lora_adapter.
fn start_adapters(
    args: &ServeArgs,
    engine: &Engine,
    served: &str,
) -> Result<hangar_serve::lora_api::Adapters> {
    use hangar_serve::lora_api::AdapterLoader;
    let loader = std::sync::Arc::new(crate::cmd_lora::AdapterFiles {
        home: args.home.clone(),
        served: args
            .registry_origin
            .as_ref()
            .map(|(_, o)| o.reference.split('@').next().unwrap_or("").to_string()),
    });
    let adapters = if args.allow_runtime_lora {
        hangar_serve::lora_api::Adapters::new(loader.clone())
    } else {
        hangar_serve::lora_api::Adapters::default()
    };
    if args.lora.is_empty() {
        return Ok(adapters);
    }
    let Some(shape) = engine.info().lora.clone() else {
        bail!(
            "--lora needs the single-process CPU runner with fast numerics (this model runs on {} without an adapter path)",
            engine.info().device
        );
    };
    for (name, source) in &args.lora {
        if name == served {
            bail!("--lora {name}={source}: {name:?} is the model's own name; give the adapter another");
        }
        let t0 = Instant::now();
        let adapter = loader
            .load(source, &shape)
            .map_err(|e| anyhow::anyhow!("--lora {name}={source}: {e}"))?;
        engine
            .check_adapter(&adapter)
            .with_context(|| format!("--lora {name}={source}"))?;
        eprintln!(
            "hangar serve: LoRA adapter {name:?} from {source} ({} matrices, rank {}) in {:.2}s; requests use it as \"{served}:{name}\"",
            adapter.n_matrices(),
            adapter.max_rank(),
            t0.elapsed().as_secs_f64()
        );
        adapters
            .insert(name, source, adapter)
            .map_err(|e| anyhow::anyhow!("--lora {name}={source}: {}", e.message))?;
    }
    Ok(adapters)
}

/// Parses a number of seconds that may be zero.
fn parse_delay(s: &str) -> std::result::Result<Duration, String> {
    if s.trim().parse::<f64>() == Ok(0.0) {
        return Ok(Duration::ZERO);
    }
    parse_secs(s)
}

/// Parses a positive number of seconds (`10`, `0.5`).
fn parse_secs(s: &str) -> std::result::Result<Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0 and 86400 (e.g. 10 or 0.5)"
        )),
    }
}

/// Parses `1GiB`, `512MiB`, `2G`, `300000000`.
pub(crate) fn parse_bytes(s: &str) -> Result<usize> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .with_context(|| format!("--kv-memory {s:?}: expected a size such as 1GiB or 512MiB"))?;
    let mul: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        other => bail!("--kv-memory {s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB)"),
    };
    Ok((v * mul) as usize)
}

fn default_name(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string()
}

/// Loads the model and starts the engine; returns the engine and its served name.
pub(crate) fn start_engine(args: &ServeArgs, model_path: &Path) -> Result<(Engine, String)> {
    let mut cfg = EngineConfig {
        block_size: args.block_size,
        max_tokens_in_flight: args.max_tokens_in_flight,
        max_batch_tokens: args.max_batch_tokens,
        max_running: args.max_running,
        max_model_len: args.max_model_len,
        prefix_caching: !args.no_prefix_cache,
        max_request_share: args.max_request_share,
        speculative: args.spec.config()?,
        kv_format: args.kv_type,
        ..EngineConfig::default()
    };
    if let Some(m) = &args.kv_memory {
        cfg.kv_memory_bytes = parse_bytes(m)?;
    }
    let template_file = match &args.chat_template {
        Some(p) => Some((
            std::fs::read_to_string(p).with_context(|| {
                format!(
                    "reading the chat template {} (--chat-template)",
                    p.display()
                )
            })?,
            format!("file:{}", p.display()),
        )),
        None => None,
    };
    let t0 = Instant::now();
    if args.tensor_parallel > 1 || args.pipeline_parallel > 1 {
        let (engine, threads) = start_tensor_parallel(args, model_path, cfg)?;
        return finish_engine(args, model_path, engine, template_file, t0, threads);
    }
    let lm = LoadedModel::load_with(
        model_path,
        args.threads,
        crate::cmd_model::load_options(args.numerics, hangar_models::Numerics::Fast),
    )
    .with_context(|| format!("loading {}", model_path.display()))?;
    let threads = lm.pool.n_threads();
    // The draft model runs on the CPU kernels beside the target (wherever that runs).
    let draft = match args.spec.load_draft(threads)? {
        Some(dm) => {
            let hangar_engine::LoadedModel {
                model,
                tokenizer,
                pool,
            } = dm;
            let runner: Box<dyn hangar_engine::ModelRunner> =
                Box::new(hangar_engine::CpuRunner::new(model, pool));
            Some((runner, tokenizer))
        }
        None => None,
    };
    let gpu = crate::cmd_device::open_with(&lm, args.device, args.gpu_layers, cfg.kv_memory_bytes)?;
    let template = lm
        .model
        .gguf()
        .get_str("tokenizer.chat_template")
        .ok()
        .map(str::to_string);
    let hangar_engine::LoadedModel {
        model,
        tokenizer,
        pool,
    } = lm;
    let runner: Box<dyn hangar_engine::ModelRunner> = match gpu {
        Some(r) => Box::new(r),
        None => Box::new(hangar_engine::CpuRunner::new(model, pool)),
    };
    let engine = Engine::start_with_draft(runner, tokenizer, template, cfg, draft)
        .context("starting the engine")?;
    finish_engine(args, model_path, engine, template_file, t0, threads)
}

/// `--tensor-parallel N` / `--pipeline-parallel N`: the model split over N CPU ranks
/// or stages on threads (the threads of `--threads` shared out), driven by one
/// engine loop.
fn start_tensor_parallel(
    args: &ServeArgs,
    model_path: &Path,
    cfg: EngineConfig,
) -> Result<(Engine, usize)> {
    let n = args.tensor_parallel.max(args.pipeline_parallel) as usize;
    if args.device != hangar_cuda::Device::Cpu {
        bail!("--tensor-parallel and --pipeline-parallel run on the CPU today; on GPUs they need NCCL (issue #16): drop --device or the split");
    }
    let opts = crate::cmd_model::load_options(args.numerics, hangar_models::Numerics::Fast);
    if opts.numerics == hangar_models::Numerics::Ggml {
        bail!("--tensor-parallel needs --numerics fast (llama.cpp's arithmetic is not split)");
    }
    let file = hangar_formats::GgufFile::open(model_path)
        .with_context(|| format!("opening {}", model_path.display()))?;
    let tokenizer = hangar_tokenizer::Tokenizer::from_gguf(&file)
        .with_context(|| format!("reading the tokenizer of {}", model_path.display()))?;
    let template = file
        .get_str("tokenizer.chat_template")
        .ok()
        .map(str::to_string);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let threads = if args.threads == 0 {
        cores
    } else {
        args.threads
    };
    let per_rank = (threads / n).max(1);
    let runner: Box<dyn hangar_engine::ModelRunner> = if args.pipeline_parallel > 1 {
        Box::new(
            hangar_engine::PpCpuRunner::new(
                std::sync::Arc::new(file),
                n,
                args.micro_batches,
                per_rank,
                opts,
            )
            .with_context(|| format!("splitting {} into {n} stages", model_path.display()))?,
        )
    } else {
        Box::new(
            hangar_engine::TpCpuRunner::new(&file, n, per_rank, opts)
                .with_context(|| format!("splitting {} over {n} ranks", model_path.display()))?,
        )
    };
    let engine = Engine::start_with_runner(runner, tokenizer, template, cfg)
        .context("starting the split engine")?;
    Ok((engine, per_rank * n))
}

/// The common end of start-up: chat template override, grammar warm-up, the log line.
fn finish_engine(
    args: &ServeArgs,
    model_path: &Path,
    mut engine: Engine,
    template_file: Option<(String, String)>,
    t0: Instant,
    threads: usize,
) -> Result<(Engine, String)> {
    if let Some((src, origin)) = template_file {
        engine
            .set_chat_template(&src, origin)
            .context("the --chat-template file is not a usable Jinja template")?;
    }
    // Structured output's token trie, built in the background.
    engine.warm_grammar();
    let info = engine.info().clone();
    let name = args
        .model_name
        .clone()
        .unwrap_or_else(|| default_name(model_path));
    eprintln!(
        "hangar serve: {} loaded in {:.2}s as {name:?} on {} ({threads} threads); KV cache {} MiB ({}) in blocks of {} tokens {:?}, max context {} tokens; chat template {}{}",
        model_path.display(),
        t0.elapsed().as_secs_f64(),
        info.device,
        info.kv_bytes >> 20,
        args.kv_type.name(),
        info.kv_block_size,
        info.kv_blocks,
        info.max_model_len,
        engine.chat_template_origin().unwrap_or("unusable"),
        if engine.chat_supports_tools() { " (renders tools)" } else { "" },
    );
    let spec = args.spec.config()?;
    if spec.enabled() {
        let how = match (spec.mode, &args.spec.draft_model) {
            (hangar_engine::spec::SpecMode::Draft, Some(p)) => {
                format!("the draft model {}", p.display())
            }
            _ => "prompt lookup".to_string(),
        };
        eprintln!(
            "hangar serve: speculative decoding by {how}, up to {} draft tokens{}, while at most {} sequences run",
            spec.draft_tokens,
            if spec.adaptive { " (adaptive)" } else { "" },
            spec.max_batch,
        );
    }
    Ok((engine, name))
}

/// The monitor's refusal and jailbreak example sets, embedded by `embedder`.
fn quality_examples(embedder: &hangar_engine::Embedder) -> Result<hangar_monitor::QualityExamples> {
    use hangar_engine::{EmbedInput, EmbedRequest};
    let embed = |texts: &[&str]| {
        embedder
            .embed_blocking(EmbedRequest {
                inputs: texts
                    .iter()
                    .map(|t| EmbedInput::Text(t.to_string()))
                    .collect(),
                normalize: Some(true),
                truncate: true,
                ..Default::default()
            })
            .map(|e| e.vectors)
            .context("embedding the quality monitor's examples")
    };
    Ok(hangar_monitor::QualityExamples {
        refusals: embed(hangar_monitor::quality::REFUSAL_EXAMPLES)?,
        jailbreaks: embed(hangar_monitor::quality::JAILBREAK_EXAMPLES)?,
        threshold: 0.7,
    })
}

/// Runs the server; `model_path` is `None` with `--no-model`.
pub fn run_serve(args: ServeArgs, model_path: Option<PathBuf>) -> Result<()> {
    let keys: Vec<String> = args
        .api_keys
        .iter()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
        .collect();
    let mut services = Services::default();
    match &model_path {
        Some(path) => {
            let (engine, name) = start_engine(&args, path)?;
            let adapters = start_adapters(&args, &engine, &name)?;
            services = services.with_inference(engine, name).with_lora(adapters);
            // From the registry: name the version everywhere and allow reloads.
            if let Some((started, origin)) = &args.registry_origin {
                let (reg_name, version) = origin
                    .reference
                    .rsplit_once('@')
                    .unwrap_or((origin.reference.as_str(), "0"));
                let version = hangar_serve::ModelVersion {
                    name: reg_name.to_string(),
                    version: version.parse().unwrap_or(0),
                    sha256: origin.sha256.clone(),
                };
                let reloads = hangar_serve::Reloads {
                    loader: std::sync::Arc::new(crate::serve_reload::RegistryLoader::new(
                        args.clone(),
                        started,
                    )),
                    watch: args.reload_on_stage_change.then_some(args.reload_poll),
                };
                eprintln!(
                    "hangar serve: serving {}; POST /admin/models/{}/reload switches versions{}",
                    version.reference(),
                    args.model_name.as_deref().unwrap_or(""),
                    if args.reload_on_stage_change {
                        format!(", and {started} is polled every {:?}", args.reload_poll)
                    } else {
                        String::new()
                    }
                );
                services = services.with_registry_version(version, Some(reloads));
            } else if args.reload_on_stage_change {
                bail!(
                    "--reload-on-stage-change needs --model to name a registry model (name@stage)"
                );
            }
        }
        None if !args.lora.is_empty() => bail!("--lora needs a model (not --no-model)"),
        None => eprintln!("hangar serve: no model (--no-model); inference APIs are off"),
    }
    if let Some(reference) = &args.embedding_model {
        let embedder =
            crate::cmd_embed::start_embedder(reference, args.home.clone(), args.threads, 32)?;
        eprintln!(
            "hangar serve: embeddings from {:?} on /v1/embeddings and /embed",
            embedder.model().name()
        );
        services = services.with_embeddings(embedder);
    }
    // The registry's HTTP API (list/show/promote...), guarded by registry tokens and roles.
    if !args.no_registry_api {
        match hangar_registry::Registry::open(args.home.clone()) {
            Ok(reg) => {
                eprintln!("hangar serve: registry API on {}", reg.root().display());
                services = services.with_registry(reg);
            }
            Err(e) => eprintln!("hangar serve: registry API not mounted: {e}"),
        }
    }
    // Managed API keys (`hangar keys`) live in the registry's database.
    match hangar_registry::KeyStore::open(args.home.clone()) {
        Ok(keys) => {
            let n = keys.list().map(|l| l.len()).unwrap_or(0);
            if n > 0 {
                eprintln!("hangar serve: {n} managed API key(s); keys are required");
            }
            services = services.with_keys(keys);
        }
        Err(e) => eprintln!("hangar serve: managed API keys not available: {e}"),
    }
    if let Some(m) = args.monitor.open(args.home.as_deref())? {
        services = services.with_monitor(m);
    }
    // Refusal and jailbreak examples for the quality monitor, embedded once.
    if let (Some(m), Some(e)) = (&services.monitor, &services.embeddings) {
        m.set_quality_examples(quality_examples(e)?);
    }
    // The vector database (Qdrant's REST API at /collections), under <home>/vector.
    if !args.no_vector_api {
        let home = args
            .home
            .clone()
            .unwrap_or_else(hangar_registry::default_home);
        match hangar_vector::VectorDb::open_in_home(&home) {
            Ok(db) => {
                eprintln!(
                    "hangar serve: vector database (Qdrant API) on {}",
                    db.root().display()
                );
                let db = std::sync::Arc::new(db);
                db.start_checkpoints(Duration::from_secs(60));
                services = services.with_vector(db);
            }
            Err(e) => eprintln!("hangar serve: vector database not mounted: {e}"),
        }
    }
    // Experiment tracking (MLflow-compatible API) in <home>/track.
    if !args.no_tracking_api {
        let home = args
            .home
            .clone()
            .unwrap_or_else(hangar_registry::default_home);
        match hangar_track::Tracker::open(&home) {
            Ok(t) => {
                eprintln!(
                    "hangar serve: tracking API (MLflow) on {}",
                    t.root().display()
                );
                services = services.with_tracking(t);
            }
            Err(e) => eprintln!("hangar serve: tracking API not mounted: {e}"),
        }
    }
    if !keys.is_empty() {
        eprintln!("hangar serve: API keys required on every route but health and metrics");
    }
    let state = AppState::new(
        services,
        ServeConfig {
            api_keys: keys,
            max_body_bytes: args.max_body_bytes,
            max_queue: args.max_queue,
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            max_connections: args.max_connections as usize,
            shutdown_timeout: args.shutdown_timeout,
            allow_special_in_prompt: args.allow_special_in_prompt,
            sample_interval: args.sample_interval,
            drain_delay: args.drain_delay,
        },
    );
    let addr = format!("{}:{}", args.host, args.port);
    let monitor = state.monitor.clone();
    let vector = state.vector.clone();
    let grpc_addr = args.grpc_port.map(|p| format!("{}:{p}", args.host));
    hangar_serve::serve_blocking_with_grpc(state, &addr, grpc_addr.as_deref(), |l| {
        eprintln!("hangar serve: listening on http://{}", l.http);
        if let Some(g) = l.grpc {
            eprintln!("hangar serve: KServe V2 gRPC on {g}");
        }
    })
    .with_context(|| format!("serving on {addr}"))?;
    if let Some(m) = monitor {
        // Whatever the request log still has queued goes to disk before exit.
        m.close();
    }
    if let Some(db) = vector {
        // Fold the logs and save the graphs, so the next start reads them instead
        // of rebuilding (acknowledged writes are already safe in the logs).
        if let Err(e) = db.checkpoint_all() {
            eprintln!("hangar serve: vector checkpoint on shutdown failed: {e}");
        }
    }
    eprintln!("hangar serve: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_sizes() {
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("1000").unwrap(), 1000);
        assert_eq!(parse_bytes("2G").unwrap(), 2_000_000_000);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("1XB").is_err());
    }

    #[test]
    fn parses_positive_seconds() {
        assert_eq!(parse_secs("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_secs("0.5").unwrap(), Duration::from_millis(500));
        for bad in ["0", "-1", "NaN", "inf", "soon", "1e9"] {
            assert!(parse_secs(bad).is_err(), "{bad}");
        }
    }
}
