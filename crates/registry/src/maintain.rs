//! Upkeep: garbage collection of unreferenced chunks, verification that every
//! version's chunks exist and hash to their names, and the trust kept in cached copies.
//! Gc runs under the gc lease so no import can commit references to a chunk being
//! deleted; verification only reads.
//!
//! A cached copy (what `resolve` hands out for mmap) is trusted while its size, mtime,
//! ctime, inode and device are those recorded when it was last hashed. Any change, a
//! same-size edit whose mtime was put back included (ctime cannot be put back), makes
//! the next use re-hash it and re-export it from the store when it differs.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Principal, Role};
use crate::db::{self, LeaseKind};
use crate::error::io_ctx;
use crate::error::{RegistryError, Result};
use crate::registry::{FileRecord, Registry};
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
    /// Cached copies re-hashed (all of them with `deep`, else those whose stamp changed).
    pub cached_files_checked: u64,
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
            cached_files_checked: 0,
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
            let cached = self.cache_dir(&name, v).join(&path);
            let Ok(meta) = std::fs::symlink_metadata(&cached) else {
                continue; // never resolved (or removed): nothing cached to check
            };
            if !deep && self.stamp_of(file_id)? == Some(CacheStamp::of(&meta)) {
                continue;
            }
            report.cached_files_checked += 1;
            if !meta.is_file() || sha256_file(&cached)? != sha {
                report.problems.push(format!(
                    "{name}@{v}: {path}: the cached copy {} does not hold the stored bytes \
                     (the next resolve re-exports it; or delete it)",
                    cached.display()
                ));
            }
        }
        Ok(report)
    }

    fn stamp_of(&self, file_id: i64) -> Result<Option<CacheStamp>> {
        use rusqlite::OptionalExtension;
        Ok(self
            .db
            .query_row(
                "SELECT size, mtime_ns, ctime_ns, ino, dev FROM cache_stamps WHERE file_id = ?1",
                [file_id],
                |r| {
                    Ok(CacheStamp {
                        size: r.get(0)?,
                        mtime_ns: r.get(1)?,
                        ctime_ns: r.get(2)?,
                        ino: r.get(3)?,
                        dev: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records that the copy at `dest` holds exactly the bytes of `file_id` now.
    fn record_stamp(&self, file_id: i64, dest: &Path) -> Result<()> {
        let meta =
            std::fs::symlink_metadata(dest).map_err(io_ctx(format!("stat {}", dest.display())))?;
        let s = CacheStamp::of(&meta);
        self.db.execute(
            "INSERT INTO cache_stamps(file_id, size, mtime_ns, ctime_ns, ino, dev)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT(file_id) DO UPDATE SET size = excluded.size,
               mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns,
               ino = excluded.ino, dev = excluded.dev",
            rusqlite::params![file_id, s.size, s.mtime_ns, s.ctime_ns, s.ino, s.dev],
        )?;
        Ok(())
    }

    /// Makes `dest` a trusted copy of stored file `file_id` for `resolve`: exports it
    /// when missing; re-hashes it when it changed since it was last known good (or was
    /// never stamped); re-exports it from the store, with an audit entry, when its bytes
    /// differ.
    pub(crate) fn ensure_cached(
        &self,
        file_id: i64,
        rec: &FileRecord,
        dest: &Path,
        label: &str,
    ) -> Result<CacheUse> {
        let pb = indicatif::ProgressBar::hidden();
        let meta = match std::fs::symlink_metadata(dest) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.write_file(file_id, rec, dest, &pb)?;
                self.record_stamp(file_id, dest)?;
                return Ok(CacheUse::Exported);
            }
            Err(e) => return Err(io_ctx(format!("stat {}", dest.display()))(e)),
        };
        if self.stamp_of(file_id)? == Some(CacheStamp::of(&meta)) {
            return Ok(CacheUse::Trusted);
        }
        let found = if meta.is_file() && meta.len() == rec.size {
            Some(sha256_file(dest)?)
        } else {
            None
        };
        if found.as_deref() == Some(rec.sha256.as_str()) {
            self.record_stamp(file_id, dest)?;
            return Ok(CacheUse::Verified);
        }
        self.write_file(file_id, rec, dest, &pb)?;
        self.record_stamp(file_id, dest)?;
        db::audit(
            &self.db,
            "registry",
            "cache.repair",
            label,
            &json!({"path": rec.path, "size": meta.len(), "sha256": found,
                    "expected_sha256": rec.sha256}),
        )?;
        Ok(CacheUse::Repaired)
    }
}

/// What [`Registry::ensure_cached`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheUse {
    /// Unchanged since it was last known good: used without reading it.
    Trusted,
    /// Changed (or never stamped) but still the right bytes: re-hashed and re-stamped.
    Verified,
    /// Missing: exported from the store.
    Exported,
    /// Held other bytes: replaced by a fresh export from the store.
    Repaired,
}

/// The file-system identity of a cached copy. `ctime` changes on every write and on
/// every attempt to set the times back, so a same-size edit cannot keep the stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheStamp {
    size: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: i64,
    dev: i64,
}

impl CacheStamp {
    fn of(m: &std::fs::Metadata) -> Self {
        CacheStamp {
            size: m.size() as i64,
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
            ino: m.ino() as i64,
            dev: m.dev() as i64,
        }
    }
}

/// The sha256 of a file, streamed, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(io_ctx(format!("open {}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io_ctx(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
