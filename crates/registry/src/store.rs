//! Chunk stores: where content-addressed chunk bytes live (a local directory or an
//! S3-compatible bucket). A store maps a sha256 hex digest to bytes; it knows nothing
//! about models or versions.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{io_ctx, RegistryError, Result};

/// Content-addressed chunk storage. `put` must be atomic (a reader never sees a partial
/// chunk) and idempotent.
pub trait ChunkStore: Send + Sync {
    /// A short description for status output (`local:/path` or `s3://bucket/prefix`).
    fn describe(&self) -> String;
    fn has(&self, hash: &str) -> Result<bool>;
    fn put(&self, hash: &str, data: &[u8]) -> Result<()>;
    fn get(&self, hash: &str) -> Result<Vec<u8>>;
    fn delete(&self, hash: &str) -> Result<()>;
    /// Every chunk hash in the store.
    fn list(&self) -> Result<Vec<String>>;
    /// Makes every `put` so far durable (directory entries included).
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Chunks as files under `root/ab/abcdef...`, written to `tmp/` then renamed.
pub struct LocalChunkStore {
    root: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
    touched_dirs: Mutex<HashSet<PathBuf>>,
}

impl LocalChunkStore {
    pub fn open(root: impl Into<PathBuf>, tmp: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let tmp = tmp.into();
        std::fs::create_dir_all(&root).map_err(io_ctx(format!("create {}", root.display())))?;
        std::fs::create_dir_all(&tmp).map_err(io_ctx(format!("create {}", tmp.display())))?;
        Ok(Self {
            root,
            tmp,
            counter: AtomicU64::new(0),
            touched_dirs: Mutex::new(HashSet::new()),
        })
    }

    fn path(&self, hash: &str) -> PathBuf {
        self.root.join(&hash[..2]).join(hash)
    }

    /// Removes temporary files left by killed writers. Only call while no import runs.
    pub fn clean_tmp(&self) -> Result<u64> {
        let mut n = 0;
        if let Ok(rd) = std::fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}

fn check_hash(hash: &str) -> Result<()> {
    if hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        Ok(())
    } else {
        Err(RegistryError::Integrity(format!(
            "malformed chunk hash {hash:?}"
        )))
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_ctx(format!("fsync {}", dir.display())))
}

impl ChunkStore for LocalChunkStore {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }
    fn has(&self, hash: &str) -> Result<bool> {
        check_hash(hash)?;
        Ok(self.path(hash).is_file())
    }
    fn put(&self, hash: &str, data: &[u8]) -> Result<()> {
        check_hash(hash)?;
        let dest = self.path(hash);
        let dir = dest.parent().unwrap().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(io_ctx(format!("create {}", dir.display())))?;
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{hash}.{}.{n}", std::process::id()));
        // No fsync here: `flush` makes every chunk durable with one syncfs before the
        // metadata commit, and a chunk the database does not know (left by a crash) is
        // re-hashed before an import reuses it.
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            std::fs::rename(&tmp, &dest)
        };
        if let Err(e) = write() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_ctx(format!("store chunk {hash}"))(e));
        }
        self.touched_dirs.lock().unwrap().insert(dir);
        Ok(())
    }
    fn get(&self, hash: &str) -> Result<Vec<u8>> {
        check_hash(hash)?;
        std::fs::read(self.path(hash)).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RegistryError::Integrity(format!(
                    "chunk {hash} is missing from the store; run `hangar registry verify`"
                ))
            } else {
                io_ctx(format!("read chunk {hash}"))(e)
            }
        })
    }
    fn delete(&self, hash: &str) -> Result<()> {
        check_hash(hash)?;
        match std::fs::remove_file(self.path(hash)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_ctx(format!("delete chunk {hash}"))(e))
            }
            _ => Ok(()),
        }
    }
    fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(&self.root)
            .map_err(io_ctx(format!("list {}", self.root.display())))?;
        for shard in rd.flatten() {
            if let Ok(files) = std::fs::read_dir(shard.path()) {
                for f in files.flatten() {
                    if let Some(n) = f.file_name().to_str() {
                        if check_hash(n).is_ok() {
                            out.push(n.to_string());
                        }
                    }
                }
            }
        }
        Ok(out)
    }
    fn flush(&self) -> Result<()> {
        let dirs: Vec<PathBuf> = self.touched_dirs.lock().unwrap().drain().collect();
        if dirs.is_empty() {
            return Ok(());
        }
        let root =
            File::open(&self.root).map_err(io_ctx(format!("open {}", self.root.display())))?;
        // SAFETY: syncfs takes a valid open file descriptor, which `root` holds.
        let rc = unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&root)) };
        if rc != 0 {
            return Err(io_ctx(format!("syncfs {}", self.root.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Where an S3-compatible bucket is and how to reach it. Credentials not given here are
/// read from the usual `AWS_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct S3Config {
    pub bucket: String,
    pub prefix: String,
    /// e.g. `http://127.0.0.1:9000`; `None` means AWS itself (or `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl S3Config {
    /// Parses `s3://bucket[/prefix]`; the endpoint comes from `AWS_ENDPOINT_URL` if set.
    pub fn from_url(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| {
            RegistryError::Invalid(format!("store {url:?}: expected s3://bucket/prefix"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(RegistryError::Invalid(format!(
                "store {url:?}: bucket name missing"
            )));
        }
        Ok(S3Config {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            endpoint: std::env::var("AWS_ENDPOINT_URL")
                .or_else(|_| std::env::var("AWS_ENDPOINT"))
                .ok(),
            ..Default::default()
        })
    }

    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Chunks in an S3-compatible bucket through `object_store`, under `prefix/chunks/`.
pub struct S3ChunkStore {
    store: Arc<dyn object_store::ObjectStore>,
    prefix: String,
    url: String,
    rt: tokio::runtime::Runtime,
}

impl S3ChunkStore {
    pub fn open(cfg: &S3Config) -> Result<Self> {
        use object_store::aws::AmazonS3Builder;
        let mut b = AmazonS3Builder::from_env().with_bucket_name(&cfg.bucket);
        if let Some(ep) = &cfg.endpoint {
            b = b
                .with_endpoint(ep)
                .with_allow_http(ep.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        b =
            b.with_region(cfg.region.clone().unwrap_or_else(|| {
                std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
            }));
        if let Some(k) = &cfg.access_key_id {
            b = b.with_access_key_id(k);
        }
        if let Some(s) = &cfg.secret_access_key {
            b = b.with_secret_access_key(s);
        }
        let store = b.build().map_err(|e| RegistryError::Store(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io_ctx("start the S3 client runtime"))?;
        let prefix = if cfg.prefix.is_empty() {
            "chunks".to_string()
        } else {
            format!("{}/chunks", cfg.prefix)
        };
        Ok(Self {
            store: Arc::new(store),
            prefix,
            url: cfg.url(),
            rt,
        })
    }

    fn key(&self, hash: &str) -> object_store::path::Path {
        object_store::path::Path::from(format!("{}/{}/{}", self.prefix, &hash[..2], hash))
    }

    /// Runs a future to completion, also from inside another tokio runtime.
    fn block_on<F: std::future::Future + Send>(&self, f: F) -> F::Output
    where
        F::Output: Send,
    {
        if tokio::runtime::Handle::try_current().is_ok() {
            std::thread::scope(|s| s.spawn(|| self.rt.block_on(f)).join().unwrap())
        } else {
            self.rt.block_on(f)
        }
    }
}

fn s3_err(e: object_store::Error) -> RegistryError {
    RegistryError::Store(e.to_string())
}

impl ChunkStore for S3ChunkStore {
    fn describe(&self) -> String {
        self.url.clone()
    }
    fn has(&self, hash: &str) -> Result<bool> {
        check_hash(hash)?;
        match self.block_on(self.store.head(&self.key(hash))) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(s3_err(e)),
        }
    }
    fn put(&self, hash: &str, data: &[u8]) -> Result<()> {
        check_hash(hash)?;
        let payload = object_store::PutPayload::from(bytes::Bytes::copy_from_slice(data));
        self.block_on(self.store.put(&self.key(hash), payload))
            .map(|_| ())
            .map_err(s3_err)
    }
    fn get(&self, hash: &str) -> Result<Vec<u8>> {
        check_hash(hash)?;
        let key = self.key(hash);
        self.block_on(async {
            let r = self.store.get(&key).await?;
            r.bytes().await
        })
        .map(|b| b.to_vec())
        .map_err(|e| match e {
            object_store::Error::NotFound { .. } => {
                RegistryError::Integrity(format!("chunk {hash} is missing from {}", self.url))
            }
            e => s3_err(e),
        })
    }
    fn delete(&self, hash: &str) -> Result<()> {
        check_hash(hash)?;
        match self.block_on(self.store.delete(&self.key(hash))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3_err(e)),
        }
    }
    fn list(&self) -> Result<Vec<String>> {
        use futures_util::TryStreamExt;
        let prefix = object_store::path::Path::from(self.prefix.clone());
        let metas: Vec<object_store::ObjectMeta> = self
            .block_on(self.store.list(Some(&prefix)).try_collect())
            .map_err(s3_err)?;
        Ok(metas
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .filter(|n| check_hash(n).is_ok())
            .collect())
    }
}
