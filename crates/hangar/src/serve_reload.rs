//! The registry side of `hangar serve` reloads: resolves a version, checks it fits in
//! memory, loads it and starts its engine with the server's own options. The swap
//! itself (and draining the old engine) is hangar-serve's.

use crate::cmd_serve::{start_engine, ServeArgs};
use hangar_engine::Engine;
use hangar_registry::{Registry, RegistryError};
use hangar_serve::{ModelLoader, ModelVersion, ReloadError, ReloadTarget};
use std::path::PathBuf;

/// Reloads the registry model a server was started with (`--model name@stage`).
pub struct RegistryLoader {
    args: ServeArgs,
    /// The reference as given at start (`gemma@production`).
    started: String,
    /// Its registry name.
    name: String,
}

impl RegistryLoader {
    pub fn new(args: ServeArgs, started: &str) -> Self {
        RegistryLoader {
            name: started.split('@').next().unwrap_or(started).to_string(),
            started: started.to_string(),
            args,
        }
    }

    fn reference(&self, target: &ReloadTarget) -> Result<String, ReloadError> {
        Ok(match target {
            ReloadTarget::Started => self.started.clone(),
            ReloadTarget::Version(v) => format!("{}@{v}", self.name),
            ReloadTarget::Stage(s) if s.is_empty() || s.contains('@') => {
                return Err(ReloadError::Invalid(format!(
                    "stage {s:?} is not a stage name (e.g. production, staging)"
                )))
            }
            ReloadTarget::Stage(s) => format!("{}@{s}", self.name),
        })
    }

    fn registry(&self) -> Result<(Registry, hangar_registry::Principal), ReloadError> {
        let reg = Registry::open(self.args.home.clone())
            .map_err(|e| ReloadError::Unloadable(format!("cannot open the model registry: {e}")))?;
        let who = reg
            .principal(std::env::var("HANGAR_TOKEN").ok().as_deref())
            .map_err(|e| registry_error("the registry refused the server's token", e))?;
        Ok((reg, who))
    }
}

fn registry_error(context: &str, e: RegistryError) -> ReloadError {
    match e {
        RegistryError::NotFound(_) => ReloadError::NotFound(format!("{context}: {e}")),
        RegistryError::InvalidName { .. } | RegistryError::Invalid(_) => {
            ReloadError::Invalid(format!("{context}: {e}"))
        }
        e => ReloadError::Unloadable(format!("{context}: {e}")),
    }
}

/// Memory the kernel could give us now (`MemAvailable`), where the system says.
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl ModelLoader for RegistryLoader {
    fn resolve(&self, target: &ReloadTarget) -> Result<u32, ReloadError> {
        let reference = self.reference(target)?;
        let (reg, who) = self.registry()?;
        reg.show(&who, &reference)
            .map(|v| v.version)
            .map_err(|e| registry_error(&format!("resolving {reference}"), e))
    }

    fn load(&self, target: &ReloadTarget) -> Result<(Engine, ModelVersion), ReloadError> {
        let reference = self.reference(target)?;
        let (reg, who) = self.registry()?;
        let ctx = format!("resolving {reference}");
        let info = reg
            .show(&who, &reference)
            .map_err(|e| registry_error(&ctx, e))?;
        // Both engines live at once until the old one drains: refuse early rather than
        // let the kernel kill the server that is still serving.
        let kv = self
            .args
            .kv_memory
            .as_deref()
            .and_then(|m| crate::cmd_serve::parse_bytes(m).ok())
            .unwrap_or(1 << 30) as u64;
        let need = info.total_size + kv;
        if let Some(avail) = available_memory() {
            if need > avail {
                return Err(ReloadError::InsufficientMemory(format!(
                    "{reference} needs about {} MiB (weights {} MiB + KV cache {} MiB) beside the serving model, but only {} MiB are available",
                    need >> 20,
                    info.total_size >> 20,
                    kv >> 20,
                    avail >> 20
                )));
            }
        }
        // Materialises the files, re-hashing a cached copy that changed on disk and
        // restoring it from the store when its bytes no longer match.
        let resolved = reg
            .resolve(&who, &reference)
            .map_err(|e| registry_error(&ctx, e))?;
        let Some(path): Option<PathBuf> = resolved.primary else {
            return Err(ReloadError::Unloadable(format!(
                "{reference} has no GGUF or safetensors file"
            )));
        };
        let exact = format!("{}@{}", resolved.name, resolved.version);
        let rel = path
            .strip_prefix(&resolved.dir)
            .ok()
            .map(|r| r.to_string_lossy().replace('\\', "/"));
        let sha256 = info
            .files
            .iter()
            .find(|f| Some(&f.path) == rel.as_ref())
            .map(|f| f.sha256.clone());
        let (engine, _) = start_engine(&self.args, &path)
            .map_err(|e| ReloadError::Unloadable(format!("{exact} does not load: {e:#}")))?;
        Ok((
            engine,
            ModelVersion {
                name: resolved.name,
                version: resolved.version,
                sha256,
            },
        ))
    }
}
