//! Prometheus metrics: request counters by route and status, latency histograms
//! (time to first token, inter-token, end to end), token counters, and the engine's
//! gauges (queue, running, KV blocks, prefix cache, preemptions) in text format.
//!
//! Lock-free on the token path (atomics); the per-route counter map takes a lock once
//! per request.

use hangar_engine::EngineStats;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    /// Sum in microseconds.
    sum_us: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
];

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Cumulative bucket counts (then the +Inf count) for quantiles over an interval.
    pub fn snapshot(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        v.push(self.count.load(Ordering::Relaxed));
        v
    }

    /// The `q` quantile of the observations between two snapshots, interpolated within
    /// the bucket as Prometheus' `histogram_quantile` does; None when there were none.
    pub fn quantile_between(&self, before: &[u64], after: &[u64], q: f64) -> Option<f64> {
        let n = self.bounds.len();
        let total = after.get(n)?.saturating_sub(*before.get(n)?);
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let mut cum = 0u64;
        let mut lower = 0.0;
        for i in 0..n {
            let c = after[i].saturating_sub(before[i]);
            if (cum + c) as f64 >= rank && c > 0 {
                let frac = (rank - cum as f64) / c as f64;
                return Some(lower + (self.bounds[i] - lower) * frac.clamp(0.0, 1.0));
            }
            cum += c;
            lower = self.bounds[i];
        }
        // Above the last bound: report the bound (as Prometheus does).
        Some(self.bounds[n - 1])
    }

    pub fn observe(&self, secs: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cum += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cum}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// All server-side metrics.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub ttft: Histogram,
    pub itl: Histogram,
    pub e2e: Histogram,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    /// Streams the client left before they finished.
    pub cancelled: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Mutex::new(BTreeMap::new()),
            ttft: Histogram::new(LATENCY_BOUNDS),
            itl: Histogram::new(ITL_BOUNDS),
            e2e: Histogram::new(LATENCY_BOUNDS),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Requests answered so far: (all, 5xx).
    pub fn request_totals(&self) -> (u64, u64) {
        let m = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        m.iter().fold((0, 0), |(all, err), ((_, status), n)| {
            (all + n, err + if *status >= 500 { *n } else { 0 })
        })
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_string(), status)).or_insert(0) += 1;
        }
    }

    /// Prometheus text exposition of everything; `engine` (the served model's name and
    /// the engine's current stats) is absent on a server without a model.
    pub fn render(&self, engine: Option<(&str, &EngineStats)>) -> String {
        let mut out = String::with_capacity(8192);
        out.push_str("# HELP hangar_requests_total HTTP requests answered, by route and status.\n# TYPE hangar_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "hangar_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                    escape(route)
                );
            }
        }
        if let Some((model, e)) = engine {
            self.render_inference(&mut out, model, e);
        }
        out
    }

    /// The inference gauges, counters and latency histograms.
    fn render_inference(&self, out: &mut String, model: &str, e: &EngineStats) {
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model=\"{}\"}} {v}",
                escape(model)
            );
        };
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name}{{model=\"{}\"}} {v}",
                escape(model)
            );
        };
        gauge(
            out,
            "hangar_queue_depth",
            "Requests waiting for admission.",
            e.waiting as f64,
        );
        gauge(
            out,
            "hangar_running_sequences",
            "Sequences in the running batch.",
            e.running as f64,
        );
        let total = e.kv_blocks_total();
        let used = e.kv_blocks_used();
        gauge(
            out,
            "hangar_kv_blocks_capacity",
            "KV cache blocks, all layer groups.",
            total as f64,
        );
        gauge(
            out,
            "hangar_kv_blocks_used",
            "KV cache blocks held by sequences.",
            used as f64,
        );
        gauge(
            out,
            "hangar_kv_blocks_free",
            "KV cache blocks not held by any sequence (free or cached).",
            (total - used) as f64,
        );
        gauge(
            out,
            "hangar_kv_blocks_cached",
            "Unreferenced KV blocks kept for prefix reuse.",
            e.kv.iter().map(|u| u.cached).sum::<usize>() as f64,
        );
        gauge(
            out,
            "hangar_kv_usage_ratio",
            "Fraction of KV blocks held by sequences.",
            if total == 0 {
                0.0
            } else {
                used as f64 / total as f64
            },
        );
        counter(
            out,
            "hangar_prefix_cache_queries_total",
            "Prompt tokens looked up in the prefix cache.",
            e.prefix_queried_tokens,
        );
        counter(
            out,
            "hangar_prefix_cache_hits_total",
            "Prompt tokens served from the prefix cache.",
            e.prefix_hit_tokens,
        );
        gauge(
            out,
            "hangar_prefix_cache_hit_rate",
            "Prefix cache hits / queries, in tokens.",
            e.prefix_hit_rate(),
        );
        counter(
            out,
            "hangar_preemptions_total",
            "Sequences preempted (blocks freed, recomputed later).",
            e.preemptions,
        );
        counter(
            out,
            "hangar_engine_steps_total",
            "Model steps run by the engine loop.",
            e.steps,
        );
        counter(
            out,
            "hangar_sampling_head_tokens_total",
            "Sampled tokens the device's sampling head picked without copying their logits.",
            e.head_tokens,
        );
        counter(
            out,
            "hangar_sampling_head_rows_fetched_total",
            "Sampled rows copied to the host because their nucleus was wider than the head's candidates.",
            e.head_rows_fetched,
        );
        counter(
            out,
            "hangar_spec_decode_drafts_total",
            "Engine steps that verified a speculative draft (prompt lookup or a draft model).",
            e.spec_steps,
        );
        counter(
            out,
            "hangar_spec_decode_draft_failures_total",
            "Steps whose draft model failed; they decoded without drafts.",
            e.spec_draft_failures,
        );
        counter(
            out,
            "hangar_spec_decode_draft_tokens_total",
            "Tokens drafted for verification.",
            e.spec_drafted_tokens,
        );
        counter(
            out,
            "hangar_spec_decode_accepted_tokens_total",
            "Drafted tokens the model accepted.",
            e.spec_accepted_tokens,
        );
        counter(
            out,
            "hangar_spec_decode_emitted_tokens_total",
            "Tokens emitted by steps that verified a draft (accepted drafts plus one each).",
            e.spec_emitted_tokens,
        );
        gauge(
            out,
            "hangar_spec_decode_acceptance_rate",
            "Accepted / drafted tokens since start (0 before any draft).",
            e.spec_acceptance(),
        );
        counter(
            out,
            "hangar_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            self.prompt_tokens.load(Ordering::Relaxed),
        );
        counter(
            out,
            "hangar_generation_tokens_total",
            "Tokens generated.",
            self.generation_tokens.load(Ordering::Relaxed),
        );
        counter(
            out,
            "hangar_cancelled_requests_total",
            "Requests whose client went away before the end.",
            self.cancelled.load(Ordering::Relaxed),
        );
        self.ttft.render(
            out,
            "hangar_time_to_first_token_seconds",
            "Time from request to its first generated token.",
        );
        self.itl.render(
            out,
            "hangar_inter_token_latency_seconds",
            "Time between consecutive tokens of a request.",
        );
        self.e2e.render(
            out,
            "hangar_e2e_request_latency_seconds",
            "Time from request to its last token.",
        );
    }
}

/// Monitoring gauges and counters: drift per model, usage and cost per key and model,
/// personal data found in answers, and the request log's own counters.
pub fn render_monitor(out: &mut String, m: &hangar_monitor::Monitor) {
    let reports = m.drift_reports();
    let mut family =
        |name: &str, kind: &str, help: &str, rows: &mut dyn Iterator<Item = (String, f64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
    let model = |m: &str| format!("model=\"{}\"", escape(m));
    family(
        "hangar_drift_unseen_token_share",
        "gauge",
        "Share of prompt tokens in the current window whose ids never occur in the reference.",
        &mut reports
            .iter()
            .map(|(k, r)| (model(k), r.unseen_token_share)),
    );
    family(
        "hangar_drift_length_ks_pvalue",
        "gauge",
        "Kolmogorov-Smirnov p-value of prompt lengths, current window against reference.",
        &mut reports
            .iter()
            .map(|(k, r)| (model(k), r.length_ks_pvalue())),
    );
    family(
        "hangar_drift_feature_drifted",
        "gauge",
        "1 when a numeric feature drifted by its test (KS, or normalised Wasserstein on large windows).",
        &mut reports.iter().flat_map(|(k, r)| {
            r.features.iter().map(move |f| {
                (format!("{},feature=\"{}\"", model(k), f.name), f.drifted as u8 as f64)
            })
        }),
    );
    family(
        "hangar_drift_embedding_distance",
        "gauge",
        "Cosine distance between reference and current prompt-embedding centroids (0 without embeddings).",
        &mut reports
            .iter()
            .map(|(k, r)| (model(k), r.embedding_distance.unwrap_or(0.0))),
    );
    family(
        "hangar_drift_window_requests",
        "gauge",
        "Requests in the current drift window.",
        &mut reports
            .iter()
            .map(|(k, r)| (model(k), r.current_size as f64)),
    );
    family(
        "hangar_drift_alert",
        "gauge",
        "1 when any drift test of the model fires.",
        &mut reports
            .iter()
            .map(|(k, r)| (model(k), r.alert as u8 as f64)),
    );
    let usage = m.usage();
    let key_model = |u: &hangar_monitor::UsageRow| {
        format!(
            "key=\"{}\",model=\"{}\"",
            escape(&u.key_id),
            escape(&u.model)
        )
    };
    family(
        "hangar_usage_requests_total",
        "counter",
        "Finished requests (choices) by API key id and model.",
        &mut usage
            .iter()
            .map(|u| (key_model(u), u.usage.requests as f64)),
    );
    family(
        "hangar_usage_tokens_total",
        "counter",
        "Tokens by API key id, model and kind (prompt, completion).",
        &mut usage.iter().flat_map(|u| {
            [
                (
                    format!("{},kind=\"prompt\"", key_model(u)),
                    u.usage.prompt_tokens as f64,
                ),
                (
                    format!("{},kind=\"completion\"", key_model(u)),
                    u.usage.completion_tokens as f64,
                ),
            ]
        }),
    );
    family(
        "hangar_usage_cost_total",
        "counter",
        &format!(
            "Cost in {} from the price table, by API key id and model.",
            m.prices().currency
        ),
        &mut usage.iter().map(|u| (key_model(u), u.usage.cost)),
    );
    family(
        "hangar_quality_pii_responses_total",
        "counter",
        "Answers containing personal data or secrets, by model and kind.",
        &mut m
            .pii_counts()
            .into_iter()
            .map(|(mo, k, n)| (format!("{},kind=\"{k}\"", model(&mo)), n as f64)),
    );
    family(
        "hangar_quality_relevance_mean",
        "gauge",
        "Mean cosine between prompt and answer embeddings (needs --embedding-model).",
        &mut m
            .relevance()
            .into_iter()
            .map(|(mo, mean, _)| (model(&mo), mean)),
    );
    family(
        "hangar_quality_flagged_total",
        "counter",
        "Answers close to example refusals and prompts close to example jailbreak attempts (needs --embedding-model).",
        &mut m
            .flagged()
            .into_iter()
            .map(|(mo, k, n)| (format!("{},kind=\"{k}\"", model(&mo)), n as f64)),
    );
    family(
        "hangar_quality_judged_total",
        "counter",
        "Sampled answers judged by the evaluator model (--quality-judge-sample), by check and verdict.",
        &mut m.judgements().into_iter().map(|(mo, c, v, n)| {
            (
                format!("{},check=\"{c}\",verdict=\"{v}\"", model(&mo)),
                n as f64,
            )
        }),
    );
    if let Some(log) = m.log() {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &log.counters;
        family(
            "hangar_request_log_records_total",
            "counter",
            "Request-log records by outcome (written, sampled_out, dropped: queue full, error).",
            &mut [
                ("written", c.written.load(Relaxed)),
                ("sampled_out", c.sampled_out.load(Relaxed)),
                ("dropped", c.dropped.load(Relaxed)),
                ("error", c.write_errors.load(Relaxed)),
            ]
            .into_iter()
            .map(|(k, v)| (format!("outcome=\"{k}\""), v as f64)),
        );
    }
}

/// Counters per managed API key, labelled by the key's name (never its secret; only
/// keys created with `hangar keys`, so the label set stays bounded). Usage counts
/// include what earlier runs of the server recorded in the registry.
pub fn render_keys(out: &mut String, keys: &[(String, hangar_registry::KeyUsage, [u64; 4])]) {
    if keys.is_empty() {
        return;
    }
    let mut family = |name: &str, help: &str, value: &dyn Fn(&hangar_registry::KeyUsage) -> f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (key, u, _) in keys {
            let _ = writeln!(out, "{name}{{key=\"{}\"}} {}", escape(key), value(u));
        }
    };
    family(
        "hangar_key_requests_total",
        "Generation requests admitted per API key.",
        &|u| u.requests as f64,
    );
    family(
        "hangar_key_prompt_tokens_total",
        "Prompt tokens charged per API key.",
        &|u| u.prompt_tokens as f64,
    );
    family(
        "hangar_key_completion_tokens_total",
        "Completion tokens charged per API key.",
        &|u| u.completion_tokens as f64,
    );
    family(
        "hangar_key_cost_total",
        "Cost charged per API key, in the price table's currency (--prices).",
        &|u| u.cost,
    );
    let name = "hangar_key_rejections_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests refused with 429 per API key and reason.\n# TYPE {name} counter"
    );
    for (key, _, rejected) in keys {
        for (reason, n) in crate::tenants::REASONS.iter().zip(rejected) {
            let _ = writeln!(
                out,
                "{name}{{key=\"{}\",reason=\"{reason}\"}} {n}",
                escape(key)
            );
        }
    }
}

/// `hangar_model_info{model, device, arch} 1`: where the served model runs.
pub fn render_model_info(out: &mut String, model: &str, device: &str, arch: &str) {
    let _ = writeln!(
        out,
        "# HELP hangar_model_info The served model, the device it runs on and its architecture (always 1).\n# TYPE hangar_model_info gauge\nhangar_model_info{{model=\"{}\",device=\"{}\",arch=\"{}\"}} 1",
        escape(model),
        escape(device),
        escape(arch)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::new(LATENCY_BOUNDS);
        let before = h.snapshot();
        assert_eq!(h.quantile_between(&before, &h.snapshot(), 0.5), None);
        // Ten observations in (0.1, 0.15]: the median lies halfway through that bucket.
        for _ in 0..10 {
            h.observe(0.12);
        }
        let q = h.quantile_between(&before, &h.snapshot(), 0.5).unwrap();
        assert!((q - 0.125).abs() < 1e-9, "{q}");
        // Observations before the first snapshot do not count.
        let mid = h.snapshot();
        h.observe(40.0);
        let q = h.quantile_between(&mid, &h.snapshot(), 0.99).unwrap();
        assert!((q - 59.7).abs() < 1e-9, "{q}");
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.ttft.observe(0.004);
        m.ttft.observe(0.2);
        m.ttft.observe(100.0);
        m.request("/v1/completions", 200);
        m.request("/v1/completions", 200);
        let text = m.render(Some(("x", &EngineStats::default())));
        assert!(text.contains("hangar_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("hangar_time_to_first_token_seconds_bucket{le=\"0.2\"} 2"));
        assert!(text.contains("hangar_time_to_first_token_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("hangar_requests_total{route=\"/v1/completions\",status=\"200\"} 2"));
        assert!(text.contains("hangar_kv_blocks_free{model=\"x\"} 0"));
    }

    #[test]
    fn without_a_model_only_request_counters_are_rendered() {
        let m = Metrics::default();
        m.request("/health", 200);
        let text = m.render(None);
        assert!(text.contains("hangar_requests_total{route=\"/health\",status=\"200\"} 1"));
        assert!(!text.contains("hangar_kv_blocks_capacity"));
    }
}
