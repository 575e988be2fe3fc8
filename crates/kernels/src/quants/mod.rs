//! Quantized block formats and the dot products between weight rows and quantized
//! activations.
//!
//! Scheme (as in GGML): a weight row of type `W` is dotted against an activation row
//! quantized to `act_type(W)`: Q8_0 for the 32-element legacy types, Q8_K for the
//! 256-element K-quants, F32 for float weights. Activations are quantized once per
//! matmul, then reused against every weight row.

pub mod float;
pub mod kquants;
pub mod legacy;

use hangar_formats::GgmlType;

/// Errors from kernels given unsupported types or inconsistent sizes.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("tensor type {0} is not supported by the CPU kernels")]
    Unsupported(GgmlType),
    #[error("row length {len} is not a multiple of the {ty} block size {block}")]
    BadLength {
        ty: GgmlType,
        len: usize,
        block: usize,
    },
}

/// The format activations are quantized to before being dotted with weights of `w`.
pub fn act_type(w: GgmlType) -> Result<GgmlType, KernelError> {
    use GgmlType::*;
    match w {
        Q4_0 | Q5_0 | Q8_0 => Ok(Q8_0),
        Q4K | Q5K | Q6K => Ok(Q8K),
        F32 | F16 | BF16 => Ok(F32),
        t => Err(KernelError::Unsupported(t)),
    }
}

/// Whether weights of this type can be used in `vec_dot`/matmul.
pub fn is_supported_weight(w: GgmlType) -> bool {
    act_type(w).is_ok()
}

/// Bytes of a row of `n` elements of type `t` (`n` must be a block multiple).
pub fn row_bytes(t: GgmlType, n: usize) -> usize {
    n / t.block_size() * t.type_size()
}

/// Checks that `n` is a whole number of blocks of `t`.
pub fn check_len(t: GgmlType, n: usize) -> Result<(), KernelError> {
    if !n.is_multiple_of(t.block_size()) {
        return Err(KernelError::BadLength {
            ty: t,
            len: n,
            block: t.block_size(),
        });
    }
    Ok(())
}

/// Dequantizes `dst.len()` elements from `src` (a row of type `t`).
/// Panics if sizes disagree: callers check shapes when a model is loaded.
pub fn dequantize_row(t: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), KernelError> {
    use GgmlType::*;
    check_len(t, dst.len())?;
    match t {
        F32 | F16 | BF16 => float::dequantize_row(t, src, dst),
        Q4_0 | Q5_0 | Q8_0 => legacy::dequantize_row(t, src, dst),
        Q4K | Q5K | Q6K | Q8K => kquants::dequantize_row(t, src, dst),
        t => return Err(KernelError::Unsupported(t)),
    }
    Ok(())
}

/// Quantizes `src` into `dst` (a row of type `t`), with the reference rounding.
/// Used for activations (Q8_0, Q8_K) and, by `compress`, for weights.
pub fn quantize_row(t: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), KernelError> {
    use GgmlType::*;
    check_len(t, src.len())?;
    match t {
        F32 | F16 | BF16 => float::quantize_row(t, src, dst),
        Q4_0 | Q5_0 | Q8_0 => legacy::quantize_row(t, src, dst),
        Q4K | Q5K | Q6K | Q8K => kquants::quantize_row(t, src, dst),
        t => return Err(KernelError::Unsupported(t)),
    }
    Ok(())
}

/// Dot product of `n` elements: weight row `w` (type `wt`) against an activation row
/// `a` already quantized to `act_type(wt)`. Dispatches to the best SIMD level.
#[inline]
pub fn vec_dot(wt: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    use GgmlType::*;
    match wt {
        F32 | F16 | BF16 => float::vec_dot(wt, n, w, a),
        Q4_0 | Q5_0 | Q8_0 => legacy::vec_dot(wt, n, w, a),
        Q4K | Q5K | Q6K => kquants::vec_dot(wt, n, w, a),
        _ => panic!("vec_dot: unsupported weight type {wt} (check is_supported_weight first)"),
    }
}

/// Scalar reference of [`vec_dot`]; the tests compare every SIMD path against it.
pub fn vec_dot_scalar(wt: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f32 {
    use GgmlType::*;
    match wt {
        F32 | F16 | BF16 => float::vec_dot_scalar(wt, n, w, a),
        Q4_0 | Q5_0 | Q8_0 => legacy::vec_dot_scalar(wt, n, w, a),
        Q4K | Q5K | Q6K => kquants::vec_dot_scalar(wt, n, w, a),
        _ => panic!("vec_dot_scalar: unsupported weight type {wt}"),
    }
}

/// A tile of dot products: `out[r * out_stride + c] = dot(w row r, a row c)` for
/// `r < nr`, `c < nc`. Weight rows are `w_stride` bytes apart, activation rows
/// `a_stride` bytes apart. Implementations unpack each weight block once and use it
/// for all `nc` activation rows, which is what makes prefill fast.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn dot_tile(
    wt: GgmlType,
    n: usize,
    w: &[u8],
    w_stride: usize,
    nr: usize,
    a: &[u8],
    a_stride: usize,
    nc: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    use GgmlType::*;
    match wt {
        Q4_0 | Q5_0 | Q8_0 => {
            legacy::dot_tile(wt, n, w, w_stride, nr, a, a_stride, nc, out, out_stride)
        }
        Q4K | Q5K | Q6K => {
            kquants::dot_tile(wt, n, w, w_stride, nr, a, a_stride, nc, out, out_stride)
        }
        _ => {
            for r in 0..nr {
                for c in 0..nc {
                    out[r * out_stride + c] = vec_dot(
                        wt,
                        n,
                        &w[r * w_stride..][..row_bytes(wt, n)],
                        &a[c * a_stride..][..row_bytes(act_type(wt).expect("supported"), n)],
                    );
                }
            }
        }
    }
}
