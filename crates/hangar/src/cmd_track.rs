//! `hangar runs` and `hangar experiments`: the tracking store of the home, read and
//! changed directly (no server needed). Tables for people, `--json` for scripts.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hangar_track::{Run, SearchExperiments, SearchRuns, Tracker, ViewType};
use std::path::PathBuf;

/// `hangar runs` subcommands.
#[derive(Subcommand, Debug)]
pub enum RunsCmd {
    /// List runs of an experiment (newest first), optionally filtered and ordered with
    /// MLflow's syntax.
    List(ListArgs),
    /// Show one run: info, params, latest metrics, tags, artifacts.
    Show {
        run_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Params and latest metrics of several runs side by side.
    Compare {
        #[arg(required = true, num_args = 2..)]
        run_ids: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Mark a run deleted (`--restore` brings it back).
    Delete {
        run_id: String,
        #[arg(long)]
        restore: bool,
    },
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Experiment name or id (default: the "Default" experiment, id 0).
    #[arg(long, short = 'e', default_value = "0")]
    experiment: String,
    /// MLflow filter, e.g. "metrics.acc > 0.5 and params.lr = '0.1'".
    #[arg(long, default_value = "")]
    filter: String,
    /// Order-by clause (repeatable), e.g. "metrics.acc DESC".
    #[arg(long = "order-by")]
    order_by: Vec<String>,
    /// Most runs to print.
    #[arg(long, default_value_t = 100)]
    max: usize,
    /// Include deleted runs.
    #[arg(long)]
    all: bool,
    #[arg(long)]
    json: bool,
}

/// `hangar experiments` subcommands.
#[derive(Subcommand, Debug)]
pub enum ExperimentsCmd {
    /// List experiments.
    List {
        /// Include deleted experiments.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
}

fn open(home: Option<PathBuf>) -> Result<Tracker> {
    let home = home.unwrap_or_else(hangar_registry::default_home);
    Tracker::open(&home)
        .with_context(|| format!("opening the tracking store in {}", home.display()))
}

/// An experiment id from a name or id.
fn experiment_id(t: &Tracker, name_or_id: &str) -> Result<String> {
    if let Some(e) = t.get_experiment_by_name(name_or_id)? {
        return Ok(e.experiment_id);
    }
    if name_or_id.parse::<i64>().is_ok() && t.get_experiment(name_or_id).is_ok() {
        return Ok(name_or_id.to_string());
    }
    bail!("no experiment named or numbered {name_or_id:?}; see `hangar experiments list`")
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn fmt_time(ms: i64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn fmt_metric(v: f64) -> String {
    if v.is_finite() && v.fract() != 0.0 {
        format!("{v:.4}")
    } else {
        format!("{v}")
    }
}

pub fn run_runs(cmd: RunsCmd, home: Option<PathBuf>) -> Result<()> {
    let t = open(home)?;
    match cmd {
        RunsCmd::List(a) => {
            let id = experiment_id(&t, &a.experiment)?;
            let page = t.search_runs(&SearchRuns {
                experiment_ids: vec![id],
                filter: a.filter,
                order_by: a.order_by,
                max_results: Some(a.max.clamp(1, hangar_track::MAX_SEARCH_RESULTS)),
                view: if a.all {
                    ViewType::All
                } else {
                    ViewType::ActiveOnly
                },
                ..Default::default()
            })?;
            if a.json {
                return print_json(&page.runs);
            }
            println!(
                "{:<32}  {:<24}  {:<9}  {:<19}  metrics",
                "run id", "name", "status", "started"
            );
            for r in &page.runs {
                let metrics: Vec<String> = r
                    .metrics
                    .iter()
                    .take(4)
                    .map(|m| format!("{}={}", m.key, fmt_metric(m.value)))
                    .collect();
                println!(
                    "{:<32}  {:<24}  {:<9}  {:<19}  {}{}",
                    r.info.run_id,
                    r.info.run_name,
                    r.info.status.as_str(),
                    fmt_time(r.info.start_time),
                    metrics.join(" "),
                    if r.info.lifecycle_stage == "deleted" {
                        " (deleted)"
                    } else {
                        ""
                    }
                );
            }
            if page.next_page_token.is_some() {
                println!("(more runs; raise --max)");
            }
            Ok(())
        }
        RunsCmd::Show { run_id, json } => {
            let run = t.get_run(&run_id)?;
            let artifacts = t.list_artifacts(&run_id, "")?;
            if json {
                return print_json(&serde_json::json!({"run": run, "artifacts": artifacts}));
            }
            let i = &run.info;
            println!("run        {}", i.run_id);
            println!("name       {}", i.run_name);
            println!("experiment {}", i.experiment_id);
            println!("status     {} ({})", i.status.as_str(), i.lifecycle_stage);
            println!("started    {}", fmt_time(i.start_time));
            if let Some(e) = i.end_time {
                println!(
                    "ended      {} ({:.1}s)",
                    fmt_time(e),
                    (e - i.start_time) as f64 / 1000.0
                );
            }
            println!("artifacts  {}", i.artifact_uri);
            for (title, rows) in [
                (
                    "params",
                    run.params
                        .iter()
                        .map(|p| (p.key.clone(), p.value.clone()))
                        .collect::<Vec<_>>(),
                ),
                (
                    "metrics",
                    run.metrics
                        .iter()
                        .map(|m| {
                            (
                                m.key.clone(),
                                format!("{} (step {})", fmt_metric(m.value), m.step),
                            )
                        })
                        .collect(),
                ),
                (
                    "tags",
                    run.tags
                        .iter()
                        .map(|p| (p.key.clone(), p.value.clone()))
                        .collect(),
                ),
            ] {
                if !rows.is_empty() {
                    println!("{title}:");
                    for (k, v) in rows {
                        println!("  {k} = {v}");
                    }
                }
            }
            for a in artifacts {
                println!("  {}{}", a.path, if a.is_dir { "/" } else { "" });
            }
            Ok(())
        }
        RunsCmd::Compare { run_ids, json } => {
            let runs: Vec<Run> = run_ids
                .iter()
                .map(|id| t.get_run(id).map_err(anyhow::Error::from))
                .collect::<Result<_>>()?;
            let mut keys: Vec<(String, bool)> = Vec::new();
            for r in &runs {
                keys.extend(r.params.iter().map(|p| (p.key.clone(), false)));
                keys.extend(r.metrics.iter().map(|m| (m.key.clone(), true)));
            }
            keys.sort();
            keys.dedup();
            let cell = |r: &Run, key: &str, metric: bool| -> Option<String> {
                if metric {
                    r.metrics
                        .iter()
                        .find(|m| m.key == key)
                        .map(|m| fmt_metric(m.value))
                } else {
                    r.params
                        .iter()
                        .find(|p| p.key == key)
                        .map(|p| p.value.clone())
                }
            };
            // Metrics as numbers (NaN and infinities, which JSON lacks, as strings).
            let raw = |r: &Run, key: &str, metric: bool| -> serde_json::Value {
                if metric {
                    match r.metrics.iter().find(|m| m.key == key) {
                        Some(m) if m.value.is_finite() => serde_json::json!(m.value),
                        Some(m) => serde_json::json!(m.value.to_string()),
                        None => serde_json::Value::Null,
                    }
                } else {
                    serde_json::json!(cell(r, key, false))
                }
            };
            if json {
                let rows: Vec<serde_json::Value> = keys
                    .iter()
                    .map(|(k, metric)| {
                        serde_json::json!({
                            "key": k,
                            "kind": if *metric { "metric" } else { "param" },
                            "values": runs.iter().map(|r| raw(r, k, *metric)).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                return print_json(&serde_json::json!({"runs": run_ids, "rows": rows}));
            }
            print!("{:<28}", "");
            for r in &runs {
                print!("  {:<20}", r.info.run_name);
            }
            println!();
            for (k, metric) in &keys {
                print!(
                    "{:<28}",
                    format!("{}.{k}", if *metric { "metrics" } else { "params" })
                );
                for r in &runs {
                    print!(
                        "  {:<20}",
                        cell(r, k, *metric).unwrap_or_else(|| "-".into())
                    );
                }
                println!();
            }
            Ok(())
        }
        RunsCmd::Delete { run_id, restore } => {
            if restore {
                t.restore_run(&run_id)?;
                println!("restored {run_id}");
            } else {
                t.delete_run(&run_id)?;
                println!("deleted {run_id} (undo with --restore)");
            }
            Ok(())
        }
    }
}

pub fn run_experiments(cmd: ExperimentsCmd, home: Option<PathBuf>) -> Result<()> {
    let t = open(home)?;
    match cmd {
        ExperimentsCmd::List { all, json } => {
            let mut out = Vec::new();
            let mut token = None;
            loop {
                let (page, next) = t.search_experiments(&SearchExperiments {
                    view: if all {
                        ViewType::All
                    } else {
                        ViewType::ActiveOnly
                    },
                    page_token: token,
                    order_by: vec!["experiment_id ASC".into()],
                    ..Default::default()
                })?;
                out.extend(page);
                match next {
                    Some(n) => token = Some(n),
                    None => break,
                }
            }
            if json {
                return print_json(&out);
            }
            println!("{:<6}  {:<32}  {:<8}  created", "id", "name", "stage");
            for e in out {
                println!(
                    "{:<6}  {:<32}  {:<8}  {}",
                    e.experiment_id,
                    e.name,
                    e.lifecycle_stage,
                    fmt_time(e.creation_time)
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_milliseconds_as_utc() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_time(1_700_000_000_000), "2023-11-14 22:13:20");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29 00:00:00");
    }
}
