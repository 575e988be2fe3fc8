//! hangar-models: transformer architectures as code — the weight layout read from a
//! GGUF file and the forward pass for a batch of sequences over a paged KV cache.
//!
//! Supports Gemma 3 and the Llama family (llama, mistral, qwen2, qwen3). Knows nothing
//! of HTTP, scheduling, sampling or the environment: it turns token ids at positions
//! into logits, with the options its caller passes.
//!
//! BERT-family encoders (text vectors, not logits) live in [`bert`]: [`Encoder`] reads a
//! Hugging Face folder and pools token vectors as [`SentenceConfig`] says.
//!
//! # Main types
//!
//! * [`Model`]: configuration ([`ModelConfig`]) plus weights borrowed from the
//!   memory-mapped file, loaded with [`LoadOptions`]: the arithmetic ([`Numerics`]:
//!   Hangar's fast kernels, or llama.cpp's bit for bit) and which weights the fast
//!   kernels repack ([`Packing`]).
//! * [`Model::forward`]: one batch of [`SeqInput`]s (new tokens, start position,
//!   block tables, which [`LogitsWanted`]) → logits, writing K/V into a [`KvCache`].
//!   Scratch lives in a reusable [`Workspace`], so steady-state decode allocates
//!   nothing in either numerics. [`Model::forward_observed`] also shows every layer's
//!   matrix inputs to an [`Observer`] (importance statistics for compression).
//!   [`Model::forward_lora`] runs each sequence under its own [`LoraAdapter`] (or
//!   none): low-rank deltas added per row, the base weights untouched ([`lora`]).
//! * [`kv`]: the paged KV cache ([`KvCache`], its per-group [`KvLayout`]); the caller
//!   (the engine's block manager) owns the block tables.
//!
//! # Example
//!
//! ```no_run
//! use hangar_kernels::ThreadPool;
//! use hangar_models::{KvCache, LoadOptions, LogitsWanted, Model, Numerics, SeqInput, Workspace};
//!
//! let opts = LoadOptions { numerics: Numerics::Ggml, ..LoadOptions::default() };
//! let model = Model::load_with("gemma-3-270m-q4_k_m.gguf", opts)?;
//! let pool = ThreadPool::new(2);
//! let prompt = [2u32, 818, 5279, 529];
//! let mut kv = KvCache::for_single_sequence(&model.cfg, 16, 64);
//! let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
//! let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
//! let (mut ws, mut logits) = (Workspace::default(), Vec::new());
//! let seq = SeqInput { tokens: &prompt, start_pos: 0, block_tables: &tables, logits: LogitsWanted::Last };
//! model.forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)?;
//! let next = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
//! println!("next token: {next:?}");
//! # Ok::<(), hangar_models::ModelError>(())
//! ```

pub mod bert;
mod config;
mod forward;
mod ggml_forward;
pub mod kv;
pub mod lora;
mod options;
pub mod synth;
mod weights;

pub use bert::{Encoder, EncoderConfig, EncoderWorkspace, Pooling, SentenceConfig};
pub use config::{Activation, Arch, ModelConfig};
pub use forward::{LogitsWanted, Observer, Reducer, SeqInput, Tap, Workspace};
pub use kv::{KvCache, KvLayout};
pub use lora::{LoraAdapter, LoraError, LoraMatrix, LoraShape, LoraTarget};
pub use options::{LoadOptions, Numerics, Packing};
pub use weights::{LayerView, MatrixView, Model};

use hangar_formats::GgufError;
use hangar_kernels::quants::KernelError;

/// Errors loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Safetensors(#[from] hangar_formats::SafetensorsError),
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
    #[error("tensor-parallel collective failed: {0}")]
    Collective(String),
    #[error("LoRA adapter: {0}")]
    Lora(#[from] LoraError),
}
