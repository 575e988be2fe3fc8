//! Upkeep: garbage collection of unreferenced chunks and verification that every
//! version's chunks exist and hash to their names. Runs under the gc lease so no
//! import can commit references to a chunk being deleted.

use std::collections::HashSet;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Principal, Role};
use crate::db::{self, LeaseKind};
use crate::error::{RegistryError, Result};
use crate::registry::Registry;
use crate::store::LocalChunkStore;

/// What gc removed (or, with `dry_run`, would remove).
#[derive(Debug, Clone, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Chunks no version references any more.
    pub unreferenced_chunks: u64,
    /// Chunks in the store the database never recorded (left by killed imports).
    pub orphan_chunks: u64,
    pub bytes_freed: u64,
    pub cache_dirs_removed: u64,
}

/// The result of [`Registry::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub versions: u64,
    pub files: u64,
    pub chunks_checked: u64,
    /// `name@version: path: problem` lines; empty when everything is sound.
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Registry {
    /// Deletes chunks that no version references, orphan chunks of killed imports and
    /// cached files of deleted versions. Refused while an import is running.
    pub fn gc(&mut self, who: &Principal, dry_run: bool) -> Result<GcReport> {
        who.require(Role::Admin, "garbage collection")?;
        let lease = db::take_lease(&mut self.db, LeaseKind::Gc)?;
        let r = self.gc_leased(who, dry_run);
        db::release_lease(&self.db, lease);
        r
    }

    fn gc_leased(&mut self, who: &Principal, dry_run: bool) -> Result<GcReport> {
        let unreferenced: Vec<(String, i64)> = {
            let mut st = self.db.prepare(
                "SELECT hash, len FROM chunks WHERE NOT EXISTS
                   (SELECT 1 FROM file_chunks fc WHERE fc.chunk = chunks.hash)",
            )?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        let recorded: HashSet<String> = {
            let mut st = self.db.prepare("SELECT hash FROM chunks")?;
            let v = st
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        let orphans: Vec<String> = self
            .store
            .list()?
            .into_iter()
            .filter(|h| !recorded.contains(h))
            .collect();
        let mut freed: u64 = unreferenced.iter().map(|(_, l)| *l as u64).sum();
        let live: HashSet<(String, String)> = {
            let mut st = self.db.prepare(
                "SELECT m.name, 'v' || v.number FROM versions v JOIN models m ON m.id = v.model_id",
            )?;
            let v = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        let mut stale_cache = Vec::new();
        if let Ok(models) = std::fs::read_dir(self.root.join("cache")) {
            for m in models.flatten() {
                if let Ok(vs) = std::fs::read_dir(m.path()) {
                    for v in vs.flatten() {
                        let key = (
                            m.file_name().to_string_lossy().to_string(),
                            v.file_name().to_string_lossy().to_string(),
                        );
                        if !live.contains(&key) {
                            stale_cache.push(v.path());
                        }
                    }
                }
            }
        }
        let report = |freed| GcReport {
            dry_run,
            unreferenced_chunks: unreferenced.len() as u64,
            orphan_chunks: orphans.len() as u64,
            bytes_freed: freed,
            cache_dirs_removed: stale_cache.len() as u64,
        };
        if dry_run {
            return Ok(report(freed));
        }
        // Forget first, then delete: a crash in between leaves orphans for the next gc.
        let tx = self.db.unchecked_transaction()?;
        {
            let mut del = tx.prepare("DELETE FROM chunks WHERE hash = ?1")?;
            for (h, _) in &unreferenced {
                del.execute([h])?;
            }
        }
        let r = report(freed);
        db::audit(
            &tx,
            &who.name,
            "gc",
            "registry",
            &serde_json::to_value(&r).unwrap_or(json!({})),
        )?;
        tx.commit()?;
        for (h, _) in &unreferenced {
            self.store.delete(h)?;
        }
        for h in &orphans {
            if let Ok(b) = self.store.get(h) {
                freed += b.len() as u64;
            }
            self.store.delete(h)?;
        }
        for d in &stale_cache {
            let _ = std::fs::remove_dir_all(d);
        }
        if self.store.describe().starts_with("local:") {
            LocalChunkStore::open(self.root.join("chunks"), self.root.join("tmp"))?.clean_tmp()?;
        }
        Ok(report(freed))
    }

    /// Checks that every chunk of every version exists; with `deep`, also re-hashes each
    /// chunk and each file. Read-only.
    pub fn verify(&self, who: &Principal, deep: bool) -> Result<VerifyReport> {
        who.require(Role::Reader, "verifying the registry")?;
        let mut st = self.db.prepare(
            "SELECT m.name, v.number, f.id, f.path, f.size, f.sha256 FROM files f
             JOIN versions v ON v.id = f.version_id JOIN models m ON m.id = v.model_id
             ORDER BY m.name, v.number, f.path",
        )?;
        #[allow(clippy::type_complexity)]
        let rows: Vec<(String, u32, i64, String, i64, String)> = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let versions: HashSet<(String, u32)> = rows.iter().map(|r| (r.0.clone(), r.1)).collect();
        let mut report = VerifyReport {
            versions: versions.len() as u64,
            files: rows.len() as u64,
            chunks_checked: 0,
            problems: Vec::new(),
        };
        let mut checked: HashSet<String> = HashSet::new();
        for (name, v, file_id, path, size, sha) in rows {
            let chunks = self.chunks_of(file_id)?;
            let sum: u64 = chunks.iter().map(|c| c.1).sum();
            if sum != size as u64 {
                report.problems.push(format!(
                    "{name}@{v}: {path}: chunks add up to {sum} bytes, file has {size}"
                ));
            }
            let mut fh = Sha256::new();
            for (h, len) in &chunks {
                if !deep {
                    if checked.insert(h.clone()) {
                        report.chunks_checked += 1;
                        if !self.store.has(h)? {
                            report
                                .problems
                                .push(format!("{name}@{v}: {path}: chunk {h} is missing"));
                        }
                    }
                    continue;
                }
                report.chunks_checked += 1;
                match self.store.get(h) {
                    Ok(b) => {
                        if b.len() as u64 != *len || hex::encode(Sha256::digest(&b)) != *h {
                            report
                                .problems
                                .push(format!("{name}@{v}: {path}: chunk {h} is corrupt"));
                        }
                        fh.update(&b);
                    }
                    Err(RegistryError::Integrity(_)) => report
                        .problems
                        .push(format!("{name}@{v}: {path}: chunk {h} is missing")),
                    Err(e) => return Err(e),
                }
            }
            if deep && hex::encode(fh.finalize()) != sha {
                report
                    .problems
                    .push(format!("{name}@{v}: {path}: sha256 does not match"));
            }
        }
        Ok(report)
    }
}
