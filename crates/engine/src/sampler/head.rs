//! The sampling head: what a backend computes over a row of logits so that a sampled
//! token needs only a few numbers to cross from the device instead of the row.
//!
//! A request ([`HeadRequest`]) carries the sequence's per-token adjustments (its
//! logit bias and penalties, as one transform per adjusted id), its inverse
//! temperature and the uniform number its draw will use. The backend answers
//! ([`HeadResult`]) with the adjusted row's argmax, the token an untruncated draw
//! lands on, the top-p normaliser and, when the request truncates, the
//! [`HEAD_CANDIDATES`] most likely tokens. [`crate::sampler::Sampler::take_head`] turns
//! that into the token [`crate::sampler::Sampler::sample`] would pick, or says the
//! full row is needed (a nucleus wider than the candidates): then the row is fetched
//! and the host samples it with the same random number.
//!
//! [`reference`] is the arithmetic every backend must reproduce bit for bit: the CUDA
//! kernel `sample_head` runs it with [`HEAD_THREADS`] threads per row, each owning a
//! contiguous slice of the vocabulary, and sums in exactly the order written here.

use super::logit_math::{by_logit_desc, fast_exp};

/// The most likely tokens a head returns for a truncating request (top-k up to
/// this, and top-p / min-p nuclei that fit in it, never fetch the row).
pub const HEAD_CANDIDATES: usize = 256;
/// Adjusted ids (logit bias plus penalty window) a request may carry; a sequence
/// with more samples on the host.
pub const HEAD_MAX_SKIPS: usize = 1024;
/// Threads over one row; each owns `ceil(vocab / HEAD_THREADS)` consecutive ids.
pub const HEAD_THREADS: usize = 1024;
/// Threads whose partial sums one group adds (a warp).
const GROUP: usize = 32;

/// How one token's raw logit is adjusted, the sampler's own order: bias, then the
/// repetition penalty by sign, then presence and frequency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadSkip {
    pub id: u32,
    /// Added first (0 when the id has no bias).
    pub bias: f32,
    /// `l <= 0 ? l * rep : l / rep` (1 outside the penalty window).
    pub rep: f32,
    /// Subtracted last: `count * frequency + presence` (0 outside the window).
    pub pen: f32,
}

impl HeadSkip {
    /// The adjusted logit; NaN becomes `-inf` (the sampler's "impossible").
    #[inline]
    pub fn apply(&self, raw: f32) -> f32 {
        let l = raw + self.bias;
        let l = if l <= 0.0 { l * self.rep } else { l / self.rep };
        sanitize(l - self.pen)
    }
}

/// One sampled sequence's question to the head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadRequest {
    /// `1 / temperature` (0 for greedy: only the argmax is used).
    pub inv_t: f32,
    /// The uniform number in [0, 1) the draw uses.
    pub u: f64,
    /// Whether the request truncates (top-k, top-p or min-p): then candidates are
    /// wanted.
    pub candidates: bool,
    /// Adjusted ids, sorted, unique, at most [`HEAD_MAX_SKIPS`].
    pub skips: Vec<HeadSkip>,
}

/// What the head found in one adjusted row.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadResult {
    /// The argmax (ties: lowest id) and its adjusted logit.
    pub max_id: u32,
    pub max: f32,
    /// Where an untruncated draw with `u` lands (the running sum of
    /// `e^((l - max) / T)` in id order passes `u` times the total).
    pub pick: u32,
    /// `pick`'s adjusted logit (its log-probability's numerator).
    pub pick_logit: f32,
    /// `Σ e^(l - max)`: the top-p normaliser (and the log-sum-exp's).
    pub z1: f64,
    /// The `min(HEAD_CANDIDATES, vocab)` most likely (adjusted logit, id), most likely
    /// first (ties: lower id first); empty unless the request asked.
    pub cands: Vec<(f32, u32)>,
}

/// NaN → `-inf`; `-0` → `+0` (so that equal logits compare and order as equal).
#[inline]
fn sanitize(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else if l == 0.0 {
        0.0
    } else {
        l
    }
}

/// The temperature weight the draw walks (exactly 0 for `-inf`).
#[inline]
fn weight(l: f32, max: f32, inv_t: f32) -> f64 {
    if l == f32::NEG_INFINITY {
        0.0
    } else {
        fast_exp((l - max) * inv_t) as f64
    }
}

/// Thread `t`'s slice of a row of `n`.
fn slice(t: usize, n: usize) -> std::ops::Range<usize> {
    let per = n.div_ceil(HEAD_THREADS);
    (t * per).min(n)..((t + 1) * per).min(n)
}

/// Exclusive prefix sums of the per-thread partials, grouped as the kernel adds
/// them: a group's partials in order from 0, then the groups' sums in order. Returns
/// `HEAD_THREADS + 1` bounds (the last one the total).
fn group_prefix(part: &[f64]) -> Vec<f64> {
    let groups = HEAD_THREADS / GROUP;
    let mut base = vec![0f64; groups + 1];
    for g in 0..groups {
        let s = part[g * GROUP..(g + 1) * GROUP]
            .iter()
            .fold(0f64, |a, &x| a + x);
        base[g + 1] = base[g] + s;
    }
    let mut e = vec![0f64; HEAD_THREADS + 1];
    for (t, slot) in e.iter_mut().enumerate() {
        let g = t / GROUP;
        *slot = part[g * GROUP..t].iter().fold(base[g], |a, &x| a + x);
    }
    e
}

/// The head over one row of raw logits: what every backend's head computes.
pub fn reference(raw: &[f32], req: &HeadRequest) -> HeadResult {
    let n = raw.len();
    let adj = |i: usize| -> f32 {
        match req.skips.binary_search_by_key(&(i as u32), |s| s.id) {
            Ok(k) => req.skips[k].apply(raw[i]),
            Err(_) => sanitize(raw[i]),
        }
    };
    // Argmax: each thread's first largest, then the largest of those (lowest id).
    let (mut max_id, mut max) = (0u32, f32::NEG_INFINITY);
    let mut found = false;
    for t in 0..HEAD_THREADS {
        for i in slice(t, n) {
            let v = adj(i);
            if !found || v > max {
                (max_id, max, found) = (i as u32, v, true);
            }
        }
    }
    // Per-thread partial sums, in id order.
    let mut part_t = vec![0f64; HEAD_THREADS];
    let mut part_1 = vec![0f64; HEAD_THREADS];
    for t in 0..HEAD_THREADS {
        for i in slice(t, n) {
            let v = adj(i);
            part_t[t] += weight(v, max, req.inv_t);
            part_1[t] += weight(v, max, 1.0);
        }
    }
    let z1 = group_prefix(&part_1)[HEAD_THREADS];
    let bound = group_prefix(&part_t);
    let target = req.u * bound[HEAD_THREADS];
    // The first thread whose span passes the target, else the last with any weight.
    let chosen = (0..HEAD_THREADS)
        .find(|&t| part_t[t] > 0.0 && target < bound[t + 1])
        .map(|t| (t, true))
        .or_else(|| {
            (0..HEAD_THREADS)
                .rev()
                .find(|&t| part_t[t] > 0.0)
                .map(|t| (t, false))
        });
    let (pick, pick_logit) = match chosen {
        None => (max_id, max),
        Some((t, inside)) => {
            // The token where the running sum passes the target, else the slice's
            // last with any weight.
            let local = target - bound[t];
            let (mut acc, mut last) = (0f64, (max_id, max));
            for i in slice(t, n) {
                let v = adj(i);
                let w = weight(v, max, req.inv_t);
                if w > 0.0 {
                    acc += w;
                    last = (i as u32, v);
                    if inside && acc > local {
                        break;
                    }
                }
            }
            last
        }
    };
    let cands = if req.candidates {
        let mut all: Vec<(f32, u32)> = (0..n).map(|i| (adj(i), i as u32)).collect();
        let k = HEAD_CANDIDATES.min(n);
        if k > 0 && k < n {
            all.select_nth_unstable_by(k - 1, by_logit_desc);
        }
        all.truncate(k);
        all.sort_unstable_by(by_logit_desc);
        all
    } else {
        Vec::new()
    };
    HeadResult {
        max_id,
        max,
        pick,
        pick_logit,
        z1,
        cands,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::{Sampler, SamplingParams};

    /// xorshift, so rows are the same on every run.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn unit(&mut self) -> f32 {
            (self.next() >> 40) as f32 / (1u64 << 24) as f32
        }
        /// Roughly normal (sum of four uniforms).
        fn normal(&mut self) -> f32 {
            (0..4).map(|_| self.unit()).sum::<f32>() - 2.0
        }
    }

    /// Rows of several shapes: peaked, flat, few distinct values (ties), with banned
    /// (-inf) and NaN entries.
    fn row(g: &mut Gen, n: usize, kind: usize) -> Vec<f32> {
        (0..n)
            .map(|_| match kind {
                0 => 4.0 * g.normal(),
                1 => 0.3 * g.normal(),
                2 => (g.next() % 7) as f32 - 3.0,
                _ => match g.next() % 50 {
                    0 => f32::NEG_INFINITY,
                    1 => f32::NAN,
                    2 => -0.0,
                    _ => 2.0 * g.normal(),
                },
            })
            .collect()
    }

    fn params() -> Vec<SamplingParams> {
        let base = SamplingParams {
            seed: Some(7),
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            temperature: 1.0,
            ..SamplingParams::default()
        };
        let with = |f: &dyn Fn(&mut SamplingParams)| {
            let mut p = base.clone();
            f(&mut p);
            p
        };
        vec![
            base.clone(),
            with(&|p| p.temperature = 0.6),
            with(&|p| p.top_k = 40),
            with(&|p| p.top_k = 400),
            // Top-k at or past the vocabulary: no truncation, the head's own draw.
            with(&|p| p.top_k = 1_000_000),
            with(&|p| p.top_p = 0.9),
            with(&|p| p.top_p = 0.9999),
            with(&|p| p.min_p = 0.05),
            with(&|p| p.min_p = 0.0005),
            with(&|p| {
                *p = SamplingParams {
                    seed: Some(7),
                    ..SamplingParams::default()
                }
            }),
            with(&|p| {
                p.top_p = 0.95;
                p.min_p = 0.2;
            }),
            with(&|p| {
                p.repetition_penalty = 1.3;
                p.presence_penalty = 0.5;
                p.frequency_penalty = -0.3;
                p.logit_bias = vec![(3, 2.5), (1, f32::NEG_INFINITY), (900_000, 1.0)];
            }),
            with(&|p| {
                p.temperature = 0.0;
                p.repetition_penalty = 0.7;
                p.logit_bias = vec![(2, -1.0)];
            }),
            // Log-probabilities of the alternatives (the chosen token's are asked for
            // in every set on the second pass).
            with(&|p| p.n_logprobs = 3),
            with(&|p| {
                *p = SamplingParams {
                    seed: Some(7),
                    n_logprobs: 5,
                    ..SamplingParams::default()
                }
            }),
            with(&|p| {
                p.temperature = 0.0;
                p.n_logprobs = 2;
                p.presence_penalty = 0.5;
            }),
        ]
    }

    /// Log-probabilities equal to rounding (the head's log-sum-exp sums in f64, the
    /// host's in f32 lanes).
    fn close(a: f32, b: f32) -> bool {
        a == b || (a - b).abs() <= 1e-4
    }

    /// How far (as a fraction of the total) an untruncated draw's target is from the
    /// running sum at the end of token `at`, summed exactly in id order.
    fn boundary_gap(raw: &[f32], req: &HeadRequest, at: u32) -> f64 {
        let res = reference(raw, req);
        let adj = |i: usize| match req.skips.binary_search_by_key(&(i as u32), |s| s.id) {
            Ok(k) => req.skips[k].apply(raw[i]),
            Err(_) => sanitize(raw[i]),
        };
        let w: Vec<f64> = (0..raw.len())
            .map(|i| weight(adj(i), res.max, req.inv_t))
            .collect();
        let total: f64 = w.iter().sum();
        let upto: f64 = w[..=at as usize].iter().sum();
        ((upto - req.u * total) / total).abs()
    }

    /// Seed for seed, the head path (head, then `take_head`, else the full row) picks
    /// the tokens `Sampler::sample` picks from the full row, step after step.
    #[test]
    fn the_head_path_picks_what_the_host_sampler_picks() {
        let mut g = Gen(0x9E37_79B9_7F4A_7C15);
        let (mut via_head, mut via_row, mut on_boundary) = (0usize, 0usize, 0usize);
        let runs = params()
            .into_iter()
            .enumerate()
            .flat_map(|(pi, p)| [(pi, p.clone(), false), (pi, p, true)]);
        for (pi, p, logprob) in runs {
            for n in [1usize, 7, 300, 3000, 40_000] {
                for kind in 0..4 {
                    let mut host = Sampler::new(p.clone()).unwrap();
                    let mut dev = Sampler::new(p.clone()).unwrap();
                    host.set_logprob_wanted(logprob);
                    dev.set_logprob_wanted(logprob);
                    let mut history: Vec<u32> = Vec::new();
                    for step in 0..12 {
                        let r = row(&mut g, n, kind);
                        let want = host.sample(&mut r.clone(), &history);
                        let req = dev.head_request(&history).expect("eligible");
                        let res = reference(&r, &req);
                        let got = match dev.take_head(&req, &res, n) {
                            Some(t) => {
                                via_head += 1;
                                t
                            }
                            None => {
                                via_row += 1;
                                dev.sample(&mut r.clone(), &history)
                            }
                        };
                        if got.id != want.id {
                            // Only where the draw's target sits on the boundary between
                            // the two tokens, to the rounding of the two ways of summing.
                            let gap = boundary_gap(&r, &req, got.id.min(want.id));
                            assert!(
                                gap < 1e-6,
                                "params #{pi}, vocabulary {n}, row kind {kind}, step {step}: \
                                 {} vs {} ({gap:e} of the mass from the boundary)",
                                got.id,
                                want.id
                            );
                            on_boundary += 1;
                        } else {
                            let what =
                                format!("params #{pi}, vocabulary {n}, kind {kind}, step {step}");
                            assert!(
                                close(got.logprob, want.logprob),
                                "{what}: {got:?} vs {want:?}"
                            );
                            assert_eq!(got.top_logprobs.len(), want.top_logprobs.len(), "{what}");
                            for (g, w) in got.top_logprobs.iter().zip(&want.top_logprobs) {
                                assert!(g.0 == w.0 && close(g.1, w.1), "{what}: {g:?} vs {w:?}");
                            }
                        }
                        history.push(want.id);
                    }
                }
            }
        }
        // Both ways were taken: most tokens from the head; from the row, wide nuclei
        // (this test asks for many on purpose: top-k 400, top-p 0.9999 on flat rows).
        assert!(
            via_head > 2 * via_row && via_row > 0,
            "{via_head} / {via_row}"
        );
        assert!(
            on_boundary * 500 < via_head,
            "{on_boundary} ties of rounding"
        );
    }

    #[test]
    fn candidates_are_the_top_of_the_adjusted_row_with_ties_by_id() {
        let mut raw = vec![1.0f32; 600];
        raw[599] = 5.0;
        raw[10] = f32::NAN;
        let req = HeadRequest {
            inv_t: 1.0,
            u: 0.5,
            candidates: true,
            skips: vec![HeadSkip {
                id: 599,
                bias: -10.0,
                rep: 1.0,
                pen: 0.0,
            }],
        };
        let res = reference(&raw, &req);
        assert_eq!(res.cands.len(), HEAD_CANDIDATES);
        // 599 fell to -5; the ties at 1.0 come lowest id first, NaN (id 10) is -inf.
        let ids: Vec<u32> = res.cands.iter().map(|c| c.1).take(11).collect();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11]);
        assert_eq!((res.max_id, res.max), (0, 1.0));
        let z1 = 598.0 + (-6f64).exp();
        assert!((res.z1 - z1).abs() < 1e-5, "{}", res.z1);
    }
}
