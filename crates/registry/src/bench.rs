//! `hangar registry bench`: import and export throughput against a plain copy of the
//! same file in the same run, and the dedup ratio of derived copies (a few tensors
//! changed; metadata edited so every byte after the header shifts). Measures, never
//! asserts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{io_ctx, RegistryError, Result};
use crate::registry::Registry;
use crate::transfer::{ImportRequest, LineageSpec};

/// Dedup figures for one derived copy.
#[derive(Debug, Clone, Serialize)]
pub struct DedupFigure {
    pub what: String,
    /// Bytes that differ from the base in content (changed tensors).
    pub changed_bytes: u64,
    pub file_bytes: u64,
    /// Bytes the import added to the store.
    pub new_bytes: u64,
    /// new_bytes / changed_bytes (1.0 is ideal; chunk boundaries add a little);
    /// `None` when nothing but the header changed.
    pub cost_vs_changed: Option<f64>,
    /// Store-wide logical / stored after this import.
    pub store_dedup_ratio: f64,
}

/// The benchmark's results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub file: PathBuf,
    pub file_bytes: u64,
    pub cp_mb_s: f64,
    pub import_mb_s: f64,
    pub reimport_mb_s: f64,
    pub export_mb_s: f64,
    pub chunks: u64,
    pub dedup: Vec<DedupFigure>,
}

impl BenchReport {
    /// A Markdown table for docs/BENCHMARKS.md.
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "File: `{}` ({:.1} MB, {} chunks)\n\n| operation | MB/s |\n| --- | ---: |\n",
            self.file.display(),
            self.file_bytes as f64 / 1e6,
            self.chunks
        );
        s += &format!("| cp (copy + fsync) | {:.0} |\n", self.cp_mb_s);
        s += &format!(
            "| import (validate, chunk, hash, store, fsync) | {:.0} |\n",
            self.import_mb_s
        );
        s += &format!(
            "| re-import of the same file (all chunks known) | {:.0} |\n",
            self.reimport_mb_s
        );
        s += &format!(
            "| export (reassemble, verify sha256, fsync) | {:.0} |\n",
            self.export_mb_s
        );
        s += "\n| derived copy | changed bytes | new stored bytes | cost / changed | store dedup ratio |\n| --- | ---: | ---: | ---: | ---: |\n";
        for d in &self.dedup {
            s += &format!(
                "| {} | {:.2} MB | {:.2} MB | {} | {:.2}x |\n",
                d.what,
                d.changed_bytes as f64 / 1e6,
                d.new_bytes as f64 / 1e6,
                d.cost_vs_changed
                    .map(|c| format!("{c:.2}"))
                    .unwrap_or_else(|| "-".into()),
                d.store_dedup_ratio
            );
        }
        s
    }
}

fn mbs(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / 1e6 / t.elapsed().as_secs_f64().max(1e-9)
}

/// Writes a copy of `src` with `n` tensors changed (their rows reversed: still valid
/// data of the same type). Returns the changed byte count.
pub fn write_few_tensor_copy(src: &Path, dst: &Path, n: usize) -> Result<u64> {
    let g =
        hangar_formats::GgufFile::open(src).map_err(|e| RegistryError::Invalid(e.to_string()))?;
    let mut bytes = g.bytes().to_vec();
    let mut tensors: Vec<_> = g.tensors().iter().filter(|t| t.n_rows() > 1).collect();
    tensors.sort_by_key(|t| std::cmp::Reverse(t.size));
    // Mid-sized tensors from different blocks: skip the largest (embeddings).
    let picks: Vec<_> = tensors
        .iter()
        .skip(tensors.len() / 4)
        .step_by(7)
        .take(n)
        .collect();
    let mut changed = 0;
    for t in picks {
        let rows = t.n_rows();
        let row = (t.size as usize) / rows;
        let start = t.offset as usize;
        let data = &mut bytes[start..start + t.size as usize];
        let copy = data.to_vec();
        for r in 0..rows {
            data[r * row..(r + 1) * row]
                .copy_from_slice(&copy[(rows - 1 - r) * row..(rows - r) * row]);
        }
        changed += t.size;
    }
    std::fs::write(dst, bytes).map_err(io_ctx(format!("write {}", dst.display())))?;
    Ok(changed)
}

/// Writes a copy of `src` with one extra metadata entry at the front of the key/value
/// section: every byte after it moves by 64, tensor contents unchanged.
pub fn write_shifted_copy(src: &Path, dst: &Path) -> Result<()> {
    let bytes = std::fs::read(src).map_err(io_ctx(format!("read {}", src.display())))?;
    if bytes.len() < 24 || &bytes[..4] != b"GGUF" {
        return Err(RegistryError::Invalid(format!(
            "{} is not GGUF",
            src.display()
        )));
    }
    let key = b"hangar.bench.note";
    let value = vec![b'x'; 64 - (8 + key.len() + 4 + 8)];
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(&bytes[..16]);
    let n_kv = u64::from_le_bytes(bytes[16..24].try_into().unwrap()) + 1;
    out.extend_from_slice(&n_kv.to_le_bytes());
    out.extend_from_slice(&(key.len() as u64).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&8u32.to_le_bytes()); // string
    out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    out.extend_from_slice(&value);
    out.extend_from_slice(&bytes[24..]);
    let check = hangar_formats::GgufFile::from_bytes(out.clone())
        .map_err(|e| RegistryError::Invalid(format!("shifted copy does not parse: {e}")))?;
    if check.get("hangar.bench.note").is_none() {
        return Err(RegistryError::Invalid("shifted copy lost its note".into()));
    }
    std::fs::write(dst, out).map_err(io_ctx(format!("write {}", dst.display())))
}

/// Runs the benchmark in `work` (a scratch folder on the disk to measure; emptied).
pub fn run(file: &Path, work: &Path, progress: bool) -> Result<BenchReport> {
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(io_ctx(format!("create {}", work.display())))?;
    let size = std::fs::metadata(file)
        .map_err(io_ctx(format!("stat {}", file.display())))?
        .len();
    // Warm the page cache so every contender reads from memory.
    let _ = std::fs::read(file);

    let t = Instant::now();
    let cp = work.join("cp.gguf");
    std::fs::copy(file, &cp).map_err(io_ctx("cp"))?;
    std::fs::File::open(&cp)
        .and_then(|f| f.sync_all())
        .map_err(io_ctx("fsync cp"))?;
    let cp_mb_s = mbs(size, t);
    std::fs::remove_file(&cp).ok();

    let mut reg = Registry::open(Some(work.join("home")))?;
    let who = reg.principal(None)?;
    let req = |path: &Path, name: &str| ImportRequest {
        path: path.to_path_buf(),
        name: name.into(),
        progress,
        ..Default::default()
    };
    let t = Instant::now();
    let first = reg.import(&who, &req(file, "bench"))?;
    let import_mb_s = mbs(size, t);

    let t = Instant::now();
    let mut again = req(file, "bench-again");
    again.metadata.insert("copy".into(), "2".into());
    reg.import(&who, &again)?;
    let reimport_mb_s = mbs(size, t);

    let t = Instant::now();
    reg.export(&who, "bench@1", &work.join("export"), progress)?;
    let export_mb_s = mbs(size, t);
    std::fs::remove_dir_all(work.join("export")).ok();

    let mut dedup = Vec::new();
    let derived = work.join("derived.gguf");
    let changed = write_few_tensor_copy(file, &derived, 4)?;
    let mut r = req(&derived, "bench-few-tensors");
    r.lineage = Some(LineageSpec {
        base: "bench@1".into(),
        derivation: "edited-4-tensors".into(),
        run: None,
    });
    let out = reg.import(&who, &r)?;
    dedup.push(DedupFigure {
        what: "4 tensors changed".into(),
        changed_bytes: changed,
        file_bytes: size,
        new_bytes: out.new_bytes,
        cost_vs_changed: Some(out.new_bytes as f64 / changed.max(1) as f64),
        store_dedup_ratio: reg.stats(&who)?.dedup_ratio,
    });
    write_shifted_copy(file, &derived)?;
    let mut r = req(&derived, "bench-shifted");
    r.lineage = Some(LineageSpec {
        base: "bench@1".into(),
        derivation: "metadata-edited".into(),
        run: None,
    });
    let out = reg.import(&who, &r)?;
    dedup.push(DedupFigure {
        what: "metadata entry added (all data shifted 64 B)".into(),
        changed_bytes: 64,
        file_bytes: size + 64,
        new_bytes: out.new_bytes,
        cost_vs_changed: None,
        store_dedup_ratio: reg.stats(&who)?.dedup_ratio,
    });
    std::fs::remove_file(&derived).ok();
    let report = BenchReport {
        file: file.to_path_buf(),
        file_bytes: size,
        cp_mb_s,
        import_mb_s,
        reimport_mb_s,
        export_mb_s,
        chunks: first.chunks,
        dedup,
    };
    drop(reg);
    let _ = std::fs::remove_dir_all(work);
    let _ = std::io::stderr().flush();
    Ok(report)
}
