//! Downloads from a Hugging Face-style hub (`hf://org/repo[/file]`): lists a repo's
//! files, fetches them with parallel ranged requests, resumes after interruption,
//! retries with backoff and verifies hashes, then imports them into the registry.
//! Speaks only the hub's HTTP protocol; storage is the registry's business.
//!
//! Protocol: `GET {endpoint}/api/models/{repo}[/revision/{rev}]` lists `siblings`;
//! files live at `{endpoint}/{repo}/resolve/{rev}/{file}`. A `HEAD` there gives the size
//! (`X-Linked-Size` or `Content-Length`) and the hash (`X-Linked-Etag` or `ETag`: sha256
//! for LFS files, the git blob sha1 otherwise).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::{Principal, Role};
use crate::error::{io_ctx, RegistryError, Result};
use crate::registry::Registry;
use crate::transfer::{ImportOutcome, ImportRequest};
use crate::{names, safety};

/// The public hub, used when neither `--endpoint` nor `HF_ENDPOINT` is set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// A parsed `hf://org/repo[/path/to/file]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSource {
    pub repo: String,
    pub file: Option<String>,
}

impl HubSource {
    pub fn parse(s: &str) -> Result<Self> {
        let rest = s.strip_prefix("hf://").ok_or_else(|| {
            RegistryError::Invalid(format!("{s:?}: expected hf://org/repo[/file]"))
        })?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2 {
            return Err(RegistryError::Invalid(format!(
                "{s:?}: expected hf://org/repo[/file]"
            )));
        }
        for p in &parts[..2] {
            names::validate_model_name(p)?;
        }
        let file = if parts.len() > 2 {
            let f = parts[2..].join("/");
            names::validate_file_path(&f)?;
            Some(f)
        } else {
            None
        };
        Ok(HubSource {
            repo: format!("{}/{}", parts[0], parts[1]),
            file,
        })
    }
}

/// How to download.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Hub base URL (`HF_ENDPOINT`, default [`DEFAULT_ENDPOINT`]).
    pub endpoint: String,
    pub revision: String,
    /// Parallel connections per file.
    pub connections: usize,
    /// Bytes per ranged request.
    pub part_size: u64,
    /// Consecutive failed attempts (without progress) before giving up on a part.
    pub retries: u32,
    /// First backoff delay; doubles per failed attempt, capped at 8 s.
    pub backoff: Duration,
    pub progress: bool,
    /// Bearer token for the hub (`HF_TOKEN`).
    pub hub_token: Option<String>,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            endpoint: std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.into()),
            revision: "main".into(),
            connections: 4,
            part_size: 16 << 20,
            retries: 8,
            backoff: Duration::from_millis(250),
            progress: false,
            hub_token: std::env::var("HF_TOKEN").ok(),
        }
    }
}

/// A pull request: what to fetch and how to name it in the registry.
#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    /// `hf://org/repo[/file]`.
    pub source: String,
    /// Registry model name (default: the repo's name).
    pub name: Option<String>,
    pub metadata: BTreeMap<String, String>,
}

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullOutcome {
    pub import: ImportOutcome,
    pub downloaded_bytes: u64,
    /// Files not fetched, with the reason (pickle checkpoints, unknown formats).
    pub skipped: Vec<(String, String)>,
}

/// One file fetched and verified.
#[derive(Debug, Clone, Serialize)]
pub struct Downloaded {
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

#[derive(Deserialize)]
struct RepoInfo {
    #[serde(default)]
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct Sibling {
    rfilename: String,
}

struct Remote {
    url: String,
    size: u64,
    etag: String,
    ranges: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Part {
    start: u64,
    end: u64,
    done: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartState {
    url: String,
    size: u64,
    etag: String,
    parts: Vec<Part>,
}

/// Why a hub file is skipped, or `None` when it may be fetched.
fn skip_reason(rel: &str) -> Option<String> {
    if names::validate_file_path(rel).is_err() {
        return Some("file name not accepted".into());
    }
    let ext = rel
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "bin" | "pt" | "pth" | "pkl" | "pickle" | "ckpt" | "joblib" | "npy" | "npz" => {
            Some("pickle-based checkpoint refused; use the repo's safetensors or GGUF files".into())
        }
        "gguf" | "safetensors" | "json" | "txt" | "md" | "jinja" | "j2" | "yaml" | "yml"
        | "tmpl" => None,
        "model" if rel.ends_with("tokenizer.model") => None,
        _ => Some("not a safetensors, GGUF or text companion file".into()),
    }
}

fn clean_etag(v: &str) -> String {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_ascii_lowercase()
}

/// An HTTP client for one hub.
pub struct HubClient {
    opts: PullOptions,
    http: reqwest::Client,
    head: reqwest::Client,
}

impl HubClient {
    pub fn new(opts: PullOptions) -> Result<Self> {
        let build = |redirects: bool| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(30))
                .user_agent(concat!("hangar/", env!("CARGO_PKG_VERSION")));
            if !redirects {
                b = b.redirect(reqwest::redirect::Policy::none());
            }
            b.build()
                .map_err(|e| RegistryError::Transfer(e.to_string()))
        };
        Ok(HubClient {
            http: build(true)?,
            head: build(false)?,
            opts,
        })
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.opts.hub_token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn base(&self) -> &str {
        self.opts.endpoint.trim_end_matches('/')
    }

    async fn backoff(&self, attempt: u32) {
        let d = self.opts.backoff.saturating_mul(1u32 << attempt.min(6));
        tokio::time::sleep(d.min(Duration::from_secs(8))).await;
    }

    /// Lists a repo's files and its commit sha.
    pub async fn list(&self, repo: &str) -> Result<(Vec<String>, Option<String>)> {
        let url = if self.opts.revision == "main" {
            format!("{}/api/models/{repo}", self.base())
        } else {
            format!(
                "{}/api/models/{repo}/revision/{}",
                self.base(),
                self.opts.revision
            )
        };
        let mut attempt = 0;
        loop {
            let r = self.auth(self.http.get(&url)).send().await;
            match r {
                Ok(resp) if resp.status().is_success() => {
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| RegistryError::Transfer(format!("{url}: {e}")))?;
                    let info: RepoInfo = serde_json::from_slice(&body)
                        .map_err(|e| RegistryError::Transfer(format!("{url}: bad listing: {e}")))?;
                    return Ok((
                        info.siblings.into_iter().map(|s| s.rfilename).collect(),
                        info.sha,
                    ));
                }
                Ok(resp) if resp.status().is_client_error() => {
                    return Err(RegistryError::Transfer(format!(
                        "{url}: {} (check the repo name, revision and HF_TOKEN)",
                        resp.status()
                    )))
                }
                other if attempt >= self.opts.retries => {
                    return Err(RegistryError::Transfer(format!(
                        "{url}: {}",
                        describe(other)
                    )))
                }
                _ => {}
            }
            self.backoff(attempt).await;
            attempt += 1;
        }
    }

    async fn remote(&self, repo: &str, rel: &str) -> Result<Remote> {
        let url = format!(
            "{}/{repo}/resolve/{}/{rel}",
            self.base(),
            self.opts.revision
        );
        let mut attempt = 0;
        loop {
            match self.auth(self.head.head(&url)).send().await {
                Ok(resp) if resp.status().is_success() || resp.status().is_redirection() => {
                    let h = resp.headers();
                    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
                    let size = get("x-linked-size")
                        .or_else(|| get("content-length"))
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| {
                            RegistryError::Transfer(format!("{url}: no size in HEAD reply"))
                        })?;
                    let etag = get("x-linked-etag")
                        .or_else(|| get("etag"))
                        .map(|e| clean_etag(&e))
                        .unwrap_or_default();
                    let ranges = get("accept-ranges").is_some_and(|v| v.contains("bytes"))
                        || resp.status().is_redirection();
                    return Ok(Remote {
                        url,
                        size,
                        etag,
                        ranges,
                    });
                }
                Ok(resp) if resp.status().is_client_error() => {
                    return Err(RegistryError::Transfer(format!("{url}: {}", resp.status())))
                }
                other if attempt >= self.opts.retries => {
                    return Err(RegistryError::Transfer(format!(
                        "{url}: {}",
                        describe(other)
                    )))
                }
                _ => {}
            }
            self.backoff(attempt).await;
            attempt += 1;
        }
    }

    /// Downloads one file into `dest`, resuming from `partial_dir` state, and checks
    /// its hash against the hub's. Returns the verified file.
    pub async fn download(
        &self,
        repo: &str,
        rel: &str,
        dest: &Path,
        partial_dir: &Path,
        mp: &indicatif::MultiProgress,
    ) -> Result<Downloaded> {
        let remote = self.remote(repo, rel).await?;
        if let Ok(m) = std::fs::metadata(dest) {
            if m.len() == remote.size {
                let sha = sha256_file(dest).await?;
                if check_hash(&remote.etag, &sha, dest, remote.size).await? {
                    return Ok(Downloaded {
                        rel: rel.into(),
                        path: dest.into(),
                        size: remote.size,
                        sha256: sha,
                    });
                }
            }
            let _ = std::fs::remove_file(dest);
        }
        let key = rel.replace('/', "__");
        let part_path = partial_dir.join(format!("{key}.part"));
        let state_path = partial_dir.join(format!("{key}.state.json"));
        std::fs::create_dir_all(partial_dir)
            .map_err(io_ctx(format!("create {}", partial_dir.display())))?;
        let mut state: Option<PartState> = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|s: &PartState| {
                s.url == remote.url && s.size == remote.size && s.etag == remote.etag
            });
        if state.is_some()
            && std::fs::metadata(&part_path).map(|m| m.len()).ok() != Some(remote.size)
        {
            state = None;
        }
        let state = match state {
            Some(s) => s,
            None => {
                let f = File::create(&part_path)
                    .map_err(io_ctx(format!("create {}", part_path.display())))?;
                f.set_len(remote.size)
                    .map_err(io_ctx(format!("size {}", part_path.display())))?;
                let step = if remote.ranges {
                    self.opts.part_size.max(1 << 20)
                } else {
                    remote.size.max(1)
                };
                let mut parts = Vec::new();
                let mut s = 0;
                while s < remote.size {
                    let e = (s + step).min(remote.size);
                    parts.push(Part {
                        start: s,
                        end: e,
                        done: 0,
                    });
                    s = e;
                }
                PartState {
                    url: remote.url.clone(),
                    size: remote.size,
                    etag: remote.etag.clone(),
                    parts,
                }
            }
        };
        let resumed: u64 = state.parts.iter().map(|p| p.done).sum();
        let pb = mp.add(indicatif::ProgressBar::new(remote.size));
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        pb.set_message(rel.to_string());
        pb.set_position(resumed);
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&part_path)
                .map_err(io_ctx(format!("open {}", part_path.display())))?,
        );
        let shared = Arc::new(Mutex::new(state));
        let n_parts = shared.lock().unwrap().parts.len();
        let next = Arc::new(Mutex::new(0usize));
        let saver = {
            let shared = shared.clone();
            let state_path = state_path.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let s = shared.lock().unwrap().clone();
                    let _ = save_state(&state_path, &s);
                }
            })
        };
        let mut workers = Vec::new();
        let url = remote.url.as_str();
        for _ in 0..self.opts.connections.max(1).min(n_parts.max(1)) {
            let (shared, next, file, pb) = (shared.clone(), next.clone(), file.clone(), pb.clone());
            workers.push(async move {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= n_parts {
                        return Ok::<(), RegistryError>(());
                    }
                    self.fetch_part(url, i, &shared, &file, &pb).await?;
                }
            });
        }
        let results = futures_util::future::join_all(workers).await;
        saver.abort();
        let final_state = shared.lock().unwrap().clone();
        save_state(&state_path, &final_state)?;
        pb.finish_and_clear();
        results.into_iter().collect::<Result<Vec<()>>>()?;
        file.sync_all()
            .map_err(io_ctx(format!("fsync {}", part_path.display())))?;
        let sha = sha256_file(&part_path).await?;
        if !check_hash(&remote.etag, &sha, &part_path, remote.size).await? {
            let _ = std::fs::remove_file(&part_path);
            let _ = std::fs::remove_file(&state_path);
            return Err(RegistryError::Integrity(format!(
                "{rel}: downloaded bytes hash to {sha}, the hub says {}; the partial file was removed, retry the pull",
                remote.etag
            )));
        }
        if let Some(p) = dest.parent() {
            std::fs::create_dir_all(p).map_err(io_ctx(format!("create {}", p.display())))?;
        }
        std::fs::rename(&part_path, dest)
            .map_err(io_ctx(format!("rename to {}", dest.display())))?;
        let _ = std::fs::remove_file(&state_path);
        Ok(Downloaded {
            rel: rel.into(),
            path: dest.into(),
            size: remote.size,
            sha256: sha,
        })
    }

    async fn fetch_part(
        &self,
        url: &str,
        i: usize,
        shared: &Mutex<PartState>,
        file: &File,
        pb: &indicatif::ProgressBar,
    ) -> Result<()> {
        let mut failures = 0u32;
        loop {
            let (start, end, done) = {
                let s = shared.lock().unwrap();
                let p = &s.parts[i];
                (p.start, p.end, p.done)
            };
            if start + done >= end {
                return Ok(());
            }
            let from = start + done;
            let mut progressed = false;
            let err = match self
                .auth(self.http.get(url))
                .header(reqwest::header::RANGE, format!("bytes={from}-{}", end - 1))
                .send()
                .await
            {
                Ok(resp)
                    if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT
                        || (resp.status().is_success()
                            && from == 0
                            && end == shared.lock().unwrap().size) =>
                {
                    let mut resp = resp;
                    let mut off = from;
                    loop {
                        match resp.chunk().await {
                            Ok(Some(b)) => {
                                let take = (b.len() as u64).min(end - off) as usize;
                                file.write_all_at(&b[..take], off)
                                    .map_err(io_ctx("write downloaded bytes"))?;
                                off += take as u64;
                                shared.lock().unwrap().parts[i].done = off - start;
                                pb.inc(take as u64);
                                progressed = true;
                                if off >= end {
                                    break None;
                                }
                            }
                            Ok(None) if off >= end => break None,
                            Ok(None) => {
                                break Some(format!("connection closed at byte {off} of {end}"))
                            }
                            Err(e) => break Some(e.to_string()),
                        }
                    }
                }
                Ok(resp) if resp.status().is_success() => {
                    // The server ignored Range: start this part over from its beginning.
                    shared.lock().unwrap().parts[i].done = 0;
                    Some(format!(
                        "server answered {} to a ranged request",
                        resp.status()
                    ))
                }
                Ok(resp) if resp.status().is_client_error() && resp.status() != 429 => {
                    return Err(RegistryError::Transfer(format!("{url}: {}", resp.status())))
                }
                Ok(resp) => Some(resp.status().to_string()),
                Err(e) => Some(e.to_string()),
            };
            let Some(err) = err else { return Ok(()) };
            failures = if progressed { 0 } else { failures + 1 };
            if failures > self.opts.retries {
                return Err(RegistryError::Transfer(format!(
                    "{url}: giving up after {failures} attempts without progress: {err}; run the pull again to resume"
                )));
            }
            self.backoff(failures).await;
        }
    }
}

fn describe(r: std::result::Result<reqwest::Response, reqwest::Error>) -> String {
    match r {
        Ok(resp) => resp.status().to_string(),
        Err(e) => e.to_string(),
    }
}

fn save_state(path: &Path, s: &PartState) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(s).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(io_ctx(format!("save {}", path.display())))
}

async fn sha256_file(path: &Path) -> Result<String> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut f = File::open(&path).map_err(io_ctx(format!("open {}", path.display())))?;
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
    })
    .await
    .map_err(|e| RegistryError::Transfer(e.to_string()))?
}

/// True when `sha256` (of the file at `path`) agrees with the hub's etag: a sha256 for
/// LFS files, a git blob sha1 for small files, or no usable etag (nothing to check).
async fn check_hash(etag: &str, sha256: &str, path: &Path, size: u64) -> Result<bool> {
    if etag.len() == 64 {
        return Ok(etag == sha256);
    }
    if etag.len() == 40 && etag.bytes().all(|b| b.is_ascii_hexdigit()) {
        let bytes = std::fs::read(path).map_err(io_ctx(format!("read {}", path.display())))?;
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {size}\0").as_bytes());
        h.update(&bytes);
        return Ok(hex::encode(h.finalize()) == etag);
    }
    Ok(true)
}

fn default_name(repo: &str) -> String {
    let last = repo.rsplit('/').next().unwrap_or(repo);
    let s: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    s.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
        .replace("..", ".")
}

/// Fetches `req.source` from the hub and imports it as the next version of its model.
/// Killed at any point, a rerun resumes the download and the import.
pub fn pull(
    reg: &mut Registry,
    who: &Principal,
    req: &PullRequest,
    opts: &PullOptions,
) -> Result<PullOutcome> {
    who.require(Role::Writer, "pulling a model")?;
    let src = HubSource::parse(&req.source)?;
    let name = req.name.clone().unwrap_or_else(|| default_name(&src.repo));
    names::validate_model_name(&name)?;
    let key = hex::encode(
        &Sha256::digest(format!(
            "{}|{}|{}|{:?}",
            opts.endpoint, src.repo, opts.revision, src.file
        ))[..8],
    );
    let work = reg.root().join("downloads").join(key);
    let files_dir = work.join("files");
    let partial_dir = work.join("partial");
    let client = HubClient::new(opts.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(io_ctx("start the download runtime"))?;
    let mp = if opts.progress {
        indicatif::MultiProgress::new()
    } else {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let (downloaded, skipped, commit) = rt.block_on(async {
        let (wanted, skipped, commit) = match &src.file {
            Some(f) => {
                if let Some(why) = skip_reason(f) {
                    return Err(RegistryError::Refused {
                        path: f.into(),
                        reason: why,
                    });
                }
                (vec![f.clone()], vec![], None)
            }
            None => {
                let (all, sha) = client.list(&src.repo).await?;
                let mut wanted = Vec::new();
                let mut skipped = Vec::new();
                for f in all {
                    if f.starts_with('.') || f.contains("/.") {
                        continue;
                    }
                    match skip_reason(&f) {
                        None => wanted.push(f),
                        Some(why) => skipped.push((f, why)),
                    }
                }
                if !wanted
                    .iter()
                    .any(|f| f.ends_with(".gguf") || f.ends_with(".safetensors"))
                {
                    return Err(RegistryError::Refused {
                        path: req.source.clone().into(),
                        reason: format!(
                            "the repo has no safetensors or GGUF weights (skipped: {})",
                            skipped
                                .iter()
                                .map(|s| s.0.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
                (wanted, skipped, sha)
            }
        };
        let mut out = Vec::new();
        for f in &wanted {
            out.push(
                client
                    .download(&src.repo, f, &files_dir.join(f), &partial_dir, &mp)
                    .await?,
            );
        }
        Ok((out, skipped, commit))
    })?;
    drop(rt);
    // Anything left in files/ from another selection is not part of this import.
    let wanted: HashMap<String, String> = downloaded
        .iter()
        .map(|d| (d.rel.clone(), d.sha256.clone()))
        .collect();
    remove_unwanted(&files_dir, &files_dir, &wanted);
    let mut metadata = req.metadata.clone();
    metadata.insert("source".into(), req.source.clone());
    metadata.insert(
        "revision".into(),
        commit.unwrap_or_else(|| opts.revision.clone()),
    );
    let import = reg.import(
        who,
        &ImportRequest {
            path: files_dir.clone(),
            name,
            metadata,
            expected_sha256: wanted,
            progress: opts.progress,
            ..Default::default()
        },
    )?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(PullOutcome {
        downloaded_bytes: downloaded.iter().map(|d| d.size).sum(),
        import,
        skipped,
    })
}

fn remove_unwanted(root: &Path, dir: &Path, wanted: &HashMap<String, String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_unwanted(root, &p, wanted);
        } else if let Ok(rel) = p.strip_prefix(root) {
            if !wanted.contains_key(&rel.to_string_lossy().to_string()) {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

// Keep `safety` linked for doc links; the hub filter mirrors its extension rules.
#[allow(unused_imports)]
use safety as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hub_sources() {
        let s = HubSource::parse("hf://google/gemma-3-270m").unwrap();
        assert_eq!(s.repo, "google/gemma-3-270m");
        assert_eq!(s.file, None);
        let s = HubSource::parse("hf://org/repo/sub/model.gguf").unwrap();
        assert_eq!(s.file.as_deref(), Some("sub/model.gguf"));
        assert!(HubSource::parse("hf://org/../x").is_err());
        assert!(HubSource::parse("https://x/y").is_err());
    }

    #[test]
    fn skips_pickle_files() {
        assert!(skip_reason("pytorch_model.bin").unwrap().contains("pickle"));
        assert!(skip_reason("model.safetensors").is_none());
        assert!(skip_reason("tokenizer.model").is_none());
    }
}
