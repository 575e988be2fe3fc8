//! hangar-engine: everything between a tokenized request and the model — the
//! continuous-batching loop, KV block bookkeeping, sampling, chat templates, and the
//! single-sequence tools behind `hangar generate`, `perplexity` and `bench`.
//!
//! Knows nothing about HTTP or the registry: `hangar-serve` adapts each protocol to an
//! [`Engine`]; the `hangar` binary calls the single-sequence tools directly.
//!
//! # Main types
//!
//! - [`LoadedModel`]: weights, tokenizer and kernel thread pool, loaded once from a
//!   GGUF file.
//! - [`Engine`]: a handle to the one thread that owns the model runner, the KV block
//!   manager and the scheduler. [`Engine::submit`] takes a [`GenerateRequest`] (token ids, sampling,
//!   stops, limits) and returns a channel of [`TokenEvent`]s; dropping the receiver
//!   cancels the request. [`EngineConfig`] sizes the KV pool and the batches.
//! - [`generate()`]: one sequence with no scheduler (`hangar generate`);
//!   [`perplexity`] and [`bench`](mod@bench) measure a model the way llama.cpp's tools do.
//! - [`loglik`]: [`LoglikScorer`] scores continuations given a context on a direct
//!   forward pass, shared contexts computed once (evaluation harnesses).
//! - [`chat`]: [`chat::ChatTemplate`] renders messages; [`chat::encode_chat`] tokenizes
//!   them with message content kept as plain text.
//! - [`sampler`]: [`sampler::Sampler`] picks a token from logits (llama.cpp's chain);
//!   [`sampler::StopMatcher`] holds back text that may become a stop string.
//! - [`ModelRunner`]: the seam between the loop and a model backend — one step in as
//!   data, logits out. [`CpuRunner`] runs the CPU forward pass; [`FakeRunner`] (next
//!   token = last + 1) tests the loop without weights; a GPU backend is another one.
//! - LoRA: a [`GenerateRequest::adapter`] runs one request under a [`LoraAdapter`];
//!   requests with different adapters (or none) share batches, each row getting its
//!   own low-rank delta, and the prefix cache keys blocks by adapter.
//! - [`spec`]: speculative decoding — prompt-lookup and draft-model drafts, verified
//!   K+1 positions per forward with the output distribution unchanged.
//! - [`scheduler`] and [`kv_manager`]: the batching policy and the KV block
//!   bookkeeping the loop runs on; plain data in, plain data out.
//!
//! # Example
//!
//! ```no_run
//! use hangar_engine::{Engine, EngineConfig, GenerateRequest, LoadedModel, TokenEvent};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let model = LoadedModel::load("model.gguf", 0)?; // 0 threads: one per core
//! let prompt = model.tokenizer.encode_prompt("The capital of France is");
//! let engine = Engine::start(model, EngineConfig::default())?;
//! let (_id, mut events) = engine.submit(GenerateRequest::greedy(prompt, 16))?;
//! while let Some(event) = events.blocking_recv() {
//!     match event {
//!         TokenEvent::Token(t) => print!("{}", t.text),
//!         TokenEvent::Done { text, .. } => println!("{text}"),
//!         TokenEvent::Error(e) => return Err(e.into()),
//!         TokenEvent::PromptLogprobs(_) => {} // only when asked for
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod beam;
pub mod bench;
pub mod chat;
pub mod embed;
mod engine;
pub mod generate;
pub mod kv_manager;
pub mod loglik;
pub mod perplexity;
pub mod prompt;
mod runtime;
pub mod sampler;
pub mod scheduler;
pub mod spec;

pub use embed::{
    EmbedError, EmbedInput, EmbedRequest, Embedder, EmbedderConfig, EmbeddingModel, Embeddings,
    InputKind,
};
pub use engine::{
    AdapterRunner, BorrowedCpuRunner, CpuRunner, Engine, EngineConfig, EngineStats, FakeRunner,
    Finish, GenerateRequest, ModelInfo, ModelRunner, PpCpuRunner, PromptTokenLogprob, StepInput,
    Tenant, TokenEvent, TokenOut, TopLogprob, TpCpuRunner, Usage,
};
pub use generate::{
    generate, generate_on, generate_on_with_draft, generate_with_draft, FinishReason,
    GenerateOptions, Generation,
};
/// LoRA adapters as requests carry them ([`GenerateRequest::adapter`]).
pub use hangar_models::{LoraAdapter, LoraShape, LoraTarget};
pub use loglik::{ContinuationScore, LoglikRequest, LoglikScorer};
pub use prompt::{Collector, Completion, Prompt, PromptError, TextEncoding};
pub use runtime::LoadedModel;

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] hangar_models::ModelError),
    #[error(transparent)]
    Tokenizer(#[from] hangar_tokenizer::TokenizerError),
    #[error(transparent)]
    Sampler(#[from] sampler::SamplerError),
    #[error("{0}")]
    Invalid(String),
}
