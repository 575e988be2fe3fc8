//! `hangar synth`: a GGUF with random weights of a real model's shape and a working
//! tokenizer (for speed and GPU checks where real weights cannot be downloaded).

use anyhow::{Context, Result};
use clap::Args;
use hangar_models::synth::{self, SynthArch, SynthType};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct SynthArgs {
    /// Architecture: llama, qwen2 or gemma3.
    #[arg(long)]
    pub arch: SynthArch,
    /// Shape: tiny, llama-3.2-1b, llama-3-8b, llama-3-70b, qwen2.5-0.5b, qwen2.5-7b,
    /// gemma-3-270m, gemma-3-1b (those of the chosen architecture).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Weight format: Q4_K_M, Q8_0 or F16.
    #[arg(long = "type", default_value = "Q4_K_M")]
    pub ty: SynthType,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Threads for quantization (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

pub fn run_synth(a: SynthArgs) -> Result<()> {
    let shape = synth::preset(a.arch, &a.preset)?;
    let threads = if a.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        a.threads
    };
    let t0 = std::time::Instant::now();
    let bytes = synth::write(
        a.arch,
        &shape,
        a.ty,
        a.seed,
        &a.out,
        threads,
        |done, total| {
            if done == total || done % 16 == 0 {
                eprint!("\rtensor {done}/{total}");
            }
        },
    )
    .with_context(|| format!("writing {}", a.out.display()))?;
    eprintln!();
    println!(
        "wrote {} ({:?} {} {:?}, {:.1} MB of tensors) in {:.1}s",
        a.out.display(),
        a.arch,
        a.preset,
        a.ty,
        bytes as f64 / 1e6,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
