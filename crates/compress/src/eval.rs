//! `hangar eval`: the quality and cost of a model, alone or against a baseline —
//! perplexity (llama.cpp's windows), mean KL divergence of its next-token
//! distributions from the baseline's, top-1 agreement, file size, prefill and decode
//! speed — as a table or JSON.
//!
//! Owns the measurement; it does not change models.

use crate::error::{CompressError, Result};
use crate::session::{argmax, lse, Session};
use crate::source::SourceModel;
use crate::tasks::{self, McReport, Task};
use hangar_engine::bench;
use hangar_formats::GgufFile;
use hangar_kernels::ThreadPool;
use hangar_models::{LogitsWanted, Model};
use hangar_tokenizer::Tokenizer;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The built-in evaluation text (prose written for Hangar; about 1,400 tokens).
pub const DEFAULT_TEXT: &str = include_str!("../data/eval.txt");

/// A model ready to evaluate.
pub struct EvalModel {
    pub path: PathBuf,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub file_size: u64,
}

impl EvalModel {
    /// Loads a GGUF file or a safetensors checkpoint (converted in memory).
    pub fn load(path: &Path) -> Result<Self> {
        let src = SourceModel::open(path)?;
        Self::from_source(&src)
    }

    pub fn from_source(src: &SourceModel) -> Result<Self> {
        Self::from_gguf(src.gguf_image()?, src.path(), src.file_size())
    }

    pub fn from_gguf(f: Arc<GgufFile>, path: &Path, file_size: u64) -> Result<Self> {
        let tokenizer = Tokenizer::from_gguf(&f)?;
        let model = Model::from_gguf(f)?;
        Ok(EvalModel {
            path: path.to_path_buf(),
            model,
            tokenizer,
            file_size,
        })
    }

    pub fn bos(&self) -> u32 {
        self.tokenizer.bos_id().unwrap_or(0)
    }
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Window length in tokens (BOS included); the second half of each is scored.
    pub ctx: usize,
    /// Score at most this many windows.
    pub max_windows: Option<usize>,
    /// Measure prefill/decode speed (prefill `pp` tokens, decode `tg` tokens, `runs` times).
    pub speed: Option<(usize, usize, usize)>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            ctx: 512,
            max_windows: None,
            speed: Some((128, 32, 2)),
        }
    }
}

/// Figures of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelFigures {
    pub path: String,
    pub file_bytes: u64,
    pub ppl: Option<f64>,
    /// Mean negative log-likelihood of the scored tokens (nats).
    pub nll: Option<f64>,
    pub prefill_tok_s: Option<f64>,
    pub decode_tok_s: Option<f64>,
    pub tasks: Option<McReport>,
}

/// How far a model's distributions are from the baseline's.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    /// Mean KL(baseline ‖ model) over scored positions, nats.
    pub kl_mean: f64,
    pub kl_p99: f64,
    pub kl_max: f64,
    /// Fraction of positions where both models' most likely token is the same.
    pub top1_agreement: f64,
}

/// A full evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub ctx: usize,
    pub windows: usize,
    pub scored_tokens: usize,
    pub model: ModelFigures,
    pub baseline: Option<ModelFigures>,
    pub divergence: Option<Divergence>,
}

fn figures(m: &EvalModel) -> ModelFigures {
    ModelFigures {
        path: m.path.display().to_string(),
        file_bytes: m.file_size,
        ppl: None,
        nll: None,
        prefill_tok_s: None,
        decode_tok_s: None,
        tasks: None,
    }
}

/// Evaluates `a` (and `b`, its baseline) on `text` (and `tasks`).
pub fn evaluate(
    pool: &ThreadPool,
    a: &EvalModel,
    b: Option<&EvalModel>,
    text: Option<&str>,
    tasks: Option<&[Task]>,
    opts: &EvalOptions,
    mut on_step: impl FnMut(&str, usize, usize),
) -> Result<EvalReport> {
    if let Some(b) = b {
        if b.model.cfg.vocab_size != a.model.cfg.vocab_size {
            return Err(CompressError::Invalid(format!(
                "the models have different vocabularies ({} and {} tokens); KL and agreement need the same tokenizer",
                a.model.cfg.vocab_size, b.model.cfg.vocab_size
            )));
        }
    }
    let mut report = EvalReport {
        ctx: opts.ctx,
        windows: 0,
        scored_tokens: 0,
        model: figures(a),
        baseline: b.map(figures),
        divergence: None,
    };
    if let Some(text) = text {
        let tokens = a.tokenizer.encode(text, false, false);
        score_text(pool, a, b, &tokens, opts, &mut report, &mut on_step)?;
    }
    if let Some(tasks) = tasks {
        report.model.tasks = Some(tasks::score(pool, a, tasks, |i, n| on_step("tasks", i, n))?);
        if let (Some(b), Some(bf)) = (b, report.baseline.as_mut()) {
            bf.tasks = Some(tasks::score(pool, b, tasks, |i, n| {
                on_step("tasks (base)", i, n)
            })?);
        }
    }
    if let Some((pp, tg, runs)) = opts.speed {
        let speed = |m: &EvalModel, f: &mut ModelFigures| -> Result<()> {
            let figs = bench::run(&m.model, pool, pp, tg, 1, runs)?;
            for fig in figs {
                if fig.test.starts_with("pp") {
                    f.prefill_tok_s = Some(fig.median_tok_s);
                } else {
                    f.decode_tok_s = Some(fig.median_tok_s);
                }
            }
            Ok(())
        };
        on_step("speed", 0, 1);
        speed(a, &mut report.model)?;
        if let (Some(b), Some(bf)) = (b, report.baseline.as_mut()) {
            speed(b, bf)?;
        }
        on_step("speed", 1, 1);
    }
    Ok(report)
}

/// Rows of logits computed at once (bounds memory: rows × vocab floats per model).
const CHUNK: usize = 64;

fn score_text(
    pool: &ThreadPool,
    a: &EvalModel,
    b: Option<&EvalModel>,
    tokens: &[u32],
    opts: &EvalOptions,
    report: &mut EvalReport,
    on_step: &mut impl FnMut(&str, usize, usize),
) -> Result<()> {
    let ctx = opts.ctx;
    if ctx < 8 {
        return Err(CompressError::Invalid(format!(
            "--ctx {ctx} is too small (at least 8)"
        )));
    }
    let per = ctx - 1;
    let mut windows = tokens.len() / per;
    if let Some(m) = opts.max_windows {
        windows = windows.min(m);
    }
    if windows == 0 {
        return Err(CompressError::Invalid(format!(
            "the text has {} tokens; one window of --ctx {ctx} needs {per}",
            tokens.len()
        )));
    }
    let bos = a.bos();
    let mut sa = Session::new(&a.model, ctx);
    let mut sb = b.map(|b| Session::new(&b.model, ctx));
    let vocab = sa.vocab();
    let first = ctx / 2;
    let (mut nll_a, mut nll_b, mut n) = (0f64, 0f64, 0usize);
    let mut kls = Vec::new();
    let mut agree = 0usize;
    let mut toks = Vec::with_capacity(ctx);
    for w in 0..windows {
        toks.clear();
        toks.push(bos);
        toks.extend_from_slice(&tokens[w * per..(w + 1) * per]);
        sa.feed(pool, &toks[..first], 0, LogitsWanted::None, None)?;
        if let Some(sb) = sb.as_mut() {
            sb.feed(pool, &toks[..first], 0, LogitsWanted::None, None)?;
        }
        let mut c = first;
        while c < ctx - 1 {
            let end = (c + CHUNK).min(ctx - 1);
            sa.feed(pool, &toks[c..end], c, LogitsWanted::All, None)?;
            if let Some(sb) = sb.as_mut() {
                sb.feed(pool, &toks[c..end], c, LogitsWanted::All, None)?;
            }
            for r in 0..end - c {
                let target = toks[c + r + 1] as usize;
                let la = &sa.logits[r * vocab..(r + 1) * vocab];
                let (_, lse_a) = lse(la);
                nll_a -= la[target] as f64 - lse_a;
                if let Some(sb) = sb.as_ref() {
                    let lb = &sb.logits[r * vocab..(r + 1) * vocab];
                    let (_, lse_b) = lse(lb);
                    nll_b -= lb[target] as f64 - lse_b;
                    let mut kl = 0f64;
                    for (&x, &y) in lb.iter().zip(la) {
                        let lpb = x as f64 - lse_b;
                        let lpa = y as f64 - lse_a;
                        kl += lpb.exp() * (lpb - lpa);
                    }
                    kls.push(kl.max(0.0));
                    agree += (argmax(la) == argmax(lb)) as usize;
                }
                n += 1;
            }
            c = end;
        }
        on_step("perplexity", w + 1, windows);
    }
    report.windows = windows;
    report.scored_tokens = n;
    report.model.nll = Some(nll_a / n as f64);
    report.model.ppl = Some((nll_a / n as f64).exp());
    if let Some(bf) = report.baseline.as_mut() {
        bf.nll = Some(nll_b / n as f64);
        bf.ppl = Some((nll_b / n as f64).exp());
        let mean = kls.iter().sum::<f64>() / kls.len() as f64;
        kls.sort_by(|x, y| x.total_cmp(y));
        let p99 = kls[((kls.len() as f64 * 0.99) as usize).min(kls.len() - 1)];
        report.divergence = Some(Divergence {
            kl_mean: mean,
            kl_p99: p99,
            kl_max: *kls.last().unwrap_or(&0.0),
            top1_agreement: agree as f64 / n as f64,
        });
    }
    Ok(())
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}
fn opt(v: Option<f64>, prec: usize) -> String {
    v.map(|v| format!("{v:.prec$}"))
        .unwrap_or_else(|| "-".into())
}

impl EvalReport {
    /// A plain-text table: one column per model.
    pub fn table(&self) -> String {
        let mut cols: Vec<(&str, &ModelFigures)> = Vec::new();
        if let Some(b) = &self.baseline {
            cols.push(("baseline", b));
        }
        cols.push(("model", &self.model));
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let name = |p: &str| {
            Path::new(p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.to_string())
        };
        rows.push((
            "".into(),
            cols.iter()
                .map(|(k, m)| format!("{k}: {}", name(&m.path)))
                .collect(),
        ));
        rows.push((
            "file size".into(),
            cols.iter().map(|(_, m)| mb(m.file_bytes)).collect(),
        ));
        if self.model.ppl.is_some() {
            rows.push((
                format!("perplexity ({} tok)", self.scored_tokens),
                cols.iter().map(|(_, m)| opt(m.ppl, 3)).collect(),
            ));
        }
        if let Some(d) = &self.divergence {
            let both = |v: String| vec!["-".to_string(), v];
            rows.push((
                "mean KL vs baseline".into(),
                both(format!("{:.5}", d.kl_mean)),
            ));
            rows.push(("KL p99".into(), both(format!("{:.4}", d.kl_p99))));
            rows.push((
                "top-1 agreement".into(),
                both(format!("{:.2}%", 100.0 * d.top1_agreement)),
            ));
        }
        if self.model.tasks.is_some() {
            rows.push((
                "task accuracy (95% CI)".into(),
                cols.iter()
                    .map(|(_, m)| match &m.tasks {
                        Some(t) => format!(
                            "{:.1}% [{:.1}, {:.1}] n={}",
                            100.0 * t.accuracy,
                            100.0 * t.ci_low,
                            100.0 * t.ci_high,
                            t.n
                        ),
                        None => "-".into(),
                    })
                    .collect(),
            ));
        }
        if self.model.prefill_tok_s.is_some() {
            rows.push((
                "prefill tok/s".into(),
                cols.iter().map(|(_, m)| opt(m.prefill_tok_s, 1)).collect(),
            ));
            rows.push((
                "decode tok/s".into(),
                cols.iter().map(|(_, m)| opt(m.decode_tok_s, 1)).collect(),
            ));
        }
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let wc: Vec<usize> = (0..cols.len())
            .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0))
            .collect();
        let mut s = String::new();
        for (label, vals) in &rows {
            s.push_str(&format!("{label:<w0$}"));
            for (v, w) in vals.iter().zip(&wc) {
                s.push_str(&format!("  {v:>w$}"));
            }
            s.push('\n');
        }
        s
    }
}
