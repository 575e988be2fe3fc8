//! Shared by the diagnostics examples: load options from `HANGAR_NUMERICS`
//! (`fast`, `ggml`), `HANGAR_PACK` (`0`, `all`) and `HANGAR_SIMD` (`scalar`, `avx2`,
//! `avx512`), as the `hangar` binary reads them (the library itself never does).
#![allow(dead_code)]
use hangar_models::{LoadOptions, Model, Numerics, Packing};

/// The options the environment asks for; applies the SIMD cap.
pub fn from_env() -> LoadOptions {
    let var = |n: &str| std::env::var(n).ok();
    if let Some(cap) = var("HANGAR_SIMD").and_then(|v| hangar_kernels::SimdLevel::parse(&v)) {
        hangar_kernels::set_simd_cap(cap);
    }
    LoadOptions {
        numerics: var("HANGAR_NUMERICS")
            .and_then(|v| Numerics::parse(&v))
            .unwrap_or_default(),
        packing: var("HANGAR_PACK")
            .and_then(|v| Packing::parse(&v))
            .unwrap_or_default(),
    }
}

/// Loads `path` with the environment's options.
pub fn load(path: &str) -> Model {
    Model::load_with(path, from_env()).expect("model")
}

#[allow(dead_code)]
fn main() {}
