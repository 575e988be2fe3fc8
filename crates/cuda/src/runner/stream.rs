//! Launch shapes of the streamed batch-1 GEMVs (`mvst_*` / `mvpt_*`, kernels/mmvq.cu,
//! "Streamed batch-1 GEMVs"): a persistent grid, each CTA a contiguous run of rows,
//! one producer thread keeping a ring of stages of weights in flight with the copy
//! engine. The ring lives in dynamic shared memory, sized here.

use crate::gpu::DeviceInfo;

/// Weight blocks of each row a stage holds (the kernel's `STK`) and the ring's
/// largest size (`ST_MAXS`).
const STK: usize = 16;
const MAX_STAGES: usize = 8;
/// Shared memory a block takes beside its ring: the 1 KiB the system keeps a block,
/// the static barriers, and slack.
const PER_BLOCK_RESERVE: usize = 3 << 10;

/// The kernels, for their shared-memory opt-in at load.
pub(super) const STREAM_KERNELS: [&str; 4] = ["mvst_q4_k", "mvst_q6_k", "mvpt_q4_k", "mvpt_q6_k"];

/// Whether and how the streamed GEMVs run: on sm_90+ (the copy engine's bulk copies
/// and mbarrier transaction counts) unless `HANGAR_CUDA_STREAM=0`. Two CTAs an SM of
/// eight consumer warps each (docs/GPU.md runs 39-41: +7-9% at batch 1 on the 8B
/// shape over the hoisted kernels; one CTA of 8 or 16 warps was level or slower, and
/// two of ten slower: the consumers' dp4a work, not the copies, bounded it).
/// `HANGAR_CUDA_STREAM_CTAS` (1 or 2 an SM), `HANGAR_CUDA_STREAM_WARPS` (4..16
/// consumer warps, rows of a stage) and `HANGAR_CUDA_STREAM_STAGES` (2..8) for A/B runs.
#[derive(Debug, Clone)]
pub(super) struct StreamCfg {
    sms: usize,
    /// Shared memory of an SM (H100/H200: 228 KiB), shared by its CTAs.
    smem_per_sm: usize,
    ctas_per_sm: usize,
    /// Consumer warps a block (the block is one more: the producer's).
    pub warps: usize,
    stages: Option<usize>,
    /// Dynamic shared memory a block may take (the device's opt-in limit less the
    /// kernels' static barriers).
    pub smem_max: usize,
}

impl StreamCfg {
    pub fn from_env(info: &DeviceInfo) -> Option<Self> {
        let on = std::env::var("HANGAR_CUDA_STREAM").as_deref() != Ok("0");
        let num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<usize>().ok());
        (on && info.compute_capability.0 >= 9 && info.smem_optin > 64 << 10).then(|| StreamCfg {
            sms: info.sm_count,
            smem_per_sm: info.smem_per_sm,
            ctas_per_sm: num("HANGAR_CUDA_STREAM_CTAS")
                .filter(|c| matches!(c, 1 | 2))
                .unwrap_or(2),
            warps: num("HANGAR_CUDA_STREAM_WARPS")
                .filter(|w| (4..=16).contains(w))
                .unwrap_or(8),
            stages: num("HANGAR_CUDA_STREAM_STAGES").filter(|s| (2..=MAX_STAGES).contains(s)),
            smem_max: info.smem_optin - 2048,
        })
    }

    /// The grid and dynamic shared memory of a launch over `rows` rows of `kind`, `cols`
    /// wide, `nmat` matrices a row (1: `mvst`, 2: `mvpt`), or None where the kernels do
    /// not apply: another type, or a copy that would not be 16-byte aligned (Q6_K rows
    /// of a number of blocks not a multiple of 8; `ptrs`: the weights and the int8
    /// input).
    pub fn shape(
        &self,
        kind: &str,
        rows: usize,
        cols: usize,
        rb: usize,
        nmat: usize,
        ptrs: &[u64],
    ) -> Option<(u32, u32)> {
        let bb = match kind {
            "q4_k" => 144,
            "q6_k" => 210,
            _ => return None,
        };
        let nb = cols / 256;
        let aligned = rb.is_multiple_of(16)
            && ((nb % STK) * bb).is_multiple_of(16)
            && ptrs.iter().all(|p| p.is_multiple_of(16));
        if rows == 0 || !cols.is_multiple_of(256) || rb != nb * bb || !aligned {
            return None;
        }
        let stage = nmat * self.warps * STK * bb;
        let act = cols + cols / 32 * 8;
        let budget = (self.smem_per_sm / self.ctas_per_sm)
            .checked_sub(PER_BLOCK_RESERVE)?
            .min(self.smem_max);
        let fit = budget.checked_sub(act)? / stage;
        let stages = self.stages.unwrap_or(MAX_STAGES).min(fit);
        if stages < 2 {
            return None;
        }
        let grid = (self.sms * self.ctas_per_sm).min(rows);
        Some((grid as u32, (stages * stage + act) as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ctas: usize) -> StreamCfg {
        StreamCfg {
            sms: 132,
            smem_per_sm: 228 << 10,
            ctas_per_sm: ctas,
            warps: 8,
            stages: None,
            smem_max: 227 << 10,
        }
    }

    #[test]
    fn shapes_of_the_8b_matrices() {
        let c = cfg(1);
        // gate/up, 4096 wide Q4_K: 36 KiB stages, six of them and the input.
        let (g, smem) = c.shape("q4_k", 14336, 4096, 2304, 2, &[0, 256]).unwrap();
        assert_eq!(g, 132);
        assert_eq!(smem as usize, 6 * 2 * 8 * 16 * 144 + 4096 + 1024);
        // down, 14336 wide Q6_K: 56 blocks a row, four stages a row group.
        let (_, smem) = c.shape("q6_k", 4096, 14336, 56 * 210, 1, &[0]).unwrap();
        assert!(smem as usize <= c.smem_max);
        // two CTAs an SM halve the ring.
        let (g2, smem2) = cfg(2).shape("q4_k", 14336, 4096, 2304, 2, &[0]).unwrap();
        assert_eq!(g2, 264);
        assert!(2 * (smem2 as usize + PER_BLOCK_RESERVE) <= 228 << 10);
        // An SM of 100 KiB (sm_120) holds two CTAs of two 18 KiB stages, not of 36.
        let small = StreamCfg {
            smem_per_sm: 100 << 10,
            smem_max: 99 << 10,
            ..cfg(2)
        };
        let (_, s) = small.shape("q4_k", 4096, 4096, 2304, 1, &[0]).unwrap();
        assert!(2 * (s as usize + PER_BLOCK_RESERVE) <= 100 << 10);
        assert!(small.shape("q4_k", 14336, 4096, 2304, 2, &[0]).is_none());
    }

    #[test]
    fn refuses_what_the_kernels_cannot_take() {
        let c = cfg(1);
        assert!(c.shape("q8_0", 4096, 4096, 4352, 1, &[0]).is_none());
        // Qwen2.5-7B's 3 584-wide rows: 14 blocks, a partial last step, take it in
        // Q4_K; in Q6_K (2 940 bytes, not a multiple of 16) they cannot be copied.
        assert!(c.shape("q4_k", 1024, 3584, 14 * 144, 1, &[0]).is_some());
        assert!(c.shape("q6_k", 1024, 3584, 14 * 210, 1, &[0]).is_none());
        assert!(c.shape("q6_k", 1024, 3072, 2520, 1, &[0]).is_none());
        assert!(c.shape("q4_k", 1024, 1000, 0, 1, &[0]).is_none());
        // a misaligned input
        assert!(c.shape("q4_k", 4096, 4096, 2304, 1, &[0, 8]).is_none());
        assert!(c.shape("q4_k", 0, 4096, 2304, 1, &[0]).is_none());
    }
}
