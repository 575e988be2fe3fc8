//! Token sampling and stop-string matching: turning one row of logits into a token,
//! and a stream of text into what may be shown. Knows nothing about models or requests.
//!
//! [`Sampler`] turns one row of logits into a token, llama.cpp's way. The chain runs
//! in llama.cpp's order (`common_sampler`): logit bias, repetition / presence /
//! frequency penalties over the last `penalty_last_n` tokens of the history
//! (`penalties`), top-k, top-p, min-p, temperature, then a draw from a seeded RNG
//! (`truncation`, `rng`). Temperature 0 is greedy: the argmax after bias and
//! penalties (ties go to the lowest id).
//!
//! Log-probabilities are reported from the log-softmax of the logits after bias and
//! penalties, before temperature and truncation: they describe the model's
//! distribution (as adjusted by the request), not the truncated one the draw used.
//!
//! Work per token is linear in the vocabulary: nothing sorts all 262k logits. Top-k
//! uses partial selection; top-p without top-k sorts lazily, in growing chunks, only
//! as far as the cumulative probability needs (`logit_math` holds the vectorised
//! sums and selections).
//!
//! [`Constraint`] (`constraint`) is structured output: a grammar masks the logits
//! before the chain runs, so only tokens it can accept are ever drawn.
//! [`sample_constrained`] first tries the token the unmasked chain picks, where that
//! is exact, and masks only when the grammar refuses it.
//!
//! [`StopMatcher`] is the streaming half of stop strings: it holds back text that
//! could still become a stop string, so a stream never shows part of one.

mod chain;
pub mod constraint;
pub mod head;
mod logit_math;
mod params;
mod penalties;
mod rng;
#[cfg(test)]
mod spec_tests;
mod stop;
mod truncation;

pub use chain::{SampledToken, Sampler};
pub use constraint::{Constraint, ConstraintError, GrammarCompiler, GrammarSpec};
pub use head::{HeadRequest, HeadResult, HeadSkip};
pub use params::{SamplerError, SamplingParams, MAX_LOGPROBS};
pub use stop::StopMatcher;

/// Samples one token under an optional grammar. Where [`Sampler::exact_without_mask`]
/// holds (greedy, or plain temperature sampling, no log-probabilities), the token is
/// first drawn from the unmasked logits and kept if the grammar allows it: the same
/// distribution as masking first, without the vocabulary-wide mask on most steps.
/// Otherwise (or when that token is refused) the mask is applied and the chain runs
/// on what it allows. `logits` may be modified.
pub fn sample_constrained(
    sampler: &mut Sampler,
    constraint: Option<&mut Constraint>,
    logits: &mut [f32],
    history: &[u32],
) -> SampledToken {
    let Some(c) = constraint else {
        return sampler.sample(logits, history);
    };
    if sampler.exact_without_mask() {
        let s = sampler.sample_from(logits, history, 0);
        if c.quick_allows(s.id) == Some(true) {
            return s;
        }
    }
    c.apply(logits);
    sampler.sample(logits, history)
}
