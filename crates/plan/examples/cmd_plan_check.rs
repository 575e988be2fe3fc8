//! Compiles and runs the binary's `cmd_plan` module outside the binary, so this crate
//! can check it without touching `hangar`'s main.rs:
//! `cargo run -p hangar-plan --release --features cli-check --example cmd_plan_check -- plan --model llama-70b`

#[path = "../../hangar/src/cmd_plan.rs"]
mod cmd_plan;

use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Memory, fit and training needs of a model.
    Plan(cmd_plan::PlanArgs),
    /// This host's bandwidth and compute, and a model's roofline.
    Profile(cmd_plan::ProfileArgs),
    /// Token counts per input.
    Tokens(cmd_plan::TokensArgs),
}

fn main() {
    let r = match Cli::parse().cmd {
        Cmd::Plan(a) => cmd_plan::run_plan(a),
        Cmd::Profile(a) => cmd_plan::run_profile(a),
        Cmd::Tokens(a) => cmd_plan::run_tokens(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
