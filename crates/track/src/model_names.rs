//! Registered model names: what MLflow calls a registered model before (and beside)
//! its versions — a name, a description and timestamps. The versions themselves live
//! in Hangar's model registry; this module never sees it.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use crate::error::{invalid, Result, TrackError};
use crate::{now_ms, Tracker};

/// A registered model name and its description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelName {
    pub name: String,
    pub description: String,
    pub creation_time: i64,
    pub last_updated_time: i64,
}

const TABLE: &str = "CREATE TABLE IF NOT EXISTS registered_models(
    name TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    creation_time INTEGER NOT NULL,
    last_updated_time INTEGER NOT NULL
) WITHOUT ROWID";

/// Tags of registered model names (MLflow's `registered-models/set-tag`).
const TAGS_TABLE: &str = "CREATE TABLE IF NOT EXISTS registered_model_tags(
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(name, key)
) WITHOUT ROWID";

/// MLflow's limits on a registered model tag.
const MAX_TAG_KEY: usize = 250;
const MAX_TAG_VALUE: usize = 100_000;

impl Tracker {
    /// Sets a tag on a registered model name.
    pub fn set_model_name_tag(&self, name: &str, key: &str, value: &str) -> Result<()> {
        if key.is_empty() || key.len() > MAX_TAG_KEY {
            return Err(invalid(format!(
                "tag key must be 1 to {MAX_TAG_KEY} bytes, got {}",
                key.len()
            )));
        }
        if value.len() > MAX_TAG_VALUE {
            return Err(invalid(format!(
                "tag value must be at most {MAX_TAG_VALUE} bytes, got {}",
                value.len()
            )));
        }
        let conn = self.conn();
        conn.execute(TAGS_TABLE, [])?;
        conn.execute(
            "INSERT INTO registered_model_tags(name, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(name, key) DO UPDATE SET value = excluded.value",
            params![name, key, value],
        )?;
        Ok(())
    }

    /// Removes a tag; returns whether it was set.
    pub fn delete_model_name_tag(&self, name: &str, key: &str) -> Result<bool> {
        let conn = self.conn();
        conn.execute(TAGS_TABLE, [])?;
        Ok(conn.execute(
            "DELETE FROM registered_model_tags WHERE name = ?1 AND key = ?2",
            params![name, key],
        )? > 0)
    }

    /// The tags of a registered model name, sorted by key.
    pub fn model_name_tags(&self, name: &str) -> Result<Vec<(String, String)>> {
        let conn = self.conn();
        conn.execute(TAGS_TABLE, [])?;
        let mut st = conn
            .prepare("SELECT key, value FROM registered_model_tags WHERE name = ?1 ORDER BY key")?;
        let rows = st.query_map([name], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records a registered model name; an existing name is RESOURCE_ALREADY_EXISTS.
    pub fn create_model_name(&self, name: &str, description: &str) -> Result<ModelName> {
        if name.is_empty() {
            return Err(invalid("registered model name must be a non-empty string"));
        }
        let conn = self.conn();
        conn.execute(TABLE, [])?;
        let now = now_ms();
        let n = conn.execute(
            "INSERT OR IGNORE INTO registered_models(name, description, creation_time, last_updated_time)
             VALUES (?1, ?2, ?3, ?3)",
            params![name, description, now],
        )?;
        if n == 0 {
            return Err(TrackError::AlreadyExists(format!(
                "registered model (name={name}) already exists"
            )));
        }
        Ok(ModelName {
            name: name.into(),
            description: description.into(),
            creation_time: now,
            last_updated_time: now,
        })
    }

    /// The recorded name, if any.
    pub fn model_name(&self, name: &str) -> Result<Option<ModelName>> {
        let conn = self.conn();
        conn.execute(TABLE, [])?;
        Ok(conn
            .query_row(
                "SELECT name, description, creation_time, last_updated_time FROM registered_models WHERE name = ?1",
                [name],
                |r| {
                    Ok(ModelName {
                        name: r.get(0)?,
                        description: r.get(1)?,
                        creation_time: r.get(2)?,
                        last_updated_time: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Every recorded name, sorted.
    pub fn model_names(&self) -> Result<Vec<ModelName>> {
        let conn = self.conn();
        conn.execute(TABLE, [])?;
        let mut st = conn.prepare(
            "SELECT name, description, creation_time, last_updated_time FROM registered_models ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(ModelName {
                name: r.get(0)?,
                description: r.get(1)?,
                creation_time: r.get(2)?,
                last_updated_time: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Sets the description (recording the name if it was not yet).
    pub fn describe_model_name(&self, name: &str, description: &str) -> Result<()> {
        let conn = self.conn();
        conn.execute(TABLE, [])?;
        let now = now_ms();
        conn.execute(
            "INSERT INTO registered_models(name, description, creation_time, last_updated_time) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT(name) DO UPDATE SET description = excluded.description, last_updated_time = excluded.last_updated_time",
            params![name, description, now],
        )?;
        Ok(())
    }

    /// Forgets a name; returns whether it was recorded.
    pub fn delete_model_name(&self, name: &str) -> Result<bool> {
        let conn = self.conn();
        conn.execute(TABLE, [])?;
        conn.execute(TAGS_TABLE, [])?;
        conn.execute("DELETE FROM registered_model_tags WHERE name = ?1", [name])?;
        Ok(conn.execute("DELETE FROM registered_models WHERE name = ?1", [name])? > 0)
    }
}
