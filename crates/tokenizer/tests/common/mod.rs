//! Locating the default model and llama.cpp's reference outputs.
#![allow(dead_code)]

use std::path::PathBuf;

pub const MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// The default model: `$HANGAR_MODEL`, else the cache `scripts/fetch-default-model.sh`
/// fills. `None` (with a note on stderr) when it is not there; set
/// `HANGAR_REQUIRE_MODEL=1` to make that a failure instead.
pub fn model_path() -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = [
        std::env::var_os("HANGAR_MODEL").map(PathBuf::from),
        std::env::var_os("HANGAR_MODEL_DIR").map(|d| PathBuf::from(d).join(MODEL_FILE)),
        std::env::var_os("XDG_CACHE_HOME")
            .map(|d| PathBuf::from(d).join("hangar/models").join(MODEL_FILE)),
        std::env::var_os("HOME").map(|d| {
            PathBuf::from(d)
                .join(".cache/hangar/models")
                .join(MODEL_FILE)
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    for c in &candidates {
        if c.is_file() {
            return Some(c.clone());
        }
    }
    missing(&format!(
        "default model not found (tried {candidates:?}); run scripts/fetch-default-model.sh"
    ));
    None
}

/// `shared/reference/reference.json`, searched upwards from this crate.
pub fn reference_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HANGAR_REFERENCE") {
        return Some(PathBuf::from(p));
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/reference/reference.json");
        if p.is_file() {
            return Some(p);
        }
        if !dir.pop() {
            break;
        }
    }
    missing("shared/reference/reference.json not found");
    None
}

fn missing(what: &str) {
    if std::env::var_os("HANGAR_REQUIRE_MODEL").is_some_and(|v| v == "1") {
        panic!("{what}");
    }
    eprintln!("SKIPPED: {what}");
}
