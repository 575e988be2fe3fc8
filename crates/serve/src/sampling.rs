//! Maps validated API options onto the engine's `SamplingParams` (OpenAI defaults:
//! temperature 1, no truncation, no penalties).

use crate::gen::SamplingOptions;
use hangar_engine::sampler::SamplingParams;

/// How many recent tokens the penalties look at.
const PENALTY_WINDOW: usize = 1024;

pub(crate) fn build(
    o: &SamplingOptions,
    top_k: usize,
    logit_bias: Vec<(u32, f32)>,
    seed: Option<u64>,
    logprobs: Option<usize>,
) -> SamplingParams {
    SamplingParams {
        temperature: o.temperature.unwrap_or(1.0),
        top_k,
        top_p: o.top_p.unwrap_or(1.0),
        min_p: o.min_p.unwrap_or(0.0),
        repetition_penalty: o.repetition_penalty.unwrap_or(1.0),
        presence_penalty: o.presence_penalty.unwrap_or(0.0),
        frequency_penalty: o.frequency_penalty.unwrap_or(0.0),
        penalty_last_n: PENALTY_WINDOW,
        logit_bias,
        seed,
        n_logprobs: logprobs.unwrap_or(0),
    }
}

pub(crate) fn set_seed(p: &mut SamplingParams, seed: Option<u64>) {
    p.seed = seed;
}
