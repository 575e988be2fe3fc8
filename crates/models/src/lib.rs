//! hangar-models: transformer architectures as code — weight layout read from a GGUF
//! file and the forward pass for a batch of sequences over a paged KV cache.
//!
//! Supports Gemma 3 and the Llama family (llama, mistral, qwen2, qwen3). Knows nothing
//! of HTTP, scheduling or sampling: it turns token ids at positions into logits.

pub mod config;
pub mod forward;
pub mod ggml_forward;
pub mod kv;
pub mod options;
pub mod weights;

pub use config::{Activation, Arch, ModelConfig};
pub use forward::{LogitsWanted, Observer, SeqInput, Tap, Workspace};
pub use kv::KvCache;
pub use options::{LoadOptions, Numerics, Packing};
pub use weights::Model;

use hangar_formats::GgufError;
use hangar_kernels::quants::KernelError;

/// Errors loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(
        "architecture {0:?} is not supported (supported: gemma3, llama, mistral, qwen2, qwen3)"
    )]
    UnsupportedArch(String),
    #[error("tensor {0:?} is missing from the model file")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {got:?}, expected {want:?}")]
    BadShape {
        name: String,
        got: Vec<u64>,
        want: Vec<u64>,
    },
    #[error("tensor {name:?}: {source}")]
    Kernel {
        name: String,
        #[source]
        source: KernelError,
    },
    #[error("invalid model configuration: {0}")]
    Config(String),
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    BadToken { id: u32, vocab: usize },
    #[error("position {pos} is beyond the KV cache capacity of {cap} tokens")]
    KvFull { pos: usize, cap: usize },
    #[error("invalid batch: {0}")]
    BadBatch(String),
}
