//! Task files: JSON lines a person can write by hand, one item a line. The kind of a
//! file is read from its first item's fields.
//!
//! Owns the formats and their validation; knows nothing about models or scoring.

use crate::error::{EvalError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Multiple choice: `{"context": str, "choices": [str, ...], "label": int}`. A leading
/// space on each choice is the writer's choice, as in lm-evaluation-harness. Optional
/// `"contexts"` gives each choice its own context (WinoGrande's partial scoring); a
/// single choice is allowed (LAMBADA: scored by whether it is the greedy answer).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct McItem {
    pub context: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contexts: Option<Vec<String>>,
    pub choices: Vec<String>,
    pub label: usize,
}

impl McItem {
    /// The context of choice `i`.
    pub fn context_of(&self, i: usize) -> &str {
        self.contexts
            .as_ref()
            .and_then(|c| c.get(i))
            .map_or(&self.context, String::as_str)
    }
}

/// Generation: `{"prompt": str, "references": [str, ...]}`; optional `"stop"` strings
/// and `"max_tokens"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct GenItem {
    pub prompt: String,
    pub references: Vec<String>,
    #[serde(default)]
    pub stop: Vec<String>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
}

/// Rolling log-likelihood (perplexity): `{"text": str}`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RollingItem {
    pub text: String,
}

/// A loaded task file.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskSet {
    MultipleChoice(Vec<McItem>),
    Generation(Vec<GenItem>),
    Rolling(Vec<RollingItem>),
}

impl TaskSet {
    pub fn len(&self) -> usize {
        match self {
            TaskSet::MultipleChoice(v) => v.len(),
            TaskSet::Generation(v) => v.len(),
            TaskSet::Rolling(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `multiple_choice`, `generation` or `rolling`.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskSet::MultipleChoice(_) => "multiple_choice",
            TaskSet::Generation(_) => "generation",
            TaskSet::Rolling(_) => "rolling",
        }
    }
    /// Keeps the first `n` items.
    pub fn truncate(&mut self, n: usize) {
        match self {
            TaskSet::MultipleChoice(v) => v.truncate(n),
            TaskSet::Generation(v) => v.truncate(n),
            TaskSet::Rolling(v) => v.truncate(n),
        }
    }
}

/// Reads a task file (blank lines and lines starting with `#` skipped).
pub fn load(path: &Path) -> Result<TaskSet> {
    let text = std::fs::read_to_string(path).map_err(EvalError::io(path))?;
    parse(&text).map_err(|m| EvalError::bad(path, m))
}

/// Parses task lines; the error names the line.
pub fn parse(text: &str) -> std::result::Result<TaskSet, String> {
    let mut set: Option<TaskSet> = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {n}: not JSON: {e}"))?;
        let set = set.get_or_insert_with(|| {
            if v.get("choices").is_some() {
                TaskSet::MultipleChoice(Vec::new())
            } else if v.get("references").is_some() {
                TaskSet::Generation(Vec::new())
            } else {
                TaskSet::Rolling(Vec::new())
            }
        });
        let kind = set.kind();
        let bad = |e: serde_json::Error| {
            format!(
                "line {n}: not a {kind} item ({e}); expected {}",
                match kind {
                    "multiple_choice" => r#"{"context": str, "choices": [str, ...], "label": int}"#,
                    "generation" => r#"{"prompt": str, "references": [str, ...]}"#,
                    _ => r#"{"text": str}"#,
                }
            )
        };
        match set {
            TaskSet::MultipleChoice(items) => {
                let it: McItem = serde_json::from_value(v).map_err(bad)?;
                if it.choices.is_empty() || it.label >= it.choices.len() {
                    return Err(format!(
                        "line {n}: needs at least one choice and a label below their count ({} choices, label {})",
                        it.choices.len(),
                        it.label
                    ));
                }
                if it.choices.iter().any(String::is_empty) {
                    return Err(format!("line {n}: a choice is empty"));
                }
                if it
                    .contexts
                    .as_ref()
                    .is_some_and(|c| c.len() != it.choices.len())
                {
                    return Err(format!(
                        "line {n}: \"contexts\" needs one context per choice"
                    ));
                }
                items.push(it);
            }
            TaskSet::Generation(items) => {
                let it: GenItem = serde_json::from_value(v).map_err(bad)?;
                if it.references.is_empty() {
                    return Err(format!("line {n}: needs at least one reference"));
                }
                items.push(it);
            }
            TaskSet::Rolling(items) => {
                let it: RollingItem = serde_json::from_value(v).map_err(bad)?;
                if it.text.is_empty() {
                    return Err(format!("line {n}: the text is empty"));
                }
                items.push(it);
            }
        }
    }
    match set {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err("no items (one JSON object a line)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_comes_from_the_first_item() {
        let mc = parse(
            "# a comment\n{\"context\":\"2+2=\",\"choices\":[\" 4\",\" 5\"],\"label\":0}\n\n",
        )
        .unwrap();
        assert_eq!(mc.kind(), "multiple_choice");
        let g = parse(r#"{"prompt":"Hi","references":["Hello"]}"#).unwrap();
        assert_eq!(g.kind(), "generation");
        let r = parse(r#"{"text":"Some prose."}"#).unwrap();
        assert_eq!(r.kind(), "rolling");
    }

    #[test]
    fn bad_items_name_their_line() {
        let e = parse("{\"context\":\"a\",\"choices\":[\" b\",\" c\"],\"label\":0}\n{\"context\":\"a\",\"choices\":[],\"label\":0}").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        let e = parse("{\"context\":\"a\",\"choices\":[\" b\",\" c\"],\"label\":2}").unwrap_err();
        assert!(e.contains("label"), "{e}");
        let e = parse("{\"prompt\":\"a\",\"references\":[]}").unwrap_err();
        assert!(e.contains("reference"), "{e}");
        assert!(parse("\n# only comments\n").is_err());
        assert!(parse("{not json").unwrap_err().contains("line 1"));
    }
}
