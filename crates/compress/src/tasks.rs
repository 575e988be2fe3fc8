//! Multiple-choice evaluation: each task is a question, its choices and the index of
//! the right one; a model answers with the choice whose tokens it finds most likely
//! (mean log-likelihood per token, so long choices are not penalised).
//!
//! Owns the task file format (JSON lines) and the scoring.

use crate::error::{CompressError, Result};
use crate::eval::EvalModel;
use crate::session::{lse, Session};
use hangar_kernels::ThreadPool;
use hangar_models::LogitsWanted;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One question: `{"question": "...", "choices": ["...", ...], "answer": 0}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Task {
    pub question: String,
    pub choices: Vec<String>,
    pub answer: usize,
}

/// Accuracy with a 95% Wilson score interval.
#[derive(Debug, Clone, Serialize)]
pub struct McReport {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// The chosen index per task.
    pub predictions: Vec<usize>,
}

/// Reads a JSON-lines task file (blank lines and lines starting with `#` skipped).
pub fn load(path: &Path) -> Result<Vec<Task>> {
    let text = std::fs::read_to_string(path).map_err(CompressError::io(path))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let t: Task = serde_json::from_str(line)
            .map_err(|e| CompressError::bad(path, format!("line {}: {e}", i + 1)))?;
        if t.choices.len() < 2 || t.answer >= t.choices.len() {
            return Err(CompressError::bad(
                path,
                format!(
                    "line {}: needs at least 2 choices and an answer index below their count",
                    i + 1
                ),
            ));
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err(CompressError::bad(path, "no tasks"));
    }
    Ok(out)
}

/// The 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054f64;
    let (n, p) = (n as f64, k as f64 / n as f64);
    let den = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / den;
    let half = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / den;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Prompt text for a question.
pub fn prompt(t: &Task) -> String {
    format!("Question: {}\nAnswer:", t.question.trim())
}

/// Scores every task with `m`.
pub fn score(
    pool: &ThreadPool,
    m: &EvalModel,
    tasks: &[Task],
    mut on_task: impl FnMut(usize, usize),
) -> Result<McReport> {
    let tk = &m.tokenizer;
    let encoded: Vec<(Vec<u32>, Vec<Vec<u32>>)> = tasks
        .iter()
        .map(|t| {
            let p = tk.encode(&prompt(t), true, false);
            let cs = t
                .choices
                .iter()
                .map(|c| tk.encode(&format!(" {}", c.trim()), false, false))
                .collect();
            (p, cs)
        })
        .collect();
    let cap = encoded
        .iter()
        .map(|(p, cs)| p.len() + cs.iter().map(|c| c.len()).max().unwrap_or(0))
        .max()
        .unwrap_or(1)
        + 1;
    let mut s = Session::new(&m.model, cap);
    let vocab = s.vocab();
    let mut predictions = Vec::with_capacity(tasks.len());
    let mut correct = 0;
    let mut last = vec![0f32; vocab];
    for (i, ((p, choices), t)) in encoded.iter().zip(tasks).enumerate() {
        s.feed(pool, p, 0, LogitsWanted::Last, None)?;
        last.copy_from_slice(&s.logits[..vocab]);
        let mut best = (f64::NEG_INFINITY, 0);
        for (ci, c) in choices.iter().enumerate() {
            if c.is_empty() {
                continue;
            }
            s.feed(pool, c, p.len(), LogitsWanted::All, None)?;
            let mut ll = last[c[0] as usize] as f64 - lse(&last).1;
            for k in 1..c.len() {
                let row = &s.logits[(k - 1) * vocab..k * vocab];
                ll += row[c[k] as usize] as f64 - lse(row).1;
            }
            let mean = ll / c.len() as f64;
            if mean > best.0 {
                best = (mean, ci);
            }
        }
        predictions.push(best.1);
        correct += (best.1 == t.answer) as usize;
        on_task(i + 1, tasks.len());
    }
    let (lo, hi) = wilson(correct, tasks.len());
    Ok(McReport {
        n: tasks.len(),
        correct,
        accuracy: correct as f64 / tasks.len() as f64,
        ci_low: lo,
        ci_high: hi,
        predictions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_interval_brackets_the_estimate() {
        let (lo, hi) = wilson(30, 50);
        assert!(lo < 0.6 && hi > 0.6);
        assert!(
            (lo - 0.4618).abs() < 1e-3 && (hi - 0.7239).abs() < 1e-3,
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
