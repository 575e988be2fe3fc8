//! hangar-monitor: what a served model is asked and answers, and what it costs.
//!
//! - [`RequestLog`]: a durable log of every request (SQLite in WAL mode, written by its
//!   own thread; the request path hands records over without waiting), with sampling,
//!   redaction of personal data and secrets, retention by rows and age, search and
//!   JSONL export.
//! - [`DriftMonitor`]: a reference window against a sliding current window per model:
//!   unseen-token share, KS / Wasserstein / PSI on lengths and non-letter share, and
//!   embedding drift (centroid distance, MMD with a permutation test).
//! - [`PriceTable`] and [`UsageLedger`]: cost per request and usage per API key.
//! - [`Monitor`]: all of the above for one server, fed one finished request at a time.
//! - [`stats`] and [`redact`]: the statistics and patterns, usable on their own.
//!
//! Knows nothing about HTTP or the engine: `hangar-serve` feeds it plain records.
//!
//! ```
//! use hangar_monitor::{DriftConfig, DriftMonitor, Observation};
//! let mut m = DriftMonitor::new(DriftConfig { reference_size: 2, min_current: 1, ..Default::default() });
//! m.observe(Observation::new("hello world", vec![1, 2], 5));
//! m.observe(Observation::new("hello there", vec![1, 3], 6));
//! m.observe(Observation::new("你好", vec![900, 901], 4));
//! assert_eq!(m.report().unseen_token_share, 1.0);
//! ```

pub mod cost;
pub mod drift;
pub mod log;
pub mod monitor;
pub mod quality;
pub mod redact;
pub mod stats;

pub use cost::{Price, PriceTable, Usage, UsageLedger, UsageRow};
pub use drift::{Baseline, DriftConfig, DriftMonitor, DriftReport, FeatureDrift, Observation};
pub use log::{LogConfig, LogQuery, RequestLog, RequestRecord};
pub use monitor::{Monitor, MonitorConfig};
pub use quality::{QualityExamples, QualityScore};
pub use redact::{find_pii, redact, PiiKind};

use std::path::{Path, PathBuf};

/// What can go wrong in monitoring storage and configuration.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("request log database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("{0}")]
    Invalid(String),
}

impl MonitorError {
    fn db(path: &Path, source: rusqlite::Error) -> Self {
        MonitorError::Db {
            path: path.to_path_buf(),
            source,
        }
    }
    fn io(path: &Path, source: std::io::Error) -> Self {
        MonitorError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A short, stable, non-reversible id for an API key or token (for logs and labels):
/// the first 12 hex digits of its SHA-256, never the key itself.
pub fn key_id(key: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(key.as_bytes());
    let hex: String = d.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("key-{hex}")
}
