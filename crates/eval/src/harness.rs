//! Runs a task set over a [`Scorer`] and folds the answers into one plain result:
//! parameters, metrics and one row per item — what a tracking run records.
//!
//! Owns batching and progress; the metrics themselves live in [`crate::metrics`].

use crate::error::Result;
use crate::metrics::{self, mc_predictions};
use crate::scorer::{GenQuery, LoglikQuery, Scorer};
use crate::task::TaskSet;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Instant;

/// How to run a task set.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Task name, for the result (a file name or a fetched task's name).
    pub task: String,
    /// Items handed to the scorer at once.
    pub batch: usize,
    /// Generation budget when an item names none.
    pub max_gen_tokens: usize,
    /// The limit the caller applied (recorded as a parameter).
    pub limit: Option<usize>,
    /// Add each choice's (context, continuation) token ids to multiple-choice rows
    /// (local scorers only), for comparisons with other implementations.
    pub with_tokens: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            task: "task".into(),
            batch: 16,
            max_gen_tokens: 64,
            limit: None,
            with_tokens: false,
        }
    }
}

/// The outcome of one evaluation: everything a tracking run logs.
#[derive(Debug, Clone, Serialize)]
pub struct EvalResult {
    pub task: String,
    pub kind: String,
    /// Model and run parameters (strings, as MLflow stores them).
    pub params: BTreeMap<String, String>,
    /// Aggregate metrics.
    pub metrics: BTreeMap<String, f64>,
    /// One JSON object per item, in task order.
    pub items: Vec<Value>,
}

/// What a tracking store logs for an evaluation: parameters, metrics and named
/// artifacts (file name, bytes). Built by [`EvalResult::to_tracking_run`].
#[derive(Debug, Clone)]
pub struct TrackingRun {
    pub run_name: String,
    pub params: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, f64>,
    pub artifacts: Vec<(String, Vec<u8>)>,
}

impl EvalResult {
    /// The per-item table as JSON lines.
    pub fn items_jsonl(&self) -> String {
        let mut s = String::new();
        for it in &self.items {
            s.push_str(&it.to_string());
            s.push('\n');
        }
        s
    }

    /// The evaluation as a tracking run: params (model, task, kind, limit ...),
    /// metrics, and the per-item table as the artifact `items.jsonl`.
    pub fn to_tracking_run(&self) -> TrackingRun {
        let mut params = self.params.clone();
        params.insert("task".into(), self.task.clone());
        params.insert("task_kind".into(), self.kind.clone());
        TrackingRun {
            run_name: format!("eval-{}", self.task),
            params,
            metrics: self.metrics.clone(),
            artifacts: vec![("items.jsonl".into(), self.items_jsonl().into_bytes())],
        }
    }
}

/// Evaluates `set` with `scorer`; `progress(done, total)` after each batch.
pub fn evaluate(
    scorer: &mut dyn Scorer,
    set: &TaskSet,
    opts: &RunOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<EvalResult> {
    let start = Instant::now();
    let batch = opts.batch.max(1);
    let total = set.len();
    let mut metrics = BTreeMap::new();
    let mut items = Vec::with_capacity(total);
    match set {
        TaskSet::MultipleChoice(list) => {
            let (mut acc, mut acc_norm, mut greedy) = (0usize, 0usize, 0usize);
            for (b, chunk) in list.chunks(batch).enumerate() {
                // One query per item, or per choice when the choices have their own contexts.
                let mut queries: Vec<LoglikQuery> = Vec::new();
                for it in chunk {
                    match &it.contexts {
                        None => queries.push(LoglikQuery {
                            context: it.context.clone(),
                            continuations: it.choices.clone(),
                        }),
                        Some(_) => queries.extend(it.choices.iter().enumerate().map(|(c, ch)| {
                            LoglikQuery {
                                context: it.context_of(c).to_string(),
                                continuations: vec![ch.clone()],
                            }
                        })),
                    }
                }
                let mut flat = scorer.loglikelihood(&queries)?.into_iter();
                let answers: Vec<Vec<crate::Loglik>> = chunk
                    .iter()
                    .map(|it| match &it.contexts {
                        None => flat.next().unwrap_or_default(),
                        Some(_) => it
                            .choices
                            .iter()
                            .filter_map(|_| flat.next().and_then(|v| v.into_iter().next()))
                            .collect(),
                    })
                    .collect();
                for (i, (it, ans)) in chunk.iter().zip(answers).enumerate() {
                    if ans.len() != it.choices.len() {
                        return Err(crate::EvalError::Invalid(format!(
                            "the scorer answered {} of {} choices of item {}",
                            ans.len(),
                            it.choices.len(),
                            b * batch + i
                        )));
                    }
                    let lls: Vec<f64> = ans.iter().map(|l| l.logprob).collect();
                    let (p, pn) = mc_predictions(&lls, &it.choices);
                    let ok = p == Some(it.label);
                    let ok_n = pn == Some(it.label);
                    acc += usize::from(ok);
                    acc_norm += usize::from(ok_n);
                    greedy += usize::from(ans[it.label].greedy);
                    let tokens: Option<Vec<(Vec<u32>, Vec<u32>)>> = if opts.with_tokens {
                        (0..it.choices.len())
                            .map(|c| scorer.token_ids(it.context_of(c), &it.choices[c]))
                            .collect()
                    } else {
                        None
                    };
                    let mut row = json!({
                        "index": b * batch + i,
                        "label": it.label,
                        "pred": p,
                        "pred_norm": pn,
                        "acc": u8::from(ok),
                        "acc_norm": u8::from(ok_n),
                        "logliks": lls,
                        "greedy": ans.iter().map(|l| l.greedy).collect::<Vec<_>>(),
                    });
                    if let Some(t) = tokens {
                        row["tokens"] = json!(t);
                    }
                    items.push(row);
                }
                progress(items.len(), total);
            }
            let n = list.len().max(1) as f64;
            let accs: Vec<f64> = items
                .iter()
                .map(|v| v["acc"].as_f64().unwrap_or(0.0))
                .collect();
            let (lo, hi) = metrics::bootstrap_ci(&accs, 1000, 1);
            metrics.insert("acc".into(), acc as f64 / n);
            metrics.insert("acc_norm".into(), acc_norm as f64 / n);
            // lm-eval's LAMBADA accuracy: the right answer is what greedy decoding gives.
            metrics.insert("label_greedy".into(), greedy as f64 / n);
            metrics.insert("acc_ci_low".into(), lo);
            metrics.insert("acc_ci_high".into(), hi);
        }
        TaskSet::Generation(list) => {
            let (mut em, mut r1, mut r2, mut rl) = (0.0, 0.0, 0.0, 0.0);
            for (b, chunk) in list.chunks(batch).enumerate() {
                let queries: Vec<GenQuery> = chunk
                    .iter()
                    .map(|it| GenQuery {
                        prompt: it.prompt.clone(),
                        max_tokens: it.max_tokens.unwrap_or(opts.max_gen_tokens),
                        stop: if it.stop.is_empty() {
                            vec!["\n\n".into()]
                        } else {
                            it.stop.clone()
                        },
                    })
                    .collect();
                let outs = scorer.generate(&queries)?;
                for (i, (it, out)) in chunk.iter().zip(outs).enumerate() {
                    let e = metrics::exact_match(&out, &it.references);
                    let (a, b2, c) = metrics::rouge_f1(&out, &it.references);
                    em += e;
                    r1 += a;
                    r2 += b2;
                    rl += c;
                    items.push(json!({
                        "index": b * batch + i, "output": out, "exact_match": e,
                        "rouge1": a, "rouge2": b2, "rougeL": c,
                    }));
                }
                progress(items.len(), total);
            }
            let n = list.len().max(1) as f64;
            metrics.insert("exact_match".into(), em / n);
            metrics.insert("rouge1".into(), r1 / n);
            metrics.insert("rouge2".into(), r2 / n);
            metrics.insert("rougeL".into(), rl / n);
        }
        TaskSet::Rolling(list) => {
            let (mut ll, mut words, mut bytes) = (0.0, 0usize, 0usize);
            for (b, chunk) in list.chunks(batch).enumerate() {
                let texts: Vec<String> = chunk.iter().map(|it| it.text.clone()).collect();
                let lls = scorer.loglikelihood_rolling(&texts)?;
                for (i, (t, l)) in texts.iter().zip(lls).enumerate() {
                    let (w, by) = (metrics::word_count(t), t.len());
                    ll += l;
                    words += w;
                    bytes += by;
                    let p = metrics::perplexities(l, w, by);
                    items.push(json!({
                        "index": b * batch + i, "loglik": l, "words": w, "bytes": by,
                        "bits_per_byte": p.bits_per_byte,
                    }));
                }
                progress(items.len(), total);
            }
            let p = metrics::perplexities(ll, words, bytes);
            metrics.insert("word_perplexity".into(), p.word_perplexity);
            metrics.insert("byte_perplexity".into(), p.byte_perplexity);
            metrics.insert("bits_per_byte".into(), p.bits_per_byte);
        }
    }
    let secs = start.elapsed().as_secs_f64();
    metrics.insert("items".into(), total as f64);
    metrics.insert("seconds".into(), secs);
    metrics.insert("items_per_s".into(), total as f64 / secs.max(1e-9));
    let mut params = scorer.describe();
    // Always present, so runs with and without a limit compare on one column.
    params.insert(
        "limit".into(),
        opts.limit.map_or_else(|| "none".into(), |l| l.to_string()),
    );
    Ok(EvalResult {
        task: opts.task.clone(),
        kind: set.kind().into(),
        params,
        metrics,
        items,
    })
}
