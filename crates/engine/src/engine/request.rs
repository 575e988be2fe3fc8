//! The engine's request and event types: what a caller submits (already tokenized)
//! and what comes back on its stream. Plain data; no channels, no model.

use crate::sampler::{Constraint, SamplingParams};
use hangar_models::LoraAdapter;
use std::sync::Arc;

/// One generation request, already tokenized.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Token ids that end generation (in addition to the model's end-of-generation ids).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-generation tokens.
    pub ignore_eos: bool,
    /// Report the chosen token's log-probability and this many alternatives.
    pub logprobs: Option<usize>,
    /// Report the log-probability of every prompt token after the first, with this
    /// many alternatives each (OpenAI's `echo` + `logprobs`). The prefix cache then
    /// serves none of the prompt: every position is computed so it can be reported.
    pub prompt_logprobs: Option<usize>,
    pub skip_special_tokens: bool,
    /// Structured output: a grammar the generated tokens must follow (logits it
    /// cannot accept are masked before sampling; end of generation only where the
    /// grammar is complete).
    pub constraint: Option<Constraint>,
    /// Whose request this is, for fair admission across API keys.
    pub tenant: Tenant,
    /// Run under this LoRA adapter (`None`: the base model). Sequences with different
    /// adapters share batches; the prefix cache never mixes their KV.
    pub adapter: Option<Arc<LoraAdapter>>,
}

/// The API key (or other caller) a request is charged to: admission shares the
/// running slots across tenants by weight, so one tenant's burst cannot starve another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant {
    /// Stable id of the caller; requests without one share tenant 0.
    pub id: u64,
    /// Relative share of the running slots (at least 1).
    pub weight: u32,
}

impl Default for Tenant {
    fn default() -> Self {
        Tenant { id: 0, weight: 1 }
    }
}

impl GenerateRequest {
    /// Greedy decoding of `max_tokens` tokens after `prompt`.
    pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> Self {
        GenerateRequest {
            prompt,
            sampling: SamplingParams::greedy(),
            max_tokens,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            logprobs: None,
            prompt_logprobs: None,
            skip_special_tokens: true,
            constraint: None,
            tenant: Tenant::default(),
            adapter: None,
        }
    }
}

/// One alternative token and its log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub token: String,
    pub logprob: f32,
}

/// One prompt token and how likely the model found it given the tokens before it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTokenLogprob {
    pub id: u32,
    /// The token's own text.
    pub token: String,
    /// `None` for the first token (nothing precedes it).
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// A generated token and the text it adds.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    pub id: u32,
    /// Text to append (may be empty while a stop string or a UTF-8 sequence is pending).
    pub text: String,
    /// The token's own text, for logprob reports.
    pub token: String,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// End-of-generation token, stop token or stop string.
    Stop,
    /// `max_tokens` or the context length.
    Length,
}

/// Token counts of a finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_tokens: usize,
    /// Microseconds from submission to the first admission into the running batch.
    pub queue_us: u64,
}

/// What a request's stream carries.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenEvent {
    /// Sent once, before any token, when the request asked for prompt logprobs.
    PromptLogprobs(Vec<PromptTokenLogprob>),
    Token(TokenOut),
    /// The last event: `text` is any held-back text released at the end.
    Done {
        finish: Finish,
        usage: Usage,
        text: String,
    },
    /// The request failed; no more events follow.
    Error(String),
}
