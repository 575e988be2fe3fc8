//! The compression commands of `hangar` as a standalone binary (same source file as
//! the `hangar` subcommands), for developing and benchmarking this crate alone:
//! `cargo run --release -p hangar-compress --example compress_cli -- quantize IN OUT --type Q8_0`.

#[path = "../../hangar/src/cmd_compress.rs"]
mod cmd_compress;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Quantize(cmd_compress::QuantizeArgs),
    Imatrix(cmd_compress::ImatrixArgs),
    Prune(cmd_compress::PruneArgs),
    Lowrank(cmd_compress::LowrankArgs),
    Eval(cmd_compress::EvalArgs),
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Quantize(a) => cmd_compress::run_quantize(a),
        Cmd::Imatrix(a) => cmd_compress::run_imatrix(a),
        Cmd::Prune(a) => cmd_compress::run_prune(a),
        Cmd::Lowrank(a) => cmd_compress::run_lowrank(a),
        Cmd::Eval(a) => cmd_compress::run_eval(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
