//! The replicas behind the router: their health, load and models as last probed, the
//! requests in flight to each, and their counters. Knows nothing about how replicas
//! are picked or how requests are relayed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Where a replica came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `--backend URL`.
    Static,
    /// An address of `--backend-dns NAME:PORT`.
    Dns(String),
}

/// Load reported by a replica's `/metrics` (`hangar serve` names).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Load {
    /// `hangar_queue_depth`: requests waiting for admission.
    pub waiting: f64,
    /// `hangar_running_sequences`: sequences in the running batch.
    pub running: f64,
    /// `hangar_kv_usage_ratio`: share of KV blocks held by sequences.
    pub kv_usage: f64,
    /// `hangar_prefix_cache_hits_total`: prompt tokens served from the prefix cache.
    pub prefix_hit_tokens: f64,
}

/// Health and what the probes learned, behind one lock.
#[derive(Debug, Default)]
struct Probed {
    ok_streak: u32,
    fail_streak: u32,
    ever_healthy: bool,
    last_error: Option<String>,
    load: Load,
    models: Vec<String>,
}

/// Upper bounds (seconds) of the latency histogram buckets.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// A fixed-bucket latency histogram.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: LATENCY_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, secs: f64) {
        if let Some(i) = LATENCY_BOUNDS.iter().position(|&b| secs <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative bucket counts, then the count and the sum in seconds.
    pub fn read(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut cum = 0;
        let buckets = LATENCY_BOUNDS
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                cum += c.load(Ordering::Relaxed);
                (*b, cum)
            })
            .collect();
        (
            buckets,
            self.count.load(Ordering::Relaxed),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }
}

/// Counters of one replica, for the router's `/metrics`.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Attempts sent, by outcome (`ok`, `connect`, `timeout`, `status_5xx`, ...).
    pub outcomes: Mutex<BTreeMap<&'static str, u64>>,
    /// Time from sending a request to its first response byte.
    pub first_byte: Histogram,
}

impl BackendStats {
    pub fn count(&self, outcome: &'static str) {
        let mut m = self.outcomes.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(outcome).or_insert(0) += 1;
    }
}

/// One replica.
#[derive(Debug)]
pub struct Backend {
    /// Base URL without a trailing slash, e.g. `http://10.0.0.7:8080`.
    pub url: Arc<str>,
    pub source: Source,
    healthy: AtomicBool,
    inflight: AtomicUsize,
    probed: Mutex<Probed>,
    pub stats: BackendStats,
}

impl Backend {
    pub fn new(url: &str, source: Source) -> Self {
        Backend {
            url: Arc::from(url.trim_end_matches('/')),
            source,
            healthy: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            probed: Mutex::new(Probed::default()),
            stats: BackendStats::default(),
        }
    }

    fn probed(&self) -> std::sync::MutexGuard<'_, Probed> {
        self.probed.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests this router has in flight to the replica.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn start_request(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard {
            backend: self.clone(),
        }
    }

    pub fn load(&self) -> Load {
        self.probed().load
    }

    pub fn models(&self) -> Vec<String> {
        self.probed().models.clone()
    }

    pub fn last_error(&self) -> Option<String> {
        self.probed().last_error.clone()
    }

    /// Whether the replica serves `model`; a replica whose model list is not known yet
    /// is assumed to.
    pub fn serves(&self, model: &str) -> bool {
        let p = self.probed();
        p.models.is_empty() || p.models.iter().any(|m| m == model)
    }

    /// The load score least-loaded routing minimises: requests in flight here or in
    /// the replica (running + waiting, whichever is larger, as other routers may share
    /// it), plus its KV usage as a tie-breaker.
    pub fn score(&self) -> f64 {
        let l = self.load();
        (self.inflight() as f64).max(l.running + l.waiting) + l.kv_usage
    }

    /// Records a passing probe with what it read; returns true when this admitted
    /// (or re-admitted) the replica.
    pub fn probe_ok(
        &self,
        load: Option<Load>,
        models: Option<Vec<String>>,
        admit_after: u32,
    ) -> bool {
        let mut p = self.probed();
        p.fail_streak = 0;
        p.ok_streak = p.ok_streak.saturating_add(1);
        if let Some(l) = load {
            p.load = l;
        }
        if let Some(m) = models {
            p.models = m;
        }
        // The first admission needs one probe; a re-admission needs `admit_after`.
        let needed = if p.ever_healthy {
            admit_after.max(1)
        } else {
            1
        };
        if !self.is_healthy() && p.ok_streak >= needed {
            p.ever_healthy = true;
            p.last_error = None;
            self.healthy.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Records a failing probe; returns true when this ejected the replica.
    pub fn probe_failed(&self, error: String, eject_after: u32) -> bool {
        let mut p = self.probed();
        p.ok_streak = 0;
        p.fail_streak = p.fail_streak.saturating_add(1);
        p.last_error = Some(error);
        if self.is_healthy() && p.fail_streak >= eject_after.max(1) {
            self.healthy.store(false, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Ejects the replica at once (a request could not reach it); probes re-admit it.
    /// Returns true when it was healthy until now.
    pub fn eject(&self, error: String) -> bool {
        let mut p = self.probed();
        p.ok_streak = 0;
        p.last_error = Some(error);
        self.healthy.swap(false, Ordering::Relaxed)
    }
}

/// Decrements a replica's in-flight count when dropped.
#[derive(Debug)]
pub struct InflightGuard {
    backend: Arc<Backend>,
}

impl InflightGuard {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.backend.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The current set of replicas.
#[derive(Debug, Default)]
pub struct Pool {
    backends: RwLock<Vec<Arc<Backend>>>,
}

impl Pool {
    pub fn new(urls: &[String]) -> Self {
        Pool {
            backends: RwLock::new(
                urls.iter()
                    .map(|u| Arc::new(Backend::new(u, Source::Static)))
                    .collect(),
            ),
        }
    }

    /// Every replica, healthy or not.
    pub fn all(&self) -> Vec<Arc<Backend>> {
        self.backends
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets the replicas found under DNS name `name` to `urls`: new ones are added
    /// (not yet healthy: probes admit them), vanished ones removed. Returns the URLs
    /// added and removed.
    pub fn sync_dns(&self, name: &str, urls: &[String]) -> (Vec<String>, Vec<String>) {
        let mut list = self.backends.write().unwrap_or_else(|e| e.into_inner());
        let src = Source::Dns(name.to_string());
        let mut removed = Vec::new();
        list.retain(|b| {
            let keep = b.source != src || urls.iter().any(|u| *u == *b.url);
            if !keep {
                removed.push(b.url.to_string());
            }
            keep
        });
        let mut added = Vec::new();
        for u in urls {
            if !list.iter().any(|b| *b.url == **u) {
                list.push(Arc::new(Backend::new(u, src.clone())));
                added.push(u.clone());
            }
        }
        (added, removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejected_replica_needs_consecutive_passing_probes() {
        let b = Backend::new("http://a/", Source::Static);
        assert_eq!(&*b.url, "http://a");
        assert!(!b.is_healthy());
        assert!(b.probe_ok(None, None, 2), "first admission takes one probe");
        assert!(b.eject("connection refused".into()));
        assert!(!b.probe_ok(None, None, 2));
        assert!(b.probe_ok(None, None, 2));
        assert!(!b.probe_failed("503".into(), 2));
        assert!(b.probe_failed("503".into(), 2));
        assert_eq!(b.last_error().as_deref(), Some("503"));
    }

    #[test]
    fn dns_sync_adds_and_removes_only_its_own_replicas() {
        let pool = Pool::new(&["http://s:1".to_string()]);
        let (added, _) = pool.sync_dns(
            "svc",
            &["http://10.0.0.1:8080".into(), "http://10.0.0.2:8080".into()],
        );
        assert_eq!(added.len(), 2);
        let (added, removed) = pool.sync_dns("svc", &["http://10.0.0.2:8080".into()]);
        assert!(added.is_empty());
        assert_eq!(removed, vec!["http://10.0.0.1:8080".to_string()]);
        let urls: Vec<String> = pool.all().iter().map(|b| b.url.to_string()).collect();
        assert_eq!(urls, vec!["http://s:1", "http://10.0.0.2:8080"]);
    }

    #[test]
    fn unknown_model_lists_serve_anything() {
        let b = Backend::new("http://a", Source::Static);
        assert!(b.serves("x"));
        b.probe_ok(None, Some(vec!["m".into()]), 1);
        assert!(b.serves("m"));
        assert!(!b.serves("x"));
    }
}
