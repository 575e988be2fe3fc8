//! The streamed batch-1 GEMVs (kernels/mmvq.cu, `stream_body`) on the CPU: each CTA's
//! run of rows, the producer's stages (row group, column chunk, ring slot, the copies
//! and how they merge) and the consumers' reads of the ring, with the lanes'
//! arithmetic of [`kquant_lane`]. A slip in the ring's index math (a slot, an offset,
//! a merged copy's length, a barrier phase) gives other numbers than [`gemvq_row`].
//!
//! [`gemvq_row`]: super::gemvq_row

use super::{butterfly, kquant_lane};
use hangar_formats::GgmlType;

/// Weight blocks of a row a stage holds (`STK`).
pub const STK: usize = 16;

/// One launch: matrices at byte offsets of `mem` (for `mvst`, up to three matrices
/// whose rows follow each other as one run; for `mvpt`, gate and up of each row).
pub struct StreamLaunch<'a> {
    pub ty: GgmlType,
    pub mem: &'a [u8],
    /// (offset in `mem`, rows) of each matrix.
    pub mats: &'a [(usize, usize)],
    /// 1: `mvst`, 2: `mvpt`.
    pub nmat: usize,
    pub cols: usize,
    pub grid: usize,
    pub stages: usize,
    /// Consumer warps: rows of a stage.
    pub warps: usize,
}

impl StreamLaunch<'_> {
    fn bb(&self) -> usize {
        if self.ty == GgmlType::Q6K {
            210
        } else {
            144
        }
    }

    fn rows(&self) -> usize {
        if self.nmat == 2 {
            self.mats[0].1
        } else {
            self.mats.iter().map(|m| m.1).sum()
        }
    }

    /// Where row `g`'s `m`-th matrix starts in `mem` (the kernels' `row(m, g)`).
    fn row_at(&self, m: usize, g: usize) -> usize {
        let rb = self.cols / 256 * self.bb();
        if self.nmat == 2 {
            return self.mats[m].0 + g * rb;
        }
        let mut r = g;
        for &(off, rows) in self.mats {
            if r < rows {
                return off + r * rb;
            }
            r -= rows;
        }
        unreachable!("row {g} past the launch's rows")
    }

    /// The outputs before the scale and the activation: per matrix of the launch (for
    /// `mvpt`, gate's and up's sums of each row).
    pub fn run(&self, xq: &[i8], xd: &[[f32; 2]]) -> Vec<Vec<f32>> {
        let (bb, rows) = (self.bb(), self.rows());
        let (nb, s_count) = (self.cols / 256, self.stages);
        let nks = nb.div_ceil(STK);
        let slot = STK * bb;
        let nw = self.warps;
        let stage = self.nmat * nw * slot;
        let mut out = vec![vec![f32::NAN; rows]; self.nmat];
        for c in 0..self.grid {
            let r0 = c * rows / self.grid;
            let r1 = (c + 1) * rows / self.grid;
            let total = (r1 - r0).div_ceil(nw) * nks;
            let mut ring = vec![0u8; s_count * stage];
            let (mut fills, mut releases) = (vec![0usize; s_count], vec![0usize; s_count]);
            let mut acc = vec![[0f32; 32]; self.nmat * nw];
            for it in 0..total {
                let (s, g, kc) = (it % s_count, it / nks, it % nks);
                // The producer: it waits for the slot's previous use to be handed back
                // (the `empty` phase it / S - 1).
                if it >= s_count {
                    assert_eq!(
                        releases[s],
                        it / s_count,
                        "slot {s} reused before its release"
                    );
                }
                let (kb0, kn) = (kc * STK, STK.min(nb - kc * STK));
                let bytes = kn * bb;
                // Per matrix, runs of rows whose slices follow each other in memory
                // (whole rows only) go in one copy to consecutive slots.
                let (ra, n) = (r0 + g * nw, nw.min(r1 - (r0 + g * nw)));
                let base = s * stage;
                for m in 0..self.nmat {
                    let mut run: Option<(usize, usize, usize)> = None; // (src, slot, rows)
                    let flush = |run: Option<(usize, usize, usize)>, ring: &mut [u8]| {
                        if let Some((from, j, k)) = run {
                            let len = k * bytes;
                            ring[base + (m * nw + j) * slot..][..len]
                                .copy_from_slice(&self.mem[from..][..len]);
                        }
                    };
                    for j in 0..n {
                        let w = self.row_at(m, ra + j) + kb0 * bb;
                        match run {
                            Some((from, rj, k)) if bytes == slot && w == from + k * bytes => {
                                run = Some((from, rj, k + 1))
                            }
                            _ => {
                                flush(run, &mut ring);
                                run = Some((w, j, 1));
                            }
                        }
                    }
                    flush(run, &mut ring);
                }
                fills[s] += 1;
                // The consumers wait for the `full` phase it / S.
                assert_eq!(fills[s], it / s_count + 1);
                for w in 0..nw {
                    let r = r0 + g * nw + w;
                    if r >= r1 {
                        continue;
                    }
                    for m in 0..self.nmat {
                        let lanes = &mut acc[m * nw + w];
                        if kc == 0 {
                            *lanes = [0.0; 32];
                        }
                        let row = &ring[base + (m * nw + w) * slot..][..slot];
                        for (lane, a) in lanes.iter_mut().enumerate() {
                            // (A lane past the slice's end adds nothing.)
                            for i in (0..STK / 4).filter(|i| (lane >> 3) + 4 * i < kn) {
                                let bl = (lane >> 3) + 4 * i;
                                *a += kquant_lane(self.ty, &row[bl * bb..], kb0 + bl, lane, xq, xd);
                            }
                        }
                        if kc == nks - 1 {
                            out[m][r] = 0.0 + butterfly(*lanes);
                        }
                    }
                }
                releases[s] += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::{gemvq_row, quantize_q8_1};
    use super::*;
    use hangar_kernels::quants;
    use rand::{Rng, SeedableRng};

    fn random_matrix(
        ty: GgmlType,
        rows: usize,
        cols: usize,
        rng: &mut rand::rngs::StdRng,
    ) -> Vec<u8> {
        let rb = quants::row_bytes(ty, cols);
        let mut out = vec![0u8; rows * rb];
        for r in 0..rows {
            let src: Vec<f32> = (0..cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            quants::quantize_row(ty, &src, &mut out[r * rb..][..rb]).expect("quantize");
        }
        out
    }

    /// Every row through the ring equals the `mvs1`/`mvp1` arithmetic bit for bit:
    /// rows that are one stage (4 096 wide), several with a short last chunk (5 120:
    /// 16 + 4 blocks; 14 336: 3 x 16 + 8), fewer blocks than a chunk (2 048), partial
    /// last steps (3 584: 14 blocks; 18 944: 4 x 16 + 10; 2 560: 10), three
    /// matrices back to back (copies merge across them), CTAs whose runs are not whole
    /// row groups, and rings of two and three stages.
    #[test]
    fn streamed_gemv_schedule_matches_the_row_kernels() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(41);
        for (ty, cols) in [
            (GgmlType::Q4K, 4096),
            (GgmlType::Q4K, 5120),
            (GgmlType::Q4K, 2048),
            (GgmlType::Q4K, 3584),
            (GgmlType::Q4K, 18944),
            (GgmlType::Q6K, 2560),
            (GgmlType::Q6K, 4096),
            (GgmlType::Q6K, 14336),
        ] {
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let (xq, xd) = quantize_q8_1(&x);
            let rb = quants::row_bytes(ty, cols);
            let segs = [37usize, 8, 20];
            let mut mem = Vec::new();
            let mut mats = Vec::new();
            for &rows in &segs {
                mats.push((mem.len(), rows));
                mem.extend(random_matrix(ty, rows, cols, &mut rng));
            }
            let want = |off: usize, r: usize| {
                0.0 + gemvq_row(ty, &mem[off + r * rb..][..rb], &xq, &xd).expect("int8 kernel")
            };
            for (grid, stages, warps) in [(3, 2, 8), (7, 3, 8), (1, 2, 8), (2, 3, 16), (5, 2, 16)] {
                let mvs = StreamLaunch {
                    ty,
                    mem: &mem,
                    mats: &mats,
                    nmat: 1,
                    cols,
                    grid,
                    stages,
                    warps,
                };
                let got = mvs.run(&xq, &xd);
                let mut g = 0;
                for &(off, rows) in &mats {
                    for r in 0..rows {
                        assert_eq!(
                            got[0][g].to_bits(),
                            want(off, r).to_bits(),
                            "{ty:?} {cols} mvs row {g}"
                        );
                        g += 1;
                    }
                }
                // gate = the first 20 rows of matrix 0, up = matrix 2.
                let pair = [(mats[0].0, 20), (mats[2].0, 20)];
                let mvp = StreamLaunch {
                    mats: &pair,
                    nmat: 2,
                    ..mvs
                };
                let got = mvp.run(&xq, &xd);
                for (r, (g, u)) in got[0].iter().zip(&got[1]).enumerate() {
                    assert_eq!(g.to_bits(), want(mats[0].0, r).to_bits(), "{ty:?} gate {r}");
                    assert_eq!(u.to_bits(), want(mats[2].0, r).to_bits(), "{ty:?} up {r}");
                }
            }
        }
    }
}
