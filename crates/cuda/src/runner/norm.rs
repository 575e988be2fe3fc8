//! The residual add, the next RMSNorm and the next int8 quantization in one launch
//! (`add_norm_q8`, kernels/mmvq.cu), and its thread-block-cluster form for sm_90+
//! (`add_norm_q8c`): a decode step's norm is one row, which on one block is bound by
//! that block's SM; the cluster spreads the row over up to eight SMs. The cluster
//! kernel is checked against the one-block kernel at load and is used only if they
//! agree.

use super::CudaRunner;
use crate::gpu::{Args, DevBuf};
use crate::CudaError;

/// Threads and values per thread of a cluster CTA (`ANC_T`, `ANC_E` in mmvq.cu).
const ANC_T: usize = 256;
const ANC_E: usize = 4;

/// CTAs per cluster for rows of `n`: the most of 8, 4, 2 that leaves each CTA a
/// slice of whole 32-blocks (the quantization's) within its registers; 0 when none does.
pub(crate) fn cluster_for(n: usize) -> u32 {
    [8usize, 4, 2]
        .into_iter()
        .find(|&cl| n.is_multiple_of(32 * cl) && n / cl <= ANC_T * ANC_E)
        .map_or(0, |cl| cl as u32)
}

impl CudaRunner {
    /// x += post(o) (when `o` is set), then h = rmsnorm(x) * w, and h quantized for
    /// the next int8 GEMV, in one launch.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_norm_q8(
        &mut self,
        x: u64,
        o: u64,
        post: u64,
        w: u64,
        h: u64,
        rows: usize,
    ) -> Result<(), CudaError> {
        let n = self.cfg.d_model;
        let (xq, xd) = self.q8_buffers(rows * n)?;
        let cl = if self.norm_cluster { cluster_for(n) } else { 0 };
        self.launch_add_norm(cl, (x, o, post, w, h), rows, xq, xd)?;
        self.set_q8((h, rows, n, 0), xq, xd, 0);
        Ok(())
    }

    /// One launch of the cluster kernel (`cl` CTAs a row) or of the one-block kernel
    /// (`cl` 0) on buffers (x, o, post, w, h).
    fn launch_add_norm(
        &mut self,
        cl: u32,
        (x, o, post, w, h): (u64, u64, u64, u64, u64),
        rows: usize,
        xq: u64,
        xd: u64,
    ) -> Result<(), CudaError> {
        let args = Args::new()
            .ptr(x)
            .ptr(o)
            .ptr(post)
            .ptr(w)
            .ptr(h)
            .i32(self.cfg.d_model as i32)
            .f32(self.cfg.rms_eps)
            .ptr(xq)
            .ptr(xd);
        if cl > 0 {
            self.gpu.launch_cluster(
                "add_norm_q8c",
                (cl, rows as u32, 1),
                (ANC_T as u32, 1, 1),
                0,
                cl,
                args,
            )
        } else {
            self.gpu
                .launch("add_norm_q8", (rows as u32, 1, 1), (1024, 1, 1), 0, args)
        }
    }

    /// Runs both kernels on the same synthetic rows (Gemma's post-norm, a plain
    /// residual add, a norm alone) and compares every output: the residual, the normed
    /// row, its int8 values and block scales. The f64 sums add in another order, so the
    /// f32 scale may differ in its last bit: values within 1e-5 relative and int8 steps
    /// within one are accepted.
    pub(super) fn check_norm_cluster(&mut self) -> Result<(), String> {
        let n = self.cfg.d_model;
        let cl = cluster_for(n);
        if cl == 0 {
            return Err(format!("no cluster size splits rows of {n}"));
        }
        let rows = 3;
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = |scale: f32| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        };
        let x: Vec<f32> = (0..rows * n)
            .map(|i| rnd(4.0) + (i % 7) as f32 * 0.1)
            .collect();
        let o: Vec<f32> = (0..rows * n).map(|_| rnd(2.0)).collect();
        let pw: Vec<f32> = (0..n).map(|_| 1.0 + rnd(1.0)).collect();
        let w: Vec<f32> = (0..n).map(|_| 1.0 + rnd(0.5)).collect();
        let run = |r: &mut Self, cl: u32, with_o: bool, with_post: bool| {
            let e = |e: CudaError| e.to_string();
            let xb = DevBuf::upload(&r.gpu, &x).map_err(e)?;
            let ob = DevBuf::upload(&r.gpu, &o).map_err(e)?;
            let pb = DevBuf::upload(&r.gpu, &pw).map_err(e)?;
            let wb = DevBuf::upload(&r.gpu, &w).map_err(e)?;
            let hb = DevBuf::alloc(&r.gpu, rows * n * 4).map_err(e)?;
            let qb = DevBuf::alloc(&r.gpu, rows * n).map_err(e)?;
            let db = DevBuf::alloc(&r.gpu, rows * n / 32 * 8).map_err(e)?;
            let bufs = (
                xb.ptr,
                if with_o { ob.ptr } else { 0 },
                if with_post { pb.ptr } else { 0 },
                wb.ptr,
                hb.ptr,
            );
            r.launch_add_norm(cl, bufs, rows, qb.ptr, db.ptr)
                .and_then(|()| r.gpu.sync())
                .map_err(e)?;
            let (mut xo, mut ho) = (vec![0f32; rows * n], vec![0f32; rows * n]);
            let mut qo = vec![0i8; rows * n];
            let mut d = vec![0f32; rows * n / 32 * 2];
            xb.read(&mut xo).map_err(e)?;
            hb.read(&mut ho).map_err(e)?;
            qb.read(&mut qo).map_err(e)?;
            db.read(&mut d).map_err(e)?;
            Ok::<_, String>((xo, ho, qo, d))
        };
        for (with_o, with_post) in [(true, true), (true, false), (false, false)] {
            let want = run(self, 0, with_o, with_post)?;
            let got = run(self, cl, with_o, with_post)?;
            let close = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .all(|(&a, &b)| (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-30)
            };
            let case = format!("residual {with_o}, post-norm {with_post}");
            if !close(&want.0, &got.0) || !close(&want.1, &got.1) || !close(&want.3, &got.3) {
                return Err(format!(
                    "{case}: its values differ from the one-block kernel's"
                ));
            }
            if want
                .2
                .iter()
                .zip(&got.2)
                .any(|(&a, &b)| (a as i32 - b as i32).abs() > 1)
            {
                return Err(format!(
                    "{case}: its int8 values differ from the one-block kernel's"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::cluster_for;

    #[test]
    fn clusters_split_rows_into_whole_blocks_that_fit_the_registers() {
        assert_eq!(cluster_for(4096), 8); // Llama 3 8B: 512 a CTA
        assert_eq!(cluster_for(8192), 8); // 70B: 1024 a CTA, the most
        assert_eq!(cluster_for(640), 4); // Gemma 3 270M: 160 a CTA
        assert_eq!(cluster_for(1152), 4); // Gemma 3 1B
        assert_eq!(cluster_for(5376), 8); // Gemma 3 27B: 672 a CTA
        assert_eq!(cluster_for(96), 0); // 32 a CTA would need n % 64
        assert_eq!(cluster_for(16384), 0); // 2048 a CTA: too many
        for n in (32..20000).step_by(32) {
            let cl = cluster_for(n) as usize;
            if cl > 0 {
                assert!(n.is_multiple_of(32 * cl) && n / cl <= 1024, "{n}");
            }
        }
    }
}
