//! Run artifacts: bytes stored once per sha256 in `<home>/track/artifacts/<sha256>`
//! (temp file + fsync + rename), and a per-run index of relative paths. Paths are
//! checked so that no artifact can name anything outside its run.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;

use crate::error::{invalid, io_ctx, Result, TrackError};
use crate::tracker::{load_run_info, Tracker};

/// One entry of an artifact listing: a file (with its size) or a folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactEntry {
    /// Relative to the run's artifact root.
    pub path: String,
    pub is_dir: bool,
    pub file_size: Option<u64>,
}

/// Normalises a run-relative path: `/`-separated, no empty, `.` or `..` parts.
fn clean_path(path: &str, allow_root: bool) -> Result<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return if allow_root {
            Ok(String::new())
        } else {
            Err(invalid(
                "artifact path is empty; name a file, e.g. model/config.json",
            ))
        };
    }
    if parts
        .iter()
        .any(|p| *p == "." || *p == ".." || p.contains('\\') || p.contains('\0'))
    {
        return Err(invalid(format!(
            "invalid artifact path {path:?}: '.', '..', backslashes and NUL are not allowed"
        )));
    }
    Ok(parts.join("/"))
}

impl Tracker {
    fn blob_path(&self, sha: &str) -> PathBuf {
        self.root().join("artifacts").join(sha)
    }

    /// Stores `bytes` as `path` of `run_id` (replacing what was there).
    pub fn put_artifact(&self, run_id: &str, path: &str, bytes: &[u8]) -> Result<()> {
        let path = clean_path(path, false)?;
        {
            let conn = self.conn();
            crate::tracker::require_active_run(&conn, run_id)?;
        }
        let sha = hex::encode(Sha256::digest(bytes));
        let dest = self.blob_path(&sha);
        if !dest.exists() {
            let dir = self.root().join("artifacts");
            let tmp = dir.join(format!(".tmp-{sha}-{}", crate::names::run_id()));
            let write = || -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &dest)?;
                std::fs::File::open(&dir)?.sync_all()
            };
            if let Err(e) = write() {
                let _ = std::fs::remove_file(&tmp);
                return Err(io_ctx(format!("store artifact {path}"))(e));
            }
        }
        let conn = self.conn();
        conn.execute(
            "INSERT OR REPLACE INTO artifacts(run_uuid, path, sha256, size) VALUES (?1, ?2, ?3, ?4)",
            params![run_id, path, sha, bytes.len() as i64],
        )?;
        Ok(())
    }

    /// The bytes of `path` of `run_id`.
    pub fn get_artifact(&self, run_id: &str, path: &str) -> Result<Vec<u8>> {
        let path = clean_path(path, false)?;
        let sha: Option<String> = self
            .conn()
            .query_row(
                "SELECT sha256 FROM artifacts WHERE run_uuid = ?1 AND path = ?2",
                params![run_id, path],
                |r| r.get(0),
            )
            .optional()?;
        let sha = sha
            .ok_or_else(|| TrackError::NotFound(format!("no artifact {path:?} in run {run_id}")))?;
        let bytes = std::fs::read(self.blob_path(&sha))
            .map_err(io_ctx(format!("read artifact {path} ({sha})")))?;
        if hex::encode(Sha256::digest(&bytes)) != sha {
            return Err(TrackError::Io {
                context: format!("artifact {path} of run {run_id}"),
                source: std::io::Error::other(format!("content does not match its sha256 {sha}")),
            });
        }
        Ok(bytes)
    }

    /// Files and folders directly under `dir` ("" = the run's root), sorted by path.
    pub fn list_artifacts(&self, run_id: &str, dir: &str) -> Result<Vec<ArtifactEntry>> {
        let dir = clean_path(dir, true)?;
        let conn = self.conn();
        if load_run_info(&conn, run_id)?.is_none() {
            return Err(TrackError::NotFound(format!(
                "run with id={run_id} not found"
            )));
        }
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut st = conn.prepare_cached(
            "SELECT path, size FROM artifacts WHERE run_uuid = ?1 AND substr(path, 1, ?2) = ?3 ORDER BY path",
        )?;
        let rows = st
            .query_map(params![run_id, prefix.len() as i64, prefix], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut out: Vec<ArtifactEntry> = Vec::new();
        for (path, size) in rows {
            let rest = &path[prefix.len()..];
            match rest.split_once('/') {
                Some((sub, _)) => {
                    let p = format!("{prefix}{sub}");
                    if out.last().is_none_or(|e| e.path != p) {
                        out.push(ArtifactEntry {
                            path: p,
                            is_dir: true,
                            file_size: None,
                        });
                    }
                }
                None => out.push(ArtifactEntry {
                    path,
                    is_dir: false,
                    file_size: Some(size as u64),
                }),
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out.dedup_by(|a, b| a.path == b.path);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NewRun;

    #[test]
    fn artifacts_round_trip_list_by_folder_and_share_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        let r = t.create_run(&NewRun::default()).unwrap().info.run_id;
        t.put_artifact(&r, "model/config.json", b"{}").unwrap();
        t.put_artifact(&r, "model/w/a.bin", b"abc").unwrap();
        t.put_artifact(&r, "notes.txt", b"abc").unwrap();
        assert_eq!(t.get_artifact(&r, "notes.txt").unwrap(), b"abc");
        assert_eq!(t.get_artifact(&r, "/model//config.json").unwrap(), b"{}");
        let root = t.list_artifacts(&r, "").unwrap();
        assert_eq!(
            root.iter()
                .map(|e| (e.path.as_str(), e.is_dir))
                .collect::<Vec<_>>(),
            vec![("model", true), ("notes.txt", false)]
        );
        let model = t.list_artifacts(&r, "model").unwrap();
        assert_eq!(model[0].path, "model/config.json");
        assert_eq!(model[0].file_size, Some(2));
        assert!(model[1].is_dir);
        // "abc" is stored once.
        let blobs = std::fs::read_dir(dir.path().join("track/artifacts"))
            .unwrap()
            .count();
        assert_eq!(blobs, 2);
        for bad in ["../x", "a/../../b", ""] {
            assert!(t.put_artifact(&r, bad, b"x").is_err(), "{bad}");
        }
        assert!(matches!(
            t.get_artifact(&r, "nope").unwrap_err(),
            TrackError::NotFound(_)
        ));
    }

    #[test]
    fn a_corrupted_blob_is_an_error_not_wrong_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tracker::open(dir.path()).unwrap();
        let r = t.create_run(&NewRun::default()).unwrap().info.run_id;
        t.put_artifact(&r, "f", b"hello").unwrap();
        let sha = hex::encode(Sha256::digest(b"hello"));
        std::fs::write(dir.path().join("track/artifacts").join(sha), b"HELLO").unwrap();
        assert!(t.get_artifact(&r, "f").is_err());
    }
}
