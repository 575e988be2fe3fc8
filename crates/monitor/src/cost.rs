//! Cost accounting: a price table (per model, per million input and output tokens)
//! and running usage per API key and model. Plain data; /metrics and
//! `GET /v1/monitor/usage` read it.

use crate::MonitorError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

/// Prices of one model in currency units per million tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// Model name → price; `"*"` applies to models not listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriceTable {
    #[serde(default = "default_currency")]
    pub currency: String,
    pub models: BTreeMap<String, Price>,
}

fn default_currency() -> String {
    "USD".into()
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable {
            currency: default_currency(),
            models: BTreeMap::new(),
        }
    }
}

impl PriceTable {
    /// Reads a JSON price table: `{"currency": "USD", "models": {"gemma3": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}, "*": {...}}}`.
    pub fn load(path: &Path) -> Result<Self, MonitorError> {
        let text = std::fs::read_to_string(path).map_err(|e| MonitorError::io(path, e))?;
        let table: PriceTable = serde_json::from_str(&text).map_err(|e| {
            MonitorError::Invalid(format!(
                "{}: not a price table ({e}); expected {{\"models\": {{\"NAME\": {{\"input_per_mtok\": X, \"output_per_mtok\": Y}}}}}}",
                path.display()
            ))
        })?;
        for (m, p) in &table.models {
            if !(p.input_per_mtok.is_finite()
                && p.output_per_mtok.is_finite()
                && p.input_per_mtok >= 0.0
                && p.output_per_mtok >= 0.0)
            {
                return Err(MonitorError::Invalid(format!(
                    "{}: prices of {m} must be finite and not negative",
                    path.display()
                )));
            }
        }
        Ok(table)
    }

    pub fn price(&self, model: &str) -> Price {
        self.models
            .get(model)
            .or_else(|| self.models.get("*"))
            .copied()
            .unwrap_or_default()
    }

    /// Cost of one request.
    pub fn cost(&self, model: &str, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        let p = self.price(model);
        (prompt_tokens as f64 * p.input_per_mtok + completion_tokens as f64 * p.output_per_mtok)
            / 1e6
    }
}

/// Totals of one (key, model) pair.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Usage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

/// One row of the usage report.
#[derive(Debug, Clone, Serialize)]
pub struct UsageRow {
    pub key_id: String,
    pub model: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// Running usage per key and model since the server started.
#[derive(Debug, Default)]
pub struct UsageLedger {
    totals: Mutex<BTreeMap<(String, String), Usage>>,
}

impl UsageLedger {
    pub fn add(&self, key_id: &str, model: &str, prompt: u64, completion: u64, cost: f64) {
        let mut t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        let u = t
            .entry((key_id.to_string(), model.to_string()))
            .or_default();
        u.requests += 1;
        u.prompt_tokens += prompt;
        u.completion_tokens += completion;
        u.cost += cost;
    }

    pub fn rows(&self) -> Vec<UsageRow> {
        let t = self.totals.lock().unwrap_or_else(|e| e.into_inner());
        t.iter()
            .map(|((k, m), u)| UsageRow {
                key_id: k.clone(),
                model: m.clone(),
                usage: u.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_model_price_then_wildcard() {
        let mut t = PriceTable::default();
        t.models.insert(
            "big".into(),
            Price {
                input_per_mtok: 2.0,
                output_per_mtok: 8.0,
            },
        );
        t.models.insert(
            "*".into(),
            Price {
                input_per_mtok: 0.5,
                output_per_mtok: 1.0,
            },
        );
        assert!((t.cost("big", 1_000_000, 500_000) - 6.0).abs() < 1e-12);
        assert!((t.cost("other", 2_000_000, 0) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn ledger_sums_per_key_and_model() {
        let l = UsageLedger::default();
        l.add("k1", "m", 10, 5, 0.1);
        l.add("k1", "m", 1, 1, 0.2);
        l.add("k2", "m", 3, 0, 0.0);
        let rows = l.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].usage.requests, 2);
        assert_eq!(rows[0].usage.prompt_tokens, 11);
        assert!((rows[0].usage.cost - 0.3).abs() < 1e-12);
    }

    #[test]
    fn bad_price_tables_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("prices.json");
        std::fs::write(
            &p,
            r#"{"models": {"m": {"input_per_mtok": -1, "output_per_mtok": 1}}}"#,
        )
        .unwrap();
        let e = PriceTable::load(&p).unwrap_err().to_string();
        assert!(e.contains("not negative"), "{e}");
        std::fs::write(&p, "[1,2]").unwrap();
        assert!(PriceTable::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not a price table"));
    }
}
