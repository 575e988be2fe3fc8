//! Where `--model` points when it is omitted: `$HANGAR_MODEL`, else the default model
//! cached by `scripts/fetch-default-model.sh`.

use anyhow::{bail, Result};
use std::path::PathBuf;

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

/// Resolves an optional `--model` argument to a file.
pub fn resolve(model: Option<PathBuf>) -> Result<PathBuf> {
    let p = match model {
        Some(p) => p,
        None => match std::env::var("HANGAR_MODEL") {
            Ok(p) => PathBuf::from(p),
            Err(_) => default_model_cache().join(DEFAULT_MODEL_FILE),
        },
    };
    if !p.is_file() {
        bail!(
            "model file {} not found; pass --model PATH, or fetch the default model with scripts/fetch-default-model.sh",
            p.display()
        );
    }
    Ok(p)
}
