//! Bit-exact replicas of llama.cpp's CPU arithmetic (`Numerics::Ggml`); nothing
//! here may round differently from ggml-cpu, whatever it would gain in speed.
//!
//! The target is ggml-cpu as built for x86-64 with AVX-512F/BW/DQ/VL, AVX-512 VNNI,
//! FMA and F16C; llamafile sgemm, the CPU repack buffer for Q4_K and the tiled
//! K-quant matmul all enabled, as in the llama-cpp-python 0.3.36 build our
//! references come from.
//!
//! Why: quantizing activations to 8 bits makes a forward pass discontinuous, so any
//! difference in summation order, however small, flips some roundings and grows to
//! a few percent of the logits after 18 layers; greedy continuations then part ways
//! with llama.cpp's at near-ties. Reproducing ggml's float order exactly is the only
//! way to give the same tokens. These functions favour fidelity over speed; each
//! states which ggml routine it mirrors.
//!
//! Two kinds of module: the scalar replicas (`legacy`, `q4k`, `q6k`, `f16`, `ops`),
//! written to be read against ggml's source, and their `*_pool` twins (`legacy_pool`,
//! `kquant_pool`): AVX-512 versions on the thread pool that are bitwise equal to the
//! scalar ones (the tests compare them). [`mul_mat`] picks the pool twin.
//!
//! Layout convention of every `mul_mat_*`: `w` holds `rows` rows of `cols` elements
//! in GGUF block layout, `x` holds `n` rows of `cols` f32, and
//! `out[j * rows + i] = W[i] · x[j]` (ggml's dst layout), computed exactly as ggml's
//! MUL_MAT(src0 = W, src1 = x) does for that type and batch size `n`.

pub mod f16;
pub mod kquant_pool;
pub mod legacy;
pub mod legacy_pool;
pub mod ops;
pub mod q4k;
pub mod q6k;

use crate::{GgmlType, ThreadPool};

/// `out = W · x` for `n` activation rows as ggml computes MUL_MAT for a weight of
/// type `ty` (see the module doc for the layout), on the pool's threads with the
/// AVX-512 versions where the CPU has them (bitwise equal to the scalar replicas).
/// Returns `false`, leaving `out` untouched, for types without a replica here.
#[allow(clippy::too_many_arguments)]
pub fn mul_mat(
    pool: &ThreadPool,
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) -> bool {
    match ty {
        GgmlType::Q5_0 | GgmlType::Q8_0 => {
            legacy_pool::mul_mat_legacy_pool(pool, ty, w, rows, cols, x, n, out)
        }
        GgmlType::Q4K => kquant_pool::mul_mat_q4k_pool(pool, w, rows, cols, x, n, out),
        GgmlType::Q6K => kquant_pool::mul_mat_q6k_pool(pool, w, rows, cols, x, n, out),
        GgmlType::F16 => {
            // SAFETY: every bit pattern is a valid u16; `align_to` only hands out the
            // aligned middle part.
            let (head, w16, tail) = unsafe { w.align_to::<u16>() };
            if cfg!(target_endian = "little") && head.is_empty() && tail.is_empty() {
                // GGUF data is little-endian and aligned: read it in place.
                f16::mul_mat_f16(w16, rows, cols, x, n, out)
            } else {
                let w16: Vec<u16> = w
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect();
                f16::mul_mat_f16(&w16, rows, cols, x, n, out)
            }
        }
        _ => return false,
    }
    true
}
