//! Sampling parameters and their validation: what a request may ask of the sampler.
//! Plain data only; no sampling happens here.

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

    pub(super) fn penalties_active(&self) -> bool {
        self.penalty_last_n > 0
            && (self.repetition_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::Sampler;

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
}
