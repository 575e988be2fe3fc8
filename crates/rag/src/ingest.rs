//! Ingest: documents chunked, embedded in batches through the [`Embedder`] and upserted
//! into a collection (created with the embedder's dimension and cosine when missing),
//! one point per chunk with payload `{source, chunk, start, end, doc_sha256, text}`.
//! Re-ingesting skips documents whose SHA-256 is unchanged and replaces the chunks of
//! changed ones (deleted by a `source` filter, then upserted). Also finds the files
//! under the paths given. No HTTP, no progress drawing (callers get events).

use crate::chunk::{chunk_document, ChunkOptions};
use crate::error::{RagError, Result};
use crate::extract::DocFormat;
use hangar_engine::{EmbedInput, EmbedRequest, Embedder, InputKind};
use hangar_vector::{
    CollectionConfig, Distance, Filter, IndexKind, Point, PointId, SharedCollection, VectorDb,
    WithPayload,
};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How documents are ingested.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    pub chunking: ChunkOptions,
    /// Chunks per embedding call.
    pub batch: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            chunking: ChunkOptions::default(),
            batch: 32,
        }
    }
}

/// What happened to one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocOutcome {
    Added,
    Updated,
    Unchanged,
}

/// Totals of an ingest run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct IngestReport {
    pub collection: String,
    pub added: usize,
    pub updated: usize,
    pub unchanged: usize,
    pub removed: usize,
    /// Chunks written (added and updated documents).
    pub chunks: usize,
    /// Tokens embedded.
    pub tokens: usize,
    /// Files that could not be read as UTF-8 text, with why.
    pub skipped: Vec<(String, String)>,
}

/// A file to ingest: where it is and the source name its chunks get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: PathBuf,
    pub source: String,
    pub format: DocFormat,
}

/// `path` as a source name: `/`-separated, without `./` parts.
fn source_name(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let s = parts.join("/");
    s.strip_prefix("//").map(|r| format!("/{r}")).unwrap_or(s)
}

/// The text, Markdown and HTML files at `paths` (files as given, directories walked
/// recursively, hidden entries skipped), sorted by source. Sources are the paths as
/// given, or relative to `base` when it is set. Also returns, per path, the source
/// prefix a prune may remove documents under (a file's own source; a directory's
/// source followed by `/`).
pub fn collect_files(
    paths: &[PathBuf],
    base: Option<&Path>,
) -> Result<(Vec<SourceFile>, Vec<String>)> {
    let name = |p: &Path| match base.and_then(|b| p.strip_prefix(b).ok()) {
        Some(rel) => source_name(rel),
        None => source_name(p),
    };
    let mut out = Vec::new();
    let mut scopes = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| RagError::io(p, e))?;
        if meta.is_dir() {
            let s = name(p);
            scopes.push(if s.is_empty() { s } else { format!("{s}/") });
            walk(p, &name, &mut out)?;
        } else {
            let format = DocFormat::from_path(p).ok_or_else(|| {
                RagError::Invalid(format!(
                    "{}: not a text, Markdown or HTML file (by its extension: .txt, .md, .html)",
                    p.display()
                ))
            })?;
            scopes.push(name(p));
            out.push(SourceFile {
                path: p.clone(),
                source: name(p),
                format,
            });
        }
    }
    out.sort_by(|a, b| a.source.cmp(&b.source));
    out.dedup_by(|a, b| a.source == b.source);
    Ok((out, scopes))
}

fn walk(dir: &Path, name: &dyn Fn(&Path) -> String, out: &mut Vec<SourceFile>) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| RagError::io(dir, e))?;
    let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&p, name, out)?;
        } else if ft.is_file() {
            if let Some(format) = DocFormat::from_path(&p) {
                out.push(SourceFile {
                    source: name(&p),
                    path: p,
                    format,
                });
            }
        }
    }
    Ok(())
}

/// The point id of a document's chunk: a UUID derived from (source, chunk index), so
/// re-ingesting a document writes the same ids.
pub fn chunk_id(source: &str, chunk: usize) -> PointId {
    let mut h = Sha256::new();
    h.update(b"hangar-rag\0");
    h.update(source.as_bytes());
    h.update(b"\0");
    h.update((chunk as u64).to_le_bytes());
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    // RFC 4122 layout, version 8 (custom).
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    PointId::Uuid(u128::from_be_bytes(b))
}

/// A filter matching one document's chunks.
pub fn source_filter(source: &str) -> Result<Filter> {
    Ok(Filter::from_json(
        &json!({"must": [{"key": "source", "match": {"value": source}}]}),
    )?)
}

/// Ingests documents into one collection; [`Ingestor::finish`] gives the report.
pub struct Ingestor<'a> {
    collection: SharedCollection,
    embedder: &'a Embedder,
    opts: IngestOptions,
    /// Documents already in the collection: source -> SHA-256.
    existing: BTreeMap<String, String>,
    seen: std::collections::BTreeSet<String>,
    report: IngestReport,
}

impl<'a> Ingestor<'a> {
    /// Opens `name` (creating it with the embedder's dimension, cosine distance and a
    /// keyword index on `source`) and lists the documents it holds.
    pub fn open(
        db: &VectorDb,
        name: &str,
        embedder: &'a Embedder,
        opts: IngestOptions,
    ) -> Result<Ingestor<'a>> {
        let model = embedder.model();
        let room = model
            .max_tokens()
            .saturating_sub(model.tokenizer().num_special_tokens());
        opts.chunking.validate(room).map_err(RagError::Invalid)?;
        let dim = model.dim();
        let collection = if db.exists(name) {
            db.get(name)?
        } else {
            let mut cfg = CollectionConfig::new(dim, Distance::Cosine);
            cfg.payload_indexes
                .insert("source".into(), IndexKind::Keyword);
            match db.create(name, cfg) {
                Ok(c) => c,
                Err(hangar_vector::VectorError::CollectionExists(_)) => db.get(name)?,
                Err(e) => return Err(e.into()),
            }
        };
        let existing = {
            let c = collection.read().unwrap_or_else(|e| e.into_inner());
            if c.config().dim != dim {
                return Err(RagError::WrongDimension {
                    collection: name.to_string(),
                    model: model.name().to_string(),
                    have: c.config().dim,
                    want: dim,
                });
            }
            let keys = WithPayload::Include(vec!["source".into(), "doc_sha256".into()]);
            let mut existing = BTreeMap::new();
            let mut offset = None;
            loop {
                let (page, next) = c.scroll(None, offset, 1024, &keys, false);
                for r in page {
                    let p = r.payload.unwrap_or_default();
                    if let (Some(s), Some(h)) = (
                        p.get("source").and_then(|v| v.as_str()),
                        p.get("doc_sha256").and_then(|v| v.as_str()),
                    ) {
                        existing.insert(s.to_string(), h.to_string());
                    }
                }
                match next {
                    Some(n) => offset = Some(n),
                    None => break,
                }
            }
            existing
        };
        Ok(Ingestor {
            collection,
            embedder,
            opts,
            existing,
            seen: Default::default(),
            report: IngestReport {
                collection: name.to_string(),
                ..IngestReport::default()
            },
        })
    }

    /// Documents the collection held when opened (source -> SHA-256).
    pub fn existing(&self) -> &BTreeMap<String, String> {
        &self.existing
    }

    /// Reads and ingests one file; a file that is not UTF-8 is recorded as skipped.
    pub fn add_file(&mut self, f: &SourceFile) -> Result<Option<DocOutcome>> {
        let bytes = std::fs::read(&f.path).map_err(|e| RagError::io(&f.path, e))?;
        match String::from_utf8(bytes) {
            Ok(text) => self.add(&f.source, f.format, &text).map(Some),
            Err(_) => {
                self.seen.insert(f.source.clone());
                self.report
                    .skipped
                    .push((f.source.clone(), "not UTF-8 text".into()));
                Ok(None)
            }
        }
    }

    /// Ingests one document: skipped when its SHA-256 is what the collection holds,
    /// else its old chunks are replaced.
    pub fn add(&mut self, source: &str, format: DocFormat, text: &str) -> Result<DocOutcome> {
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        self.seen.insert(source.to_string());
        let outcome = match self.existing.get(source) {
            Some(h) if *h == sha => {
                self.report.unchanged += 1;
                return Ok(DocOutcome::Unchanged);
            }
            Some(_) => DocOutcome::Updated,
            None => DocOutcome::Added,
        };
        let chunks = chunk_document(
            text,
            format,
            self.embedder.model().tokenizer(),
            self.opts.chunking,
        );
        let mut points = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(self.opts.batch.max(1)) {
            let out = self.embedder.embed_blocking(EmbedRequest {
                inputs: batch
                    .iter()
                    .map(|c| EmbedInput::Text(c.text.clone()))
                    .collect(),
                normalize: None,
                truncate: true,
                kind: InputKind::Document,
            })?;
            self.report.tokens += out.prompt_tokens;
            for (c, v) in batch.iter().zip(out.vectors) {
                let payload = json!({
                    "source": source, "chunk": c.index, "start": c.start, "end": c.end,
                    "doc_sha256": sha, "text": c.text,
                });
                points.push(Point {
                    id: chunk_id(source, c.index),
                    vector: v,
                    payload: match payload {
                        serde_json::Value::Object(m) => m,
                        _ => Default::default(),
                    },
                });
            }
        }
        let n = points.len();
        let mut c = self.collection.write().unwrap_or_else(|e| e.into_inner());
        if outcome == DocOutcome::Updated {
            c.delete_where(&source_filter(source)?, false)?;
        }
        c.upsert(points, true)?;
        drop(c);
        self.existing.insert(source.to_string(), sha);
        self.report.chunks += n;
        match outcome {
            DocOutcome::Added => self.report.added += 1,
            _ => self.report.updated += 1,
        }
        Ok(outcome)
    }

    /// Deletes the documents in the collection that this run did not see and whose
    /// source is one of `scopes` or starts with a scope ending in `/` (an empty scope:
    /// everything). Returns how many were removed.
    pub fn prune(&mut self, scopes: &[String]) -> Result<usize> {
        let gone: Vec<String> = self
            .existing
            .keys()
            .filter(|s| !self.seen.contains(*s))
            .filter(|s| {
                scopes.iter().any(|sc| {
                    sc.is_empty() || *s == sc || (sc.ends_with('/') && s.starts_with(sc.as_str()))
                })
            })
            .cloned()
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let mut c = self.collection.write().unwrap_or_else(|e| e.into_inner());
        for s in &gone {
            c.delete_where(&source_filter(s)?, false)?;
            self.existing.remove(s);
        }
        // One sync for all the deletes.
        c.delete(Vec::new(), true)?;
        drop(c);
        self.report.removed += gone.len();
        Ok(gone.len())
    }

    /// The totals; writes a checkpoint so the next open replays no log.
    pub fn finish(self) -> Result<IngestReport> {
        let mut c = self.collection.write().unwrap_or_else(|e| e.into_inner());
        c.checkpoint()?;
        Ok(self.report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_ids_are_stable_uuids() {
        let a = chunk_id("docs/a.md", 0);
        assert_eq!(a, chunk_id("docs/a.md", 0));
        assert_ne!(a, chunk_id("docs/a.md", 1));
        assert_ne!(a, chunk_id("docs/b.md", 0));
        let s = a.to_string();
        assert_eq!(&s[14..15], "8", "{s}");
        assert_eq!(PointId::parse(&s).unwrap(), a);
    }

    #[test]
    fn sources_are_slash_paths_without_dot_parts() {
        assert_eq!(source_name(Path::new("./docs/./a.md")), "docs/a.md");
        assert_eq!(source_name(Path::new("/abs/a.md")), "/abs/a.md");
    }

    #[test]
    fn collect_walks_directories_and_skips_hidden_and_other_files() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("sub/.hidden")).unwrap();
        for f in [
            "a.md",
            "sub/b.html",
            "sub/c.txt",
            "sub/d.rs",
            "sub/.hidden/e.md",
        ] {
            std::fs::write(root.join(f), "x").unwrap();
        }
        let (files, scopes) = collect_files(&[root.to_path_buf()], Some(root)).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.source.as_str()).collect();
        assert_eq!(names, ["a.md", "sub/b.html", "sub/c.txt"]);
        assert_eq!(scopes, [""]);
        let (_, scopes) = collect_files(&[root.join("sub")], Some(root)).unwrap();
        assert_eq!(scopes, ["sub/"]);
        let err = collect_files(&[root.join("sub/d.rs")], None).unwrap_err();
        assert!(
            err.to_string().contains("not a text, Markdown or HTML"),
            "{err}"
        );
    }
}
