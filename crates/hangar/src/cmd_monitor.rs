//! Monitoring on the command line: the serve flags for the request log, drift and cost
//! (`MonitorArgs`), `hangar logs tail|search|export`, and `hangar monitor baseline`.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hangar_monitor::{
    Baseline, DriftConfig, LogConfig, LogQuery, Monitor, MonitorConfig, Observation, PriceTable,
    RequestLog, RequestRecord,
};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The request log's file in a Hangar home.
pub fn log_path(home: Option<&Path>) -> PathBuf {
    home.map(Path::to_path_buf)
        .unwrap_or_else(hangar_registry::default_home)
        .join("monitor")
        .join("requests.db")
}

#[derive(Args, Debug, Clone)]
pub struct MonitorArgs {
    /// Turn monitoring off (no request log, drift, usage or /v1/monitor routes).
    #[arg(long)]
    pub no_monitor: bool,
    /// Keep no request log (drift, usage and cost stay on).
    #[arg(long)]
    pub no_request_log: bool,
    /// Share of requests written to the request log (0 to 1).
    #[arg(long, default_value_t = 1.0, value_parser = parse_rate)]
    pub log_sample: f64,
    /// Replace emails, phone and card numbers and secrets in logged prompts and answers.
    #[arg(long)]
    pub log_redact: bool,
    /// Keep at most this many request-log records (0 = no limit).
    #[arg(long, default_value_t = 1_000_000)]
    pub log_max_rows: u64,
    /// Delete request-log records older than this many days (0 = keep).
    #[arg(long, default_value_t = 30)]
    pub log_max_age_days: u64,
    /// JSON price table for cost accounting: {"currency": "USD", "models": {"NAME" or "*":
    /// {"input_per_mtok": 0.1, "output_per_mtok": 0.4}}}.
    #[arg(long)]
    pub price_table: Option<PathBuf>,
    /// Drift reference from a file written by `hangar monitor baseline` (default: the
    /// first --drift-reference requests).
    #[arg(long)]
    pub drift_baseline: Option<PathBuf>,
    /// Requests that form the drift reference when no baseline file is given.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(2..))]
    pub drift_reference: u64,
    /// Requests in the sliding drift window.
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(2..))]
    pub drift_window: u64,
    /// Share of answers the served model judges for toxicity with a fixed-label prompt
    /// (0 = off; each judgement is a short generation on the same engine).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub quality_judge_sample: f64,
    /// Requests the window needs before drift is judged.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..))]
    pub drift_min: u64,
}

fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a rate between 0 and 1 (e.g. 0.1)")),
    }
}

impl MonitorArgs {
    /// The monitor these flags ask for (None with --no-monitor).
    pub fn open(&self, home: Option<&Path>) -> Result<Option<Monitor>> {
        if self.no_monitor {
            return Ok(None);
        }
        let prices = match &self.price_table {
            Some(p) => PriceTable::load(p)?,
            None => PriceTable::default(),
        };
        let baseline = match &self.drift_baseline {
            Some(p) => Some(read_baseline(p)?),
            None => None,
        };
        let log = (!self.no_request_log).then(|| {
            (
                log_path(home),
                LogConfig {
                    sample_rate: self.log_sample,
                    redact: self.log_redact,
                    max_rows: self.log_max_rows,
                    max_age: (self.log_max_age_days > 0)
                        .then(|| Duration::from_secs(self.log_max_age_days * 86_400)),
                    ..LogConfig::default()
                },
            )
        });
        let path = log.as_ref().map(|(p, _)| p.clone());
        let m = Monitor::open(MonitorConfig {
            log,
            drift: DriftConfig {
                reference_size: self.drift_reference as usize,
                window: self.drift_window as usize,
                min_current: self.drift_min as usize,
                ..DriftConfig::default()
            },
            baseline,
            prices,
            judge_sample: self.quality_judge_sample,
        })?;
        match path {
            Some(p) => eprintln!(
                "hangar serve: request log {} (sample {}, redact {})",
                p.display(),
                self.log_sample,
                self.log_redact
            ),
            None => eprintln!("hangar serve: no request log (--no-request-log)"),
        }
        Ok(Some(m))
    }
}

fn read_baseline(p: &Path) -> Result<Baseline> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    let b: Baseline = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a drift baseline; write one with `hangar monitor baseline`",
            p.display()
        )
    })?;
    if b.observations.len() < 2 {
        bail!(
            "{}: a baseline needs at least 2 requests, it has {}",
            p.display(),
            b.observations.len()
        );
    }
    Ok(b)
}

#[derive(Subcommand, Debug)]
pub enum LogsCmd {
    /// The newest requests.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        n: usize,
        #[command(flatten)]
        out: LogOut,
    },
    /// Requests matching a text (prompt or answer) and filters, newest first.
    Search {
        /// Text to find in prompts and answers (case-insensitive).
        text: Option<String>,
        #[command(flatten)]
        filter: LogFilter,
        #[command(flatten)]
        out: LogOut,
    },
    /// Every matching request as JSON lines (oldest first), to stdout or --out.
    Export {
        #[command(flatten)]
        filter: LogFilter,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct LogFilter {
    #[arg(long)]
    model: Option<String>,
    /// API key id as logged (`key-…`, `token:NAME`).
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    finish_reason: Option<String>,
    /// Only the last N hours.
    #[arg(long)]
    hours: Option<f64>,
    /// At most this many requests (search; export writes all).
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

#[derive(Args, Debug)]
pub struct LogOut {
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

impl LogFilter {
    fn query(&self, text: Option<String>) -> LogQuery {
        LogQuery {
            text,
            model: self.model.clone(),
            key_id: self.key.clone(),
            finish_reason: self.finish_reason.clone(),
            since_ms: self
                .hours
                .map(|h| hangar_monitor::now_ms() - (h * 3.6e6) as i64),
            before_id: None,
            after_id: None,
            limit: self.limit,
        }
    }
}

fn open_log(home: Option<&Path>) -> Result<RequestLog> {
    let p = log_path(home);
    if !p.exists() {
        bail!(
            "no request log at {}: `hangar serve` writes it (unless --no-request-log); pass --home if the server used another home",
            p.display()
        );
    }
    // Reading only: a log config that never deletes.
    Ok(RequestLog::open(
        &p,
        LogConfig {
            max_rows: 0,
            max_age: None,
            ..LogConfig::default()
        },
    )?)
}

fn print_rows(rows: &[RequestRecord], json: bool) -> Result<()> {
    if json {
        for r in rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{:>7}  {:<19}  {:<16}  {:>6}  {:>6}  {:>8}  {:<9}  prompt",
        "id", "time (UTC)", "model", "in", "out", "e2e ms", "finish"
    );
    for r in rows {
        let secs = r.ts_ms / 1000;
        let prompt: String = r
            .prompt
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(60)
            .collect();
        println!(
            "{:>7}  {:<19}  {:<16}  {:>6}  {:>6}  {:>8.0}  {:<9}  {prompt}",
            r.id,
            utc(secs),
            r.model,
            r.prompt_tokens,
            r.completion_tokens,
            r.e2e_ms,
            r.finish_reason
        );
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS` of a Unix time (UTC), without a date library.
fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn run_logs(cmd: LogsCmd, home: Option<&Path>) -> Result<()> {
    let log = open_log(home)?;
    match cmd {
        LogsCmd::Tail { n, out } => print_rows(&log.tail(n)?, out.json),
        LogsCmd::Search { text, filter, out } => {
            print_rows(&log.search(&filter.query(text))?, out.json)
        }
        LogsCmd::Export { filter, out } => {
            let q = filter.query(None);
            match out {
                Some(p) => {
                    let f = std::fs::File::create(&p)
                        .with_context(|| format!("creating {}", p.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    let n = log.export_jsonl(&q, &mut w)?;
                    std::io::Write::flush(&mut w)?;
                    eprintln!("wrote {n} requests to {}", p.display());
                }
                None => {
                    log.export_jsonl(&q, &mut std::io::stdout().lock())?;
                }
            }
            Ok(())
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum MonitorCmd {
    /// Write a drift baseline from a file of prompts (one per line), tokenized with the
    /// model's tokenizer, for `hangar serve --drift-baseline`.
    Baseline {
        /// GGUF file or registry model whose tokenizer to use.
        #[arg(long, short = 'm')]
        model: Option<String>,
        /// Prompts, one per line (blank lines skipped).
        #[arg(long)]
        prompts: PathBuf,
        /// Where to write the baseline JSON.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run_monitor(cmd: MonitorCmd, home: Option<PathBuf>) -> Result<()> {
    match cmd {
        MonitorCmd::Baseline {
            model,
            prompts,
            out,
        } => {
            let path = crate::model_path::resolve(model.as_deref(), home)?;
            let gguf = hangar_formats::gguf::GgufFile::open(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let tok = hangar_tokenizer::Tokenizer::from_gguf(&gguf)
                .with_context(|| format!("tokenizer of {}", path.display()))?;
            let text = std::fs::read_to_string(&prompts)
                .with_context(|| format!("reading {}", prompts.display()))?;
            let observations: Vec<Observation> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Observation::new(l, tok.encode(l, true, false), 0))
                .collect();
            if observations.len() < 2 {
                bail!("{}: need at least 2 prompts", prompts.display());
            }
            let n = observations.len();
            // Answers are unknown offline, so response lengths are not compared.
            let baseline = Baseline {
                observations,
                has_responses: false,
            };
            std::fs::write(&out, serde_json::to_vec(&baseline)?)
                .with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote a baseline of {n} prompts to {}", out.display());
            Ok(())
        }
    }
}
