//! The tracking database (SQLite, WAL, synchronous=FULL): schema and connection
//! settings. Metrics live in their own indexed table; the latest value of each metric
//! is kept beside it for search and order-by. Holds no artifact bytes.

use rusqlite::Connection;
use std::path::Path;

use crate::error::Result;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS experiments(
    experiment_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    artifact_location TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL DEFAULT 'active',
    creation_time INTEGER NOT NULL,
    last_update_time INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS experiment_tags(
    experiment_id INTEGER NOT NULL REFERENCES experiments(experiment_id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(experiment_id, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs(
    run_uuid TEXT PRIMARY KEY,
    experiment_id INTEGER NOT NULL REFERENCES experiments(experiment_id),
    run_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time INTEGER NOT NULL,
    end_time INTEGER,
    artifact_uri TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL DEFAULT 'active',
    deleted_time INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs(experiment_id, lifecycle_stage, start_time);
CREATE TABLE IF NOT EXISTS params(
    run_uuid TEXT NOT NULL REFERENCES runs(run_uuid),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(run_uuid, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags(
    run_uuid TEXT NOT NULL REFERENCES runs(run_uuid),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(run_uuid, key)
) WITHOUT ROWID;
-- Every metric point; value NULL stands for NaN (SQLite has no NaN).
CREATE TABLE IF NOT EXISTS metrics(
    run_uuid TEXT NOT NULL,
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    value REAL
);
CREATE INDEX IF NOT EXISTS metrics_by_run_key ON metrics(run_uuid, key, step, timestamp);
-- The latest point of each metric (largest step, then timestamp): search and order-by.
CREATE TABLE IF NOT EXISTS latest_metrics(
    run_uuid TEXT NOT NULL,
    key TEXT NOT NULL,
    step INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY(run_uuid, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS latest_metrics_by_key ON latest_metrics(key, value);
-- Artifact paths of each run; the bytes are in artifacts/<sha256>.
CREATE TABLE IF NOT EXISTS artifacts(
    run_uuid TEXT NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY(run_uuid, path)
) WITHOUT ROWID;
"#;

/// Opens (creating if needed) the database at `path` with durable settings.
pub(crate) fn open(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // MLflow's LIKE is case-sensitive; ILIKE is the case-insensitive one.
    conn.pragma_update(None, "case_sensitive_like", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(SCHEMA)?;
    Ok(conn)
}
