//! Speculative decoding: cheap drafts of the next few tokens that the target model
//! checks in one batched forward. Owns drafting (prompt lookup, a draft model), the
//! draft length policy and the counters; must not change what the target emits.
//!
//! A step feeds the target `[last token, d1..dK]` as one K+1-position chunk and walks
//! the K+1 rows of logits with [`Sampler::verify`](crate::sampler::Sampler::verify):
//! each row samples (or verifies) the next token given everything before it, and the
//! walk stops at the first token that differs from the draft, so every step emits
//! between 1 and K+1 tokens. KV written for rejected positions is simply overwritten
//! by the next step (the sequence length is what the cache trusts).
//!
//! - [`ngram`]: prompt lookup — the last n tokens (n = 3..1) matched earlier in the
//!   same sequence, and what followed them copied.
//! - [`DraftModel`]: a small model with the same vocabulary, decoding K tokens on its
//!   own KV cache (one sequence: `generate`, `bench`); [`DraftPool`]: the same for
//!   every speculating sequence of the batching engine (`serve`), batched.
//! - [`DraftLength`]: K adapted to the running acceptance rate.

mod draft_model;
mod draft_pool;
pub mod ngram;

pub use draft_model::DraftModel;
pub use draft_pool::{DraftPool, DraftRequest};

/// Where drafts come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecMode {
    /// No speculation: one token per forward.
    #[default]
    Off,
    /// Prompt lookup: n-gram matches inside the sequence.
    Ngram,
    /// A draft model (same vocabulary).
    Draft,
}

impl SpecMode {
    /// Parses `off`, `ngram` or `draft`.
    pub fn parse(s: &str) -> Option<SpecMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "none" => Some(SpecMode::Off),
            "ngram" | "lookup" => Some(SpecMode::Ngram),
            "draft" => Some(SpecMode::Draft),
            _ => None,
        }
    }
}

/// Speculative decoding settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpecConfig {
    pub mode: SpecMode,
    /// Most tokens drafted per step (K).
    pub draft_tokens: usize,
    /// Adapt K to the running acceptance rate (up to `draft_tokens`).
    pub adaptive: bool,
    /// Longest n-gram matched by prompt lookup (tried first).
    pub ngram_max: usize,
    /// Shortest n-gram matched.
    pub ngram_min: usize,
    /// The engine speculates only while at most this many sequences run: a bigger
    /// batch is compute-bound and extra positions cost real time.
    pub max_batch: usize,
}

impl Default for SpecConfig {
    fn default() -> Self {
        SpecConfig {
            mode: SpecMode::Off,
            draft_tokens: 8,
            adaptive: true,
            ngram_max: 3,
            ngram_min: 1,
            max_batch: 4,
        }
    }
}

impl SpecConfig {
    pub fn enabled(&self) -> bool {
        self.mode != SpecMode::Off && self.draft_tokens > 0
    }
}

/// K from the acceptance rate: the expected run of accepted tokens is α/(1−α), so
/// drafting about one more than that wastes little and loses little.
#[derive(Debug, Clone)]
pub struct DraftLength {
    max: usize,
    adaptive: bool,
    /// Exponential moving average of accepted / drafted.
    rate: f64,
}

impl DraftLength {
    pub fn new(cfg: &SpecConfig) -> Self {
        DraftLength {
            max: cfg.draft_tokens,
            adaptive: cfg.adaptive,
            rate: 0.7,
        }
    }

    /// Tokens to draft next.
    pub fn next(&self) -> usize {
        if !self.adaptive || self.max <= 1 {
            return self.max;
        }
        let a = self.rate.clamp(0.0, 0.95);
        let k = (a / (1.0 - a)).floor() as usize + 1;
        k.clamp(1, self.max)
    }

    /// Records one verification.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted > 0 {
            let r = accepted as f64 / drafted as f64;
            self.rate = 0.8 * self.rate + 0.2 * r;
        }
    }
}

/// Counters of one generation (or the engine's lifetime).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SpecStats {
    /// Target forwards in the decode phase (with or without a draft).
    pub steps: u64,
    /// Steps that verified a draft.
    pub draft_steps: u64,
    /// Tokens drafted.
    pub drafted: u64,
    /// Drafted tokens the target accepted.
    pub accepted: u64,
    /// Tokens emitted in the decode phase.
    pub emitted: u64,
}

impl SpecStats {
    /// Accepted / drafted (0 with no drafts).
    pub fn acceptance(&self) -> f64 {
        if self.drafted == 0 {
            0.0
        } else {
            self.accepted as f64 / self.drafted as f64
        }
    }
    /// Tokens emitted per target forward.
    pub fn tokens_per_step(&self) -> f64 {
        if self.steps == 0 {
            0.0
        } else {
            self.emitted as f64 / self.steps as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_length_grows_with_acceptance_and_shrinks_without() {
        let cfg = SpecConfig {
            draft_tokens: 8,
            ..SpecConfig::default()
        };
        let mut k = DraftLength::new(&cfg);
        for _ in 0..30 {
            k.record(4, 4);
        }
        assert_eq!(k.next(), 8);
        for _ in 0..30 {
            k.record(4, 0);
        }
        assert_eq!(k.next(), 1);
        let fixed = DraftLength::new(&SpecConfig {
            adaptive: false,
            draft_tokens: 5,
            ..cfg
        });
        assert_eq!(fixed.next(), 5);
    }

    #[test]
    fn mode_parses() {
        assert_eq!(SpecMode::parse("ngram"), Some(SpecMode::Ngram));
        assert_eq!(SpecMode::parse("OFF"), Some(SpecMode::Off));
        assert_eq!(SpecMode::parse("draft"), Some(SpecMode::Draft));
        assert_eq!(SpecMode::parse("medusa"), None);
    }
}
