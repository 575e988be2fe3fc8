//! Speculative-decoding flags (shared by generate, bench and serve) and the
//! `hangar bench --speculative` A/B run. Turns flags into `SpecConfig`; the
//! drafting and verification live in `hangar_engine::spec`.

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_engine::sampler::SamplingParams;
use hangar_engine::spec::{DraftModel, SpecConfig, SpecMode};
use hangar_engine::{BorrowedCpuRunner, GenerateOptions, LoadedModel};
use std::path::PathBuf;

/// `--speculative` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SpecArg {
    /// One token per forward.
    #[default]
    Off,
    /// Prompt lookup: copy what followed the last n tokens earlier in the sequence.
    Ngram,
    /// A small draft model with the same tokenizer (--draft-model).
    Draft,
}

#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// Speculative decoding: draft tokens cheaply, verify them in one forward.
    #[arg(long, value_enum, default_value_t = SpecArg::Off)]
    pub speculative: SpecArg,
    /// Most tokens drafted per step (K); adapted to the acceptance rate unless
    /// --draft-fixed.
    #[arg(long, default_value_t = 8)]
    pub draft_tokens: usize,
    /// Always draft --draft-tokens tokens (no adaptation).
    #[arg(long)]
    pub draft_fixed: bool,
    /// GGUF draft model for --speculative draft (must share the target's tokenizer).
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// The server speculates only while at most this many sequences run.
    #[arg(long, default_value_t = 4)]
    pub spec_max_batch: usize,
}

impl SpecArgs {
    pub fn config(&self) -> Result<SpecConfig> {
        let mode = match self.speculative {
            SpecArg::Off => SpecMode::Off,
            SpecArg::Ngram => SpecMode::Ngram,
            SpecArg::Draft => SpecMode::Draft,
        };
        if mode == SpecMode::Draft && self.draft_model.is_none() {
            bail!("--speculative draft needs --draft-model PATH");
        }
        if mode != SpecMode::Off && self.draft_tokens == 0 {
            bail!("--draft-tokens must be at least 1 with --speculative");
        }
        Ok(SpecConfig {
            mode,
            draft_tokens: self.draft_tokens,
            adaptive: !self.draft_fixed,
            max_batch: self.spec_max_batch,
            ..SpecConfig::default()
        })
    }

    /// Loads the draft model when --speculative draft asks for one.
    pub fn load_draft(&self, threads: usize) -> Result<Option<LoadedModel>> {
        match (&self.draft_model, self.speculative) {
            (Some(p), SpecArg::Draft) => {
                let dm = LoadedModel::load(p, threads)
                    .with_context(|| format!("loading the draft model {}", p.display()))?;
                Ok(Some(dm))
            }
            _ => Ok(None),
        }
    }
}

/// Binds a loaded draft model to the target (checking the tokenizers match).
pub fn bind_draft<'a>(dm: &'a LoadedModel, target: &LoadedModel) -> Result<DraftModel<'a>> {
    let runner = BorrowedCpuRunner::new(&dm.model, &dm.pool);
    Ok(DraftModel::new(
        Box::new(runner),
        &dm.tokenizer,
        &target.tokenizer,
        target.model.cfg.vocab_size,
    )?)
}

/// One line of `--stats` about speculation.
pub fn stats_line(g: &hangar_engine::Generation) -> String {
    let s = g.spec;
    format!(
        "speculative: {} decode steps, {:.2} tok/step | drafted {} accepted {} ({:.1}%)",
        s.steps,
        s.tokens_per_step(),
        s.drafted,
        s.accepted,
        100.0 * s.acceptance()
    )
}

/// What `hangar bench --speculative` measured on one prompt.
#[derive(Debug, serde::Serialize)]
pub struct SpecBench {
    pub mode: SpecMode,
    pub prompt_tokens: usize,
    pub generated: usize,
    pub runs: usize,
    pub plain_tok_s: f64,
    pub spec_tok_s: f64,
    pub speedup: f64,
    pub acceptance: f64,
    pub tokens_per_step: f64,
    /// Whether both runs emitted the same tokens (greedy: they must).
    pub identical: bool,
}

/// Decodes `prompt` greedily with and without speculation, alternating which goes
/// first each run (machine noise hits both alike); medians over `runs` after one
/// warm-up pair.
pub fn bench_spec(
    lm: &LoadedModel,
    mut draft: Option<DraftModel>,
    prompt: &[u32],
    spec: SpecConfig,
    max_tokens: usize,
    runs: usize,
) -> Result<SpecBench> {
    let base = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ..GenerateOptions::default()
    };
    let with_spec = GenerateOptions {
        speculative: spec,
        ..base.clone()
    };
    let (mut plain_tps, mut spec_tps) = (Vec::new(), Vec::new());
    let (mut acc, mut tps_step) = (Vec::new(), Vec::new());
    let mut identical = true;
    let mut generated = 0;
    for r in 0..=runs.max(1) {
        let mut pair = [None, None];
        for which in [r % 2, 1 - r % 2] {
            let o = if which == 0 { &base } else { &with_spec };
            let g = hangar_engine::generate_with_draft(
                lm,
                if which == 1 { draft.as_mut() } else { None },
                prompt,
                o,
                |_| true,
            )?;
            pair[which] = Some(g);
        }
        let [Some(p), Some(s)] = pair else {
            bail!("internal: a benchmark run is missing");
        };
        identical &= p.tokens == s.tokens;
        generated = p.tokens.len();
        if r == 0 {
            continue; // warm-up
        }
        let tps = |g: &hangar_engine::Generation| {
            g.tokens.len().saturating_sub(1) as f64 / g.decode_time.as_secs_f64().max(1e-9)
        };
        plain_tps.push(tps(&p));
        spec_tps.push(tps(&s));
        acc.push(s.spec.acceptance());
        tps_step.push(s.spec.tokens_per_step());
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (p, s) = (median(plain_tps), median(spec_tps));
    Ok(SpecBench {
        mode: spec.mode,
        prompt_tokens: prompt.len(),
        generated,
        runs: runs.max(1),
        plain_tok_s: p,
        spec_tok_s: s,
        speedup: if p > 0.0 { s / p } else { 0.0 },
        acceptance: median(acc),
        tokens_per_step: median(tps_step),
        identical,
    })
}
