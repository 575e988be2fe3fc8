//! Snapshots of a collection: the data-file format written under
//! `<collection>/snapshots/`, listed, read back, deleted; restoring is the store's job
//! (it swaps the open collection). Names are checked so they never leave that folder.

use crate::collection::Collection;
use crate::error::{Result, VectorError};
use crate::storage::write_data;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) const SNAPSHOT_DIR: &str = "snapshots";
const EXT: &str = "snapshot";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotInfo {
    pub name: String,
    /// Unix seconds.
    pub created: u64,
    pub size: u64,
}

/// A snapshot file name: `[A-Za-z0-9._-]+.snapshot`, no leading dot.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.ends_with(".snapshot")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VectorError::SnapshotNotFound(name.to_string()))
    }
}

pub(crate) fn snapshot_dir(collection_dir: &Path) -> PathBuf {
    collection_dir.join(SNAPSHOT_DIR)
}

fn info_of(path: &Path) -> Option<SnapshotInfo> {
    let meta = std::fs::metadata(path).ok()?;
    Some(SnapshotInfo {
        name: path.file_name()?.to_str()?.to_string(),
        created: meta
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_secs(),
        size: meta.len(),
    })
}

impl Collection {
    /// Writes a snapshot of the live points; the log is synced first so the snapshot
    /// holds every acknowledged write.
    pub fn create_snapshot(&mut self) -> Result<SnapshotInfo> {
        self.sync_wal()?;
        let dir = snapshot_dir(&self.dir);
        std::fs::create_dir_all(&dir).map_err(|e| VectorError::io(&dir, e))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut n = 0;
        let path = loop {
            let p = dir.join(format!("{}-{now}-{n}.{EXT}", self.name));
            if !p.exists() {
                break p;
            }
            n += 1;
        };
        write_data(&path, &self.config, self.live, self.live_points())?;
        info_of(&path).ok_or_else(|| VectorError::corrupt(&path, "snapshot vanished after writing"))
    }

    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        list_in(&snapshot_dir(&self.dir))
    }

    /// The file of a snapshot of this collection.
    pub fn snapshot_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        let p = snapshot_dir(&self.dir).join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(VectorError::SnapshotNotFound(name.to_string()))
        }
    }

    pub fn delete_snapshot(&self, name: &str) -> Result<()> {
        let p = self.snapshot_path(name)?;
        std::fs::remove_file(&p).map_err(|e| VectorError::io(&p, e))
    }
}

pub(crate) fn list_in(dir: &Path) -> Result<Vec<SnapshotInfo>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(VectorError::io(dir, e)),
    };
    let mut out: Vec<SnapshotInfo> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == EXT))
        .filter_map(|p| info_of(&p))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
