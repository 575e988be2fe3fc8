//! Token sampling and stop-string matching.
//!
//! [`Sampler`] turns one row of logits into a token, llama.cpp's way. The chain runs
//! in llama.cpp's order (`common_sampler`): logit bias, repetition / presence /
//! frequency penalties over the last `penalty_last_n` tokens of the history, top-k,
//! top-p, min-p, temperature, then a draw from a seeded RNG. Temperature 0 is greedy:
//! the argmax after bias and penalties (ties go to the lowest id).
//!
//! Log-probabilities are reported from the log-softmax of the logits after bias and
//! penalties, before temperature and truncation: they describe the model's
//! distribution (as adjusted by the request), not the truncated one the draw used.
//!
//! Work per token is linear in the vocabulary: nothing sorts all 262k logits. Top-k
//! uses partial selection; top-p without top-k sorts lazily, in growing chunks, only
//! as far as the cumulative probability needs.
//!
//! [`StopMatcher`] is the streaming half of stop strings: it holds back text that
//! could still become a stop string, so a stream never shows part of one.

use std::cmp::Ordering;

/// Most alternatives one request may ask log-probabilities for.
pub const MAX_LOGPROBS: usize = 100;

/// Invalid sampling parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    #[error("temperature must be a finite number >= 0 (0 = greedy), got {0}")]
    Temperature(f32),
    #[error("top_p must be in [0, 1] (1 = off), got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1] (0 = off), got {0}")]
    MinP(f32),
    #[error("repetition_penalty must be a finite number > 0 (1 = off), got {0}")]
    RepetitionPenalty(f32),
    #[error("presence_penalty must be in [-2, 2] (0 = off), got {0}")]
    PresencePenalty(f32),
    #[error("frequency_penalty must be in [-2, 2] (0 = off), got {0}")]
    FrequencyPenalty(f32),
    #[error("logit_bias for token {id} must be a finite number or -inf (to ban it), got {bias}")]
    LogitBias { id: u32, bias: f32 },
    #[error("n_logprobs must be at most {MAX_LOGPROBS}, got {0}")]
    Logprobs(usize),
}

/// How to pick the next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 = off.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least `top_p`; 1 = off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; 0 = off.
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recent tokens; 1 = off.
    pub repetition_penalty: f32,
    /// Subtract from the logit of every recent token; 0 = off.
    pub presence_penalty: f32,
    /// Subtract, per occurrence, from the logit of recent tokens; 0 = off.
    pub frequency_penalty: f32,
    /// How many of the last history tokens the penalties look at; 0 = penalties off
    /// (llama.cpp's meaning).
    pub penalty_last_n: usize,
    /// Added to a token's logit before anything else; `-inf` bans a token. Ids
    /// outside the vocabulary are ignored.
    pub logit_bias: Vec<(u32, f32)>,
    /// RNG seed: the same seed, parameters and logits give the same tokens. `None`
    /// seeds from the OS.
    pub seed: Option<u64>,
    /// How many most likely alternatives to report with their log-probabilities.
    pub n_logprobs: usize,
}

impl Default for SamplingParams {
    /// llama.cpp's defaults: temperature 0.8, top-k 40, top-p 0.95, min-p 0.05,
    /// penalties off (last 64 tokens when turned on).
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            logit_bias: Vec::new(),
            seed: None,
            n_logprobs: 0,
        }
    }
}

impl SamplingParams {
    /// Plain argmax decoding: temperature 0, no truncation, no penalties.
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        }
    }

    /// Checks every parameter's range.
    pub fn validate(&self) -> Result<(), SamplerError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplerError::Temperature(self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(SamplerError::TopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplerError::MinP(self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplerError::RepetitionPenalty(self.repetition_penalty));
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return Err(SamplerError::PresencePenalty(self.presence_penalty));
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return Err(SamplerError::FrequencyPenalty(self.frequency_penalty));
        }
        for &(id, bias) in &self.logit_bias {
            if !(bias.is_finite() || bias == f32::NEG_INFINITY) {
                return Err(SamplerError::LogitBias { id, bias });
            }
        }
        if self.n_logprobs > MAX_LOGPROBS {
            return Err(SamplerError::Logprobs(self.n_logprobs));
        }
        Ok(())
    }

    fn penalties_active(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

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

/// xoshiro256** seeded through splitmix64: small, fast and stable across
/// dependency versions, so a seed means the same tokens everywhere.
#[derive(Debug, Clone)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Higher logit first; equal logits: lower id first. A total order (NaN never
/// reaches it: logits are sanitised first).
#[inline]
fn by_logit_desc(a: &(f32, u32), b: &(f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then_with(|| a.1.cmp(&b.1))
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
            want_logprob: true,
        })
    }

    /// With `false`, [`SampledToken::logprob`] is not computed (reads -inf) unless top logprobs are asked
    /// for, and greedy sampling skips the vocabulary-wide log-sum-exp (a server
    /// decoding many streams that asked for no logprobs).
    pub fn set_logprob_wanted(&mut self, want: bool) {
        self.want_logprob = want;
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
        if logits.is_empty() {
            return SampledToken {
                id: 0,
                logprob: f32::NEG_INFINITY,
                top_logprobs: Vec::new(),
            };
        }
        // NaN would poison every comparison: treat it as "impossible".
        for l in logits.iter_mut() {
            if l.is_nan() {
                *l = f32::NEG_INFINITY;
            }
        }
        self.apply_bias(logits);
        self.apply_penalties(logits, history);

        let (max_id, max) = argmax(logits);
        let lse = if self.want_logprob || n_logprobs > 0 {
            log_sum_exp(logits, max)
        } else {
            f32::NAN
        };
        let id = if self.params.temperature == 0.0 || max == f32::NEG_INFINITY {
            max_id
        } else {
            self.draw(logits, max)
        };
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

    fn apply_bias(&self, logits: &mut [f32]) {
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
    }

    /// llama.cpp's penalties: for each token seen `c > 0` times in the window,
    /// `l = l > 0 ? l / rep : l * rep`, then `l -= c * freq + presence`.
    fn apply_penalties(&mut self, logits: &mut [f32], history: &[u32]) {
        let p = &self.params;
        if !p.penalties_active() || history.is_empty() {
            return;
        }
        let window = &history[history.len().saturating_sub(p.penalty_last_n)..];
        let counts = &mut self.counts;
        counts.clear();
        counts.extend(window.iter().map(|&t| (t, 1)));
        counts.sort_unstable_by_key(|&(t, _)| t);
        counts.dedup_by(|b, a| {
            if a.0 == b.0 {
                a.1 += b.1;
                true
            } else {
                false
            }
        });
        for &(t, c) in counts.iter() {
            let Some(l) = logits.get_mut(t as usize) else {
                continue;
            };
            if *l <= 0.0 {
                *l *= p.repetition_penalty;
            } else {
                *l /= p.repetition_penalty;
            }
            *l -= c as f32 * p.frequency_penalty + p.presence_penalty;
        }
    }

    /// Truncation (top-k, top-p, min-p), temperature and the draw.
    fn draw(&mut self, logits: &[f32], max: f32) -> u32 {
        let p = &self.params;
        let n = logits.len();
        // min-p keeps logits >= max + ln(min_p); min_p = 1 keeps only the maximum.
        let min_logit = if p.min_p > 0.0 {
            max + p.min_p.ln()
        } else {
            f32::NEG_INFINITY
        };
        let top_k = if p.top_k == 0 || p.top_k >= n {
            n
        } else {
            p.top_k
        };
        let top_p = p.top_p;
        let inv_t = 1.0 / p.temperature;
        let cands = &mut self.cands;
        cands.clear();

        if top_k < n {
            // Top-k by a bounded scan (small k) or partial selection, then sorted.
            if top_k <= 128 {
                top_n_into(logits, top_k, cands);
            } else {
                cands.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
                cands.select_nth_unstable_by(top_k - 1, by_logit_desc);
                cands.truncate(top_k);
                cands.sort_unstable_by(by_logit_desc);
            }
            if top_p < 1.0 {
                // Probabilities over the top-k set.
                let z: f64 = cands.iter().map(|&(l, _)| fast_exp(l - max) as f64).sum();
                let keep = top_p_prefix(cands, max, z, top_p).unwrap_or(cands.len());
                cands.truncate(keep);
            }
            cands.retain(|&(l, _)| l >= min_logit);
        } else if top_p < 1.0 {
            lazy_top_p(logits, max, min_logit, top_p, cands);
        } else if min_logit > f32::NEG_INFINITY {
            // min-p alone is a plain filter.
            cands.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|&(_, &l)| l >= min_logit)
                    .map(|(i, &l)| (l, i as u32)),
            );
        } else {
            // No truncation at all: draw straight from the logits.
            let total = sum_exp(logits, max, inv_t);
            let target = self.rng.next_f64() * total;
            return walk(
                logits.iter().enumerate().map(|(i, &l)| (l, i as u32)),
                max,
                inv_t,
                target,
            )
            .unwrap_or_else(|| argmax(logits).0);
        }
        if cands.is_empty() {
            // Cannot happen (the maximum always survives), but never panic.
            return argmax(logits).0;
        }
        let total: f64 = cands.iter().map(|&(l, _)| weight(l, max, inv_t)).sum();
        let target = self.rng.next_f64() * total;
        walk(cands.iter().copied(), max, inv_t, target).unwrap_or(cands[0].1)
    }
}

/// The temperature-scaled, unnormalised probability of a logit (exactly 0 for -inf).
#[inline(always)]
fn weight(l: f32, max: f32, inv_t: f32) -> f64 {
    if l == f32::NEG_INFINITY {
        0.0
    } else {
        fast_exp((l - max) * inv_t) as f64
    }
}

/// The token at which the running sum of weights passes `target` (the last token
/// with a positive weight if rounding leaves it short).
fn walk(items: impl Iterator<Item = (f32, u32)>, max: f32, inv_t: f32, target: f64) -> Option<u32> {
    let mut acc = 0.0;
    let mut last = None;
    for (l, id) in items {
        let w = weight(l, max, inv_t);
        if w > 0.0 {
            acc += w;
            last = Some(id);
            if acc > target {
                return last;
            }
        }
    }
    last
}

/// Top-p (then min-p) over the whole vocabulary without sorting it: a histogram of
/// probability mass by logit finds the bucket where the cumulative mass crosses
/// `top_p`; only tokens down to (one bucket past) it are gathered and sorted.
fn lazy_top_p(logits: &[f32], max: f32, min_logit: f32, top_p: f32, cands: &mut Vec<(f32, u32)>) {
    const BUCKETS: usize = 512;
    const WIDTH: f32 = 1.0 / 16.0; // nats per bucket; the last bucket takes the rest
    let bucket = |l: f32| (((max - l) * (1.0 / WIDTH)) as usize).min(BUCKETS - 1);
    let mut hist = [0f64; BUCKETS];
    // The top-p normaliser covers every token (top-k is off); min-p, applied after
    // top-p, only shortens the kept prefix, so tokens below its bar are never gathered.
    let z = sum_exp(logits, max, 1.0);
    for &l in logits {
        if l >= min_logit && l > f32::NEG_INFINITY {
            hist[bucket(l)] += fast_exp(l - max) as f64;
        }
    }
    let mut cum = 0.0;
    let mut crossing = None;
    for (b, &mass) in hist.iter().enumerate() {
        cum += mass / z;
        if cum >= top_p as f64 {
            crossing = Some(b);
            break;
        }
    }
    // One bucket of margin for summation-order rounding.
    let last = match crossing {
        Some(b) if b + 1 < BUCKETS - 1 => b + 1,
        _ => BUCKETS - 1,
    };
    let gather = |cands: &mut Vec<(f32, u32)>, last: usize| {
        cands.clear();
        cands.extend(
            logits
                .iter()
                .enumerate()
                .filter(|&(_, &l)| l >= min_logit && bucket(l) <= last)
                .map(|(i, &l)| (l, i as u32)),
        );
        cands.sort_unstable_by(by_logit_desc);
    };
    gather(cands, last);
    let keep = match top_p_prefix(cands, max, z, top_p) {
        Some(k) => k,
        None if last == BUCKETS - 1 => cands.len(),
        None => {
            gather(cands, BUCKETS - 1);
            top_p_prefix(cands, max, z, top_p).unwrap_or(cands.len())
        }
    };
    cands.truncate(keep);
}

/// e^x for x <= 0 (a logit minus the maximum), to about 2e-7 relative; tiny (not
/// zero) below -87. Branch-free, so loops over it vectorise.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 0.0);
    // n = round(x / ln 2), by the 1.5 * 2^23 trick.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n: n + 127 lands in the low mantissa bits of (n + 127 + 2^23).
    let scale = f32::from_bits((n + 8_388_735.0).to_bits() << 23);
    p * scale
}

/// Σ e^((l - max) * scale), in f32 lanes folded into f64 every few thousand terms.
/// Runs over the whole vocabulary for every sampled token, so it is compiled for AVX2
/// too and picked at run time.
fn sum_exp(logits: &[f32], max: f32, scale: f32) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if hangar_kernels::simd_level() >= hangar_kernels::SimdLevel::Avx2 {
            // SAFETY: AVX2+FMA presence checked by simd_level.
            return unsafe { sum_exp_avx2(logits, max, scale) };
        }
    }
    sum_exp_generic(logits, max, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sum_exp_avx2(logits: &[f32], max: f32, scale: f32) -> f64 {
    sum_exp_generic(logits, max, scale)
}

#[inline(always)]
fn sum_exp_generic(logits: &[f32], max: f32, scale: f32) -> f64 {
    let mut total = 0f64;
    for chunk in logits.chunks(4096) {
        let mut acc = [0f32; 16];
        let mut it = chunk.chunks_exact(16);
        for c in &mut it {
            for j in 0..16 {
                acc[j] += fast_exp((c[j] - max) * scale);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for &l in it.remainder() {
            s += fast_exp((l - max) * scale);
        }
        total += s as f64;
    }
    total
}

/// Index of the largest logit (ties: lowest id) and its value. Two passes — a
/// vectorizable maximum, then the first position holding it — instead of one
/// index-tracking loop that cannot vectorize. Logits hold no NaN here.
fn argmax(logits: &[f32]) -> (u32, f32) {
    let max = max_value(logits);
    let best = logits.iter().position(|&v| v == max).unwrap_or(0);
    (best as u32, logits[best])
}

fn max_value(logits: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if hangar_kernels::simd_level() >= hangar_kernels::SimdLevel::Avx2 {
            // SAFETY: AVX2 presence checked by simd_level.
            return unsafe { max_value_avx2(logits) };
        }
    }
    max_value_generic(logits)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_value_avx2(logits: &[f32]) -> f32 {
    max_value_generic(logits)
}

#[inline(always)]
fn max_value_generic(logits: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let mut it = logits.chunks_exact(16);
    for c in &mut it {
        for j in 0..16 {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = acc
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    for &v in it.remainder() {
        if v > m {
            m = v;
        }
    }
    m
}

/// `ln Σ exp(l)`, computed around the maximum.
fn log_sum_exp(logits: &[f32], max: f32) -> f32 {
    if !max.is_finite() {
        return max;
    }
    max + sum_exp(logits, max, 1.0).ln() as f32
}

/// Length of the top-p prefix of the sorted `cands`, llama.cpp's rule: keep tokens
/// until the cumulative probability (weights over `z`) reaches `top_p`, the token
/// that reaches it included, at least one token. `None` if it never does.
fn top_p_prefix(cands: &[(f32, u32)], max: f32, z: f64, top_p: f32) -> Option<usize> {
    let mut cum = 0f64;
    for (i, &(l, _)) in cands.iter().enumerate() {
        cum += fast_exp(l - max) as f64 / z;
        if cum >= top_p as f64 {
            return Some(i + 1);
        }
    }
    None
}

/// The `k` largest logits as (logit, id), largest first (ties: lower id first).
fn top_n(logits: &[f32], k: usize) -> Vec<(f32, u32)> {
    let mut buf = Vec::new();
    top_n_into(logits, k, &mut buf);
    buf
}

/// [`top_n`] into a reused buffer: one scan, inserting only what beats the k-th.
fn top_n_into(logits: &[f32], k: usize, buf: &mut Vec<(f32, u32)>) {
    buf.clear();
    let k = k.min(logits.len());
    if k == 0 {
        return;
    }
    for (i, &l) in logits.iter().enumerate() {
        if buf.len() == k {
            // Strictly better than the current k-th, so ties keep the lower id.
            if l <= buf[k - 1].0 {
                continue;
            }
            buf.pop();
        }
        let item = (l, i as u32);
        let pos = buf.partition_point(|x| by_logit_desc(x, &item) == Ordering::Less);
        buf.insert(pos, item);
    }
}

/// Streams generated text while watching for stop strings.
///
/// Feed text with [`push`](Self::push); it returns the text that is safe to show and
/// whether a stop string matched. On a match the output ends right before the stop
/// string (which is never shown), and everything after is dropped. Text that could
/// be the beginning of a stop string is held back until it either completes one or
/// cannot any more. At the end of the stream, [`flush`](Self::flush) returns what was
/// held back.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    matched: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            matched: None,
        }
    }

    /// Adds generated text; returns `(text to emit, a stop string matched)`.
    /// After a match, further text is ignored.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        // The earliest stop string in the buffer wins (ties: the one listed first).
        let mut hit: Option<(usize, usize)> = None;
        for (i, s) in self.stops.iter().enumerate() {
            if let Some(pos) = self.held.find(s.as_str()) {
                if hit.is_none_or(|(p, _)| pos < p) {
                    hit = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = hit {
            let out = self.held[..pos].to_string();
            self.held.clear();
            self.matched = Some(i);
            return (out, true);
        }
        // Hold back the longest suffix that begins some stop string.
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a
    /// stop string (always at a character boundary).
    fn partial_suffix_len(&self) -> usize {
        let h = self.held.as_str();
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = h.len().saturating_sub(longest.saturating_sub(1));
        for (start, _) in h.char_indices() {
            if start < from {
                continue;
            }
            let suffix = &h[start..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            {
                return h.len() - start;
            }
        }
        0
    }

    /// Ends the stream: returns the held-back text (nothing after a match).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Pushes the last piece of text and flushes.
    pub fn finish(&mut self, text: &str) -> String {
        let (mut out, hit) = self.push(text);
        if !hit {
            out.push_str(&self.flush());
        }
        out
    }

    /// Whether a stop string matched.
    pub fn matched(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that matched, if any.
    pub fn matched_stop(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Text held back so far (a possible start of a stop string).
    pub fn pending(&self) -> &str {
        &self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn validation_messages() {
        let bad = |f: fn(&mut SamplingParams)| {
            let mut p = SamplingParams::default();
            f(&mut p);
            Sampler::new(p).expect_err("invalid").to_string()
        };
        assert!(bad(|p| p.temperature = -0.5).contains("temperature"));
        assert!(bad(|p| p.temperature = f32::NAN).contains("temperature"));
        assert!(bad(|p| p.top_p = 1.5).contains("top_p"));
        assert!(bad(|p| p.min_p = -0.1).contains("min_p"));
        assert!(bad(|p| p.repetition_penalty = 0.0).contains("repetition_penalty"));
        assert!(bad(|p| p.presence_penalty = 3.0).contains("presence_penalty"));
        assert!(bad(|p| p.frequency_penalty = f32::INFINITY).contains("frequency_penalty"));
        assert!(bad(|p| p.logit_bias = vec![(5, f32::NAN)]).contains("token 5"));
        assert!(bad(|p| p.n_logprobs = 1000).contains("n_logprobs"));
        let mut ok = SamplingParams::greedy();
        ok.logit_bias = vec![(1, f32::NEG_INFINITY)];
        assert!(Sampler::new(ok).is_ok());
        assert!(Sampler::new(SamplingParams::default()).is_ok());
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

    #[test]
    fn fast_exp_accuracy() {
        let mut x = 0.0f32;
        while x > -80.0 {
            let want = (x as f64).exp();
            let got = fast_exp(x) as f64;
            assert!(((got - want) / want).abs() < 5e-7, "{x}: {got} vs {want}");
            x -= 0.0137;
        }
        assert!(fast_exp(f32::NEG_INFINITY) < 1e-37);
        assert_eq!(fast_exp(0.0), 1.0);
    }

    #[test]
    fn lazy_top_p_equals_full_sort() {
        let n = 50_000;
        let l: Vec<f32> = (0..n)
            .map(|i| ((i as u64 * 2_654_435_761) % 10_007) as f32 / 700.0 - 3.0)
            .collect();
        let (_, max) = argmax(&l);
        let z = sum_exp(&l, max, 1.0);
        let mut sorted: Vec<(f32, u32)> =
            l.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
        sorted.sort_by(by_logit_desc);
        for top_p in [0.0, 0.1, 0.5, 0.9, 0.95, 0.999, 0.999_999] {
            for min_p in [0.0, 0.01, 0.3] {
                let min_logit = if min_p > 0.0 {
                    max + (min_p as f32).ln()
                } else {
                    f32::NEG_INFINITY
                };
                let p_len = top_p_prefix(&sorted, max, z, top_p).unwrap_or(n);
                let want: Vec<(f32, u32)> = sorted[..p_len]
                    .iter()
                    .copied()
                    .filter(|&(v, _)| v >= min_logit)
                    .collect();
                let mut got = Vec::new();
                lazy_top_p(&l, max, min_logit, top_p, &mut got);
                assert_eq!(got, want, "top_p {top_p} min_p {min_p}");
            }
        }
    }

    #[test]
    fn top_n_order() {
        let l = [1.0, 5.0, 3.0, 5.0, 2.0, 4.0];
        assert_eq!(top_n(&l, 4), vec![(5.0, 1), (5.0, 3), (4.0, 5), (3.0, 2)]);
        assert_eq!(top_n(&l, 10).len(), 6);
        assert!(top_n(&l, 0).is_empty());
    }

    fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out += &t;
            // Never emits any part of a stop string.
            for s in stops {
                assert!(!out.contains(s));
            }
            if hit {
                return (out, true);
            }
        }
        out += &m.flush();
        (out, false)
    }

    #[test]
    fn stop_strings_split_across_pieces() {
        assert_eq!(
            stream(&["END"], &["Hello E", "N", "D world"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            stream(&["END"], &["Hello EN", "tire"]),
            ("Hello ENtire".into(), false)
        );
        assert_eq!(stream(&["END"], &["Hello E"]), ("Hello E".into(), false));
        assert_eq!(
            stream(&["\n\n", "###"], &["a\n", "b##", "#c"]),
            ("a\nb".into(), true)
        );
        // The earliest match wins.
        assert_eq!(stream(&["bc", "ab"], &["xabc"]), ("x".into(), true));
        // Multi-byte characters are never split.
        assert_eq!(stream(&["ü!"], &["grü", "ße"]), ("grüße".into(), false));
        assert_eq!(
            stream(&["🚀🔥"], &["go 🚀", "🔥 now"]),
            ("go ".into(), true)
        );
        // No stop strings: everything passes through at once.
        let mut m = StopMatcher::new(vec![String::new()]);
        assert_eq!(m.push("abc"), ("abc".to_string(), false));
    }

    #[test]
    fn stop_matcher_holds_and_flushes() {
        let mut m = StopMatcher::new(vec!["</s>".into()]);
        assert_eq!(m.push("text </"), ("text ".to_string(), false));
        assert_eq!(m.pending(), "</");
        assert_eq!(m.finish("x"), "</x");
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("aSTOPb"), ("a".to_string(), true));
        assert!(m.matched());
        assert_eq!(m.matched_stop(), Some("STOP"));
        assert_eq!(m.push("more"), (String::new(), true));
        assert_eq!(m.flush(), "");
        // Overlapping candidates: "aab" against "aab" after "a".
        let mut m = StopMatcher::new(vec!["aab".into()]);
        assert_eq!(m.push("a"), (String::new(), false));
        assert_eq!(m.push("a"), (String::new(), false));
        assert_eq!(m.push("a"), ("a".to_string(), false));
        assert_eq!(m.push("b"), (String::new(), true));
    }
}
