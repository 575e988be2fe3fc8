//! hangar-track: experiment tracking — experiments, runs, params, metrics, tags and
//! artifacts with MLflow's semantics, stored in SQLite and a content-addressed folder.
//!
//! Knows nothing about HTTP or MLflow's wire format: `hangar-serve` translates MLflow
//! REST calls into these types, and `hangar runs` reads them directly.
//!
//! One [`Tracker`] per home; its methods are split by concern: experiments and runs
//! (`tracker.rs`), logging (`logging.rs`), search (`search.rs` over the filter and
//! order-by grammar of `filter.rs`), metric history (`history.rs`) and artifacts
//! (`artifacts.rs`).
//!
//! ```no_run
//! use hangar_track::{NewRun, RunStatus, SearchRuns, Tracker};
//! let t = Tracker::open(std::path::Path::new("/tmp/home"))?;
//! let run = t.create_run(&NewRun { experiment_id: "0".into(), ..Default::default() })?;
//! t.log_metric(&run.info.run_id, "acc", 0.9, 1_700_000_000_000, 0)?;
//! t.update_run(&run.info.run_id, Some(RunStatus::Finished), Some(1_700_000_000_500), None)?;
//! let page = t.search_runs(&SearchRuns {
//!     experiment_ids: vec!["0".into()],
//!     filter: "metrics.acc > 0.5".into(),
//!     order_by: vec!["metrics.acc DESC".into()],
//!     ..Default::default()
//! })?;
//! assert_eq!(page.runs.len(), 1);
//! # Ok::<(), hangar_track::TrackError>(())
//! ```

mod artifacts;
mod db;
mod error;
pub mod filter;
pub mod history;
mod logging;
mod model_names;
mod names;
mod search;
mod tracker;
mod types;

pub use artifacts::ArtifactEntry;
pub use error::{Result, TrackError};
pub use logging::{
    LogBatch, MAX_BATCH_METRICS, MAX_BATCH_PARAMS, MAX_BATCH_TAGS, MAX_BATCH_TOTAL, MAX_KEY_LENGTH,
    MAX_PARAM_VALUE_LENGTH, MAX_TAG_VALUE_LENGTH,
};
pub use model_names::ModelName;
pub use search::{RunPage, SearchExperiments, SearchRuns, ViewType, MAX_SEARCH_RESULTS};
pub use tracker::{NewRun, Tracker, DEFAULT_EXPERIMENT_ID};
pub use types::{Experiment, KeyValue, Metric, Run, RunInfo, RunStatus};

/// Milliseconds since the Unix epoch, as MLflow timestamps are.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
