//! Matrix multiply of a batch of activation rows by a quantized weight matrix,
//! spread over the thread pool.
//!
//! `out[t][r] = dot(w row r, x row t)`. Activations are quantized once per call to the
//! weight type's activation format; weight rows are split into chunks handed out
//! dynamically; within a chunk, tiles of rows x tokens go through `dot_tile`, so each
//! unpacked weight block is reused across several tokens (prefill, batched decode).

use crate::pool::ThreadPool;
use crate::quants::{self, KernelError};
use hangar_formats::GgmlType;

/// A borrowed weight matrix: `rows` rows of `cols` elements of type `ty`.
#[derive(Debug, Clone, Copy)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

impl<'a> QMatrix<'a> {
    /// Checks type support and that `data` holds exactly `rows x cols` elements.
    pub fn new(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        data: &'a [u8],
    ) -> Result<Self, KernelError> {
        quants::act_type(ty)?;
        quants::check_len(ty, cols)?;
        let need = quants::row_bytes(ty, cols) * rows;
        if data.len() != need {
            return Err(KernelError::BadLength {
                ty,
                len: data.len(),
                block: need,
            });
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
        })
    }
    pub fn row_bytes(&self) -> usize {
        quants::row_bytes(self.ty, self.cols)
    }
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// Rows of a weight tile and tokens of an activation tile handled per `dot_tile` call.
const ROW_TILE: usize = 16;
const TOK_TILE: usize = 8;

/// A raw pointer that may cross into pool closures; each closure writes a disjoint
/// part. Accessed through `get` so closures capture the wrapper, not the raw field.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Quantizes `t` activation rows of `cols` into `buf` in the format `w` needs.
pub fn quantize_activations(
    pool: &ThreadPool,
    wt: GgmlType,
    x: &[f32],
    t: usize,
    cols: usize,
    buf: &mut Vec<u8>,
) {
    let at = quants::act_type(wt).expect("weight type checked by QMatrix::new");
    let arb = quants::row_bytes(at, cols);
    buf.resize(t * arb, 0);
    let quant_row = |i: usize, dst: &mut [u8]| {
        quants::quantize_row(at, &x[i * cols..(i + 1) * cols], dst).expect("length checked");
    };
    if t >= 16 && pool.n_threads() > 1 {
        let base = SendBytes(buf.as_mut_ptr());
        pool.for_each_chunk(t, 8, |s, e| {
            for i in s..e {
                // SAFETY: each row i is written by exactly one chunk.
                let dst = unsafe { std::slice::from_raw_parts_mut(base.get().add(i * arb), arb) };
                quant_row(i, dst);
            }
        });
    } else {
        for (i, dst) in buf.chunks_exact_mut(arb).enumerate() {
            quant_row(i, dst);
        }
    }
}

#[derive(Clone, Copy)]
struct SendBytes(*mut u8);
unsafe impl Send for SendBytes {}
unsafe impl Sync for SendBytes {}
impl SendBytes {
    fn get(self) -> *mut u8 {
        self.0
    }
}

/// `out[i * w.rows + r] = dot(w.row(r), x[i * w.cols ..])` for `i < t`.
/// `act_buf` is reused scratch for the quantized activations.
pub fn matmul(
    pool: &ThreadPool,
    w: &QMatrix,
    x: &[f32],
    t: usize,
    out: &mut [f32],
    act_buf: &mut Vec<u8>,
) {
    assert_eq!(x.len(), t * w.cols, "matmul: activation shape");
    assert_eq!(out.len(), t * w.rows, "matmul: output shape");
    quantize_activations(pool, w.ty, x, t, w.cols, act_buf);
    matmul_quantized(pool, w, act_buf, t, out);
}

/// As [`matmul`], with activations already quantized by [`quantize_activations`]
/// (lets several matrices with the same input share one quantization).
pub fn matmul_quantized(pool: &ThreadPool, w: &QMatrix, act: &[u8], t: usize, out: &mut [f32]) {
    let at = quants::act_type(w.ty).expect("checked by QMatrix::new");
    let arb = quants::row_bytes(at, w.cols);
    assert_eq!(act.len(), t * arb, "matmul: quantized activation shape");
    assert_eq!(out.len(), t * w.rows, "matmul: output shape");
    let rows = w.rows;
    let wrb = w.row_bytes();
    let n_threads = pool.n_threads();
    // Enough chunks for dynamic balance, each a multiple of the row tile.
    let target = rows.div_ceil(n_threads * 8).max(ROW_TILE);
    let chunk = target.div_ceil(ROW_TILE) * ROW_TILE;
    let out_ptr = SendPtr(out.as_mut_ptr());
    let (ty, cols, data) = (w.ty, w.cols, w.data);
    pool.for_each_chunk(rows, chunk, |r0, r1| {
        let mut tile = [0f32; ROW_TILE * TOK_TILE];
        let mut c0 = 0;
        while c0 < t {
            let nc = (t - c0).min(TOK_TILE);
            let mut r = r0;
            while r < r1 {
                let nr = (r1 - r).min(ROW_TILE);
                quants::dot_tile(
                    ty,
                    cols,
                    &data[r * wrb..(r + nr) * wrb],
                    wrb,
                    nr,
                    &act[c0 * arb..(c0 + nc) * arb],
                    arb,
                    nc,
                    &mut tile,
                    TOK_TILE,
                );
                for i in 0..nr {
                    for c in 0..nc {
                        // SAFETY: rows r0..r1 of every token belong to this chunk alone.
                        unsafe {
                            *out_ptr.get().add((c0 + c) * rows + r + i) = tile[i * TOK_TILE + c]
                        };
                    }
                }
                r += nr;
            }
            c0 += nc;
        }
    });
}
