//! `hangar`: the command-line edge. Parses arguments and wires the library crates;
//! no algorithms live here.

mod cmd_compress;
mod cmd_device;
mod cmd_embed;
mod cmd_eval;
mod cmd_keys;
mod cmd_lora;
mod cmd_model;
mod cmd_monitor;
mod cmd_plan;
mod cmd_prompts;
mod cmd_rag;
mod cmd_registry;
mod cmd_route;
mod cmd_serve;
mod cmd_spec;
mod cmd_synth;
mod cmd_track;
mod cmd_vector;
mod model_path;
mod serve_reload;

use clap::{Parser, Subcommand};

/// Hangar: take a language model from a file to a monitored production service.
#[derive(Parser)]
#[command(name = "hangar", version, about, long_about = None)]
struct Cli {
    /// Hangar home: registry database and chunks (default ~/.local/share/hangar).
    #[arg(long, global = true, env = "HANGAR_HOME")]
    home: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve a model over HTTP (OpenAI-compatible, KServe V2, metrics).
    Serve {
        /// GGUF file or registry model (name, name@3, name@production); default: the
        /// registry's default model, else the cached default file.
        #[arg(long, short = 'm')]
        model: Option<String>,
        #[command(flatten)]
        args: cmd_serve::ServeArgs,
    },
    /// Route requests over several `hangar serve` replicas (prefix-cache-aware,
    /// least-loaded, session or round-robin), streaming passed through.
    Route(cmd_route::RouteArgs),
    /// Generate text from a prompt, streamed to stdout.
    Generate(cmd_model::GenerateArgs),
    /// Measure prefill and decode throughput (tokens/s).
    Bench(cmd_model::BenchArgs),
    /// Write a GGUF with random weights of a real model's shape and a working tokenizer.
    Synth(cmd_synth::SynthArgs),
    /// Compare the GPU backend with the CPU forward pass on one model (top-1
    /// agreement, largest logit difference, greedy tokens).
    DeviceCheck(cmd_device::DeviceCheckArgs),
    /// Perplexity of a model on a text file (llama.cpp's method).
    Perplexity(cmd_model::PerplexityArgs),
    /// Show the token ids of a text.
    Tokenize(cmd_model::TokenizeArgs),
    /// Quantize a model (GGUF or safetensors) and report the quality cost.
    Quantize(cmd_compress::QuantizeArgs),
    /// Importance matrix (activation statistics) from a calibration text.
    Imatrix(cmd_compress::ImatrixArgs),
    /// Prune linear weights (magnitude or Wanda, unstructured or N:M).
    Prune(cmd_compress::PruneArgs),
    /// Low-rank (truncated SVD) factorisation of linear weights.
    Lowrank(cmd_compress::LowrankArgs),
    /// LoRA adapters: init (random), merge, extract (SVD of two checkpoints), convert
    /// (GGUF/PEFT), info, register in and list from the registry.
    #[command(subcommand)]
    Lora(cmd_lora::LoraCmd),
    /// Evaluate a model: task files (multiple choice, generation, perplexity) over a
    /// local model or an OpenAI-compatible endpoint; or compression quality.
    Eval(cmd_eval::EvalCli),
    /// LLM-as-judge: rate answers 1-10 or compare pairs (both orders), cached.
    Judge(cmd_eval::JudgeArgs),
    /// Memory, hardware fit and training needs of a model.
    Plan(cmd_plan::PlanArgs),
    /// Measure this host and print a model's roofline.
    Profile(cmd_plan::ProfileArgs),
    /// Token counts per input (--compare: five languages).
    Tokens(cmd_plan::TokensArgs),
    /// The model registry: import, list, promote, export, gc, tokens...
    #[command(subcommand)]
    Registry(cmd_registry::RegistryCmd),
    /// Versioned prompt templates in the registry: create, list, show, alias, render.
    #[command(subcommand)]
    Prompts(cmd_prompts::PromptsCmd),
    /// Managed API keys for `hangar serve`: create (with limits), list, revoke.
    #[command(subcommand)]
    Keys(cmd_keys::KeysCmd),
    /// Download a model into the registry (`default`, or hf://org/repo[/file]).
    Pull(cmd_registry::PullArgs),
    // -- monitoring
    /// The request log that `hangar serve` keeps: tail, search, export.
    #[command(subcommand)]
    Logs(cmd_monitor::LogsCmd),
    /// Drift monitoring helpers (baselines).
    #[command(subcommand)]
    Monitor(cmd_monitor::MonitorCmd),
    // -- vector database --
    /// The vector database: create, list, info, upsert, query, snapshot, bench.
    #[command(subcommand)]
    Vector(cmd_vector::VectorCmd),
    /// Experiment tracking runs: list, show, compare, delete.
    #[command(subcommand)]
    Runs(cmd_track::RunsCmd),
    /// Experiment tracking experiments: list.
    #[command(subcommand)]
    Experiments(cmd_track::ExperimentsCmd),
    // -- embeddings --
    /// Text to vectors with an embedding model (JSON or NPY out).
    Embed(cmd_embed::EmbedArgs),
    // -- retrieval-augmented generation --
    /// Chunk, embed and upsert text/Markdown/HTML files into a collection (re-ingest
    /// replaces changed documents only).
    Ingest(cmd_rag::IngestArgs),
    /// Answer a question from a collection, with numbered citations.
    Rag(cmd_rag::RagArgs),
}

fn main() {
    let cli = Cli::parse();
    cmd_model::KernelEnv::get().apply_process_wide();
    let home = cli.home.clone();
    let result = match cli.cmd {
        Cmd::Serve { model, mut args } => {
            // The registry API mounted by serve must use the same home as the model lookup.
            args.home = home.clone();
            if args.no_model {
                cmd_serve::run_serve(args, None)
            } else {
                model_path::resolve_with_origin(model.as_deref(), home.clone()).and_then(
                    |(path, origin)| {
                        if args.model_name.is_none() {
                            args.model_name =
                                Some(model_path::served_name(model.as_deref(), &path));
                        }
                        args.registry_origin = origin.map(|o| {
                            let started = model
                                .clone()
                                .unwrap_or_else(|| hangar_registry::DEFAULT_MODEL.to_string());
                            (started, o)
                        });
                        cmd_serve::run_serve(args, Some(path))
                    },
                )
            }
        }
        Cmd::Route(a) => cmd_route::run_route(a),
        Cmd::Generate(mut a) => {
            a.model.home = home;
            cmd_model::generate(a)
        }
        Cmd::Bench(mut a) => {
            a.model.home = home;
            cmd_model::bench(a)
        }
        Cmd::Synth(a) => cmd_synth::run_synth(a),
        Cmd::DeviceCheck(a) => cmd_device::run_device_check(a),
        Cmd::Perplexity(mut a) => {
            a.model.home = home;
            cmd_model::perplexity(a)
        }
        Cmd::Tokenize(mut a) => {
            a.model.home = home;
            cmd_model::tokenize(a)
        }
        Cmd::Plan(a) => cmd_plan::run_plan(a),
        Cmd::Profile(a) => cmd_plan::run_profile(a),
        Cmd::Tokens(a) => cmd_plan::run_tokens(a),
        Cmd::Quantize(a) => cmd_compress::run_quantize(a),
        Cmd::Imatrix(a) => cmd_compress::run_imatrix(a),
        Cmd::Prune(a) => cmd_compress::run_prune(a),
        Cmd::Lowrank(a) => cmd_compress::run_lowrank(a),
        Cmd::Lora(c) => cmd_lora::run_lora(c, cli.home),
        Cmd::Eval(a) => cmd_eval::run_eval(a, cli.home),
        Cmd::Judge(a) => cmd_eval::run_judge(a, cli.home),
        Cmd::Registry(c) => cmd_registry::run_registry(c, cli.home),
        Cmd::Prompts(c) => cmd_prompts::run_prompts(c, cli.home),
        Cmd::Keys(c) => cmd_keys::run_keys(c, cli.home),
        Cmd::Pull(a) => cmd_registry::run_pull(a, cli.home),
        Cmd::Logs(c) => cmd_monitor::run_logs(c, cli.home.as_deref()),
        Cmd::Monitor(c) => cmd_monitor::run_monitor(c, cli.home),
        Cmd::Vector(c) => cmd_vector::run_vector(c, cli.home),
        Cmd::Runs(c) => cmd_track::run_runs(c, cli.home),
        Cmd::Experiments(c) => cmd_track::run_experiments(c, cli.home),
        Cmd::Embed(mut a) => {
            a.home = home;
            cmd_embed::run_embed(a)
        }
        Cmd::Ingest(mut a) => {
            a.home = home;
            cmd_rag::run_ingest(a)
        }
        Cmd::Rag(mut a) => {
            a.home = home;
            cmd_rag::run_rag(a)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
