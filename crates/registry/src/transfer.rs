//! Moving bytes between files and the chunk store: import (validate, chunk with
//! FastCDC, hash, store new chunks, then commit metadata in one transaction), export and
//! resolve (reassemble, verify sha256, rename into place).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Instant;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Principal, Role};
use crate::db::{self, LeaseKind};
use crate::error::{io_ctx, RegistryError, Result};
use crate::maintain::CacheUse;
use crate::names::{self, ModelRef};
use crate::registry::{FileRecord, Registry, VersionInfo};
use crate::safety::{self, FileFormat};

/// FastCDC bounds: chunks of 64 KiB to 1 MiB, 256 KiB on average.
pub const CHUNK_MIN: u32 = 64 << 10;
pub const CHUNK_AVG: u32 = 256 << 10;
pub const CHUNK_MAX: u32 = 1 << 20;
const WRITERS: usize = 4;

/// What a new version derives from.
#[derive(Debug, Clone, Default)]
pub struct LineageSpec {
    /// `name@version` (any reference; resolved to a number at import).
    pub base: String,
    /// `quantized`, `merged-lora`, `pruned`, `fine-tuned`, ...
    pub derivation: String,
    /// The run (experiment id) that produced it.
    pub run: Option<String>,
}

/// What an import creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImportKind {
    #[default]
    Model,
    /// A LoRA adapter (GGUF adapter file or PEFT folder); needs lineage to its base model.
    Adapter,
}

/// An import request. `path` is a file or a folder of files.
#[derive(Debug, Clone, Default)]
pub struct ImportRequest {
    pub path: PathBuf,
    pub name: String,
    pub kind: ImportKind,
    pub metadata: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub lineage: Option<LineageSpec>,
    /// Expected sha256 per file path (e.g. from a hub); a mismatch aborts the import.
    pub expected_sha256: HashMap<String, String>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportOutcome {
    pub name: String,
    pub version: u32,
    /// True when the newest version already had exactly these files and metadata
    /// (a retried import): no new version was made.
    pub already_present: bool,
    pub files: Vec<FileRecord>,
    pub logical_bytes: u64,
    /// Bytes of chunks this import wrote to the store.
    pub new_bytes: u64,
    pub chunks: u64,
    pub new_chunks: u64,
    /// logical_bytes / new_bytes for this import.
    pub dedup_ratio: f64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

/// A resolved LoRA adapter: its files and the base it was registered against.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedAdapter {
    pub files: ResolvedModel,
    /// `name@version` of the base model (lineage), when recorded.
    pub base: Option<String>,
}

/// One row of `list_adapters`.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterSummary {
    pub name: String,
    pub latest: u32,
    /// The newest version's base model, `name@version`.
    pub base: Option<String>,
    pub total_size: u64,
}

/// What an export wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExportOutcome {
    pub name: String,
    pub version: u32,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    pub seconds: f64,
    pub mb_per_s: f64,
}

/// A version materialised as real files (for mmap), from [`Registry::resolve`].
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedModel {
    pub name: String,
    pub version: u32,
    pub stage: Option<String>,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The weights file: the first GGUF, else the first safetensors.
    pub primary: Option<PathBuf>,
    /// Cached copies that no longer held their recorded bytes and were re-exported.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<PathBuf>,
}

struct Staged {
    rel: String,
    format: FileFormat,
    size: u64,
    sha256: String,
    chunks: Vec<(String, u32)>,
}

fn collect_files(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let meta = std::fs::metadata(root).map_err(io_ctx(format!("stat {}", root.display())))?;
    if meta.is_file() {
        let name = root
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| {
                RegistryError::Invalid(format!("{} has no usable file name", root.display()))
            })?
            .to_string();
        names::validate_file_path(&name)?;
        return Ok(vec![(name, root.to_path_buf())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf())];
    while let Some((prefix, dir)) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(io_ctx(format!("list {}", dir.display())))?;
        for e in rd {
            let e = e.map_err(io_ctx(format!("list {}", dir.display())))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue; // .git, .gitattributes, editor files
            }
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let ft = e
                .file_type()
                .map_err(io_ctx(format!("stat {}", e.path().display())))?;
            if ft.is_dir() {
                stack.push((rel, e.path()));
            } else if ft.is_file() {
                names::validate_file_path(&rel)?;
                out.push((rel, e.path()));
            } else {
                return Err(RegistryError::Refused {
                    path: e.path(),
                    reason: "symlinks and special files are not imported".into(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(RegistryError::Invalid(format!(
            "{} holds no files",
            root.display()
        )));
    }
    out.sort();
    Ok(out)
}

pub(crate) fn content_digest(files: &[FileRecord], metadata: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.sha256.as_bytes());
        h.update([0]);
    }
    h.update(
        serde_json::to_string(metadata)
            .unwrap_or_default()
            .as_bytes(),
    );
    hex::encode(h.finalize())
}

fn bar(total: u64, show: bool, msg: String) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

impl Registry {
    /// Imports a file or folder as the next version of `req.name`.
    ///
    /// Every file is validated first (pickle refused, GGUF/safetensors parsed). Chunks
    /// are written (temp file, fsync, rename) before the metadata transaction commits,
    /// so a killed import leaves no version pointing at missing chunks and a retry
    /// reuses what was stored.
    pub fn import(&mut self, who: &Principal, req: &ImportRequest) -> Result<ImportOutcome> {
        who.require(Role::Writer, "importing a model")?;
        names::validate_model_name(&req.name)?;
        for t in &req.tags {
            names::validate_label(t)?;
        }
        for k in req.metadata.keys() {
            if k.is_empty() || k.len() > 128 {
                return Err(RegistryError::Invalid(format!(
                    "metadata key {k:?} must be 1 to 128 bytes"
                )));
            }
        }
        let base = match &req.lineage {
            Some(l) => {
                let r = l.base.parse::<ModelRef>()?;
                // An adapter's base is a model: that is what it runs on.
                let row = match req.kind {
                    ImportKind::Adapter => self.find_model(&r)?,
                    ImportKind::Model => self.find(&r)?,
                };
                Some((row.name, row.number))
            }
            None if req.kind == ImportKind::Adapter => {
                return Err(RegistryError::Invalid(format!(
                    "a LoRA adapter needs its base model: import {:?} with a base (--base name@version)",
                    req.name
                )))
            }
            None => None,
        };
        let files = collect_files(&req.path)?;
        let mut formats = Vec::with_capacity(files.len());
        for (rel, path) in &files {
            formats.push(safety::classify(path, rel)?);
        }
        let started = Instant::now();
        let lease = db::take_lease(&mut self.db, LeaseKind::Import)?;
        let result = self.import_leased(who, req, &files, &formats, base, started);
        db::release_lease(&self.db, lease);
        result
    }

    fn import_leased(
        &mut self,
        who: &Principal,
        req: &ImportRequest,
        files: &[(String, PathBuf)],
        formats: &[FileFormat],
        base: Option<(String, u32)>,
        started: Instant,
    ) -> Result<ImportOutcome> {
        let total: u64 = files
            .iter()
            .map(|(_, p)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum();
        let pb = bar(total, req.progress, format!("import {}", req.name));
        let mut staged = Vec::new();
        let mut new_bytes = 0u64;
        let mut new_chunks = 0u64;
        let mut n_chunks = 0u64;
        let mut seen: HashSet<String> = HashSet::new();
        for ((rel, path), format) in files.iter().zip(formats) {
            let (s, nb, nc) = self.stage_file(rel, path, *format, &mut seen, &pb)?;
            if let Some(exp) = req.expected_sha256.get(rel) {
                if !exp.eq_ignore_ascii_case(&s.sha256) {
                    return Err(RegistryError::Integrity(format!(
                        "{rel}: sha256 {} does not match the expected {exp}",
                        s.sha256
                    )));
                }
            }
            new_bytes += nb;
            new_chunks += nc;
            n_chunks += s.chunks.len() as u64;
            staged.push(s);
        }
        pb.finish_and_clear();
        self.store.flush()?;
        let records: Vec<FileRecord> = staged
            .iter()
            .map(|s| FileRecord {
                path: s.rel.clone(),
                format: s.format.as_str().into(),
                size: s.size,
                sha256: s.sha256.clone(),
            })
            .collect();
        let digest = content_digest(&records, &req.metadata);

        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let want_kind = match req.kind {
            ImportKind::Model => crate::registry::KIND_MODEL,
            ImportKind::Adapter => crate::registry::KIND_ADAPTER,
        };
        let model_id: i64 = match tx
            .query_row(
                "SELECT id, kind FROM models WHERE name = ?1",
                [&req.name],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
        {
            Some((_, kind)) if kind != want_kind => {
                return Err(RegistryError::Conflict(format!(
                    "{:?} is the name of a {kind}; import the {want_kind} under another name",
                    req.name
                )));
            }
            Some((id, _)) => id,
            None => {
                tx.execute(
                    "INSERT INTO models(name, created_at, kind) VALUES(?1, ?2, ?3)",
                    params![req.name, db::now(), want_kind],
                )?;
                tx.last_insert_rowid()
            }
        };
        let latest: Option<(u32, String)> = tx
            .query_row(
                "SELECT number, content_digest FROM versions WHERE model_id = ?1 ORDER BY number DESC LIMIT 1",
                [model_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let secs = started.elapsed().as_secs_f64();
        let outcome = |version, already_present| ImportOutcome {
            name: req.name.clone(),
            version,
            already_present,
            files: records.clone(),
            logical_bytes: total,
            new_bytes,
            chunks: n_chunks,
            new_chunks,
            dedup_ratio: if new_bytes == 0 {
                f64::INFINITY
            } else {
                total as f64 / new_bytes as f64
            },
            seconds: secs,
            mb_per_s: total as f64 / 1e6 / secs.max(1e-9),
        };
        if let Some((v, d)) = &latest {
            if *d == digest {
                tx.commit()?;
                return Ok(outcome(*v, true));
            }
        }
        let number: u32 = tx.query_row(
            "UPDATE models SET next_version = next_version + 1 WHERE id = ?1 RETURNING next_version - 1",
            [model_id],
            |r| r.get(0),
        )?;
        let metadata = serde_json::to_string(&req.metadata).unwrap_or_else(|_| "{}".into());
        tx.execute(
            "INSERT INTO versions(model_id, number, created_at, created_by, metadata, base_model,
                base_version, derivation, derived_by_run, content_digest, total_size, new_bytes)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                model_id,
                number,
                db::now(),
                who.name,
                metadata,
                base.as_ref().map(|b| &b.0),
                base.as_ref().map(|b| b.1),
                req.lineage.as_ref().map(|l| &l.derivation),
                req.lineage.as_ref().and_then(|l| l.run.as_ref()),
                digest,
                total as i64,
                new_bytes as i64
            ],
        )?;
        let version_id = tx.last_insert_rowid();
        {
            let mut ins_file = tx.prepare(
                "INSERT INTO files(version_id, path, format, size, sha256) VALUES(?1, ?2, ?3, ?4, ?5)",
            )?;
            let mut ins_fc = tx.prepare(
                "INSERT INTO file_chunks(file_id, seq, chunk, len) VALUES(?1, ?2, ?3, ?4)",
            )?;
            let mut ins_chunk =
                tx.prepare("INSERT OR IGNORE INTO chunks(hash, len) VALUES(?1, ?2)")?;
            for s in &staged {
                ins_file.execute(params![
                    version_id,
                    s.rel,
                    s.format.as_str(),
                    s.size as i64,
                    s.sha256
                ])?;
                let file_id = tx.last_insert_rowid();
                for (seq, (h, len)) in s.chunks.iter().enumerate() {
                    ins_fc.execute(params![file_id, seq as i64, h, len])?;
                    ins_chunk.execute(params![h, len])?;
                }
            }
            let mut ins_tag =
                tx.prepare("INSERT OR IGNORE INTO tags(version_id, tag) VALUES(?1, ?2)")?;
            for t in &req.tags {
                ins_tag.execute(params![version_id, t])?;
            }
        }
        db::audit(
            &tx,
            &who.name,
            "import",
            &format!("{}@{number}", req.name),
            &json!({"files": records.len(), "bytes": total, "new_bytes": new_bytes,
                    "source": req.path.display().to_string()}),
        )?;
        tx.commit()?;
        Ok(outcome(number, false))
    }

    /// Chunks one file, writing unseen chunks through a small pool of writer threads.
    fn stage_file(
        &self,
        rel: &str,
        path: &Path,
        format: FileFormat,
        seen: &mut HashSet<String>,
        pb: &indicatif::ProgressBar,
    ) -> Result<(Staged, u64, u64)> {
        let f = File::open(path).map_err(io_ctx(format!("open {}", path.display())))?;
        let before = f
            .metadata()
            .map_err(io_ctx(format!("stat {}", path.display())))?;
        let reader = BufReader::with_capacity(4 << 20, f);
        let cdc = fastcdc::v2020::StreamCDC::new(reader, CHUNK_MIN, CHUNK_AVG, CHUNK_MAX);
        let mut file_hash = Sha256::new();
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let (mut new_bytes, mut new_chunks) = (0u64, 0u64);
        let failure: Mutex<Option<RegistryError>> = Mutex::new(None);
        let store = &*self.store;
        let mut known = self
            .db
            .prepare_cached("SELECT 1 FROM chunks WHERE hash = ?1")?;
        let (tx, rx) = mpsc::sync_channel::<(String, Vec<u8>)>(WRITERS * 2);
        let rx = Mutex::new(rx);
        std::thread::scope(|s| -> Result<()> {
            for _ in 0..WRITERS {
                let rx = &rx;
                let failure = &failure;
                s.spawn(move || loop {
                    let msg = rx.lock().unwrap().recv();
                    let Ok((hash, data)) = msg else { break };
                    if let Err(e) = store.put(&hash, &data) {
                        failure.lock().unwrap().get_or_insert(e);
                    }
                });
            }
            for c in cdc {
                let c = c.map_err(|e| RegistryError::Io {
                    context: format!("read {}", path.display()),
                    source: std::io::Error::other(e.to_string()),
                })?;
                file_hash.update(&c.data);
                let hash = hex::encode(Sha256::digest(&c.data));
                size += c.data.len() as u64;
                pb.inc(c.data.len() as u64);
                chunks.push((hash.clone(), c.data.len() as u32));
                if seen.insert(hash.clone()) {
                    let in_db = known.exists([&hash])?;
                    // A chunk the database does not know was left by a killed import:
                    // reuse it only if its bytes still hash to its name.
                    let reusable = !in_db
                        && store.has(&hash)?
                        && store
                            .get(&hash)
                            .map(|b| hex::encode(Sha256::digest(&b)) == hash)
                            .unwrap_or(false);
                    if !in_db && !reusable {
                        new_bytes += c.data.len() as u64;
                        new_chunks += 1;
                        if tx.send((hash, c.data)).is_err() {
                            break;
                        }
                    }
                }
                if failure.lock().unwrap().is_some() {
                    break;
                }
            }
            drop(tx);
            Ok(())
        })?;
        if let Some(e) = failure.into_inner().unwrap() {
            return Err(e);
        }
        let after = std::fs::metadata(path).map_err(io_ctx(format!("stat {}", path.display())))?;
        if size != before.len()
            || after.len() != before.len()
            || after.modified().ok() != before.modified().ok()
        {
            return Err(RegistryError::Integrity(format!(
                "{} changed while it was being imported; try again",
                path.display()
            )));
        }
        Ok((
            Staged {
                rel: rel.to_string(),
                format,
                size,
                sha256: hex::encode(file_hash.finalize()),
                chunks,
            },
            new_bytes,
            new_chunks,
        ))
    }

    /// Writes one stored file to `dest` (via a temp file, fsync, rename) and checks its
    /// size and sha256 before the rename.
    pub(crate) fn write_file(
        &self,
        file_id: i64,
        rec: &FileRecord,
        dest: &Path,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        let chunks = self.chunks_of(file_id)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_ctx(format!("create {}", parent.display())))?;
        }
        let tmp = dest.with_file_name(format!(
            ".{}.hangar-tmp-{}",
            dest.file_name().unwrap().to_string_lossy(),
            std::process::id()
        ));
        let store = &*self.store;
        let result = std::thread::scope(|s| -> Result<()> {
            let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>>>(8);
            let chunks = &chunks;
            s.spawn(move || {
                for (h, _) in chunks {
                    if tx.send(store.get(h)).is_err() {
                        break;
                    }
                }
            });
            let mut out =
                File::create(&tmp).map_err(io_ctx(format!("create {}", tmp.display())))?;
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            for (data, (h, len)) in rx.iter().zip(chunks) {
                let data = data?;
                if data.len() as u64 != *len {
                    return Err(RegistryError::Integrity(format!(
                        "chunk {h} has {} bytes, expected {len}",
                        data.len()
                    )));
                }
                hasher.update(&data);
                out.write_all(&data)
                    .map_err(io_ctx(format!("write {}", tmp.display())))?;
                size += data.len() as u64;
                pb.inc(data.len() as u64);
            }
            let sha = hex::encode(hasher.finalize());
            if size != rec.size || sha != rec.sha256 {
                return Err(RegistryError::Integrity(format!(
                    "{}: reassembled {size} bytes with sha256 {sha}, recorded {} bytes with sha256 {}",
                    rec.path, rec.size, rec.sha256
                )));
            }
            out.sync_all()
                .map_err(io_ctx(format!("fsync {}", tmp.display())))?;
            Ok(())
        });
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, dest).map_err(io_ctx(format!("rename to {}", dest.display())))?;
        if let Some(parent) = dest.parent() {
            crate::store::sync_dir(parent)?;
        }
        Ok(())
    }

    /// Exports a version's files into `dir` (created if needed), verifying each sha256.
    pub fn export(
        &self,
        who: &Principal,
        reference: &str,
        dir: &Path,
        progress: bool,
    ) -> Result<ExportOutcome> {
        who.require(Role::Reader, "exporting a model")?;
        let r: ModelRef = reference.parse()?;
        let row = match self.find(&r)? {
            // Adapters are files like models; prompts are exported by `hangar prompts`.
            row if row.kind == crate::registry::KIND_ADAPTER => row,
            _ => self.find_model(&r)?,
        };
        let started = Instant::now();
        let files = self.files_of(row.id)?;
        let total: u64 = files.iter().map(|(_, f)| f.size).sum();
        let pb = bar(
            total,
            progress,
            format!("export {}@{}", row.name, row.number),
        );
        let mut out = Vec::new();
        for (id, rec) in &files {
            names::validate_file_path(&rec.path)?;
            let dest = dir.join(&rec.path);
            self.write_file(*id, rec, &dest, &pb)?;
            out.push(dest);
        }
        pb.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        db::audit(
            &self.db,
            &who.name,
            "export",
            &format!("{}@{}", row.name, row.number),
            &json!({"to": dir.display().to_string(), "bytes": total}),
        )?;
        Ok(ExportOutcome {
            name: row.name,
            version: row.number,
            dir: dir.to_path_buf(),
            files: out,
            bytes: total,
            seconds: secs,
            mb_per_s: total as f64 / 1e6 / secs.max(1e-9),
        })
    }

    /// Resolves `name`, `name@version`, `name@stage` or `name@alias` to real files on
    /// disk, materialising them once into the registry's cache (a GGUF must be a real
    /// file to be memory-mapped). Later calls return the cached files, re-hashed first
    /// when they changed on disk since they were last known good (see `maintain.rs`).
    pub fn resolve(&self, who: &Principal, reference: &str) -> Result<ResolvedModel> {
        who.require(Role::Reader, "resolving a model")?;
        let row = self.find_model(&reference.parse()?)?;
        self.materialise(row)
    }

    /// Resolves a LoRA adapter reference to its files (as [`Registry::resolve`]), with
    /// the base model version it was registered against.
    pub fn resolve_adapter(&self, who: &Principal, reference: &str) -> Result<ResolvedAdapter> {
        who.require(Role::Reader, "resolving an adapter")?;
        let r: ModelRef = reference.parse()?;
        let row = self.find(&r)?;
        if row.kind != crate::registry::KIND_ADAPTER {
            return Err(RegistryError::Invalid(format!(
                "{:?} is a {}, not a LoRA adapter; register adapters with `hangar lora register` (or `hangar registry import --kind adapter --base MODEL@N`)",
                r.name, row.kind
            )));
        }
        let info = self.show(who, &format!("{}@{}", row.name, row.number))?;
        let base = info
            .lineage
            .map(|l| format!("{}@{}", l.base_model, l.base_version));
        Ok(ResolvedAdapter {
            files: self.materialise(row)?,
            base,
        })
    }

    /// Every LoRA adapter name with its newest version's base model.
    pub fn list_adapters(&self, who: &Principal) -> Result<Vec<AdapterSummary>> {
        who.require(Role::Reader, "listing adapters")?;
        let mut st = self.db.prepare(
            "SELECT m.name, v.number, v.base_model, v.base_version, v.total_size
             FROM models m JOIN versions v ON v.model_id = m.id
             WHERE m.kind = 'adapter'
               AND v.number = (SELECT MAX(number) FROM versions WHERE model_id = m.id)
             ORDER BY m.name",
        )?;
        let rows = st.query_map([], |r| {
            let base: Option<String> = r.get(2)?;
            let bv: Option<u32> = r.get(3)?;
            Ok(AdapterSummary {
                name: r.get(0)?,
                latest: r.get(1)?,
                base: base.zip(bv).map(|(b, v)| format!("{b}@{v}")),
                total_size: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The files of a version in the cache, (re)exported where needed.
    fn materialise(&self, row: crate::registry::VersionRow) -> Result<ResolvedModel> {
        let dir = self.cache_dir(&row.name, row.number);
        let files = self.files_of(row.id)?;
        let mut paths = Vec::new();
        let mut repaired = Vec::new();
        let label = format!("{}@{}", row.name, row.number);
        for (id, rec) in &files {
            names::validate_file_path(&rec.path)?;
            let dest = dir.join(&rec.path);
            if self.ensure_cached(*id, rec, &dest, &label)? == CacheUse::Repaired {
                repaired.push(dest.clone());
            }
            paths.push(dest);
        }
        let pick = |fmt: &str| {
            files
                .iter()
                .zip(&paths)
                .find(|((_, f), _)| f.format == fmt)
                .map(|(_, p)| p.clone())
        };
        Ok(ResolvedModel {
            primary: pick("gguf").or_else(|| pick("safetensors")),
            name: row.name,
            version: row.number,
            stage: row.stage,
            dir,
            files: paths,
            repaired,
        })
    }

    /// Shows the version an import produced (convenience for callers).
    pub fn show_version(&self, who: &Principal, name: &str, version: u32) -> Result<VersionInfo> {
        self.show(who, &format!("{name}@{version}"))
    }
}
