//! The sampling head's host side: requests packed for `sample_head`
//! (kernels/sample.cu) and its answers read back as the engine's [`HeadResult`]s.
//! The arithmetic is `hangar_engine::sampler::head::reference`.

use hangar_engine::sampler::head::HEAD_CANDIDATES;
use hangar_engine::sampler::{HeadRequest, HeadResult};

/// The largest vocabulary whose skip bitmap fits the kernel's shared memory beside
/// its own ~10 KiB (48 KiB without opting in).
pub const HEAD_MAX_VOCAB: usize = 294_912;

/// One upload holding every request of a launch, and where each array starts.
pub struct PackedHead {
    pub bytes: Vec<u8>,
    pub inv_t: usize,
    pub u: usize,
    pub want: usize,
    pub off: usize,
    pub skips: usize,
}

fn align(v: &mut Vec<u8>, to: usize) -> usize {
    v.resize(v.len().next_multiple_of(to), 0);
    v.len()
}

/// `inv_t` (f32 per row), `u` (f64), `want` (i32), skip offsets (i32, n + 1), then
/// the skips (id, bias, rep, pen: four 32-bit words each).
pub fn pack_head_requests(reqs: &[HeadRequest]) -> PackedHead {
    let mut b = Vec::new();
    let inv_t = align(&mut b, 8);
    reqs.iter()
        .for_each(|r| b.extend_from_slice(&r.inv_t.to_le_bytes()));
    let u = align(&mut b, 8);
    reqs.iter()
        .for_each(|r| b.extend_from_slice(&r.u.to_le_bytes()));
    let want = align(&mut b, 8);
    reqs.iter()
        .for_each(|r| b.extend_from_slice(&i32::from(r.candidates).to_le_bytes()));
    let off = align(&mut b, 8);
    let mut total = 0i32;
    b.extend_from_slice(&total.to_le_bytes());
    for r in reqs {
        total += r.skips.len() as i32;
        b.extend_from_slice(&total.to_le_bytes());
    }
    let skips = align(&mut b, 16);
    for s in reqs.iter().flat_map(|r| &r.skips) {
        b.extend_from_slice(&s.id.to_le_bytes());
        b.extend_from_slice(&s.bias.to_le_bytes());
        b.extend_from_slice(&s.rep.to_le_bytes());
        b.extend_from_slice(&s.pen.to_le_bytes());
    }
    align(&mut b, 16);
    PackedHead {
        bytes: b,
        inv_t,
        u,
        want,
        off,
        skips,
    }
}

/// Bytes of the answers of `n` rows: eight u32 per row (argmax id, its value, the
/// draw, the candidates written, the draw's logit, three unused), two f64 per row,
/// then (when any row wants them) `HEAD_CANDIDATES` values and ids per row. Read back
/// only as far as needed.
pub fn head_out_bytes(n: usize, with_candidates: bool) -> usize {
    let cands = if with_candidates {
        8 * HEAD_CANDIDATES * n
    } else {
        0
    };
    48 * n + cands
}

/// Where the f64 sums and the candidates' values and ids start in the answers.
pub fn head_out_offsets(n: usize) -> (usize, usize, usize) {
    (32 * n, 48 * n, 48 * n + 4 * HEAD_CANDIDATES * n)
}

fn word(raw: &[u8], at: usize) -> u32 {
    raw.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes)
}

/// The answers in `raw` (laid out as [`head_out_bytes`] says), candidates sorted
/// most likely first (ties: lower id first).
pub fn unpack_head_results(raw: &[u8], reqs: &[HeadRequest], vocab: usize) -> Vec<HeadResult> {
    let n = reqs.len();
    let (sums, cval, cid) = head_out_offsets(n);
    reqs.iter()
        .enumerate()
        .map(|(i, r)| {
            let z1_at = sums + 16 * i + 8;
            let z1 = raw
                .get(z1_at..z1_at + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(0.0, f64::from_le_bytes);
            let mut cands: Vec<(f32, u32)> = if r.candidates {
                let k = (word(raw, 32 * i + 12) as usize).min(HEAD_CANDIDATES.min(vocab));
                (0..k)
                    .map(|j| {
                        let at = 4 * (i * HEAD_CANDIDATES + j);
                        (f32::from_bits(word(raw, cval + at)), word(raw, cid + at))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            cands.sort_unstable_by(|a, b| {
                b.0.partial_cmp(&a.0)
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.1.cmp(&b.1))
            });
            HeadResult {
                max_id: word(raw, 32 * i),
                max: f32::from_bits(word(raw, 32 * i + 4)),
                pick: word(raw, 32 * i + 8),
                pick_logit: f32::from_bits(word(raw, 32 * i + 16)),
                z1,
                cands,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_engine::sampler::head::reference;
    use hangar_engine::sampler::HeadSkip;

    /// What the kernel writes for `results` (candidates in reverse, as its atomic
    /// slots may leave them), read back through `unpack_head_results`.
    #[test]
    fn answers_round_trip_through_the_kernels_layout() {
        let vocab = 700;
        let row = |s: u32| -> Vec<f32> {
            (0..vocab as u32)
                .map(|i| ((i * 2_654_435_761u32.wrapping_add(s)) >> 20) as f32 / 512.0 - 4.0)
                .collect()
        };
        let reqs = vec![
            HeadRequest {
                inv_t: 1.0,
                u: 0.3,
                candidates: false,
                skips: vec![],
            },
            HeadRequest {
                inv_t: 1.25,
                u: 0.9,
                candidates: true,
                skips: vec![HeadSkip {
                    id: 5,
                    bias: 1.0,
                    rep: 1.1,
                    pen: 0.2,
                }],
            },
        ];
        let want: Vec<HeadResult> = reqs
            .iter()
            .enumerate()
            .map(|(i, r)| reference(&row(i as u32), r))
            .collect();
        let n = reqs.len();
        let (sums, cval, cid) = head_out_offsets(n);
        let mut raw = vec![0u8; head_out_bytes(n, true)];
        let put = |raw: &mut Vec<u8>, at: usize, b: &[u8]| raw[at..at + b.len()].copy_from_slice(b);
        for (i, w) in want.iter().enumerate() {
            put(&mut raw, 32 * i, &w.max_id.to_le_bytes());
            put(&mut raw, 32 * i + 4, &w.max.to_bits().to_le_bytes());
            put(&mut raw, 32 * i + 8, &w.pick.to_le_bytes());
            put(&mut raw, 32 * i + 12, &(w.cands.len() as u32).to_le_bytes());
            put(&mut raw, 32 * i + 16, &w.pick_logit.to_bits().to_le_bytes());
            put(&mut raw, sums + 16 * i + 8, &w.z1.to_le_bytes());
            for (j, c) in w.cands.iter().rev().enumerate() {
                let at = 4 * (i * HEAD_CANDIDATES + j);
                put(&mut raw, cval + at, &c.0.to_bits().to_le_bytes());
                put(&mut raw, cid + at, &c.1.to_le_bytes());
            }
        }
        assert_eq!(unpack_head_results(&raw, &reqs, vocab), want);
        let p = pack_head_requests(&reqs);
        assert_eq!(p.skips % 16, 0);
        assert_eq!(p.bytes.len() % 16, 0);
        assert_eq!(&p.bytes[p.skips..p.skips + 4], &5u32.to_le_bytes());
        assert_eq!(&p.bytes[p.off + 4..p.off + 8], &0i32.to_le_bytes());
        assert_eq!(&p.bytes[p.off + 8..p.off + 12], &1i32.to_le_bytes());
    }
}
