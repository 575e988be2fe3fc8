//! hangar-kernels: CPU arithmetic for inference — quantized block formats, dot
//! products and matrix multiplies with runtime SIMD dispatch, element-wise ops, and
//! the one thread pool.
//!
//! Knows tensor element types and shapes only; nothing about models or requests.
//! Every SIMD path has a scalar twin that the tests compare against.

pub mod attention;
pub mod cpu;
pub mod ggml;
pub mod matmul;
pub mod ops;
pub mod packed;
pub mod packed_k;
pub mod pool;
pub mod quants;

pub use cpu::{set_simd_cap, simd_level, CpuFeatures, SimdLevel};
pub use hangar_formats::GgmlType;
pub use matmul::{matmul, matmul_quantized, quantize_activations, QMatrix};
pub use packed::PackedMatrix;
pub use pool::ThreadPool;
