//! What `--model` names: a GGUF file, or a registry reference (`name`, `name@3`,
//! `name@production`). Without `--model`: `$HANGAR_MODEL`, else the registry's
//! default model, else the file cached by `scripts/fetch-default-model.sh`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

pub const DEFAULT_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// The cache folder the fetch script writes to.
pub fn default_model_cache() -> PathBuf {
    if let Ok(d) = std::env::var("HANGAR_MODEL_DIR") {
        return PathBuf::from(d);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|_| PathBuf::from(".cache"));
    cache.join("hangar").join("models")
}

fn registry_exists(home: &Option<PathBuf>) -> bool {
    let home = home.clone().unwrap_or_else(hangar_registry::default_home);
    home.join("registry").join("registry.db").is_file()
}

fn from_registry(reference: &str, home: Option<PathBuf>) -> Result<PathBuf> {
    let reg = hangar_registry::Registry::open(home).context("opening the model registry")?;
    let who = reg.principal(std::env::var("HANGAR_TOKEN").ok().as_deref())?;
    let m = reg
        .resolve(&who, reference)
        .with_context(|| format!("resolving model {reference:?} in the registry"))?;
    match m.primary {
        Some(p) => Ok(p),
        None => bail!("registry model {reference:?} has no GGUF or safetensors file"),
    }
}

/// Resolves an optional `--model` argument to a weights file.
pub fn resolve(model: Option<&str>, home: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(m) = model {
        let p = Path::new(m);
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        if p.extension().is_some_and(|e| e == "gguf") || m.contains('/') {
            bail!("model file {m} not found");
        }
        return from_registry(m, home);
    }
    if let Ok(p) = std::env::var("HANGAR_MODEL") {
        if Path::new(&p).is_file() {
            return Ok(PathBuf::from(p));
        }
        bail!("HANGAR_MODEL points to {p}, which is not a file");
    }
    if registry_exists(&home) {
        if let Ok(p) = from_registry(hangar_registry::DEFAULT_MODEL, home) {
            return Ok(p);
        }
    }
    let cached = default_model_cache().join(DEFAULT_MODEL_FILE);
    if cached.is_file() {
        return Ok(cached);
    }
    bail!(
        "no model given and no default model installed; pass --model PATH|NAME, or install \
         the default model with `hangar pull default`"
    )
}

/// The name a served model answers to: the registry name (`gemma3-270m@production` ->
/// `gemma3-270m`), the default model's registry name, or the file name.
pub fn served_name(model: Option<&str>, path: &Path) -> String {
    match model {
        Some(m) if !Path::new(m).is_file() => m.split('@').next().unwrap_or(m).to_string(),
        Some(_) => path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("model")
            .to_string(),
        None => hangar_registry::DEFAULT_MODEL.to_string(),
    }
}
