//! hangar-kernels: the CPU arithmetic of inference — quantized block formats, dot
//! products and matrix multiplies with runtime SIMD dispatch, attention, element-wise
//! ops, the thread pool, and bit-exact replicas of llama.cpp's (ggml-cpu's) numerics.
//!
//! Knows tensor element types and shapes only; nothing about models, requests or the
//! environment (a binary chooses the SIMD level with [`set_simd_cap`]). Every SIMD
//! path has a scalar twin that the tests compare against.
//!
//! # The two arithmetics
//!
//! * **Hangar's own kernels** (a model's `Numerics::Fast`): [`matmul`] /
//!   [`matmul_quantized`] over a borrowed [`QMatrix`] in GGUF block layout, or over a
//!   row-interleaved copy from [`packed`] ([`PackedMatrix`] for Q4_0/Q5_0/Q8_0,
//!   [`packed::PackedK`] for Q4_K/Q6_K); activations are quantized once by
//!   [`quantize_activations`]; [`attend`] runs one (token, KV head) of attention over
//!   a paged f16-valued cache ([`PagedKv`]); [`ops`] holds norms, RoPE and the gated
//!   activations. Fast, and as accurate as llama.cpp, but not bit-identical to it.
//! * **ggml replicas** (`Numerics::Ggml`): [`ggml`] reproduces ggml-cpu's float
//!   order bit for bit ([`ggml::mul_mat`] for every weight type it covers, `ggml::f16`
//!   for the attention products, `ggml::ops` for norms, RoPE, soft-max and GEGLU), so
//!   a model gives llama.cpp's logits exactly. Its `*_pool` modules are AVX-512 twins
//!   of the scalar replicas on the [`ThreadPool`], bitwise equal to them.
//!
//! Encoders (BERT) run on [`gemm_f32`], an f32 `a · wᵀ + bias` with an AVX-512
//! micro-kernel and a scalar twin, plus `ops::layer_norm_inplace` and
//! `ops::gelu_erf_inplace`.
//!
//! [`quants`] owns the block formats themselves (dequantize, quantize, row dots);
//! [`cpu`] the SIMD level every dispatcher reads; [`ThreadPool`] the one pool that
//! all parallel kernels share (it never allocates per call).
//!
//! # Example
//!
//! ```
//! use hangar_kernels::{ggml, matmul, quants, GgmlType, QMatrix, ThreadPool};
//!
//! // A 4 x 64 weight matrix quantized to Q8_0, as a GGUF file would hold it.
//! let (rows, cols) = (4, 64);
//! let rb = quants::row_bytes(GgmlType::Q8_0, cols);
//! let w: Vec<f32> = (0..rows * cols).map(|i| (i % 7) as f32 - 3.0).collect();
//! let mut bytes = vec![0u8; rows * rb];
//! for (src, dst) in w.chunks(cols).zip(bytes.chunks_mut(rb)) {
//!     quants::quantize_row(GgmlType::Q8_0, src, dst)?;
//! }
//! let m = QMatrix::new(GgmlType::Q8_0, rows, cols, &bytes)?;
//!
//! let pool = ThreadPool::new(2);
//! let x = vec![0.5f32; cols]; // one activation row
//! let (mut ours, mut scratch) = (vec![0f32; rows], Vec::new());
//! matmul(&pool, &m, &x, 1, &mut ours, &mut scratch);
//!
//! // The same product in llama.cpp's exact arithmetic.
//! let mut theirs = vec![0f32; rows];
//! assert!(ggml::mul_mat(&pool, m.ty, m.data, rows, cols, &x, 1, &mut theirs));
//! for (a, b) in ours.iter().zip(&theirs) {
//!     assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0));
//! }
//! # Ok::<(), hangar_kernels::KernelError>(())
//! ```

mod attention;
pub mod cpu;
mod gemm;
pub mod ggml;
mod huge;
pub mod kv_format;
mod matmul;
pub mod ops;
pub mod packed;
mod packed_k;
mod pool;
pub mod quants;

pub use attention::{attend, PagedKv};
pub use cpu::{amx, set_amx, set_simd_cap, simd_level, SimdLevel};
pub use gemm::{gemm_f32, gemm_f32_scalar};
pub use hangar_formats::GgmlType;
pub use kv_format::KvFormat;
pub use matmul::{matmul, matmul_quantized, quantize_activations, QMatrix};
pub use packed::PackedMatrix;
pub use pool::ThreadPool;
pub use quants::KernelError;
