//! hangar-kernels: CPU arithmetic for inference — quantized block formats, dot
//! products and matrix multiplies with runtime SIMD dispatch, and the thread pool.
//!
//! Knows tensor element types and shapes only; nothing about models or requests.
//! Every SIMD path has a scalar twin that the tests compare against.

pub mod cpu;
pub mod quants;

pub use cpu::{CpuFeatures, SimdLevel};
pub use hangar_formats::GgmlType;
