//! GEMV epilogues that make the next GEMV's int8 input (kernels/mmvq.cu, "Deferred
//! RMSNorm and fused quantization"): on decode steps of models without post-norms,
//! the output and down projections add their rows into the residual stream and
//! quantize `x * w` (the next norm's weights) with each 32-block's sum of squares,
//! and the next GEMV scales its sums by `1 / rms(x)`; the gate/up GEMV quantizes its
//! output for the down projection. The `add_norm_q8` and `quantize_q8_1` launches
//! between the GEMVs, and the grid-wide waits they cost, go away.
//!
//! `HANGAR_CUDA_DEFER_NORM=0` and `HANGAR_CUDA_ACT_Q8=0` turn each part off.

use super::{has_int8_gemv, CudaRunner, GemvChoice, Q8Key};
use crate::gpu::{Args, DevBuf};
use crate::CudaError;

/// Where a matrix input's int8 copy is: its key, the values and scales, and the
/// per-32 sums of squares of the un-normed row when the copy is of `x * w` with the
/// norm deferred to the GEMV (0: the copy is of the input itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Q8Of {
    pub key: Q8Key,
    pub q: u64,
    pub d: u64,
    pub ss: u64,
}

/// The epilogue arguments of an `mvs`/`mvp` launch (`EPI_PARAMS` in mmvq.cu, after
/// the input's sums of squares and eps).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Epi {
    /// The residual stream: the launch adds its rows there instead of writing Y.
    pub resid: u64,
    /// The next norm's weights (0: quantize the outputs as they are).
    pub norm_w: u64,
    pub cnt: u64,
    /// The int8 copy written (0: no epilogue).
    pub q: u64,
    pub d: u64,
    /// Per-32 sums of squares (0: not wanted).
    pub ss: u64,
}

impl Epi {
    /// Appends the input's sums of squares `xs` (0: normed input), `eps` and the
    /// epilogue to a launch's arguments.
    pub fn push(&self, args: Args, xs: u64, eps: f32) -> Args {
        args.ptr(xs)
            .f32(eps)
            .ptr(self.resid)
            .ptr(self.norm_w)
            .ptr(self.cnt)
            .ptr(self.q)
            .ptr(self.d)
            .ptr(self.ss)
    }
}

/// Group counters kept at least this many (zeroed once, reset by the kernels).
const MIN_COUNTERS: usize = 1 << 12;

impl CudaRunner {
    /// The sums of squares that go with the int8 copy of input `key`, if it is the
    /// current copy (0 otherwise, or when the copy is of a normed row).
    pub(super) fn q8_ss(&self, key: Q8Key) -> u64 {
        self.q8_of.filter(|r| r.key == key).map_or(0, |r| r.ss)
    }

    /// The counters of an epilogue over `n` (token tile, group) pairs, zero.
    fn counters(&mut self, n: usize) -> Result<u64, CudaError> {
        if self.bufs.cnt.as_ref().is_none_or(|b| b.bytes < n * 4) {
            self.bufs.cnt = None;
            let zeros = vec![0i32; n.next_power_of_two().max(MIN_COUNTERS)];
            self.bufs.cnt = Some(DevBuf::upload(&self.gpu, &zeros)?);
        }
        Ok(self.bufs.cnt.as_ref().map_or(0, |b| b.ptr))
    }

    /// An epilogue writing `ntok` rows of `rows` values as the int8 copy of `key`,
    /// into the buffers the launch does not read (its input is in `input_q`), with
    /// sums of squares when `with_ss`. Records the copy as current: the caller
    /// launches it next.
    pub(super) fn epilogue(
        &mut self,
        key: u64,
        input_q: u64,
        ntok: usize,
        rows: usize,
        with_ss: bool,
    ) -> Result<Epi, CudaError> {
        let n = ntok * rows;
        let tiles = ntok.div_ceil(super::gemv_tile(ntok));
        let cnt = self.counters(tiles * rows / 32)?;
        let b = &mut self.bufs;
        // (Compared before any `get`: growing the pair the launch reads would free it.)
        let (q, d, ss) = if b.xq.buf().is_some_and(|a| a.ptr == input_q) {
            (
                b.yq.get(&self.gpu, n)?,
                b.yd.get(&self.gpu, n / 32 * 8)?,
                b.ss_b.get(&self.gpu, n / 32 * 4)?,
            )
        } else {
            (
                b.xq.get(&self.gpu, n)?,
                b.xd.get(&self.gpu, n / 32 * 8)?,
                b.ss_a.get(&self.gpu, n / 32 * 4)?,
            )
        };
        let ss = if with_ss { ss } else { 0 };
        self.q8_of = Some(Q8Of {
            key: (key, ntok, rows, 0),
            q,
            d,
            ss,
        });
        self.xf_of = None;
        Ok(Epi {
            cnt,
            q,
            d,
            ss,
            ..Epi::default()
        })
    }

    /// Whether a decode step's GEMV of matrix `m` can carry an epilogue: an int8
    /// `mvs` launch (not cuBLAS, not the one-wave kernels) with rows in whole 32-blocks.
    pub(super) fn epilogue_fits(&self, m: usize, ntok: usize) -> bool {
        let w = self.mat(m);
        self.split
            && self.gemv == GemvChoice::Int8
            && has_int8_gemv(w.kind)
            && ntok < self.gemm_min
            && w.rows.is_multiple_of(32)
            && self.wave_blocks == 0
    }

    /// `x += W_m a` for the `ntok` rows of `a` (matrix `m`, the output or down
    /// projection), with `x * norm_w` quantized in the same launch as the int8 input
    /// of `next` (the key the next GEMVs ask for) and its norm deferred to them.
    /// False, with nothing done, where the launch cannot carry the epilogue.
    pub(super) fn matmul_resid_norm(
        &mut self,
        m: usize,
        a: u64,
        ntok: usize,
        x: u64,
        norm_w: u64,
        next: u64,
    ) -> Result<bool, CudaError> {
        if !self.epilogue_fits(m, ntok) {
            return Ok(false);
        }
        let w = self.mat(m);
        let (kind, rows, cols, rb, wp) = (w.kind, w.rows, w.cols, w.row_bytes, w.buf.ptr);
        let (xq, xd) = self.quantize_x(a, ntok, cols, 0)?;
        let xs = self.q8_ss((a, ntok, cols, 0));
        let mut epi = self.epilogue(next, xq, ntok, rows, true)?;
        epi.resid = x;
        epi.norm_w = norm_w;
        self.launch_mvs(&[(wp, rb, rows, 0)], kind, cols, (xq, xd, xs), ntok, &epi)?;
        Ok(true)
    }

    /// Whether every matrix in `ms` takes the int8 `mvs`/`mvp` path on a step of
    /// `ntok` rows: the consumers of a deferred norm must all scale their sums.
    pub(super) fn all_int8(&self, ms: &[usize], ntok: usize) -> bool {
        ms.iter().all(|&m| {
            let w = self.mat(m);
            self.split
                && self.gemv == GemvChoice::Int8
                && has_int8_gemv(w.kind)
                && ntok < self.gemm_min
        })
    }
}
