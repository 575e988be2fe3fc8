//! The deferred RMSNorm of decode steps (kernels/mmvq.cu, "Deferred RMSNorm"): for
//! models without post-norms, the residual add quantizes `x * w` (the next norm's
//! weights) with each 32-block's sum of squares of `x` (`add_q8s`, no reduction
//! across the row), and the next GEMVs scale their sums by `1 / rms(x)`. It replaces
//! `add_norm_q8c`, whose two cluster-wide sums are a chain of latencies.
//! `HANGAR_CUDA_DEFER_NORM=0` turns it off. At batch 1 the streamed GEMVs do the add
//! themselves (`PendingAdd`; `HANGAR_CUDA_FUSE_ADD=0` keeps the `add_q8s` launch).

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

    /// `x + o` (`o` 0: none) into `xo` for `rows` token rows (`[x, o, w, xo]`), then
    /// that times `w` quantized and recorded as the int8 copy of `h` (the normed row
    /// the next GEMVs ask for), its norm deferred to them. Returns where the residual
    /// stream now is (`xo`, or `x` when there was nothing to add). At batch 1 with the
    /// streamed GEMVs the add is left to them (`PendingAdd`); any other reader of the
    /// copy launches `add_q8s` first.
    pub(super) fn add_q8s(
        &mut self,
        [x, o, w, xo]: [u64; 4],
        h: u64,
        rows: usize,
    ) -> Result<u64, CudaError> {
        self.settle_add()?;
        let n = self.cfg.d_model;
        let (q, d) = self.q8_buffers(rows * n)?;
        let ss = self.bufs.ss.get(&self.gpu, rows * n / 32 * 4)?;
        let xo = if o == 0 { 0 } else { xo };
        let add = PendingAdd {
            rows,
            x,
            o,
            w,
            xo,
            q,
            d,
            ss,
            written: xo == 0,
        };
        self.set_q8((h, rows, n, 0), q, d, ss);
        if self.fuse_add && self.stream_for(rows).is_some() {
            self.pending_add = Some(add);
        } else {
            self.launch_add(&add)?;
        }
        Ok(if o == 0 { x } else { xo })
    }

    fn launch_add(&mut self, a: &PendingAdd) -> Result<(), CudaError> {
        let n = self.cfg.d_model;
        let args = Args::new()
            .ptr(a.x)
            .ptr(a.o)
            .ptr(a.w)
            .i32(n as i32)
            .ptr(a.q)
            .ptr(a.d)
            .ptr(a.ss)
            .ptr(a.xo);
        self.gpu.launch(
            "add_q8s",
            (n.div_ceil(256) as u32, a.rows as u32, 1),
            (256, 1, 1),
            0,
            args,
        )
    }

    /// A streamed GEMV's last four arguments (kernels/mmvq.cu, `FusedAdd`) for an
    /// input whose int8 copy is at `xq`: the pending add's `x`, `o`, `w` and, for
    /// the first such launch, `xo`; zeros when the copy is written.
    pub(super) fn fused_add_args(&mut self, args: Args, xq: u64) -> Args {
        match self.pending_add.as_mut().filter(|a| a.q == xq) {
            Some(a) => {
                let xo = if a.written { 0 } else { a.xo };
                a.written = true;
                args.ptr(a.x).ptr(a.o).ptr(a.w).ptr(xo)
            }
            None => args.ptr(0).ptr(0).ptr(0).ptr(0),
        }
    }

    /// Launches the pending add before a kernel that reads its int8 copy at `xq`
    /// from memory.
    pub(super) fn materialize_add(&mut self, xq: u64) -> Result<(), CudaError> {
        match self.pending_add.filter(|a| a.q == xq) {
            Some(a) => {
                self.pending_add = None;
                self.launch_add(&a)
            }
            None => Ok(()),
        }
    }

    /// Ends the pending add's life (its int8 copy is about to be overwritten or
    /// forgotten): launched now if no streamed GEMV wrote its `x + o`.
    pub(super) fn settle_add(&mut self) -> Result<(), CudaError> {
        match self.pending_add.take() {
            Some(a) if !a.written => self.launch_add(&a),
            _ => Ok(()),
        }
    }
}

/// A residual add (`add_q8s`) not launched: the streamed GEMVs reading its int8 copy
/// do it in their prologue, each CTA for itself, the first launch also writing
/// `x + o` to `xo`. One kernel boundary fewer a deferred norm.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingAdd {
    rows: usize,
    x: u64,
    o: u64,
    w: u64,
    /// Where `x + o` goes (0: nothing added).
    xo: u64,
    /// The int8 copy's buffers: values, scales, sums of squares.
    q: u64,
    d: u64,
    ss: u64,
    /// Whether `x + o` is in `xo` (a streamed launch wrote it, or there is none).
    written: bool,
}
