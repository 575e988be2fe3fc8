//! A stand-alone `hangar`-like binary over `cmd_registry.rs`, to build and try the
//! registry commands before the main binary wires them:
//! `cargo run -p hangar-registry --example registry_cli -- registry list`.

#[path = "../../hangar/src/cmd_registry.rs"]
mod cmd_registry;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    /// Data folder (default ~/.local/share/hangar).
    #[arg(long, global = true, env = "HANGAR_HOME")]
    home: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Top,
}

#[derive(clap::Subcommand)]
enum Top {
    #[command(subcommand)]
    Registry(cmd_registry::RegistryCmd),
    Pull(cmd_registry::PullArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Top::Registry(c) => cmd_registry::run_registry(c, cli.home),
        Top::Pull(a) => cmd_registry::run_pull(a, cli.home),
    }
}
