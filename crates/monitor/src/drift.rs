//! Drift of what users send and what the model answers, per model: a reference window
//! (the first N requests, or a saved baseline) against a sliding current window, with
//! Evidently's default tests and thresholds. Holds observations only; computes on
//! demand (a scrape), never on the request path.

use crate::stats::{self, KsResult, MmdResult};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};

/// What one request contributes to drift statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observation {
    pub prompt_tokens: Vec<u32>,
    pub response_tokens: usize,
    /// Share of the prompt's characters that are not letters (digits, symbols, code).
    pub non_letter_share: f64,
    /// An embedding of the prompt, when an embedding source exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
}

impl Observation {
    /// Builds an observation from the prompt text and its token ids.
    pub fn new(prompt: &str, prompt_tokens: Vec<u32>, response_tokens: usize) -> Self {
        Observation {
            non_letter_share: non_letter_share(prompt),
            prompt_tokens,
            response_tokens,
            embedding: None,
        }
    }
}

/// Share of non-whitespace characters that are not alphabetic.
pub fn non_letter_share(text: &str) -> f64 {
    let (mut all, mut other) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        all += 1;
        if !c.is_alphabetic() {
            other += 1;
        }
    }
    if all == 0 {
        0.0
    } else {
        other as f64 / all as f64
    }
}

/// Thresholds (Evidently's defaults where it has one) and window sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DriftConfig {
    /// Requests that form the reference when no baseline file is given.
    pub reference_size: usize,
    /// Requests in the sliding current window.
    pub window: usize,
    /// Fewer current requests than this: no verdict yet.
    pub min_current: usize,
    /// KS p-value under which a numeric feature drifted (samples ≤ 1000).
    pub ks_pvalue: f64,
    /// Normalised Wasserstein distance at or over which a feature drifted (> 1000).
    pub wasserstein: f64,
    /// PSI at or over which a feature drifted (reported; large windows).
    pub psi: f64,
    /// Sample size above which Wasserstein (not KS) decides.
    pub large_sample: usize,
    /// Unseen-token share above the reference's own self-unseen rate that alerts.
    pub unseen_margin: f64,
    /// MMD permutation p-value under which embeddings drifted.
    pub mmd_pvalue: f64,
    /// Permutations of the MMD test.
    pub permutations: usize,
    /// Embeddings kept per side for MMD.
    pub max_embeddings: usize,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            reference_size: 200,
            window: 500,
            min_current: 20,
            ks_pvalue: 0.05,
            wasserstein: 0.1,
            psi: 0.1,
            large_sample: 1000,
            unseen_margin: 0.15,
            mmd_pvalue: 0.05,
            permutations: 200,
            max_embeddings: 200,
        }
    }
}

/// A numeric feature's tests.
#[derive(Debug, Clone, Serialize)]
pub struct FeatureDrift {
    pub name: &'static str,
    pub ks: KsResult,
    pub wasserstein_normed: f64,
    pub psi: f64,
    /// The test that decided (`ks` for small samples, `wasserstein` for large).
    pub method: &'static str,
    pub drifted: bool,
    pub reference_mean: f64,
    pub current_mean: f64,
    /// Both distributions over 10 equal bins of the combined range (shares), to draw.
    pub histogram: Histogram,
}

/// Reference and current shares per bin; `edges` has one more entry than each.
#[derive(Debug, Clone, Serialize)]
pub struct Histogram {
    pub edges: Vec<f64>,
    pub reference: Vec<f64>,
    pub current: Vec<f64>,
}

fn histogram(r: &[f64], c: &[f64], bins: usize) -> Histogram {
    let lo = r.iter().chain(c).copied().fold(f64::INFINITY, f64::min);
    let hi = r.iter().chain(c).copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return Histogram {
            edges: vec![],
            reference: vec![],
            current: vec![],
        };
    }
    let width = if hi > lo {
        (hi - lo) / bins as f64
    } else {
        1.0
    };
    let shares = |v: &[f64]| {
        let mut h = vec![0.0; bins];
        for &x in v {
            h[(((x - lo) / width) as usize).min(bins - 1)] += 1.0;
        }
        let n = v.len().max(1) as f64;
        h.iter().map(|c| c / n).collect()
    };
    Histogram {
        edges: (0..=bins).map(|i| lo + width * i as f64).collect(),
        reference: shares(r),
        current: shares(c),
    }
}

/// Everything `GET /v1/monitor/drift` reports for one model.
#[derive(Debug, Clone, Serialize)]
pub struct DriftReport {
    pub reference_size: usize,
    pub current_size: usize,
    /// False until the reference is complete and the window holds `min_current`.
    pub ready: bool,
    pub unseen_token_share: f64,
    /// The reference's own unseen rate (last fifth against the rest): the floor.
    pub unseen_token_share_reference: f64,
    pub unseen_drifted: bool,
    pub features: Vec<FeatureDrift>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_distance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_mmd: Option<MmdResult>,
    pub embedding_drifted: bool,
    pub alert: bool,
}

impl DriftReport {
    /// The prompt-length KS p-value (1 when unknown), for the gauge.
    pub fn length_ks_pvalue(&self) -> f64 {
        self.features
            .iter()
            .find(|f| f.name == "prompt_length")
            .map_or(1.0, |f| f.ks.p_value)
    }
}

/// A saved reference window (`hangar monitor baseline` writes one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Baseline {
    pub observations: Vec<Observation>,
    /// False when the baseline was built from prompts alone (no answers): response
    /// lengths are then not compared.
    #[serde(default = "yes")]
    pub has_responses: bool,
}

fn yes() -> bool {
    true
}

/// Reference and current windows of one model.
#[derive(Debug, Clone)]
pub struct DriftMonitor {
    cfg: DriftConfig,
    reference: Vec<Observation>,
    /// Token ids seen anywhere in the reference.
    vocab: HashSet<u32>,
    self_unseen: f64,
    frozen: bool,
    /// Whether the reference holds real response lengths.
    has_responses: bool,
    current: VecDeque<Observation>,
}

impl DriftMonitor {
    /// A monitor whose reference is the first `cfg.reference_size` requests.
    pub fn new(cfg: DriftConfig) -> Self {
        DriftMonitor {
            cfg,
            reference: Vec::new(),
            vocab: HashSet::new(),
            self_unseen: 0.0,
            frozen: false,
            has_responses: true,
            current: VecDeque::new(),
        }
    }

    /// A monitor with a fixed reference (a baseline file).
    pub fn with_baseline(cfg: DriftConfig, baseline: Baseline) -> Self {
        let mut m = DriftMonitor::new(cfg);
        m.reference = baseline.observations;
        m.has_responses = baseline.has_responses;
        m.freeze();
        m
    }

    pub fn config(&self) -> &DriftConfig {
        &self.cfg
    }

    /// The reference as a baseline that can be saved and loaded.
    pub fn baseline(&self) -> Baseline {
        Baseline {
            observations: self.reference.clone(),
            has_responses: self.has_responses,
        }
    }

    fn freeze(&mut self) {
        self.vocab = self
            .reference
            .iter()
            .flat_map(|o| o.prompt_tokens.iter().copied())
            .collect();
        // Self-unseen rate: how new the reference's last fifth looks against the rest,
        // so a finite reference does not read as drift on same-distribution traffic.
        let split = self.reference.len() * 4 / 5;
        let head: HashSet<u32> = self.reference[..split]
            .iter()
            .flat_map(|o| o.prompt_tokens.iter().copied())
            .collect();
        self.self_unseen = unseen_share(&head, self.reference[split..].iter());
        self.frozen = true;
    }

    /// Records one request: into the reference until it is full, then the window.
    pub fn observe(&mut self, obs: Observation) {
        if !self.frozen {
            self.reference.push(obs);
            if self.reference.len() >= self.cfg.reference_size {
                self.freeze();
            }
            return;
        }
        self.current.push_back(obs);
        while self.current.len() > self.cfg.window {
            self.current.pop_front();
        }
    }

    /// Runs every test on the windows as they are now.
    pub fn report(&self) -> DriftReport {
        let cfg = &self.cfg;
        let ready = self.frozen && self.current.len() >= cfg.min_current;
        let unseen = if self.frozen {
            unseen_share(&self.vocab, self.current.iter())
        } else {
            0.0
        };
        let feature = |name: &'static str, f: &dyn Fn(&Observation) -> f64| {
            let r: Vec<f64> = self.reference.iter().map(f).collect();
            let c: Vec<f64> = self.current.iter().map(f).collect();
            let ks = stats::ks_two_sample(&r, &c);
            let w = stats::wasserstein_normed(&r, &c);
            let psi = stats::psi(&r, &c, 10);
            let large = r.len().min(c.len()) > cfg.large_sample;
            let (method, drifted) = if large {
                ("wasserstein", w >= cfg.wasserstein)
            } else {
                ("ks", ks.p_value < cfg.ks_pvalue)
            };
            let mean = |v: &[f64]| {
                if v.is_empty() {
                    0.0
                } else {
                    v.iter().sum::<f64>() / v.len() as f64
                }
            };
            FeatureDrift {
                name,
                ks,
                wasserstein_normed: w,
                psi,
                method,
                drifted: ready && drifted,
                reference_mean: mean(&r),
                current_mean: mean(&c),
                histogram: histogram(&r, &c, 10),
            }
        };
        let mut features = vec![feature("prompt_length", &|o| o.prompt_tokens.len() as f64)];
        if self.has_responses {
            features.push(feature("response_length", &|o| o.response_tokens as f64));
        }
        features.push(feature("non_letter_share", &|o| o.non_letter_share));
        let take = |it: &mut dyn Iterator<Item = &Observation>| -> Vec<Vec<f32>> {
            it.filter_map(|o| o.embedding.clone())
                .take(cfg.max_embeddings)
                .collect()
        };
        let re = take(&mut self.reference.iter());
        let ce = take(&mut self.current.iter().rev());
        let (embedding_distance, embedding_mmd) = if re.len() >= 2 && ce.len() >= 2 {
            (
                Some(stats::centroid_cosine_distance(&re, &ce)),
                Some(stats::mmd_rbf(&re, &ce, cfg.permutations, 0x5eed)),
            )
        } else {
            (None, None)
        };
        let embedding_drifted = ready && embedding_mmd.is_some_and(|m| m.p_value < cfg.mmd_pvalue);
        let unseen_drifted = ready && unseen > self.self_unseen + cfg.unseen_margin;
        let alert = unseen_drifted || embedding_drifted || features.iter().any(|f| f.drifted);
        DriftReport {
            reference_size: self.reference.len(),
            current_size: self.current.len(),
            ready,
            unseen_token_share: unseen,
            unseen_token_share_reference: self.self_unseen,
            unseen_drifted,
            features,
            embedding_distance,
            embedding_mmd,
            embedding_drifted,
            alert,
        }
    }
}

/// Fraction of the tokens of `obs` whose ids are not in `vocab`.
fn unseen_share<'a>(vocab: &HashSet<u32>, obs: impl Iterator<Item = &'a Observation>) -> f64 {
    let (mut all, mut new) = (0usize, 0usize);
    for o in obs {
        for t in &o.prompt_tokens {
            all += 1;
            if !vocab.contains(t) {
                new += 1;
            }
        }
    }
    if all == 0 {
        0.0
    } else {
        new as f64 / all as f64
    }
}
