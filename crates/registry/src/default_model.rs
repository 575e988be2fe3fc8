//! The default model: finds and runs `scripts/fetch-default-model.sh`, then imports its
//! GGUF as `gemma3-270m` in production so `hangar serve` with no arguments has a model.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::auth::{Principal, Role};
use crate::error::{io_ctx, RegistryError, Result};
use crate::names::PRODUCTION;
use crate::registry::Registry;
use crate::transfer::{ImportOutcome, ImportRequest};
use crate::DEFAULT_MODEL;

const SCRIPT: &str = "scripts/fetch-default-model.sh";

/// What installing the default model did.
#[derive(Debug, Clone, Serialize)]
pub struct DefaultModelOutcome {
    pub name: String,
    pub version: u32,
    pub source: PathBuf,
    pub import: ImportOutcome,
}

fn search_up(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|d| d.join(SCRIPT))
        .find(|p| p.is_file())
}

/// `$HANGAR_FETCH_SCRIPT`, else `scripts/fetch-default-model.sh` in the current folder
/// or a parent, else next to (or above) the running executable.
pub fn find_fetch_script() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HANGAR_FETCH_SCRIPT") {
        return Some(PathBuf::from(p));
    }
    std::env::current_dir()
        .ok()
        .and_then(|d| search_up(&d))
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| search_up(e.parent()?))
        })
}

/// Runs the fetch script (which caches and verifies the file) and returns the GGUF path.
pub fn fetch_default_model() -> Result<PathBuf> {
    let script = find_fetch_script().ok_or_else(|| {
        RegistryError::NotFound(format!(
            "{SCRIPT}: run from the hangar checkout or set HANGAR_FETCH_SCRIPT"
        ))
    })?;
    let out = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(io_ctx(format!("run {}", script.display())))?;
    if !out.status.success() {
        return Err(RegistryError::Transfer(format!(
            "{} failed with {}",
            script.display(),
            out.status
        )));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| RegistryError::Transfer(format!("{} printed no path", script.display())))?;
    if !path.is_file() {
        return Err(RegistryError::NotFound(format!(
            "{} (printed by the fetch script)",
            path.display()
        )));
    }
    Ok(path)
}

/// Imports `gguf` as the default model and puts it in production. Idempotent: a second
/// call finds the same content and only makes sure of the stage.
pub fn install_default_from(
    reg: &mut Registry,
    who: &Principal,
    gguf: &Path,
    progress: bool,
) -> Result<DefaultModelOutcome> {
    who.require(
        Role::Promoter,
        "installing the default model (it goes to production)",
    )?;
    let mut metadata = std::collections::BTreeMap::new();
    metadata.insert("source".to_string(), SCRIPT.to_string());
    metadata.insert("architecture".to_string(), "gemma3".to_string());
    metadata.insert("quantization".to_string(), "Q4_K_M".to_string());
    let import = reg.import(
        who,
        &ImportRequest {
            path: gguf.to_path_buf(),
            name: DEFAULT_MODEL.into(),
            metadata,
            progress,
            ..Default::default()
        },
    )?;
    let current = reg.show(who, &format!("{DEFAULT_MODEL}@{}", import.version))?;
    if current.stage.as_deref() != Some(PRODUCTION) {
        reg.promote(
            who,
            &format!("{DEFAULT_MODEL}@{}", import.version),
            PRODUCTION,
        )?;
    }
    Ok(DefaultModelOutcome {
        name: DEFAULT_MODEL.into(),
        version: import.version,
        source: gguf.to_path_buf(),
        import,
    })
}

/// `hangar pull default`: fetch script, import, production.
pub fn install_default(
    reg: &mut Registry,
    who: &Principal,
    progress: bool,
) -> Result<DefaultModelOutcome> {
    who.require(
        Role::Promoter,
        "installing the default model (it goes to production)",
    )?;
    let path = fetch_default_model()?;
    install_default_from(reg, who, &path, progress)
}
