//! Logging to a run: params (immutable once logged), metric points, tags, and log-batch
//! with MLflow's limits. Each call is one transaction: all of a batch lands or none.

use rusqlite::{params, OptionalExtension, Transaction};

use crate::error::{invalid, Result, TrackError};
use crate::tracker::{require_active_run, Tracker, RUN_NAME_TAG};
use crate::types::{KeyValue, Metric};

/// Metrics one log-batch may carry.
pub const MAX_BATCH_METRICS: usize = 1000;
/// Params one log-batch may carry.
pub const MAX_BATCH_PARAMS: usize = 100;
/// Tags one log-batch may carry.
pub const MAX_BATCH_TAGS: usize = 100;
/// Metrics, params and tags together in one log-batch.
pub const MAX_BATCH_TOTAL: usize = 1000;
/// Longest param value, in characters.
pub const MAX_PARAM_VALUE_LENGTH: usize = 6000;
/// Longest tag value, in characters.
pub const MAX_TAG_VALUE_LENGTH: usize = 8000;
/// Longest metric, param or tag key, in characters.
pub const MAX_KEY_LENGTH: usize = 250;

/// One log-batch request.
#[derive(Debug, Clone, Default)]
pub struct LogBatch {
    pub metrics: Vec<Metric>,
    pub params: Vec<KeyValue>,
    pub tags: Vec<KeyValue>,
}

/// Keys are non-empty, at most 250 characters, and cannot climb out of a folder (MLflow
/// uses them as file names in its file store).
pub(crate) fn check_key(key: &str, what: &str) -> Result<()> {
    if key.is_empty() {
        return Err(invalid(format!("{what} key must be a non-empty string")));
    }
    if key.chars().count() > MAX_KEY_LENGTH {
        return Err(invalid(format!(
            "{what} key {:?}... is {} characters long; the limit is {MAX_KEY_LENGTH}",
            key.chars().take(40).collect::<String>(),
            key.chars().count()
        )));
    }
    if key.starts_with('/') || key.split('/').any(|p| p == ".." || p == ".") {
        return Err(invalid(format!(
            "invalid {what} key {key:?}: keys may not be absolute or contain '.' or '..' path parts"
        )));
    }
    Ok(())
}

pub(crate) fn check_tag_value(key: &str, value: &str) -> Result<()> {
    let n = value.chars().count();
    if n > MAX_TAG_VALUE_LENGTH {
        return Err(invalid(format!(
            "tag {key:?}: value is {n} characters long; the limit is {MAX_TAG_VALUE_LENGTH}"
        )));
    }
    Ok(())
}

fn check_param(p: &KeyValue) -> Result<()> {
    check_key(&p.key, "param")?;
    let n = p.value.chars().count();
    if n > MAX_PARAM_VALUE_LENGTH {
        return Err(invalid(format!(
            "param {:?}: value is {n} characters long; the limit is {MAX_PARAM_VALUE_LENGTH}",
            p.key
        )));
    }
    Ok(())
}

fn insert_param(tx: &Transaction, run_id: &str, p: &KeyValue) -> Result<()> {
    let old: Option<String> = tx
        .prepare_cached("SELECT value FROM params WHERE run_uuid = ?1 AND key = ?2")?
        .query_row(params![run_id, p.key], |r| r.get(0))
        .optional()?;
    match old {
        Some(old) if old == p.value => Ok(()),
        Some(old) => Err(invalid(format!(
            "changing param values is not allowed: param {:?} of run {run_id} was already logged with value {old:?}, now {:?}; log it under a new key or start a new run",
            p.key, p.value
        ))),
        None => {
            tx.prepare_cached("INSERT INTO params(run_uuid, key, value) VALUES (?1, ?2, ?3)")?
                .execute(params![run_id, p.key, p.value])?;
            Ok(())
        }
    }
}

fn insert_metric(tx: &Transaction, run_id: &str, m: &Metric) -> Result<()> {
    let value = (!m.value.is_nan()).then_some(m.value);
    tx.prepare_cached(
        "INSERT INTO metrics(run_uuid, key, step, timestamp, value) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![run_id, m.key, m.step, m.timestamp, value])?;
    Ok(())
}

/// Keeps `latest_metrics` at the point with the largest (step, timestamp).
fn update_latest(tx: &Transaction, run_id: &str, m: &Metric) -> Result<()> {
    let value = (!m.value.is_nan()).then_some(m.value);
    tx.prepare_cached(
        "INSERT INTO latest_metrics(run_uuid, key, step, timestamp, value) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT(run_uuid, key) DO UPDATE SET
           step = excluded.step, timestamp = excluded.timestamp, value = excluded.value
         WHERE (excluded.step, excluded.timestamp) >= (latest_metrics.step, latest_metrics.timestamp)",
    )?
    .execute(params![run_id, m.key, m.step, m.timestamp, value])?;
    Ok(())
}

fn insert_tag(tx: &Transaction, run_id: &str, t: &KeyValue) -> Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO tags(run_uuid, key, value) VALUES (?1, ?2, ?3)")?
        .execute(params![run_id, t.key, t.value])?;
    if t.key == RUN_NAME_TAG && !t.value.is_empty() {
        tx.prepare_cached("UPDATE runs SET run_name = ?1 WHERE run_uuid = ?2")?
            .execute(params![t.value, run_id])?;
    }
    Ok(())
}

impl Tracker {
    /// Logs a param; logging the same key again with another value is an error.
    pub fn log_param(&self, run_id: &str, key: &str, value: &str) -> Result<()> {
        self.log_batch(
            run_id,
            &LogBatch {
                params: vec![KeyValue::new(key, value)],
                ..Default::default()
            },
        )
    }

    /// Logs one metric point.
    pub fn log_metric(
        &self,
        run_id: &str,
        key: &str,
        value: f64,
        timestamp: i64,
        step: i64,
    ) -> Result<()> {
        self.log_batch(
            run_id,
            &LogBatch {
                metrics: vec![Metric {
                    key: key.into(),
                    value,
                    timestamp,
                    step,
                }],
                ..Default::default()
            },
        )
    }

    /// Sets (or replaces) a run tag; `mlflow.runName` also renames the run.
    pub fn set_tag(&self, run_id: &str, key: &str, value: &str) -> Result<()> {
        self.log_batch(
            run_id,
            &LogBatch {
                tags: vec![KeyValue::new(key, value)],
                ..Default::default()
            },
        )
    }

    /// Removes a run tag.
    pub fn delete_tag(&self, run_id: &str, key: &str) -> Result<()> {
        let conn = self.conn();
        require_active_run(&conn, run_id)?;
        let n = conn.execute(
            "DELETE FROM tags WHERE run_uuid = ?1 AND key = ?2",
            params![run_id, key],
        )?;
        if n == 0 {
            return Err(TrackError::NotFound(format!(
                "no tag with key={key:?} on run {run_id}"
            )));
        }
        Ok(())
    }

    /// Logs metrics, params and tags in one transaction, within MLflow's limits.
    pub fn log_batch(&self, run_id: &str, batch: &LogBatch) -> Result<()> {
        let (nm, np, nt) = (batch.metrics.len(), batch.params.len(), batch.tags.len());
        for (n, max, what) in [
            (nm, MAX_BATCH_METRICS, "metrics"),
            (np, MAX_BATCH_PARAMS, "params"),
            (nt, MAX_BATCH_TAGS, "tags"),
        ] {
            if n > max {
                return Err(invalid(format!(
                    "a batch logging request can contain at most {max} {what}; got {n}; split them across several requests"
                )));
            }
        }
        if nm + np + nt > MAX_BATCH_TOTAL {
            return Err(invalid(format!(
                "a batch logging request can contain at most {MAX_BATCH_TOTAL} metrics, params and tags in all; got {}; split them across several requests",
                nm + np + nt
            )));
        }
        for m in &batch.metrics {
            check_key(&m.key, "metric")?;
        }
        for p in &batch.params {
            check_param(p)?;
        }
        for t in &batch.tags {
            check_key(&t.key, "tag")?;
            check_tag_value(&t.key, &t.value)?;
        }
        // The same key twice in one batch with two values is a change too.
        for (i, p) in batch.params.iter().enumerate() {
            if let Some(q) = batch.params[..i].iter().find(|q| q.key == p.key) {
                if q.value != p.value {
                    return Err(invalid(format!(
                        "param {:?} appears twice in the batch with different values ({:?} and {:?}); changing param values is not allowed",
                        p.key, q.value, p.value
                    )));
                }
            }
        }
        let mut conn = self.conn();
        require_active_run(&conn, run_id)?;
        let tx = conn.transaction()?;
        for p in &batch.params {
            insert_param(&tx, run_id, p)?;
        }
        // Every point goes into the history; only each key's newest point of the batch
        // can change the latest value, so that is the one upserted.
        let mut newest: Vec<&Metric> = Vec::new();
        for m in &batch.metrics {
            insert_metric(&tx, run_id, m)?;
            match newest.iter_mut().find(|n| n.key == m.key) {
                Some(n) if (m.step, m.timestamp) >= (n.step, n.timestamp) => *n = m,
                Some(_) => {}
                None => newest.push(m),
            }
        }
        for m in newest {
            update_latest(&tx, run_id, m)?;
        }
        for t in &batch.tags {
            insert_tag(&tx, run_id, t)?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewRun;

    fn run(t: &Tracker) -> String {
        t.create_run(&NewRun::default()).unwrap().info.run_id
    }

    #[test]
    fn params_are_immutable_but_may_be_relogged_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        let r = run(&t);
        t.log_param(&r, "lr", "0.1").unwrap();
        t.log_param(&r, "lr", "0.1").unwrap();
        let e = t.log_param(&r, "lr", "0.2").unwrap_err();
        assert!(matches!(e, TrackError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("changing param values"), "{e}");
        assert_eq!(
            t.get_run(&r).unwrap().params,
            vec![KeyValue::new("lr", "0.1")]
        );
    }

    #[test]
    fn batch_limits_are_mlflows_and_a_refused_batch_logs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        let r = run(&t);
        let metric = |i: i64| Metric {
            key: "m".into(),
            value: i as f64,
            timestamp: i,
            step: i,
        };
        let ok = LogBatch {
            metrics: (0..1000).map(metric).collect(),
            ..Default::default()
        };
        t.log_batch(&r, &ok).unwrap();
        let too_many = LogBatch {
            metrics: (0..1001).map(metric).collect(),
            ..Default::default()
        };
        assert!(t
            .log_batch(&r, &too_many)
            .unwrap_err()
            .to_string()
            .contains("at most 1000 metrics"));
        let params = |n: usize| {
            (0..n)
                .map(|i| KeyValue::new(format!("p{i}"), "v"))
                .collect::<Vec<_>>()
        };
        let e = t
            .log_batch(
                &r,
                &LogBatch {
                    params: params(101),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("at most 100 params"), "{e}");
        let e = t
            .log_batch(
                &r,
                &LogBatch {
                    metrics: (0..950).map(metric).collect(),
                    params: params(51),
                    ..Default::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("1001"), "{e}");
        let long = KeyValue::new("long", "x".repeat(MAX_PARAM_VALUE_LENGTH + 1));
        assert!(t
            .log_batch(
                &r,
                &LogBatch {
                    params: vec![long],
                    ..Default::default()
                }
            )
            .is_err());
        t.log_param(&r, "ok", &"x".repeat(MAX_PARAM_VALUE_LENGTH))
            .unwrap();
        // A batch whose last param conflicts leaves no trace of its metrics.
        t.log_param(&r, "fixed", "a").unwrap();
        let bad = LogBatch {
            metrics: vec![Metric {
                key: "late".into(),
                value: 1.0,
                timestamp: 1,
                step: 1,
            }],
            params: vec![KeyValue::new("fixed", "b")],
            ..Default::default()
        };
        assert!(t.log_batch(&r, &bad).is_err());
        assert!(t
            .get_run(&r)
            .unwrap()
            .metrics
            .iter()
            .all(|m| m.key != "late"));
    }

    #[test]
    fn latest_metric_is_the_largest_step_not_the_last_logged() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        let r = run(&t);
        t.log_metric(&r, "loss", 0.5, 100, 5).unwrap();
        t.log_metric(&r, "loss", 0.9, 200, 1).unwrap();
        t.log_metric(&r, "nan", f64::NAN, 200, 1).unwrap();
        let m = t.get_run(&r).unwrap().metrics;
        assert_eq!((m[0].key.as_str(), m[0].value, m[0].step), ("loss", 0.5, 5));
        assert!(m[1].value.is_nan());
    }

    #[test]
    fn deleted_runs_refuse_logging_until_restored() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        let r = run(&t);
        t.delete_run(&r).unwrap();
        assert!(t
            .log_param(&r, "a", "b")
            .unwrap_err()
            .to_string()
            .contains("active"));
        t.restore_run(&r).unwrap();
        t.log_param(&r, "a", "b").unwrap();
    }
}
