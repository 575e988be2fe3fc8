//! The metadata database (SQLite, WAL, synchronous=FULL): schema, migrations and the
//! leases that keep gc and imports apart. Holds no chunk bytes.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{RegistryError, Result};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    next_version INTEGER NOT NULL DEFAULT 1,
    -- `model` or `prompt` (prompts.rs): one namespace, versions and aliases for both.
    kind TEXT NOT NULL DEFAULT 'model'
);
CREATE TABLE IF NOT EXISTS versions(
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id),
    number INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    stage TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    base_model TEXT,
    base_version INTEGER,
    derivation TEXT,
    derived_by_run TEXT,
    content_digest TEXT NOT NULL,
    total_size INTEGER NOT NULL,
    new_bytes INTEGER NOT NULL,
    UNIQUE(model_id, number)
);
CREATE TABLE IF NOT EXISTS files(
    id INTEGER PRIMARY KEY,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    format TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    UNIQUE(version_id, path)
);
CREATE TABLE IF NOT EXISTS file_chunks(
    file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    chunk TEXT NOT NULL,
    len INTEGER NOT NULL,
    PRIMARY KEY(file_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS file_chunks_by_chunk ON file_chunks(chunk);
CREATE TABLE IF NOT EXISTS chunks(hash TEXT PRIMARY KEY, len INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS aliases(
    model_id INTEGER NOT NULL REFERENCES models(id),
    alias TEXT NOT NULL,
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    PRIMARY KEY(model_id, alias)
);
CREATE TABLE IF NOT EXISTS tags(
    version_id INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY(version_id, tag)
);
CREATE TABLE IF NOT EXISTS tokens(
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit(
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
-- What a cached copy (home/registry/cache) looked like when it was last known to hold
-- exactly its file's bytes; any difference means it is re-hashed before it is used.
CREATE TABLE IF NOT EXISTS cache_stamps(
    file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    dev INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases(
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at INTEGER NOT NULL
);
"#;

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn open(path: &Path) -> Result<Connection> {
    let db = Connection::open(path)?;
    db.busy_timeout(std::time::Duration::from_secs(30))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.pragma_update(None, "foreign_keys", "ON")?;
    db.execute_batch(SCHEMA)?;
    migrate(&db)?;
    Ok(db)
}

/// Brings a database made by an older Hangar up to the current schema.
fn migrate(db: &Connection) -> Result<()> {
    let has_kind: bool = db.query_row(
        "SELECT EXISTS(SELECT 1 FROM pragma_table_info('models') WHERE name = 'kind')",
        [],
        |r| r.get(0),
    )?;
    if !has_kind {
        db.execute_batch("ALTER TABLE models ADD COLUMN kind TEXT NOT NULL DEFAULT 'model'")?;
    }
    Ok(())
}

pub(crate) fn setting(db: &Connection, key: &str) -> Result<Option<String>> {
    Ok(db
        .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?)
}

pub(crate) fn set_setting(db: &Connection, key: &str, value: &str) -> Result<()> {
    db.execute(
        "INSERT INTO settings(key, value) VALUES(?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

pub(crate) fn audit(
    db: &Connection,
    actor: &str,
    action: &str,
    target: &str,
    detail: &serde_json::Value,
) -> Result<()> {
    db.execute(
        "INSERT INTO audit(ts, actor, action, target, detail) VALUES(?1, ?2, ?3, ?4, ?5)",
        params![now(), actor, action, target, detail.to_string()],
    )?;
    Ok(())
}

fn pid_alive(pid: i64) -> bool {
    pid == std::process::id() as i64 || Path::new(&format!("/proc/{pid}")).exists()
}

/// Which activity holds a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseKind {
    Import,
    Gc,
}

impl LeaseKind {
    fn as_str(self) -> &'static str {
        match self {
            LeaseKind::Import => "import",
            LeaseKind::Gc => "gc",
        }
    }
}

/// Takes a lease of `kind`, refusing while a live lease of the other kind exists. Leases
/// of dead processes (killed imports) are dropped on the way.
pub(crate) fn take_lease(db: &mut Connection, kind: LeaseKind) -> Result<i64> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rows: Vec<(i64, String, i64)> = {
            let mut st = tx.prepare("SELECT id, kind, pid FROM leases")?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        let mut blocked = None;
        for (id, k, pid) in rows {
            if !pid_alive(pid) {
                tx.execute("DELETE FROM leases WHERE id = ?1", [id])?;
            } else if k != kind.as_str() || kind == LeaseKind::Gc {
                blocked = Some((k, pid));
            }
        }
        if blocked.is_none() {
            tx.execute(
                "INSERT INTO leases(kind, pid, started_at) VALUES(?1, ?2, ?3)",
                params![kind.as_str(), std::process::id(), now()],
            )?;
            let id = tx.last_insert_rowid();
            tx.commit()?;
            return Ok(id);
        }
        tx.commit()?;
        let (k, pid) = blocked.unwrap();
        if std::time::Instant::now() > deadline {
            return Err(RegistryError::Busy(format!(
                "a {k} (pid {pid}) is running; try again when it has finished"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

pub(crate) fn release_lease(db: &Connection, id: i64) {
    let _ = db.execute("DELETE FROM leases WHERE id = ?1", [id]);
}
