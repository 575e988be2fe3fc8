//! The deferred RMSNorm of decode steps (kernels/mmvq.cu, "Deferred RMSNorm"): for
//! models without post-norms, the residual add quantizes `x * w` (the next norm's
//! weights) with each 32-block's sum of squares of `x` (`add_q8s`, no reduction
//! across the row), and the next GEMVs scale their sums by `1 / rms(x)`. It replaces
//! `add_norm_q8c`, whose two cluster-wide sums are a chain of latencies.
//! `HANGAR_CUDA_DEFER_NORM=0` turns it off.

use super::{has_int8_gemv, CudaRunner, Q8Key};
use crate::gpu::Args;
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

impl CudaRunner {
    /// The sums of squares that go with the int8 copy of input `key`, if it is the
    /// current copy (0 otherwise, or when the copy is of a normed row).
    pub(super) fn q8_ss(&self, key: Q8Key) -> u64 {
        self.q8_of.filter(|r| r.key == key).map_or(0, |r| r.ss)
    }

    /// Whether every matrix in `ms` has an int8 GEMV: on a fused decode step (split
    /// int8 GEMVs, below `gemm_min`) each then reads its input through `mvs`/`mvp`,
    /// which apply a deferred norm (`matmul` refuses any other reader).
    pub(super) fn all_int8(&self, ms: &[usize]) -> bool {
        ms.iter().all(|&m| has_int8_gemv(self.mat(m).kind))
    }

    /// The buffers of an int8 copy of `n` values: the values and per-32 (d, d sum q).
    pub(super) fn q8_buffers(&mut self, n: usize) -> Result<(u64, u64), CudaError> {
        let xq = self.bufs.xq.get(&self.gpu, n)?;
        let xd = self.bufs.xd.get(&self.gpu, n / 32 * 8)?;
        Ok((xq, xd))
    }

    /// Records the int8 copy now current: of input `key`, in `q`/`d`, with the
    /// sums of squares `ss` of a deferred norm (0: none).
    pub(super) fn set_q8(&mut self, key: Q8Key, q: u64, d: u64, ss: u64) {
        self.q8_of = Some(Q8Of { key, q, d, ss });
        self.xf_of = None;
    }

    /// `x += o` (`o` 0: none) for `rows` token rows, then `x * w` quantized and
    /// recorded as the int8 copy of `h` (the normed row the next GEMVs ask for), its
    /// norm deferred to them.
    pub(super) fn add_q8s(
        &mut self,
        x: u64,
        o: u64,
        w: u64,
        h: u64,
        rows: usize,
    ) -> Result<(), CudaError> {
        let n = self.cfg.d_model;
        let (xq, xd) = self.q8_buffers(rows * n)?;
        let xs = self.bufs.ss.get(&self.gpu, rows * n / 32 * 4)?;
        let args = Args::new()
            .ptr(x)
            .ptr(o)
            .ptr(w)
            .i32(n as i32)
            .ptr(xq)
            .ptr(xd)
            .ptr(xs);
        self.gpu.launch(
            "add_q8s",
            (n.div_ceil(256) as u32, rows as u32, 1),
            (256, 1, 1),
            0,
            args,
        )?;
        self.set_q8((h, rows, n, 0), xq, xd, xs);
        Ok(())
    }
}
