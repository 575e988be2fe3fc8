//! The sampling head's side of the runner: one launch of `sample_head`
//! (kernels/sample.cu) over a step's head rows, and the check at load that the
//! device computes what `hangar_engine::sampler::head::reference` computes.

use super::CudaRunner;
use crate::gpu::{Args, DevBuf};
use crate::head::{head_out_bytes, head_out_offsets, pack_head_requests, unpack_head_results};
use crate::CudaError;
use hangar_engine::sampler::head::reference;
use hangar_engine::sampler::{HeadRequest, HeadSkip};

impl CudaRunner {
    /// The sampling head over logits rows `first..` of `lg`, one per request of
    /// `ModelRunner::set_head_requests` (`sample_head` in kernels/sample.cu; its
    /// arithmetic is `hangar_engine::sampler::head::reference`).
    pub(super) fn sample_heads(&mut self, lg: u64, first: usize) -> Result<(), CudaError> {
        let vocab = self.cfg.vocab_size;
        let n = self.head_reqs.len();
        let packed = pack_head_requests(&self.head_reqs);
        let want_cands = self.head_reqs.iter().any(|r| r.candidates);
        let any_skips = self.head_reqs.iter().any(|r| !r.skips.is_empty());
        let gpu = &self.gpu;
        let b = &mut self.bufs;
        let inp = b.head_in.get(gpu, packed.bytes.len())?;
        let out_bytes = head_out_bytes(n, want_cands);
        let out = b.head_out.get(gpu, head_out_bytes(n, true))?;
        b.head_in
            .buf()
            .map(|buf| buf.write(&packed.bytes))
            .transpose()?;
        let at = |off: usize| inp + off as u64;
        let (sums_at, cval_at, cid_at) = head_out_offsets(n);
        let (res, sums) = (out, out + sums_at as u64);
        let (cval, cid) = (out + cval_at as u64, out + cid_at as u64);
        let args = Args::new()
            .ptr(lg)
            .i32(vocab as i32)
            .i32(first as i32)
            .ptr(at(packed.inv_t))
            .ptr(at(packed.u))
            .ptr(at(packed.want))
            .ptr(at(packed.off))
            .ptr(at(packed.skips))
            .ptr(res)
            .ptr(sums)
            .ptr(cval)
            .ptr(cid);
        let smem = if any_skips { vocab.div_ceil(32) * 4 } else { 0 };
        self.gpu.launch(
            "sample_head",
            (n as u32, 1, 1),
            (1024, 1, 1),
            smem as u32,
            args,
        )?;
        let mut raw = vec![0u8; out_bytes];
        if let Some(buf) = self.bufs.head_out.buf() {
            buf.read(&mut raw[..])?;
        }
        self.head_results = unpack_head_results(&raw, &self.head_reqs, vocab);
        Ok(())
    }

    /// Runs the sampling head once on rows of this vocabulary's size (spread and
    /// tied logits, NaN, a banned id, penalties, candidates) and compares every answer
    /// with the host's [`hangar_engine::sampler::head::reference`], bit for bit. A
    /// device that disagrees keeps its rows on the host path instead of sampling wrong.
    pub fn check_sample_head(&mut self) -> Result<(), String> {
        let vocab = self.cfg.vocab_size;
        let mut h = 0x2545_F491_4F6C_DD1Du64;
        let mut rows = Vec::with_capacity(3 * vocab);
        for r in 0..3 {
            for i in 0..vocab {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                rows.push(match (r, h % 97) {
                    (_, 0) => f32::NAN,
                    (1, _) => (h % 5) as f32 - 2.0,
                    _ => ((h >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 12.0 + (i % 3) as f32,
                });
            }
        }
        let skip = |id: usize, bias: f32, rep: f32, pen: f32| HeadSkip {
            id: (id % vocab) as u32,
            bias,
            rep,
            pen,
        };
        let mut skips = vec![
            skip(1, f32::NEG_INFINITY, 1.0, 0.0),
            skip(vocab / 2, 0.0, 1.3, 0.75),
            skip(vocab - 1, 2.0, 0.8, -0.5),
        ];
        skips.sort_unstable_by_key(|s| s.id);
        skips.dedup_by_key(|s| s.id);
        let reqs = vec![
            HeadRequest {
                inv_t: 1.0,
                u: 0.6180339887,
                candidates: false,
                skips: Vec::new(),
            },
            HeadRequest {
                inv_t: 1.0 / 0.7,
                u: 0.25,
                candidates: true,
                skips: skips.clone(),
            },
            HeadRequest {
                inv_t: 2.0,
                u: 0.999,
                candidates: true,
                skips,
            },
        ];
        let buf = DevBuf::upload(&self.gpu, &rows).map_err(|e| e.to_string())?;
        self.head_reqs = reqs;
        let ran = self.sample_heads(buf.ptr, 0).and_then(|()| self.gpu.sync());
        let reqs = std::mem::take(&mut self.head_reqs);
        let got = std::mem::take(&mut self.head_results);
        ran.map_err(|e| format!("its self-check failed to run: {e}"))?;
        for (i, (req, got)) in reqs.iter().zip(&got).enumerate() {
            let want = reference(&rows[i * vocab..(i + 1) * vocab], req);
            if *got != want {
                return Err(format!(
                    "its self-check disagreed with the host on row {i}: argmax {}/{}, pick {}/{}, z1 {}/{}, {} of {} candidates equal",
                    got.max_id,
                    want.max_id,
                    got.pick,
                    want.pick,
                    got.z1,
                    want.z1,
                    got.cands.iter().zip(&want.cands).filter(|(a, b)| a == b).count(),
                    want.cands.len()
                ));
            }
        }
        Ok(())
    }
}
