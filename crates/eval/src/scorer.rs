//! The `Scorer` seam: what a task needs from a model — log-likelihoods of
//! continuations, of whole texts, and greedy generations — and nothing else. The
//! harness runs the same tasks over a local model ([`crate::LocalScorer`]) or any
//! OpenAI-compatible server ([`crate::EndpointScorer`]).
//!
//! Plain data in and out; no task formats, no metrics.

use crate::error::Result;
use std::collections::BTreeMap;

/// Score `continuations` after `context` (texts; the scorer tokenizes them).
#[derive(Debug, Clone, PartialEq)]
pub struct LoglikQuery {
    pub context: String,
    pub continuations: Vec<String>,
}

/// The log-likelihood of one continuation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Loglik {
    /// Summed log-probability of the continuation's tokens (nats).
    pub logprob: f64,
    /// Whether greedy decoding would have produced exactly these tokens.
    pub greedy: bool,
    pub tokens: usize,
}

/// Generate greedily from `prompt`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenQuery {
    pub prompt: String,
    pub max_tokens: usize,
    pub stop: Vec<String>,
}

/// A model the harness can evaluate.
pub trait Scorer {
    /// What identifies the model for a tracking run (`model`, `backend`, ...).
    fn describe(&self) -> BTreeMap<String, String>;
    /// One result per continuation of each query, in order.
    fn loglikelihood(&mut self, queries: &[LoglikQuery]) -> Result<Vec<Vec<Loglik>>>;
    /// The total log-likelihood (nats) of each text, from its start.
    fn loglikelihood_rolling(&mut self, texts: &[String]) -> Result<Vec<f64>>;
    /// The greedy completion of each query.
    fn generate(&mut self, queries: &[GenQuery]) -> Result<Vec<String>>;
    /// The (context, continuation) token ids a local scorer would score; `None` for
    /// scorers that tokenize elsewhere.
    fn token_ids(&self, _context: &str, _continuation: &str) -> Option<(Vec<u32>, Vec<u32>)> {
        None
    }
    /// Tokens of a text, when the scorer can tell.
    fn count_tokens(&self, _text: &str) -> Option<usize> {
        None
    }
}

/// lm-evaluation-harness's split of a request: trailing whitespace of the context
/// moves to the front of the continuation (so `"Answer: "` + `"4"` scores `" 4"`).
pub fn split_whitespace(context: &str, continuation: &str) -> (String, String) {
    let trimmed = context.trim_end();
    let moved = &context[trimmed.len()..];
    (trimmed.to_string(), format!("{moved}{continuation}"))
}
