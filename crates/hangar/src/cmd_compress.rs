//! Compression commands: quantize, imatrix, prune, lowrank, eval. Each compression
//! command writes a new model file and ends with `eval` of it against its input.

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_compress::eval::{self, EvalModel, EvalOptions, EvalReport};
use hangar_compress::lowrank::{self, LowrankOptions, RankRule, Store};
use hangar_compress::prune::{self, PruneMethod, PruneOptions};
use hangar_compress::quantize::{self, QuantizeOptions};
use hangar_compress::{progress, tasks, Imatrix, KeepRule, OutFormat, SourceModel};
use hangar_formats::GgmlType;
use hangar_kernels::ThreadPool;
use std::path::{Path, PathBuf};

/// The quality report every compression command ends with.
#[derive(Args, Debug, Clone)]
pub struct EvalFlags {
    /// Skip the comparison against the input.
    #[arg(long)]
    pub no_eval: bool,
    /// Text to measure perplexity, KL and agreement on (default: a built-in text).
    #[arg(long, value_name = "TEXT")]
    pub eval_file: Option<PathBuf>,
    /// Multiple-choice tasks (JSON lines) to score as well.
    #[arg(long, value_name = "FILE.jsonl")]
    pub eval_tasks: Option<PathBuf>,
    /// Window length for perplexity (BOS + ctx-1 tokens; the second half is scored).
    #[arg(long, default_value_t = 512)]
    pub eval_ctx: usize,
    /// Score at most this many windows.
    #[arg(long)]
    pub eval_windows: Option<usize>,
    /// Skip the prefill/decode speed measurement.
    #[arg(long)]
    pub no_speed: bool,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

/// `--format`: what a compression command writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FormatArg {
    /// One GGUF file (any type).
    #[default]
    Gguf,
    /// A Hugging Face folder OUT/ holding model.safetensors, config.json and the
    /// tokenizer (tokenizer.model or tokenizer.json, tokenizer_config.json); float
    /// tensors only (F32 norms, F16/BF16 matrices).
    Safetensors,
}

impl From<FormatArg> for OutFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Gguf => OutFormat::Gguf,
            FormatArg::Safetensors => OutFormat::Safetensors,
        }
    }
}

fn parse_type(s: &str) -> Result<GgmlType, String> {
    GgmlType::from_name(s)
        .filter(|t| hangar_compress::policy::TARGETS.contains(t))
        .ok_or_else(|| {
            format!("unsupported type {s:?} (use Q8_0, Q6_K, Q5_K, Q5_0, Q4_K, Q4_0, F16 or BF16)")
        })
}

#[derive(Args, Debug)]
#[command(after_help = FORMAT_HELP)]
pub struct QuantizeArgs {
    /// Input model: a GGUF file, or a Hugging Face safetensors checkpoint (a folder, or
    /// a .safetensors file, with config.json and tokenizer.json/tokenizer.model beside).
    pub input: PathBuf,
    /// Output: a GGUF file, or with --format safetensors a folder (created if missing).
    pub output: PathBuf,
    /// Target type; norms stay F32, embeddings/output and some attn_v/ffn_down get more
    /// bits. With --format safetensors: F16 or BF16.
    #[arg(long = "type", value_parser = parse_type)]
    pub ty: GgmlType,
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Gguf)]
    pub format: FormatArg,
    /// Pin tensors: PATTERN keeps the source type, PATTERN=TYPE forces one (`*` wildcard; repeatable).
    #[arg(long)]
    pub keep: Vec<KeepRule>,
    /// Importance matrix from `hangar imatrix` (weights rounding errors by activation energy).
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// No mix: every matrix gets --type (K-quant fallbacks still apply).
    #[arg(long)]
    pub pure: bool,
    /// Print the type chosen for every tensor.
    #[arg(long, short = 'v')]
    pub verbose: bool,
    #[command(flatten)]
    pub eval: EvalFlags,
}

#[derive(Args, Debug)]
pub struct ImatrixArgs {
    /// Model to collect activation statistics with (GGUF or safetensors).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Calibration text.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    /// Output file.
    #[arg(long, short = 'o', default_value = "imatrix.gguf")]
    pub output: PathBuf,
    /// Tokens per chunk (BOS included).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Use at most this many chunks.
    #[arg(long)]
    pub chunks: Option<usize>,
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum MethodArg {
    Magnitude,
    Wanda,
}

#[derive(Args, Debug)]
#[command(after_help = FORMAT_HELP)]
pub struct PruneArgs {
    /// Input model (GGUF, or a safetensors checkpoint as for quantize).
    pub input: PathBuf,
    /// Output: a GGUF file, or with --format safetensors a folder.
    pub output: PathBuf,
    /// Output format (safetensors: every tensor dense, zeros stored as zeros).
    #[arg(long, value_enum, default_value_t = FormatArg::Gguf)]
    pub format: FormatArg,
    #[arg(long, value_enum, default_value_t = MethodArg::Magnitude)]
    pub method: MethodArg,
    /// Fraction of each row's weights to zero.
    #[arg(long, default_value_t = 0.5)]
    pub sparsity: f64,
    /// Semi-structured N:M pattern, e.g. 2:4 (overrides --sparsity).
    #[arg(long, value_name = "N:M", value_parser = parse_nm)]
    pub structured: Option<(usize, usize)>,
    /// Tensors to prune (comma-separated patterns; default: every linear layer).
    #[arg(long, default_value = prune::DEFAULT_INCLUDE)]
    pub tensors: String,
    /// Calibration text for Wanda (activation norms).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Or activation statistics from `hangar imatrix`.
    #[arg(long, conflicts_with = "file")]
    pub imatrix: Option<PathBuf>,
    /// Storage type of pruned tensors (default: keeps zeros exact, close to the input's).
    /// With --format safetensors: the type of every matrix, F16 or BF16 (default: the
    /// input's float type; F16 for a quantized input).
    #[arg(long = "type", value_parser = parse_type)]
    pub ty: Option<GgmlType>,
    /// Only the summary line, not the sparsity of every tensor.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub eval: EvalFlags,
}

fn parse_nm(s: &str) -> Result<(usize, usize), String> {
    let (n, m) = s
        .split_once(':')
        .ok_or_else(|| format!("expected N:M, got {s:?}"))?;
    let n: usize = n.trim().parse().map_err(|_| format!("bad N in {s:?}"))?;
    let m: usize = m.trim().parse().map_err(|_| format!("bad M in {s:?}"))?;
    if n == 0 || n >= m {
        return Err(format!("{s:?}: need 0 < N < M"));
    }
    Ok((n, m))
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum StoreArg {
    /// Write A·B back in place (loads anywhere; same size).
    Multiplied,
    /// Write the two factors (NAME.lr_a, NAME.lr_b): smaller, not yet loadable.
    Factors,
}

#[derive(Args, Debug)]
#[command(after_help = FORMAT_HELP)]
pub struct LowrankArgs {
    /// Input model (GGUF, or a safetensors checkpoint as for quantize).
    pub input: PathBuf,
    /// Output: a GGUF file, or with --format safetensors a folder.
    pub output: PathBuf,
    /// Output format (safetensors needs --store multiplied).
    #[arg(long, value_enum, default_value_t = FormatArg::Gguf)]
    pub format: FormatArg,
    /// Keep this many singular values per matrix.
    #[arg(long, conflicts_with = "energy", required_unless_present = "energy")]
    pub rank: Option<usize>,
    /// Keep the fewest singular values holding this share of Σσ².
    #[arg(long)]
    pub energy: Option<f64>,
    /// Matrices to factorise (comma-separated patterns).
    #[arg(
        long,
        default_value = "blk.*.ffn_gate.weight,blk.*.ffn_up.weight,blk.*.ffn_down.weight"
    )]
    pub tensors: String,
    #[arg(long, value_enum, default_value_t = StoreArg::Multiplied)]
    pub store: StoreArg,
    /// Storage type of rewritten tensors (default: the input's if float, else Q8_0).
    /// With --format safetensors: the type of every matrix, F16 or BF16 (default: the
    /// input's float type; F16 for a quantized input).
    #[arg(long = "type", value_parser = parse_type)]
    pub ty: Option<GgmlType>,
    #[arg(long, short = 'v')]
    pub verbose: bool,
    #[command(flatten)]
    pub eval: EvalFlags,
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The model to evaluate (GGUF file, or safetensors checkpoint file or folder).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// Compare against this model (KL divergence, top-1 agreement).
    #[arg(long, short = 'b')]
    pub baseline: Option<PathBuf>,
    /// Text for perplexity/KL/agreement (default: built in, unless --tasks is given).
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Multiple-choice tasks, one JSON object a line: question, choices, answer.
    #[arg(long)]
    pub tasks: Option<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    #[arg(long)]
    pub windows: Option<usize>,
    #[arg(long)]
    pub no_speed: bool,
    #[arg(long)]
    pub json: bool,
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

const FORMAT_HELP: &str = "\
Output formats (--format):
  gguf         OUT is one GGUF file; every type, metadata copied from the input.
  safetensors  OUT is a Hugging Face folder (created if missing; refused if it holds
               other weights): model.safetensors (HF tensor names and layout: Gemma
               norms as w, llama Q/K rows unpermuted), config.json, and the tokenizer.
               From a safetensors input its config.json (dtype updated) and tokenizer
               files are copied; from a GGUF input config.json is written from the
               metadata and the vocabulary as tokenizer.model (SentencePiece) or
               tokenizer.json (byte-level BPE) with tokenizer_config.json; other GGUF
               metadata is not kept. Tensors are dense floats: F32 norms, F16/BF16
               matrices (quantized inputs are dequantized). hangar eval/quantize read
               the folder back.";

fn pool(threads: usize) -> ThreadPool {
    let n = if threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        threads
    };
    ThreadPool::new(n)
}

fn read_text(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn patterns(s: &str) -> Vec<String> {
    s.split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Runs the evaluation with a progress bar.
fn evaluate_models(
    model: &EvalModel,
    baseline: Option<&EvalModel>,
    text: Option<&str>,
    task_file: Option<&Path>,
    opts: &EvalOptions,
    threads: usize,
) -> Result<EvalReport> {
    let tasks = task_file.map(tasks::load).transpose()?;
    let p = pool(threads);
    let bar = progress::bar(1, "eval");
    let report = eval::evaluate(
        &p,
        model,
        baseline,
        text,
        tasks.as_deref(),
        opts,
        |what, i, n| {
            bar.set_length(n as u64);
            bar.set_position(i as u64);
            bar.set_message(what.to_string());
        },
    )?;
    bar.finish_and_clear();
    Ok(report)
}

fn eval_options(f: &EvalFlags) -> EvalOptions {
    EvalOptions {
        ctx: f.eval_ctx,
        max_windows: f.eval_windows,
        speed: if f.no_speed { None } else { Some((128, 32, 2)) },
    }
}

/// The comparison of `out` against `input` that ends every compression command.
fn compare(input: &SourceModel, out: &Path, f: &EvalFlags) -> Result<Option<EvalReport>> {
    if f.no_eval {
        return Ok(None);
    }
    eprintln!("evaluating {} against its input ...", out.display());
    let text = match &f.eval_file {
        Some(p) => read_text(p)?,
        None => eval::DEFAULT_TEXT.to_string(),
    };
    let base = EvalModel::from_source(input)
        .with_context(|| format!("loading {} to compare against", input.path().display()))?;
    let model = EvalModel::load(out).with_context(|| format!("loading {}", out.display()))?;
    let r = evaluate_models(
        &model,
        Some(&base),
        Some(&text),
        f.eval_tasks.as_deref(),
        &eval_options(f),
        f.threads,
    )?;
    Ok(Some(r))
}

fn print_report<T: serde::Serialize>(
    json: bool,
    what: &str,
    report: &T,
    eval: &Option<EvalReport>,
) {
    if json {
        let v = serde_json::json!({ what: report, "eval": eval });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else if let Some(e) = eval {
        println!("\n{}", e.table());
    }
}

fn open_input(p: &Path) -> Result<SourceModel> {
    SourceModel::open(p).with_context(|| format!("opening {}", p.display()))
}

fn print_notes(notes: &[String]) {
    for n in notes {
        eprintln!("note: {n}");
    }
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

pub fn run_quantize(a: QuantizeArgs) -> Result<()> {
    let src = open_input(&a.input)?;
    let imatrix = match &a.imatrix {
        Some(p) => Some(Imatrix::load(p).with_context(|| format!("reading {}", p.display()))?),
        None => None,
    };
    let opts = QuantizeOptions {
        target: a.ty,
        keep: a.keep.clone(),
        imatrix,
        imatrix_file: a.imatrix.as_ref().map(|p| p.display().to_string()),
        threads: a.eval.threads,
        pure: a.pure,
        format: a.format.into(),
    };
    quantize::validate(&src, &a.output, &opts)?;
    let choices = quantize::plan(&src, &opts);
    let mut requant: Vec<&str> = src
        .tensors()
        .iter()
        .zip(&choices)
        .filter(|(t, c)| !c.copy && !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
        .map(|(t, _)| t.ty.name())
        .collect();
    requant.sort();
    requant.dedup();
    if !requant.is_empty() {
        eprintln!(
            "note: the input is already quantized ({}); those tensors are dequantized to f32 and requantized, so their errors add up. Tensors already of their target type are copied unchanged.",
            requant.join(", ")
        );
    }
    let bar = progress::bar(0, "quantize");
    let report = quantize::quantize(&src, &a.output, &opts, &bar)?;
    if a.verbose {
        for t in &report.tensors {
            eprintln!(
                "{:<40} {:>5} -> {:<5} {:<44} {}",
                t.name,
                t.from,
                t.to,
                t.reason,
                t.rel_rmse
                    .map(|e| format!(
                        "rel err {e:.4}{}",
                        if t.weighted { " (imatrix)" } else { "" }
                    ))
                    .unwrap_or_else(|| "copied".into())
            );
        }
    }
    eprintln!(
        "wrote {}: {} -> {} ({}); types: {}{}",
        a.output.display(),
        mb(report.in_bytes),
        mb(report.out_bytes),
        report.target,
        report.type_mix(),
        if report.imatrix_tensors > 0 {
            format!("; {} tensors importance-weighted", report.imatrix_tensors)
        } else {
            String::new()
        }
    );
    print_notes(&report.notes);
    let eval = compare(&src, &a.output, &a.eval)?;
    print_report(a.eval.json, "quantize", &report, &eval);
    Ok(())
}

pub fn run_imatrix(a: ImatrixArgs) -> Result<()> {
    let src = open_input(&a.model)?;
    let m = EvalModel::from_source(&src)?;
    let text = read_text(&a.file)?;
    let tokens = m.tokenizer.encode(&text, false, false);
    let p = pool(a.threads);
    let bar = progress::bar(0, "imatrix");
    let mut im = Imatrix::collect(&m.model, &p, m.bos(), &tokens, a.ctx, a.chunks, |i, n| {
        bar.set_length(n as u64);
        bar.set_position(i as u64);
    })?;
    bar.finish_and_clear();
    im.dataset = a.file.display().to_string();
    im.save(&a.output)?;
    eprintln!(
        "wrote {}: {} matrices, {} chunks of {} tokens",
        a.output.display(),
        im.entries.len(),
        im.chunks,
        im.chunk_size
    );
    Ok(())
}

pub fn run_prune(a: PruneArgs) -> Result<()> {
    let src = open_input(&a.input)?;
    let method = match a.method {
        MethodArg::Magnitude => PruneMethod::Magnitude,
        MethodArg::Wanda => PruneMethod::Wanda,
    };
    let imatrix = match (&a.imatrix, &a.file) {
        (Some(p), _) => Some(Imatrix::load(p)?),
        (None, Some(f)) => {
            let m = EvalModel::from_source(&src)?;
            let tokens = m.tokenizer.encode(&read_text(f)?, false, false);
            let p = pool(a.eval.threads);
            eprintln!("collecting activation statistics from {} ...", f.display());
            Some(Imatrix::collect(
                &m.model,
                &p,
                m.bos(),
                &tokens,
                512,
                None,
                |_, _| {},
            )?)
        }
        (None, None) if matches!(method, PruneMethod::Wanda) => {
            bail!(
                "--method wanda needs calibration activations: give --file TEXT or --imatrix FILE"
            )
        }
        _ => None,
    };
    let opts = PruneOptions {
        method,
        sparsity: a.sparsity,
        structured: a.structured,
        include: patterns(&a.tensors),
        imatrix,
        ty: a.ty,
        threads: a.eval.threads,
        format: a.format.into(),
    };
    let bar = progress::bar(0, "prune");
    let report = prune::prune(&src, &a.output, &opts, &bar)?;
    if !a.eval.json {
        for t in report.tensors.iter().filter(|_| !a.quiet) {
            eprintln!(
                "{:<36} {:>5} -> {:<5} pruned {:>6.2}%  zeros stored {:>6.2}%",
                t.name,
                t.from,
                t.to,
                100.0 * t.sparsity,
                100.0 * t.zeros_stored as f64 / t.elements as f64
            );
        }
    }
    let (lo, hi) = report.tensors.iter().fold((1.0f64, 0.0f64), |(lo, hi), t| {
        (lo.min(t.sparsity), hi.max(t.sparsity))
    });
    eprintln!(
        "wrote {}: {:?} {} over {} tensors; sparsity per tensor {:.2}%..{:.2}%, {} of {} weights zeroed; file {} -> {}",
        a.output.display(),
        report.method,
        report.pattern,
        report.tensors.len(),
        100.0 * lo,
        100.0 * hi,
        report.pruned_params,
        report.total_params_pruned_tensors,
        mb(report.in_bytes),
        mb(report.out_bytes)
    );
    print_notes(&report.notes);
    let eval = compare(&src, &a.output, &a.eval)?;
    print_report(a.eval.json, "prune", &report, &eval);
    Ok(())
}

pub fn run_lowrank(a: LowrankArgs) -> Result<()> {
    let src = open_input(&a.input)?;
    let rank = match (a.rank, a.energy) {
        (Some(r), _) => RankRule::Fixed(r),
        (None, Some(e)) => RankRule::Energy(e),
        (None, None) => bail!("give --rank R or --energy FRACTION"),
    };
    let store = match a.store {
        StoreArg::Multiplied => Store::Multiplied,
        StoreArg::Factors => Store::Factors,
    };
    let opts = LowrankOptions {
        rank,
        include: patterns(&a.tensors),
        store,
        ty: a.ty,
        threads: a.eval.threads,
        format: a.format.into(),
    };
    let bar = progress::bar(0, "lowrank");
    let report = lowrank::lowrank(&src, &a.output, &opts, &bar)?;
    if a.verbose && !a.eval.json {
        for t in &report.tensors {
            eprintln!(
                "{:<36} {}x{} rank {:>4} energy {:.4} rel err {:.4}{}",
                t.name,
                t.rows,
                t.cols,
                t.rank,
                t.energy_kept,
                t.rel_err,
                if t.skipped {
                    " (no saving: unchanged)"
                } else {
                    ""
                }
            );
        }
    }
    eprintln!(
        "wrote {}: {} matrices, parameters {} -> {} ({:.1}% saved in the factorised matrices), file {} -> {}",
        a.output.display(),
        report.tensors.len(),
        report.params_before,
        report.params_after,
        100.0 * report.saving(),
        mb(report.in_bytes),
        mb(report.out_bytes)
    );
    print_notes(&report.notes);
    let eval = if store == Store::Factors {
        if !a.eval.no_eval {
            eprintln!("note: factor storage is not loadable by the runtime yet; skipping the evaluation (use --store multiplied to measure quality)");
        }
        None
    } else {
        compare(&src, &a.output, &a.eval)?
    };
    print_report(a.eval.json, "lowrank", &report, &eval);
    Ok(())
}

pub fn run_eval(a: EvalArgs) -> Result<()> {
    let model =
        EvalModel::load(&a.model).with_context(|| format!("loading {}", a.model.display()))?;
    let base = match &a.baseline {
        Some(b) => Some(EvalModel::load(b).with_context(|| format!("loading {}", b.display()))?),
        None => None,
    };
    let text = match (&a.file, &a.tasks) {
        (Some(f), _) => Some(read_text(f)?),
        (None, None) => Some(eval::DEFAULT_TEXT.to_string()),
        (None, Some(_)) => None,
    };
    let opts = EvalOptions {
        ctx: a.ctx,
        max_windows: a.windows,
        speed: if a.no_speed { None } else { Some((128, 32, 2)) },
    };
    let r = evaluate_models(
        &model,
        base.as_ref(),
        text.as_deref(),
        a.tasks.as_deref(),
        &opts,
        a.threads,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", r.table());
    }
    Ok(())
}
