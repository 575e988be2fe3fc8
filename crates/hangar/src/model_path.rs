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

/// Where a resolved weights file came from in the registry.
#[derive(Debug, Clone)]
pub struct RegistryOrigin {
    /// The exact version, `name@3`.
    pub reference: String,
    /// The weights file's sha256 as the registry recorded it at import.
    pub sha256: Option<String>,
}

fn from_registry(reference: &str, home: Option<PathBuf>) -> Result<(PathBuf, RegistryOrigin)> {
    let reg = hangar_registry::Registry::open(home).context("opening the model registry")?;
    let who = reg.principal(std::env::var("HANGAR_TOKEN").ok().as_deref())?;
    let m = reg
        .resolve(&who, reference)
        .with_context(|| format!("resolving model {reference:?} in the registry"))?;
    let Some(primary) = m.primary else {
        bail!("registry model {reference:?} has no GGUF or safetensors file");
    };
    let exact = format!("{}@{}", m.name, m.version);
    // The cached file sits at its recorded path under the version's folder.
    let rel = primary
        .strip_prefix(&m.dir)
        .ok()
        .map(|r| r.to_string_lossy().replace('\\', "/"));
    let sha256 = reg.show(&who, &exact).ok().and_then(|v| {
        v.files
            .into_iter()
            .find(|f| Some(&f.path) == rel.as_ref())
            .map(|f| f.sha256)
    });
    Ok((
        primary,
        RegistryOrigin {
            reference: exact,
            sha256,
        },
    ))
}

/// Resolves an optional `--model` argument to a weights file.
pub fn resolve(model: Option<&str>, home: Option<PathBuf>) -> Result<PathBuf> {
    resolve_with_origin(model, home).map(|(p, _)| p)
}

/// Like [`resolve`], also saying which registry version the file is, when it came
/// from the registry.
pub fn resolve_with_origin(
    model: Option<&str>,
    home: Option<PathBuf>,
) -> Result<(PathBuf, Option<RegistryOrigin>)> {
    if let Some(m) = model {
        let p = Path::new(m);
        if p.is_file() {
            return Ok((p.to_path_buf(), None));
        }
        if p.extension().is_some_and(|e| e == "gguf") || m.contains('/') {
            bail!("model file {m} not found");
        }
        return from_registry(m, home).map(|(p, o)| (p, Some(o)));
    }
    if let Ok(p) = std::env::var("HANGAR_MODEL") {
        if Path::new(&p).is_file() {
            return Ok((PathBuf::from(p), None));
        }
        bail!("HANGAR_MODEL points to {p}, which is not a file");
    }
    if registry_exists(&home) {
        if let Ok((p, o)) = from_registry(hangar_registry::DEFAULT_MODEL, home) {
            return Ok((p, Some(o)));
        }
    }
    let cached = default_model_cache().join(DEFAULT_MODEL_FILE);
    if cached.is_file() {
        return Ok((cached, None));
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

/// llama.cpp's name for a GGUF `general.file_type` (its `llama_ftype` numbering).
pub fn file_type_name(ft: u32) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        _ => return None,
    })
}
