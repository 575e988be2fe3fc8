//! hangar-formats: model file formats (GGUF v2/v3, safetensors) read from memory maps.
//!
//! Owns parsing and bounds checking of on-disk formats and the table of tensor
//! element types. Knows nothing about models, kernels or requests. Every length and
//! offset read from a file is checked: a truncated or hostile file gives an error,
//! never a panic.

pub mod dtype;
pub mod gguf;
pub mod gguf_write;
pub mod safetensors;

pub use dtype::GgmlType;
pub use gguf::{GgufError, GgufFile, MetaValue, TensorInfo};
pub use gguf_write::{GgufFileWriter, GgufHeader, GgufWriteError, GgufWriter, TensorSpec};
pub use safetensors::{SafeTensorInfo, SafetensorsError, SafetensorsFile};
