//! The [`Tracker`]: opening the store, experiments and the run lifecycle (create, get,
//! update, delete, restore). Logging, search, history and artifacts extend it in their
//! own modules.

use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::error::{invalid, io_ctx, Result, TrackError};
use crate::logging::{check_key, check_tag_value};
use crate::types::{Experiment, KeyValue, Run, RunInfo, RunStatus};
use crate::{names, now_ms};

/// The id of the experiment that always exists ("Default").
pub const DEFAULT_EXPERIMENT_ID: &str = "0";
/// The tag MLflow keeps the run name in.
pub(crate) const RUN_NAME_TAG: &str = "mlflow.runName";
const USER_TAG: &str = "mlflow.user";

/// The tracking store of one Hangar home: `<home>/track/track.db` and
/// `<home>/track/artifacts/`. Safe to share between threads (one connection behind a
/// mutex; SQLite serialises writers anyway).
pub struct Tracker {
    conn: Mutex<Connection>,
    root: PathBuf,
}

/// What a new run starts with.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    pub experiment_id: String,
    /// Generated (`bold-heron-417`) when absent; else taken from the `mlflow.runName` tag.
    pub run_name: Option<String>,
    pub user_id: Option<String>,
    /// Milliseconds since the epoch; now when absent.
    pub start_time: Option<i64>,
    pub tags: Vec<KeyValue>,
}

impl Tracker {
    /// Opens (creating if needed) the tracking store under `home`.
    pub fn open(home: &Path) -> Result<Self> {
        let root = home.join("track");
        std::fs::create_dir_all(root.join("artifacts"))
            .map_err(io_ctx(format!("create {}", root.display())))?;
        let conn = crate::db::open(&root.join("track.db"))?;
        let now = now_ms();
        conn.execute(
            "INSERT OR IGNORE INTO experiments(experiment_id, name, artifact_location, creation_time, last_update_time)
             VALUES (0, 'Default', 'mlflow-artifacts:/0', ?1, ?1)",
            params![now],
        )?;
        Ok(Tracker {
            conn: Mutex::new(conn),
            root,
        })
    }

    /// The folder holding the database and artifacts.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- experiments ----

    /// Creates an experiment; its artifacts go under `artifact_location` (default
    /// `mlflow-artifacts:/<id>`). Names are unique, deleted experiments included.
    pub fn create_experiment(
        &self,
        name: &str,
        artifact_location: Option<&str>,
        tags: &[KeyValue],
    ) -> Result<String> {
        if name.trim().is_empty() {
            return Err(invalid("experiment name must be a non-empty string"));
        }
        for t in tags {
            check_key(&t.key, "tag")?;
            check_tag_value(&t.key, &t.value)?;
        }
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT lifecycle_stage FROM experiments WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(stage) = exists {
            return Err(TrackError::AlreadyExists(format!(
                "experiment(name={name}) already exists{}; choose another name",
                if stage == "deleted" {
                    " (deleted; restore it or pick another name)"
                } else {
                    ""
                }
            )));
        }
        let now = now_ms();
        let id: i64 = tx.query_row(
            "SELECT COALESCE(MAX(experiment_id), 0) + 1 FROM experiments",
            [],
            |r| r.get(0),
        )?;
        let location = artifact_location
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("mlflow-artifacts:/{id}"));
        tx.execute(
            "INSERT INTO experiments(experiment_id, name, artifact_location, creation_time, last_update_time)
             VALUES (?1, ?2, ?3, ?4, ?4)",
            params![id, name, location, now],
        )?;
        for t in tags {
            tx.execute(
                "INSERT OR REPLACE INTO experiment_tags(experiment_id, key, value) VALUES (?1, ?2, ?3)",
                params![id, t.key, t.value],
            )?;
        }
        tx.commit()?;
        Ok(id.to_string())
    }

    /// The experiment with this id (deleted ones too).
    pub fn get_experiment(&self, id: &str) -> Result<Experiment> {
        let conn = self.conn();
        let eid = parse_experiment_id(id)?;
        load_experiment(&conn, "experiment_id = ?1", &eid)?
            .ok_or_else(|| TrackError::NotFound(format!("no experiment with id={id}")))
    }

    /// The experiment with this name, if any (deleted ones too).
    pub fn get_experiment_by_name(&self, name: &str) -> Result<Option<Experiment>> {
        let conn = self.conn();
        load_experiment(&conn, "name = ?1", &name)
    }

    /// Renames an experiment.
    pub fn rename_experiment(&self, id: &str, new_name: &str) -> Result<()> {
        if new_name.trim().is_empty() {
            return Err(invalid("new_name must be a non-empty string"));
        }
        let exp = self.get_experiment(id)?;
        if exp.lifecycle_stage != "active" {
            return Err(invalid(format!(
                "experiment {id} is deleted; restore it before renaming"
            )));
        }
        let conn = self.conn();
        let taken: bool = conn
            .query_row(
                "SELECT 1 FROM experiments WHERE name = ?1 AND experiment_id != ?2",
                params![new_name, exp.experiment_id.parse::<i64>().unwrap_or(-1)],
                |_| Ok(true),
            )
            .optional()?
            .unwrap_or(false);
        if taken {
            return Err(TrackError::AlreadyExists(format!(
                "experiment(name={new_name}) already exists; choose another name"
            )));
        }
        conn.execute(
            "UPDATE experiments SET name = ?1, last_update_time = ?2 WHERE experiment_id = ?3",
            params![new_name, now_ms(), parse_experiment_id(id)?],
        )?;
        Ok(())
    }

    /// Marks an experiment and its runs deleted (restorable).
    pub fn delete_experiment(&self, id: &str) -> Result<()> {
        self.set_experiment_stage(id, "deleted")
    }

    /// Restores a deleted experiment and its runs.
    pub fn restore_experiment(&self, id: &str) -> Result<()> {
        self.set_experiment_stage(id, "active")
    }

    fn set_experiment_stage(&self, id: &str, stage: &str) -> Result<()> {
        self.get_experiment(id)?;
        let eid = parse_experiment_id(id)?;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "UPDATE experiments SET lifecycle_stage = ?1, last_update_time = ?2 WHERE experiment_id = ?3",
            params![stage, now, eid],
        )?;
        let deleted_time = (stage == "deleted").then_some(now);
        tx.execute(
            "UPDATE runs SET lifecycle_stage = ?1, deleted_time = ?2 WHERE experiment_id = ?3",
            params![stage, deleted_time, eid],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Sets (or replaces) an experiment tag.
    pub fn set_experiment_tag(&self, id: &str, key: &str, value: &str) -> Result<()> {
        check_key(key, "tag")?;
        check_tag_value(key, value)?;
        let exp = self.get_experiment(id)?;
        if exp.lifecycle_stage != "active" {
            return Err(invalid(format!(
                "experiment {id} is deleted; restore it before tagging"
            )));
        }
        self.conn().execute(
            "INSERT OR REPLACE INTO experiment_tags(experiment_id, key, value) VALUES (?1, ?2, ?3)",
            params![parse_experiment_id(id)?, key, value],
        )?;
        Ok(())
    }

    // ---- runs ----

    /// Starts a run in an active experiment, status RUNNING.
    pub fn create_run(&self, new: &NewRun) -> Result<Run> {
        let exp_id = if new.experiment_id.is_empty() {
            DEFAULT_EXPERIMENT_ID
        } else {
            new.experiment_id.as_str()
        };
        let exp = self.get_experiment(exp_id)?;
        if exp.lifecycle_stage != "active" {
            return Err(invalid(format!(
                "experiment {exp_id} is deleted; restore it or log to another experiment"
            )));
        }
        for t in &new.tags {
            check_key(&t.key, "tag")?;
            check_tag_value(&t.key, &t.value)?;
        }
        let tag = |k: &str| {
            new.tags
                .iter()
                .find(|t| t.key == k)
                .map(|t| t.value.clone())
        };
        let run_name = new
            .run_name
            .clone()
            .filter(|n| !n.is_empty())
            .or_else(|| tag(RUN_NAME_TAG).filter(|n| !n.is_empty()))
            .unwrap_or_else(names::run_name);
        let user_id = new
            .user_id
            .clone()
            .or_else(|| tag(USER_TAG))
            .unwrap_or_default();
        let run_id = names::run_id();
        let start = new.start_time.unwrap_or_else(now_ms);
        let artifact_uri = format!(
            "{}/{}/artifacts",
            exp.artifact_location.trim_end_matches('/'),
            run_id
        );
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO runs(run_uuid, experiment_id, run_name, user_id, status, start_time, artifact_uri)
             VALUES (?1, ?2, ?3, ?4, 'RUNNING', ?5, ?6)",
            params![run_id, parse_experiment_id(exp_id)?, run_name, user_id, start, artifact_uri],
        )?;
        for t in &new.tags {
            if t.key != RUN_NAME_TAG {
                tx.execute(
                    "INSERT OR REPLACE INTO tags(run_uuid, key, value) VALUES (?1, ?2, ?3)",
                    params![run_id, t.key, t.value],
                )?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO tags(run_uuid, key, value) VALUES (?1, ?2, ?3)",
            params![run_id, RUN_NAME_TAG, run_name],
        )?;
        tx.commit()?;
        drop(conn);
        self.get_run(&run_id)
    }

    /// A run with its latest metrics, params and tags (deleted runs too).
    pub fn get_run(&self, run_id: &str) -> Result<Run> {
        let conn = self.conn();
        let info = load_run_info(&conn, run_id)?
            .ok_or_else(|| TrackError::NotFound(format!("run with id={run_id} not found")))?;
        load_run_data(&conn, info)
    }

    /// Sets status, end time and/or name; returns the updated info.
    pub fn update_run(
        &self,
        run_id: &str,
        status: Option<RunStatus>,
        end_time: Option<i64>,
        run_name: Option<&str>,
    ) -> Result<RunInfo> {
        let mut conn = self.conn();
        let info = require_active_run(&conn, run_id)?;
        let tx = conn.transaction()?;
        if let Some(s) = status {
            tx.execute(
                "UPDATE runs SET status = ?1 WHERE run_uuid = ?2",
                params![s.as_str(), run_id],
            )?;
        }
        if let Some(t) = end_time {
            tx.execute(
                "UPDATE runs SET end_time = ?1 WHERE run_uuid = ?2",
                params![t, run_id],
            )?;
        }
        if let Some(name) = run_name.filter(|n| !n.is_empty()) {
            tx.execute(
                "UPDATE runs SET run_name = ?1 WHERE run_uuid = ?2",
                params![name, run_id],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO tags(run_uuid, key, value) VALUES (?1, ?2, ?3)",
                params![run_id, RUN_NAME_TAG, name],
            )?;
        }
        tx.commit()?;
        Ok(load_run_info(&conn, run_id)?.unwrap_or(info))
    }

    /// Marks a run deleted (restorable; hidden from searches of active runs).
    pub fn delete_run(&self, run_id: &str) -> Result<()> {
        self.set_run_stage(run_id, "deleted")
    }

    /// Restores a deleted run.
    pub fn restore_run(&self, run_id: &str) -> Result<()> {
        self.set_run_stage(run_id, "active")
    }

    fn set_run_stage(&self, run_id: &str, stage: &str) -> Result<()> {
        let conn = self.conn();
        let deleted_time = (stage == "deleted").then(now_ms);
        let n = conn.execute(
            "UPDATE runs SET lifecycle_stage = ?1, deleted_time = ?2 WHERE run_uuid = ?3",
            params![stage, deleted_time, run_id],
        )?;
        if n == 0 {
            return Err(TrackError::NotFound(format!(
                "run with id={run_id} not found"
            )));
        }
        Ok(())
    }
}

/// Experiment ids are integers; anything else names no experiment.
pub(crate) fn parse_experiment_id(id: &str) -> Result<i64> {
    id.trim().parse::<i64>().map_err(|_| {
        invalid(format!(
            "experiment id {id:?} is not an experiment id (ids are integers, e.g. \"0\")"
        ))
    })
}

fn load_experiment(
    conn: &Connection,
    cond: &str,
    arg: &dyn rusqlite::ToSql,
) -> Result<Option<Experiment>> {
    let sql = format!(
        "SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time, last_update_time
         FROM experiments WHERE {cond}"
    );
    let exp = conn.query_row(&sql, [arg], experiment_row).optional()?;
    match exp {
        Some(mut e) => {
            e.tags = experiment_tags(conn, &e.experiment_id)?;
            Ok(Some(e))
        }
        None => Ok(None),
    }
}

pub(crate) fn experiment_row(r: &Row) -> rusqlite::Result<Experiment> {
    Ok(Experiment {
        experiment_id: r.get::<_, i64>(0)?.to_string(),
        name: r.get(1)?,
        artifact_location: r.get(2)?,
        lifecycle_stage: r.get(3)?,
        creation_time: r.get(4)?,
        last_update_time: r.get(5)?,
        tags: Vec::new(),
    })
}

pub(crate) fn experiment_tags(conn: &Connection, id: &str) -> Result<Vec<KeyValue>> {
    let mut st = conn.prepare_cached(
        "SELECT key, value FROM experiment_tags WHERE experiment_id = ?1 ORDER BY key",
    )?;
    let rows = st.query_map([id.parse::<i64>().unwrap_or(-1)], |r| {
        Ok(KeyValue::new(
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
        ))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub(crate) const RUN_COLUMNS: &str = "r.run_uuid, r.run_name, r.experiment_id, r.user_id, r.status, r.start_time, r.end_time, r.artifact_uri, r.lifecycle_stage";

pub(crate) fn run_info_row(r: &Row) -> rusqlite::Result<RunInfo> {
    let status: String = r.get(4)?;
    Ok(RunInfo {
        run_id: r.get(0)?,
        run_name: r.get(1)?,
        experiment_id: r.get::<_, i64>(2)?.to_string(),
        user_id: r.get(3)?,
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        start_time: r.get(5)?,
        end_time: r.get(6)?,
        artifact_uri: r.get(7)?,
        lifecycle_stage: r.get(8)?,
    })
}

pub(crate) fn load_run_info(conn: &Connection, run_id: &str) -> Result<Option<RunInfo>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs r WHERE r.run_uuid = ?1"
    ))?;
    Ok(st.query_row([run_id], run_info_row).optional()?)
}

/// The run's info, or an error when it is missing or deleted (logging needs it active).
pub(crate) fn require_active_run(conn: &Connection, run_id: &str) -> Result<RunInfo> {
    let info = load_run_info(conn, run_id)?
        .ok_or_else(|| TrackError::NotFound(format!("run with id={run_id} not found")))?;
    if info.lifecycle_stage != "active" {
        return Err(invalid(format!(
            "the run {run_id} must be in the 'active' state; current state is {}; restore it first",
            info.lifecycle_stage
        )));
    }
    Ok(info)
}

/// Adds latest metrics, params and tags to a run's info.
pub(crate) fn load_run_data(conn: &Connection, info: RunInfo) -> Result<Run> {
    let id = info.run_id.clone();
    let mut st = conn.prepare_cached(
        "SELECT key, value, timestamp, step FROM latest_metrics WHERE run_uuid = ?1 ORDER BY key",
    )?;
    let metrics = st
        .query_map([&id], |r| {
            Ok(crate::Metric {
                key: r.get(0)?,
                value: r.get::<_, Option<f64>>(1)?.unwrap_or(f64::NAN),
                timestamp: r.get(2)?,
                step: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let kv = |sql: &str| -> Result<Vec<KeyValue>> {
        let mut st = conn.prepare_cached(sql)?;
        let rows = st.query_map([&id], |r| {
            Ok(KeyValue::new(
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let params = kv("SELECT key, value FROM params WHERE run_uuid = ?1 ORDER BY key")?;
    let tags = kv("SELECT key, value FROM tags WHERE run_uuid = ?1 ORDER BY key")?;
    Ok(Run {
        info,
        metrics,
        params,
        tags,
    })
}

/// Adds latest metrics, params and tags to many runs at once (a few queries per 500
/// runs instead of three per run), keeping their order.
pub(crate) fn load_runs_data(conn: &Connection, infos: Vec<RunInfo>) -> Result<Vec<Run>> {
    use std::collections::HashMap;
    /// Latest metrics, params and tags of one run.
    type RunData = (Vec<crate::Metric>, Vec<KeyValue>, Vec<KeyValue>);
    let mut data: HashMap<String, RunData> = HashMap::with_capacity(infos.len());
    for chunk in infos.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(", ");
        let ids: Vec<&str> = chunk.iter().map(|i| i.run_id.as_str()).collect();
        let mut st = conn.prepare_cached(&format!(
            "SELECT run_uuid, key, value, timestamp, step FROM latest_metrics WHERE run_uuid IN ({marks}) ORDER BY run_uuid, key"
        ))?;
        let mut rows = st.query(rusqlite::params_from_iter(ids.iter()))?;
        while let Some(r) = rows.next()? {
            data.entry(r.get(0)?).or_default().0.push(crate::Metric {
                key: r.get(1)?,
                value: r.get::<_, Option<f64>>(2)?.unwrap_or(f64::NAN),
                timestamp: r.get(3)?,
                step: r.get(4)?,
            });
        }
        for (table, slot) in [("params", 1), ("tags", 2)] {
            let mut st = conn.prepare_cached(&format!(
                "SELECT run_uuid, key, value FROM {table} WHERE run_uuid IN ({marks}) ORDER BY run_uuid, key"
            ))?;
            let mut rows = st.query(rusqlite::params_from_iter(ids.iter()))?;
            while let Some(r) = rows.next()? {
                let entry = data.entry(r.get(0)?).or_default();
                let kv = KeyValue::new(r.get::<_, String>(1)?, r.get::<_, String>(2)?);
                if slot == 1 {
                    entry.1.push(kv);
                } else {
                    entry.2.push(kv);
                }
            }
        }
    }
    Ok(infos
        .into_iter()
        .map(|info| {
            let (metrics, params, tags) = data.remove(&info.run_id).unwrap_or_default();
            Run {
                info,
                metrics,
                params,
                tags,
            }
        })
        .collect())
}
