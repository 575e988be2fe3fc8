//! hangar-compress: make a model smaller and say what it cost — quantization (with an
//! importance matrix), pruning (magnitude, Wanda, N:M), low-rank factorisation, and the
//! evaluation every one of them ends with (perplexity, KL divergence and top-1
//! agreement against the source, multiple-choice accuracy, size, speed).
//!
//! Reads models with `hangar-formats`, runs them with `hangar-models`/`hangar-engine`,
//! writes GGUF with `hangar-formats`' writer, or a Hugging Face safetensors folder
//! ([`hf_write`]). Knows nothing about serving or the registry.
//!
//! ```no_run
//! use hangar_compress::{quantize, QuantizeOptions, SourceModel};
//! use hangar_formats::GgmlType;
//! let src = SourceModel::open("model.gguf").unwrap();
//! let opts = QuantizeOptions { target: GgmlType::Q4K, keep: vec![], imatrix: None,
//!     imatrix_file: None, threads: 0, pure: false, format: Default::default() };
//! let report = quantize::quantize(&src, "model-q4k.gguf".as_ref(), &opts,
//!     &indicatif::ProgressBar::hidden()).unwrap();
//! println!("{}", report.type_mix());
//! ```

pub mod error;
pub mod eval;
pub mod hf;
pub mod hf_write;
pub mod imatrix;
pub mod linalg;
pub mod lowrank;
pub mod policy;
pub mod progress;
pub mod prune;
pub mod quantize;
mod session;
pub mod source;
pub mod spm;
pub mod tasks;
pub mod wquant;

pub use error::{CompressError, Result};
pub use eval::{evaluate, EvalModel, EvalOptions, EvalReport};
pub use imatrix::Imatrix;
pub use policy::KeepRule;
pub use quantize::{OutFormat, QuantizeOptions, QuantizeReport};
pub use source::SourceModel;
