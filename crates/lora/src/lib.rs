//! hangar-lora: LoRA adapter files — llama.cpp's GGUF adapters and PEFT's safetensors
//! folders read into a [`LoraAdapter`] and written back — and the tools around them:
//! merging an adapter into a base GGUF, a random adapter for tests, an adapter
//! extracted from two checkpoints by truncated SVD.
//!
//! Applying adapters at run time is not here: `hangar-models` adds the low-rank
//! deltas per row ([`hangar_models::Model::forward_lora`]) and the engine batches
//! requests with different adapters. This crate knows files, not requests.
//!
//! # Main entry points
//!
//! * [`load`]: a GGUF file or a PEFT folder (or its `adapter_model.safetensors`) →
//!   [`LoraAdapter`], checked against the model's [`LoraShape`]. Every failure names the
//!   file and what is wrong with it.
//! * [`gguf::write`] / [`peft::write`]: an adapter to either format.
//! * [`merge::merge`]: base GGUF + adapter → merged GGUF (adapted tensors in F32, F16,
//!   or requantized to their own type).
//! * [`init::random`]: a random adapter whose deltas are a chosen fraction of the
//!   weights they change.
//! * [`extract::extract`]: `tuned − base` per projection, factorised to rank r.
//!
//! ```no_run
//! use hangar_models::{LoraShape, Model};
//! let model = Model::load("gemma-3-270m-q4_k_m.gguf")?;
//! let adapter = hangar_lora::load("my-adapter.gguf".as_ref(), &LoraShape::of(&model.cfg))?;
//! println!("{} matrices of rank {}", adapter.n_matrices(), adapter.max_rank());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod extract;
pub mod gguf;
pub mod init;
pub mod merge;
pub mod peft;

pub use hangar_models::{LoraAdapter, LoraMatrix, LoraShape, LoraTarget};

use hangar_models::Arch;
use std::path::{Path, PathBuf};

/// Why an adapter file could not be read, written or applied. Each message names
/// the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoraFileError {
    /// Nothing usable at that path (missing file or folder).
    #[error("{}: {msg}", path.display())]
    NotFound { path: PathBuf, msg: String },
    /// The file is there but is not a usable adapter for this model.
    #[error("{}: {msg}", path.display())]
    Invalid { path: PathBuf, msg: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: hangar_formats::GgufWriteError,
    },
}

pub type Result<T> = std::result::Result<T, LoraFileError>;

pub(crate) fn invalid(path: &Path, msg: impl Into<String>) -> LoraFileError {
    LoraFileError::Invalid {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The adapter formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// llama.cpp's GGUF adapter (`general.type = adapter`, `blk.N.attn_q.weight.lora_a`).
    Gguf,
    /// A PEFT folder: `adapter_config.json` + `adapter_model.safetensors`.
    Peft,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "gguf" => Ok(Format::Gguf),
            "peft" | "safetensors" | "hf" => Ok(Format::Peft),
            _ => Err(format!("{s:?}: expected gguf or peft")),
        }
    }
}

/// Which format `path` holds: a folder (or a file inside one) is PEFT, a file that
/// starts with `GGUF` is a GGUF adapter.
pub fn detect(path: &Path) -> Result<Format> {
    if path.is_dir() {
        return Ok(Format::Peft);
    }
    if !path.is_file() {
        return Err(LoraFileError::NotFound {
            path: path.to_path_buf(),
            msg: "no adapter found: no such file or folder (give a GGUF adapter file or a PEFT folder with adapter_config.json and adapter_model.safetensors)".into(),
        });
    }
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut magic)
    });
    match read {
        Ok(4) if &magic == b"GGUF" => Ok(Format::Gguf),
        Ok(_) => match path.file_name().and_then(|n| n.to_str()) {
            Some(n) if n.ends_with(".safetensors") || n == "adapter_config.json" => {
                Ok(Format::Peft)
            }
            Some(n) if n.ends_with(".bin") || n.ends_with(".pt") => Err(invalid(
                path,
                "pickled PyTorch adapters are not loaded (they can run code); save the adapter with safe_serialization=True to get adapter_model.safetensors",
            )),
            _ => Err(invalid(
                path,
                "neither a GGUF adapter nor a PEFT adapter (adapter_model.safetensors beside adapter_config.json)",
            )),
        },
        Err(e) => Err(LoraFileError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

/// Reads the adapter at `path` (either format) for a model of `shape`. The
/// adapter's description says where it came from.
pub fn load(path: &Path, shape: &LoraShape) -> Result<LoraAdapter> {
    let mut a = match detect(path)? {
        Format::Gguf => gguf::read(path, shape)?,
        Format::Peft => peft::read(path, shape)?,
    };
    if a.n_matrices() == 0 {
        return Err(invalid(path, "the adapter holds no LoRA matrices"));
    }
    if a.description.is_empty() {
        a.description = path.display().to_string();
    }
    Ok(a)
}

/// Writes `adapter` in `format` (a file for GGUF, a folder for PEFT).
pub fn save(adapter: &LoraAdapter, format: Format, path: &Path) -> Result<()> {
    match format {
        Format::Gguf => gguf::write(adapter, path, hangar_formats::GgmlType::F32),
        Format::Peft => peft::write(adapter, path, None),
    }
}

/// `general.architecture` names of an [`Arch`] (the first is written).
pub(crate) fn arch_names(a: Arch) -> &'static [&'static str] {
    match a {
        Arch::Gemma3 => &["gemma3"],
        Arch::Llama => &["llama", "mistral"],
        Arch::Qwen2 => &["qwen2"],
        Arch::Qwen3 => &["qwen3"],
    }
}

/// The `alpha` that gives every matrix its scale (`scale · rank` when they agree), or
/// `None` when the scales differ per matrix.
pub(crate) fn common_alpha(a: &LoraAdapter) -> Option<f32> {
    let mut alpha: Option<f32> = None;
    for (_, _, m) in a.matrices() {
        let this = m.scale() * m.rank() as f32;
        match alpha {
            None => alpha = Some(this),
            Some(x) if (x - this).abs() <= 1e-6 * x.abs().max(1.0) => {}
            Some(_) => return None,
        }
    }
    alpha
}

/// Whether Hugging Face's Q/K rows were permuted by llama.cpp's converter for this
/// architecture (interleaved RoPE: llama and mistral; not gemma3 or qwen).
pub(crate) fn permutes_qk(arch: Arch) -> bool {
    arch == Arch::Llama
}
