//! The sampler chain for one sequence: bias and penalties, log-probabilities, then
//! greedy pick or truncated draw. Owns the RNG stream; holds no model state.

use super::head::{HeadRequest, HeadResult, HeadSkip, HEAD_CANDIDATES, HEAD_MAX_SKIPS};
use super::logit_math::{argmax, argmax_checked, log_sum_exp, top_n};
use super::penalties::{apply_bias, apply_penalties};
use super::rng::Rng;
use super::truncation::{distribution, draw, draw_from, truncate_top};
use super::{SamplerError, SamplingParams, MAX_LOGPROBS};
use hangar_kernels::packed::GreedyPick;

/// The chosen token with its log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub id: u32,
    /// Log-probability of `id` (log-softmax after bias and penalties, before
    /// temperature and truncation).
    pub logprob: f32,
    /// The `n_logprobs` most likely tokens and their log-probabilities, most likely
    /// first (ties: lower id first).
    pub top_logprobs: Vec<(u32, f32)>,
}

/// Picks tokens from logits. One per sequence: it owns the RNG stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Scratch: (logit, id) candidates.
    cands: Vec<(f32, u32)>,
    /// Scratch: a copy of the logits for [`Sampler::sample_from`].
    copy: Vec<f32>,
    /// Scratch: (token, count) of the penalty window.
    counts: Vec<(u32, u32)>,
    /// Scratch: the target distribution in [`Sampler::verify`].
    dist: Vec<(u32, f64)>,
    /// Whether the chosen token's log-probability is reported (it costs a
    /// vocabulary-wide log-sum-exp per token).
    want_logprob: bool,
}

impl Sampler {
    /// A sampler for `params`, after checking their ranges.
    pub fn new(params: SamplingParams) -> Result<Sampler, SamplerError> {
        params.validate()?;
        let seed = params.seed.unwrap_or_else(rand::random);
        Ok(Sampler {
            params,
            rng: Rng::new(seed),
            cands: Vec::new(),
            copy: Vec::new(),
            counts: Vec::new(),
            dist: Vec::new(),
            want_logprob: true,
        })
    }

    /// With `false`, [`SampledToken::logprob`] is not computed (reads -inf) unless top logprobs are asked
    /// for, and greedy sampling skips the vocabulary-wide log-sum-exp (a server
    /// decoding many streams that asked for no logprobs).
    pub fn set_logprob_wanted(&mut self, want: bool) {
        self.want_logprob = want;
    }

    /// Whether sampling from the unmasked logits, then rejecting a token the grammar
    /// forbids and sampling again after masking, picks tokens with exactly the
    /// distribution of sampling after masking. True for greedy (the unmasked argmax,
    /// when allowed, is the masked argmax: bias and penalties act per token) and for
    /// plain temperature sampling (P(x) = p(x) + (1 − Z)·p(x)/Z = p(x)/Z, Z the
    /// allowed mass); not with top-k/top-p/min-p, whose cut depends on which tokens
    /// are masked, nor when log-probabilities are reported (they are over the
    /// allowed tokens).
    pub fn exact_without_mask(&self) -> bool {
        let p = &self.params;
        let untruncated = p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0;
        !self.want_logprob && p.n_logprobs == 0 && (p.temperature == 0.0 || untruncated)
    }

    /// The tokens this sampler adjusts (its `logit_bias` ids, sorted), when its pick is
    /// the plain argmax after those adjustments: greedy, no penalties, no
    /// log-probabilities. A backend's greedy head can then pick without writing the
    /// logits ([`Sampler::take_greedy`]). `None` otherwise.
    pub fn greedy_skips(&self) -> Option<Vec<u32>> {
        let p = &self.params;
        if p.temperature != 0.0 || self.want_logprob || p.n_logprobs > 0 || p.penalties_active() {
            return None;
        }
        let mut ids: Vec<u32> = p.logit_bias.iter().map(|&(id, _)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    }

    /// The token [`Sampler::sample`] picks from logits whose argmax outside `skips`
    /// (this sampler's [`Sampler::greedy_skips`]) and skipped raw values are `pick`:
    /// the skipped tokens get their bias, then compete (ties: lowest id; NaN, and ids
    /// past the vocabulary, never win).
    pub fn take_greedy(&self, pick: &GreedyPick, skips: &[u32]) -> SampledToken {
        let (mut id, mut best) = (pick.id, pick.value);
        for (&t, &raw) in skips.iter().zip(&pick.skipped) {
            let mut v = raw;
            for &(b_id, b) in &self.params.logit_bias {
                if b_id == t {
                    v += b;
                }
            }
            if v > best || (v == best && t < id) {
                (id, best) = (t, v);
            }
        }
        SampledToken {
            id,
            logprob: f32::NEG_INFINITY,
            top_logprobs: Vec::new(),
        }
    }

    /// This sampler's question to a backend's sampling head for its next token
    /// ([`super::head`]): its adjusted ids with their transforms, its inverse
    /// temperature and the uniform number its next draw takes (peeked: the stream
    /// moves only when [`Sampler::take_head`] or [`Sampler::sample`] uses it). `None`
    /// when the token needs the whole row: an id has two biases, more ids are
    /// adjusted than a head takes, or more alternatives' log-probabilities are asked
    /// for than it returns candidates.
    pub fn head_request(&self, history: &[u32]) -> Option<HeadRequest> {
        let p = &self.params;
        if p.n_logprobs > HEAD_CANDIDATES {
            return None;
        }
        let mut skips: Vec<HeadSkip> = p
            .logit_bias
            .iter()
            .map(|&(id, bias)| HeadSkip {
                id,
                bias,
                rep: 1.0,
                pen: 0.0,
            })
            .collect();
        skips.sort_unstable_by_key(|s| s.id);
        if skips.windows(2).any(|w| w[0].id == w[1].id) {
            // Two biases add one after the other on the host: one transform cannot.
            return None;
        }
        if p.penalties_active() && !history.is_empty() {
            let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
            let mut counts: Vec<(u32, u32)> = window.iter().map(|&t| (t, 1)).collect();
            counts.sort_unstable_by_key(|&(t, _)| t);
            counts.dedup_by(|b, a| {
                let same = a.0 == b.0;
                a.1 += u32::from(same);
                same
            });
            for (t, c) in counts {
                // The same expression as `apply_penalties`, so the same rounding.
                let pen = c as f32 * p.frequency_penalty + p.presence_penalty;
                match skips.binary_search_by_key(&t, |s| s.id) {
                    Ok(k) => (skips[k].rep, skips[k].pen) = (p.repetition_penalty, pen),
                    Err(k) => skips.insert(
                        k,
                        HeadSkip {
                            id: t,
                            bias: 0.0,
                            rep: p.repetition_penalty,
                            pen,
                        },
                    ),
                }
            }
        }
        if skips.len() > HEAD_MAX_SKIPS {
            return None;
        }
        let sampled = p.temperature > 0.0;
        Some(HeadRequest {
            inv_t: if sampled { 1.0 / p.temperature } else { 0.0 },
            u: if sampled {
                self.rng.clone().next_f64()
            } else {
                0.0
            },
            // The alternatives' log-probabilities are the top candidates'.
            candidates: (sampled && (p.top_k > 0 || p.top_p < 1.0 || p.min_p > 0.0))
                || p.n_logprobs > 0,
            skips,
        })
    }

    /// The token [`Sampler::sample`] picks from a row whose head answered `res` to
    /// `req` (this sampler's [`Sampler::head_request`] for this step) over a
    /// vocabulary of `n`; the stream moves as `sample` moves it. `None` when the
    /// answer needs tokens past the head's candidates (a wide nucleus) or the row
    /// overflowed: then `sample` on the full row gives the token, with the same draw.
    pub fn take_head(
        &mut self,
        req: &HeadRequest,
        res: &HeadResult,
        n: usize,
    ) -> Option<SampledToken> {
        let p = &self.params;
        if res.max == f32::INFINITY || n == 0 {
            return None;
        }
        // The draw's number is peeked, and the stream moves only once the token is
        // certain: a `None` leaves it for `sample`'s draw over the fetched row.
        let u = self.rng.clone().next_f64();
        // (top-k at or past the vocabulary truncates nothing, as in `truncate`.)
        let truncates = (p.top_k > 0 && p.top_k < n) || p.top_p < 1.0 || p.min_p > 0.0;
        let (id, drew) = if p.temperature == 0.0 || res.max == f32::NEG_INFINITY {
            (res.max_id, false)
        } else if !req.candidates || !truncates {
            (res.pick, true)
        } else {
            let mut cands = std::mem::take(&mut self.cands);
            let kept = truncate_top(p, &res.cands, n, res.max, res.z1, &mut cands);
            let id = kept.then(|| draw_from(&cands, res.max, req.inv_t, u).unwrap_or(res.max_id));
            self.cands = cands;
            (id?, true)
        };
        let token = self.head_token(id, res, n)?;
        if drew {
            self.rng.next_f64();
        }
        Some(token)
    }

    /// `id` as `finish` reports it, from the head's answer: its log-probability and
    /// the top alternatives' when wanted (`None` if they are not all among the
    /// candidates). Log-probabilities are `sample`'s to rounding: the log-sum-exp
    /// comes from the head's f64 sum, the host's from f32 lanes.
    fn head_token(&self, id: u32, res: &HeadResult, n: usize) -> Option<SampledToken> {
        let n_logprobs = self.params.n_logprobs;
        if !self.want_logprob && n_logprobs == 0 {
            return Some(SampledToken {
                id,
                logprob: f32::NEG_INFINITY,
                top_logprobs: Vec::new(),
            });
        }
        // As `prepare` and `finish`: log-softmax after bias and penalties.
        let lse = if res.max.is_finite() {
            res.max + res.z1.ln() as f32
        } else {
            res.max
        };
        let logprob_of = |l: f32| {
            if lse.is_finite() {
                l - lse
            } else {
                f32::NEG_INFINITY
            }
        };
        let logit = if id == res.pick {
            res.pick_logit
        } else if id == res.max_id {
            res.max
        } else {
            res.cands.iter().find(|c| c.1 == id)?.0
        };
        let top = n_logprobs.min(n);
        let alternatives = res.cands.get(..top)?;
        Some(SampledToken {
            id,
            logprob: logprob_of(logit),
            top_logprobs: alternatives
                .iter()
                .map(|&(l, i)| (i, logprob_of(l)))
                .collect(),
        })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Restarts the random stream from `seed`.
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// Like [`sample`](Self::sample) for logits that must stay untouched (copied into
    /// a reused buffer), with the number of reported alternatives given per call.
    pub fn sample_from(
        &mut self,
        logits: &[f32],
        history: &[u32],
        n_logprobs: usize,
    ) -> SampledToken {
        let mut copy = std::mem::take(&mut self.copy);
        copy.clear();
        copy.extend_from_slice(logits);
        let s = self.sample_with(&mut copy, history, n_logprobs.min(MAX_LOGPROBS));
        self.copy = copy;
        s
    }

    /// Picks the next token from `logits` (one per vocabulary entry), given the
    /// tokens so far (`history`, used by the penalties). `logits` is modified in
    /// place: bias and penalties are applied to it.
    ///
    /// Empty logits give token 0 with log-probability `-inf`.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> SampledToken {
        let n_logprobs = self.params.n_logprobs;
        self.sample_with(logits, history, n_logprobs)
    }

    fn sample_with(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        n_logprobs: usize,
    ) -> SampledToken {
        let Some((max_id, max, lse)) = self.prepare(logits, history, n_logprobs) else {
            return empty_token();
        };
        let id = if self.params.temperature == 0.0 || max == f32::NEG_INFINITY {
            max_id
        } else {
            draw(&self.params, &mut self.rng, &mut self.cands, logits, max)
        };
        self.finish(logits, id, lse, n_logprobs)
    }

    /// Samples like [`sample`](Self::sample) and also fills `dist` with the
    /// distribution the token was drawn from (normalised (id, probability) pairs; a
    /// point mass when greedy): the draft side of speculative sampling.
    pub fn sample_with_dist(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        dist: &mut Vec<(u32, f64)>,
    ) -> SampledToken {
        let n_logprobs = self.params.n_logprobs;
        dist.clear();
        let Some((max_id, max, lse)) = self.prepare(logits, history, n_logprobs) else {
            dist.push((0, 1.0));
            return empty_token();
        };
        if self.params.temperature == 0.0 || max == f32::NEG_INFINITY {
            dist.push((max_id, 1.0));
        } else {
            distribution(&self.params, &mut self.cands, logits, max, dist);
        }
        let id = pick(dist, self.rng.next_f64());
        self.finish(logits, id, lse, n_logprobs)
    }

    /// Speculative verification of one drafted token against the target's `logits`
    /// at its position (the same chain: bias, penalties over `history`, truncation,
    /// temperature). Returns the token to emit and whether it is the draft.
    ///
    /// `q` is the draft's distribution at this position. `None` (or greedy
    /// sampling) treats the draft as a point mass: the target samples exactly as
    /// [`sample`](Self::sample) would, one draw per emitted token, and the draft is
    /// accepted when it matches; so a seed gives the same tokens with or without
    /// speculation. Otherwise standard rejection sampling: accept with probability
    /// min(1, p(x)/q(x)), else draw from normalise(max(0, p − q)); the emitted token
    /// is distributed as p either way.
    pub fn verify(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        draft: u32,
        q: Option<&[(u32, f64)]>,
    ) -> (SampledToken, bool) {
        let q = match q {
            Some(q) if self.params.temperature > 0.0 => q,
            _ => {
                let s = self.sample(logits, history);
                let ok = s.id == draft;
                return (s, ok);
            }
        };
        let n_logprobs = self.params.n_logprobs;
        let Some((_, max, lse)) = self.prepare(logits, history, n_logprobs) else {
            return (empty_token(), false);
        };
        let mut p = std::mem::take(&mut self.dist);
        distribution(&self.params, &mut self.cands, logits, max, &mut p);
        let prob =
            |d: &[(u32, f64)], id: u32| d.iter().find(|&&(t, _)| t == id).map_or(0.0, |&(_, w)| w);
        let (px, qx) = (prob(&p, draft), prob(q, draft));
        let u = self.rng.next_f64();
        let (id, accepted) = if qx > 0.0 && u * qx < px {
            (draft, true)
        } else {
            // The residual max(0, p − q), over p's support (outside it p − q ≤ 0).
            let qmap: std::collections::HashMap<u32, f64> = q.iter().copied().collect();
            let mut residual: Vec<(u32, f64)> = p
                .iter()
                .map(|&(t, w)| (t, (w - qmap.get(&t).copied().unwrap_or(0.0)).max(0.0)))
                .filter(|&(_, w)| w > 0.0)
                .collect();
            let total: f64 = residual.iter().map(|&(_, w)| w).sum();
            if total > 0.0 {
                for (_, w) in residual.iter_mut() {
                    *w /= total;
                }
            } else {
                // p == q up to rounding: any draw from p is right.
                residual = p.clone();
            }
            (pick(&residual, self.rng.next_f64()), false)
        };
        self.dist = p;
        (self.finish(logits, id, lse, n_logprobs), accepted)
    }

    /// Bias and penalties in place, then (argmax id, max logit, log-sum-exp or NaN
    /// when no log-probability is wanted); `None` for empty logits.
    fn prepare(
        &mut self,
        logits: &mut [f32],
        history: &[u32],
        n_logprobs: usize,
    ) -> Option<(u32, f32, f32)> {
        if logits.is_empty() {
            return None;
        }
        apply_bias(&self.params, logits);
        apply_penalties(&self.params, &mut self.counts, logits, history);
        // NaN would poison every comparison: treat it as "impossible". The argmax
        // pass notices one (bias and penalties keep a NaN a NaN), so a clean row is
        // read once.
        let ((mut max_id, mut max), nan) = argmax_checked(logits);
        if nan {
            for l in logits.iter_mut() {
                if l.is_nan() {
                    *l = f32::NEG_INFINITY;
                }
            }
            (max_id, max) = argmax(logits);
        }
        let lse = if self.want_logprob || n_logprobs > 0 {
            log_sum_exp(logits, max)
        } else {
            f32::NAN
        };
        Some((max_id, max, lse))
    }

    /// The [`SampledToken`] for `id` with its log-probabilities.
    fn finish(&self, logits: &[f32], id: u32, lse: f32, n_logprobs: usize) -> SampledToken {
        let logprob_of = |l: f32| {
            if lse.is_finite() {
                l - lse
            } else {
                f32::NEG_INFINITY
            }
        };
        let top_logprobs = if n_logprobs > 0 {
            top_n(logits, n_logprobs)
                .into_iter()
                .map(|(l, i)| (i, logprob_of(l)))
                .collect()
        } else {
            Vec::new()
        };
        SampledToken {
            id,
            logprob: logprob_of(logits[id as usize]),
            top_logprobs,
        }
    }
}

/// Token 0 with log-probability `-inf` (what empty logits give).
fn empty_token() -> SampledToken {
    SampledToken {
        id: 0,
        logprob: f32::NEG_INFINITY,
        top_logprobs: Vec::new(),
    }
}

/// The token of a normalised distribution at cumulative probability `u` in [0, 1)
/// (the last one if rounding leaves the sum short).
fn pick(dist: &[(u32, f64)], u: f64) -> u32 {
    let mut acc = 0.0;
    for &(id, w) in dist {
        acc += w;
        if acc > u {
            return id;
        }
    }
    dist.last().map_or(0, |&(id, _)| id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::logit_math::{by_logit_desc, sum_exp};
    use crate::sampler::truncation::top_p_prefix;

    fn params() -> SamplingParams {
        SamplingParams {
            seed: Some(42),
            ..SamplingParams::default()
        }
    }

    fn logits_from_probs(p: &[f64]) -> Vec<f32> {
        p.iter().map(|&x| x.ln() as f32).collect()
    }

    #[test]
    fn greedy_argmax_lowest_id_on_ties() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        let mut l = vec![0.1, 3.0, -1.0, 3.0, 2.0];
        assert_eq!(s.sample(&mut l, &[]).id, 1);
        let mut l = vec![f32::NAN, 1.0, f32::NAN];
        assert_eq!(s.sample(&mut l, &[]).id, 1);
        let mut l = vec![f32::NEG_INFINITY; 3];
        assert_eq!(s.sample(&mut l, &[]).id, 0);
        assert_eq!(s.sample(&mut [], &[]).id, 0);
    }

    #[test]
    fn logprobs_are_log_softmax_before_temperature() {
        let probs = [0.5, 0.25, 0.125, 0.125];
        let l = logits_from_probs(&probs);
        let mut p = params();
        p.temperature = 2.0;
        p.n_logprobs = 3;
        let mut s = Sampler::new(p).unwrap();
        let t = s.sample(&mut l.clone(), &[]);
        assert!((t.logprob - (probs[t.id as usize] as f32).ln()).abs() < 1e-5);
        assert_eq!(t.top_logprobs.len(), 3);
        assert_eq!(t.top_logprobs[0].0, 0);
        assert!((t.top_logprobs[0].1 - 0.5f32.ln()).abs() < 1e-5);
        assert_eq!(t.top_logprobs[1].0, 1);
        // Equal logits: lower id first.
        assert_eq!(t.top_logprobs[2].0, 2);
        // sample_from leaves the logits alone and takes n per call.
        let t = s.sample_from(&l, &[], 1);
        assert_eq!(t.top_logprobs.len(), 1);
    }

    #[test]
    fn logit_bias_and_ban() {
        let mut p = SamplingParams::greedy();
        p.logit_bias = vec![(0, f32::NEG_INFINITY), (2, 5.0), (99, 1.0)];
        let mut s = Sampler::new(p).unwrap();
        let mut l = vec![10.0, 1.0, 1.0];
        let t = s.sample(&mut l, &[]);
        assert_eq!(t.id, 2);
        assert_eq!(l, vec![f32::NEG_INFINITY, 1.0, 6.0]);
        // A banned token never comes out, even at high temperature.
        let mut p = params();
        p.temperature = 5.0;
        p.top_k = 0;
        p.top_p = 1.0;
        p.min_p = 0.0;
        p.logit_bias = vec![(1, f32::NEG_INFINITY)];
        let mut s = Sampler::new(p).unwrap();
        for _ in 0..500 {
            assert_ne!(s.sample(&mut [0.0, 9.0, 0.0], &[]).id, 1);
        }
    }

    #[test]
    fn penalties_like_llama_cpp() {
        let mut p = SamplingParams::greedy();
        p.repetition_penalty = 2.0;
        p.frequency_penalty = 0.5;
        p.presence_penalty = 0.25;
        p.penalty_last_n = 3;
        let mut s = Sampler::new(p).unwrap();
        let mut l = vec![4.0, -2.0, 1.0, 3.0];
        // Window = last 3 of the history: [1, 0, 0] (token 3 is outside it).
        s.sample(&mut l, &[3, 1, 0, 0]);
        assert_eq!(l[0], 4.0 / 2.0 - 2.0 * 0.5 - 0.25);
        assert_eq!(l[1], -2.0 * 2.0 - 0.5 - 0.25);
        assert_eq!(l[2], 1.0);
        assert_eq!(l[3], 3.0);
        // penalty_last_n = 0 turns them off.
        let mut p = SamplingParams::greedy();
        p.repetition_penalty = 2.0;
        p.penalty_last_n = 0;
        let mut s = Sampler::new(p).unwrap();
        let mut l = vec![4.0, 1.0];
        s.sample(&mut l, &[0]);
        assert_eq!(l, vec![4.0, 1.0]);
    }

    #[test]
    fn same_seed_same_tokens() {
        let l: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let mut p = params();
        p.temperature = 1.5;
        p.top_k = 0;
        p.top_p = 1.0;
        p.min_p = 0.0;
        let run = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone()).unwrap();
            (0..50)
                .map(|_| s.sample(&mut l.clone(), &[]).id)
                .collect::<Vec<_>>()
        };
        let a = run(&p);
        assert_eq!(a, run(&p));
        p.seed = Some(43);
        assert_ne!(a, run(&p));
        // reseed restarts the stream.
        let mut s = Sampler::new(params()).unwrap();
        let x: Vec<u32> = (0..20).map(|_| s.sample(&mut l.clone(), &[]).id).collect();
        s.reseed(42);
        let y: Vec<u32> = (0..20).map(|_| s.sample(&mut l.clone(), &[]).id).collect();
        assert_eq!(x, y);
    }

    /// Draws many tokens and returns the observed frequencies.
    fn histogram(p: SamplingParams, l: &[f32], n: usize) -> Vec<f64> {
        let mut s = Sampler::new(p).unwrap();
        let mut h = vec![0.0; l.len()];
        for _ in 0..n {
            h[s.sample(&mut l.to_vec(), &[]).id as usize] += 1.0 / n as f64;
        }
        h
    }

    fn open() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(7),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn distribution_follows_softmax_and_temperature() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let l = logits_from_probs(&probs);
        let h = histogram(open(), &l, 40_000);
        for (a, b) in h.iter().zip(probs) {
            assert!((a - b).abs() < 0.015, "{h:?}");
        }
        // Temperature 0.5 squares the odds.
        let mut p = open();
        p.temperature = 0.5;
        let sq: Vec<f64> = probs.iter().map(|x| x * x).collect();
        let z: f64 = sq.iter().sum();
        let h = histogram(p, &l, 40_000);
        for (a, b) in h.iter().zip(&sq) {
            assert!((a - b / z).abs() < 0.015, "{h:?}");
        }
    }

    #[test]
    fn top_k_top_p_min_p() {
        let probs = [0.4, 0.3, 0.2, 0.06, 0.04];
        let l = logits_from_probs(&probs);
        // top-k 2: only ids 0 and 1, renormalised.
        let mut p = open();
        p.top_k = 2;
        let h = histogram(p, &l, 20_000);
        assert_eq!(h[2] + h[3] + h[4], 0.0);
        assert!((h[0] - 4.0 / 7.0).abs() < 0.02, "{h:?}");
        // top-p 0.75: 0.4 + 0.3 = 0.7 < 0.75, so 0.2 is included; 0.06 is not.
        let mut p = open();
        p.top_p = 0.75;
        let h = histogram(p, &l, 20_000);
        assert!(h[2] > 0.0 && h[3] == 0.0 && h[4] == 0.0, "{h:?}");
        // top-p 0.7 stops exactly at the second token.
        let mut p = open();
        p.top_p = 0.7;
        let h = histogram(p.clone(), &l, 5_000);
        assert!(h[1] > 0.0 && h[2] == 0.0, "{h:?}");
        // The same with top-k in front (probabilities over the top-k set).
        p.top_k = 3; // set = .4 .3 .2 → .444 .333 .222: top-p .7 keeps two
        let h = histogram(p, &l, 5_000);
        assert!(h[1] > 0.0 && h[2] == 0.0, "{h:?}");
        // min-p 0.4: keep p >= 0.16 → ids 0, 1, 2.
        let mut p = open();
        p.min_p = 0.4;
        let h = histogram(p, &l, 20_000);
        assert!(h[2] > 0.0 && h[3] == 0.0 && h[4] == 0.0, "{h:?}");
        // top_p = 0 keeps only the best token.
        let mut p = open();
        p.top_p = 0.0;
        let h = histogram(p, &l, 1_000);
        assert!(h[0] > 0.999 && h[1..].iter().all(|&x| x == 0.0), "{h:?}");
    }

    #[test]
    fn lazy_top_p_over_a_large_vocabulary() {
        // 262144 tokens, a flat tail: top-p must reach deep into it (several lazy
        // chunks) and agree with a full sort.
        let n = 262_144;
        let mut l = vec![0.0f32; n];
        for (i, v) in l.iter_mut().enumerate() {
            *v = ((i as u64 * 2_654_435_761) % 1000) as f32 / 1000.0;
        }
        let mut sorted: Vec<(f32, u32)> =
            l.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
        sorted.sort_by(by_logit_desc);
        let max = sorted[0].0;
        let z = sum_exp(&l, max, 1.0);
        let top_p = 0.01;
        let keep = top_p_prefix(&sorted, max, z, top_p).unwrap();
        assert!(keep > 1000);
        let allowed: std::collections::HashSet<u32> = sorted[..keep].iter().map(|x| x.1).collect();
        let mut p = open();
        p.top_p = top_p;
        let mut s = Sampler::new(p).unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            let id = s.sample(&mut l.clone(), &[]).id;
            assert!(allowed.contains(&id));
        }
        eprintln!(
            "lazy top-p over {n}: {:.2} ms/token",
            t0.elapsed().as_secs_f64() * 50.0
        );
    }

    #[test]
    fn default_params_are_fast_on_a_large_vocabulary() {
        let n = 262_144;
        let l: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 40503) % 9973) as f32 / 500.0)
            .collect();
        let mut p = params();
        p.n_logprobs = 5;
        p.repetition_penalty = 1.1;
        let mut s = Sampler::new(p).unwrap();
        let mut buf = l.clone();
        let t0 = std::time::Instant::now();
        for i in 0..20 {
            buf.copy_from_slice(&l);
            let t = s.sample(&mut buf, &[i, i + 1]);
            assert_eq!(t.top_logprobs.len(), 5);
        }
        eprintln!(
            "default chain over {n}: {:.2} ms/token",
            t0.elapsed().as_secs_f64() * 50.0
        );
        let mut g = Sampler::new(SamplingParams::greedy()).unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..20 {
            buf.copy_from_slice(&l);
            g.sample(&mut buf, &[]);
        }
        eprintln!(
            "greedy over {n}: {:.2} ms/token",
            t0.elapsed().as_secs_f64() * 50.0
        );
    }
}
