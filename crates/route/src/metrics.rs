//! The router's own Prometheus metrics: per-replica attempts by outcome, first-byte
//! latency, health and load; routing decisions by reason; retries; prefix-affinity
//! share. Counts only; decides nothing.

use crate::backend::Pool;
use crate::policy::{Policy, Reason};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Reads one gauge of a replica.
type BackendGauge = fn(&crate::backend::Backend) -> f64;

/// Counters that are not per replica.
#[derive(Debug, Default)]
pub struct RouterMetrics {
    decisions: Mutex<BTreeMap<Reason, u64>>,
    /// Attempts after the first of a request.
    pub retries: AtomicU64,
    /// Requests the router answered itself with an error (no replica, body too large).
    answered: Mutex<BTreeMap<u16, u64>>,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl RouterMetrics {
    pub fn decision(&self, reason: Reason) {
        let mut m = self.decisions.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(reason).or_insert(0) += 1;
    }

    pub fn answered(&self, status: u16) {
        let mut m = self.answered.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(status).or_insert(0) += 1;
    }

    /// Decisions by reason so far.
    pub fn decisions(&self) -> BTreeMap<Reason, u64> {
        self.decisions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Share of prefix-routed requests sent to the replica holding their longest
    /// known prefix (0 before any).
    pub fn affinity_hit_share(&self) -> f64 {
        let d = self.decisions();
        let hits = d.get(&Reason::PrefixMatch).copied().unwrap_or(0);
        let all: u64 = [
            Reason::PrefixMatch,
            Reason::PrefixHash,
            Reason::PrefixOverloaded,
        ]
        .iter()
        .map(|r| d.get(r).copied().unwrap_or(0))
        .sum();
        if all == 0 {
            0.0
        } else {
            hits as f64 / all as f64
        }
    }

    /// Prometheus text exposition of the router and its replicas.
    pub fn render(&self, pool: &Pool, policy: Policy) -> String {
        let mut out = String::with_capacity(4096);
        let backends = pool.all();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "hangar_route_backend_requests_total",
            "counter",
            "Attempts sent to each replica, by outcome (ok, connect, timeout, status_5xx, stream_cut, ...).",
        );
        for b in &backends {
            let m = b.stats.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            for (outcome, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "hangar_route_backend_requests_total{{backend=\"{}\",outcome=\"{outcome}\"}} {n}",
                    escape(&b.url)
                );
            }
        }
        head(
            &mut out,
            "hangar_route_backend_errors_total",
            "counter",
            "Failed attempts to each replica (every outcome but ok).",
        );
        for b in &backends {
            let m = b.stats.outcomes.lock().unwrap_or_else(|e| e.into_inner());
            let errors: u64 = m.iter().filter(|(k, _)| **k != "ok").map(|(_, n)| n).sum();
            let _ = writeln!(
                out,
                "hangar_route_backend_errors_total{{backend=\"{}\"}} {errors}",
                escape(&b.url)
            );
        }
        head(
            &mut out,
            "hangar_route_backend_first_byte_seconds",
            "histogram",
            "Time from sending a request to a replica to its first response byte.",
        );
        for b in &backends {
            let (buckets, count, sum) = b.stats.first_byte.read();
            let l = escape(&b.url);
            for (le, c) in buckets {
                let _ = writeln!(
                    out,
                    "hangar_route_backend_first_byte_seconds_bucket{{backend=\"{l}\",le=\"{le}\"}} {c}"
                );
            }
            let _ = writeln!(
                out,
                "hangar_route_backend_first_byte_seconds_bucket{{backend=\"{l}\",le=\"+Inf\"}} {count}\n\
                 hangar_route_backend_first_byte_seconds_sum{{backend=\"{l}\"}} {sum}\n\
                 hangar_route_backend_first_byte_seconds_count{{backend=\"{l}\"}} {count}"
            );
        }
        let gauges: [(&str, &str, BackendGauge); 5] = [
            (
                "hangar_route_backend_healthy",
                "1 while the replica is admitted, 0 while ejected.",
                |b| b.is_healthy() as u8 as f64,
            ),
            (
                "hangar_route_backend_inflight",
                "Requests this router has in flight to the replica.",
                |b| b.inflight() as f64,
            ),
            (
                "hangar_route_backend_queue_depth",
                "The replica's hangar_queue_depth at the last scrape.",
                |b| b.load().waiting,
            ),
            (
                "hangar_route_backend_running",
                "The replica's hangar_running_sequences at the last scrape.",
                |b| b.load().running,
            ),
            (
                "hangar_route_backend_kv_usage_ratio",
                "The replica's hangar_kv_usage_ratio at the last scrape.",
                |b| b.load().kv_usage,
            ),
        ];
        for (name, help, f) in gauges {
            head(&mut out, name, "gauge", help);
            for b in &backends {
                let _ = writeln!(out, "{name}{{backend=\"{}\"}} {}", escape(&b.url), f(b));
            }
        }
        head(
            &mut out,
            "hangar_route_decisions_total",
            "counter",
            "Replica choices, by policy and reason.",
        );
        let policy = format!("{policy:?}").to_lowercase();
        for (reason, n) in self.decisions() {
            let _ = writeln!(
                out,
                "hangar_route_decisions_total{{policy=\"{policy}\",reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
        head(
            &mut out,
            "hangar_route_prefix_affinity_hit_share",
            "gauge",
            "Share of prefix-routed requests sent to the replica that holds their longest known prefix.",
        );
        let _ = writeln!(
            out,
            "hangar_route_prefix_affinity_hit_share {}",
            self.affinity_hit_share()
        );
        head(
            &mut out,
            "hangar_route_retries_total",
            "counter",
            "Attempts on another replica after one failed before the response started.",
        );
        let _ = writeln!(
            out,
            "hangar_route_retries_total {}",
            self.retries.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "hangar_route_local_errors_total",
            "counter",
            "Requests the router answered itself with an error, by status.",
        );
        for (status, n) in self
            .answered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "hangar_route_local_errors_total{{status=\"{status}\"}} {n}"
            );
        }
        out
    }
}
