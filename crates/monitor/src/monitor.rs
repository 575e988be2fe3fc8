//! The monitoring service of one server: takes a finished request (its log record and
//! drift observation) and updates the request log, the per-model drift windows, usage
//! and cost, and the PII-in-responses counters. Cheap on the caller's thread: the log
//! write happens on the log's own thread, drift statistics only when read.

use crate::cost::{PriceTable, UsageLedger, UsageRow};
use crate::drift::{Baseline, DriftConfig, DriftMonitor, DriftReport, Observation};
use crate::log::{LogConfig, RequestLog, RequestRecord};
use crate::quality::QualityExamples;
use crate::redact::{find_pii, PiiKind};
use crate::MonitorError;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

/// How a server monitors.
#[derive(Debug, Clone, Default)]
pub struct MonitorConfig {
    /// Where the request log lives and how it keeps records; None = no log.
    pub log: Option<(PathBuf, LogConfig)>,
    pub drift: DriftConfig,
    /// A fixed reference for every model's drift (else the first requests).
    pub baseline: Option<Baseline>,
    pub prices: PriceTable,
    /// Share of finished requests whose answer the served model judges for toxicity
    /// (0 = off; each judgement is one short generation on the same engine).
    pub judge_sample: f64,
}

/// Monitoring state shared by request handlers.
pub struct Monitor {
    log: Option<RequestLog>,
    drift_cfg: DriftConfig,
    baseline: Option<Baseline>,
    drift: Mutex<BTreeMap<String, DriftMonitor>>,
    prices: PriceTable,
    usage: UsageLedger,
    pii: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// Prompt-answer embedding cosine per model: (sum, count).
    relevance: Mutex<BTreeMap<String, (f64, u64)>>,
    /// Embedded refusal and jailbreak examples, once an embedding model provides them.
    examples: std::sync::OnceLock<QualityExamples>,
    /// Refusals and jailbreak attempts per model.
    flagged: Mutex<BTreeMap<(String, &'static str), u64>>,
    judge_sample: f64,
    /// Accumulates `judge_sample` per request; a judgement is due at each whole unit.
    judge_credit: Mutex<f64>,
    /// Evaluator verdicts per (model, check, verdict).
    judged: Mutex<BTreeMap<(String, &'static str, &'static str), u64>>,
}

impl Monitor {
    /// Opens the request log (if configured) and starts empty drift windows.
    pub fn open(cfg: MonitorConfig) -> Result<Self, MonitorError> {
        let log = match cfg.log {
            Some((path, log_cfg)) => Some(RequestLog::open(path, log_cfg)?),
            None => None,
        };
        Ok(Monitor {
            log,
            drift_cfg: cfg.drift,
            baseline: cfg.baseline,
            drift: Mutex::new(BTreeMap::new()),
            prices: cfg.prices,
            usage: UsageLedger::default(),
            pii: Mutex::new(BTreeMap::new()),
            relevance: Mutex::new(BTreeMap::new()),
            examples: std::sync::OnceLock::new(),
            flagged: Mutex::new(BTreeMap::new()),
            judge_sample: cfg.judge_sample.clamp(0.0, 1.0),
            judge_credit: Mutex::new(0.0),
            judged: Mutex::new(BTreeMap::new()),
        })
    }

    /// Records one finished request: prices it, adds it to usage and to its model's
    /// drift window, counts personal data in the answer, and queues it for the log.
    pub fn observe(&self, mut rec: RequestRecord, obs: Observation) {
        rec.cost = self
            .prices
            .cost(&rec.model, rec.prompt_tokens, rec.completion_tokens);
        let key = rec.key_id.clone().unwrap_or_else(|| "anonymous".into());
        self.usage.add(
            &key,
            &rec.model,
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.cost,
        );
        {
            let mut d = self.drift.lock().unwrap_or_else(|e| e.into_inner());
            d.entry(rec.model.clone())
                .or_insert_with(|| match &self.baseline {
                    Some(b) => DriftMonitor::with_baseline(self.drift_cfg.clone(), b.clone()),
                    None => DriftMonitor::new(self.drift_cfg.clone()),
                })
                .observe(obs);
        }
        let kinds = find_pii(&rec.response);
        if !kinds.is_empty() {
            let mut p = self.pii.lock().unwrap_or_else(|e| e.into_inner());
            for k in kinds {
                *p.entry((rec.model.clone(), k.as_str())).or_insert(0) += 1;
            }
        }
        if let Some(log) = &self.log {
            log.record(rec);
        }
    }

    /// Drift of every model seen so far.
    pub fn drift_reports(&self) -> BTreeMap<String, DriftReport> {
        // Copy the windows out so the statistics run without holding the lock.
        let monitors: Vec<(String, DriftMonitor)> = {
            let d = self.drift.lock().unwrap_or_else(|e| e.into_inner());
            d.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        monitors.into_iter().map(|(k, m)| (k, m.report())).collect()
    }

    /// The current reference of `model` (to save as a baseline).
    pub fn baseline_of(&self, model: &str) -> Option<Baseline> {
        let d = self.drift.lock().unwrap_or_else(|e| e.into_inner());
        d.get(model).map(|m| m.baseline())
    }

    /// Usage per key and model.
    pub fn usage(&self) -> Vec<UsageRow> {
        self.usage.rows()
    }

    /// Sets the embedded example sets (once; later calls are ignored).
    pub fn set_quality_examples(&self, examples: QualityExamples) {
        let _ = self.examples.set(examples);
    }

    /// Whether refusal and jailbreak examples are set.
    pub fn has_quality_examples(&self) -> bool {
        self.examples.get().is_some()
    }

    /// Scores a prompt/answer pair by their embeddings: relevance always, refusal and
    /// jailbreak attempt when the example sets are known.
    pub fn record_quality(&self, model: &str, prompt: &[f32], answer: &[f32]) {
        match self.examples.get() {
            Some(ex) => {
                let s = ex.score(prompt, answer);
                self.record_relevance(model, s.relevance as f64);
                let mut f = self.flagged.lock().unwrap_or_else(|e| e.into_inner());
                if s.refusal {
                    *f.entry((model.to_string(), "refusal")).or_insert(0) += 1;
                }
                if s.jailbreak {
                    *f.entry((model.to_string(), "jailbreak_attempt"))
                        .or_insert(0) += 1;
                }
            }
            None => self.record_relevance(model, crate::quality::cosine(prompt, answer) as f64),
        }
    }

    /// Whether this finished request's answer should be judged (an exact share over
    /// many requests, no randomness).
    pub fn should_judge(&self) -> bool {
        if self.judge_sample <= 0.0 {
            return false;
        }
        let mut c = self.judge_credit.lock().unwrap_or_else(|e| e.into_inner());
        *c += self.judge_sample;
        if *c >= 1.0 - 1e-9 {
            *c -= 1.0;
            true
        } else {
            false
        }
    }

    /// Records an evaluator's verdict on one answer for `check` (`toxicity`):
    /// Some(true) flagged, Some(false) clean, None unparseable.
    pub fn record_judgement(&self, model: &str, check: &'static str, verdict: Option<bool>) {
        let v = match verdict {
            Some(true) => "flagged",
            Some(false) => "clean",
            None => "unparseable",
        };
        let mut j = self.judged.lock().unwrap_or_else(|e| e.into_inner());
        *j.entry((model.to_string(), check, v)).or_insert(0) += 1;
    }

    /// Evaluator verdicts by model, check and verdict.
    pub fn judgements(&self) -> Vec<(String, &'static str, &'static str, u64)> {
        let j = self.judged.lock().unwrap_or_else(|e| e.into_inner());
        j.iter()
            .map(|((m, c, v), n)| (m.clone(), *c, *v, *n))
            .collect()
    }

    /// Refusals and jailbreak attempts seen, by model and kind.
    pub fn flagged(&self) -> Vec<(String, &'static str, u64)> {
        let f = self.flagged.lock().unwrap_or_else(|e| e.into_inner());
        f.iter().map(|((m, k), n)| (m.clone(), *k, *n)).collect()
    }

    /// Records the cosine between a prompt's and its answer's embeddings (relevance).
    pub fn record_relevance(&self, model: &str, cosine: f64) {
        if cosine.is_finite() {
            let mut r = self.relevance.lock().unwrap_or_else(|e| e.into_inner());
            let e = r.entry(model.to_string()).or_insert((0.0, 0));
            e.0 += cosine;
            e.1 += 1;
        }
    }

    /// Mean prompt-answer relevance and the number of answers it covers, per model.
    pub fn relevance(&self) -> Vec<(String, f64, u64)> {
        let r = self.relevance.lock().unwrap_or_else(|e| e.into_inner());
        r.iter()
            .map(|(m, (sum, n))| (m.clone(), sum / (*n).max(1) as f64, *n))
            .collect()
    }

    /// Responses containing personal data, by model and kind.
    pub fn pii_counts(&self) -> Vec<(String, &'static str, u64)> {
        let p = self.pii.lock().unwrap_or_else(|e| e.into_inner());
        p.iter().map(|((m, k), n)| (m.clone(), *k, *n)).collect()
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    /// The request log, when one is kept.
    pub fn log(&self) -> Option<&RequestLog> {
        self.log.as_ref()
    }

    /// Writes everything queued for the log (call on shutdown).
    pub fn close(&self) {
        if let Some(l) = &self.log {
            l.close();
        }
    }
}

/// The PII kinds, for callers that list them.
pub const PII_KINDS: [PiiKind; 4] = [
    PiiKind::Email,
    PiiKind::Phone,
    PiiKind::Card,
    PiiKind::Secret,
];
