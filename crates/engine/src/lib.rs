//! hangar-engine: everything between a request and the model — tokenizer wiring,
//! sampling, the generation loop, perplexity and benchmarks; later the KV block
//! manager and the continuous-batching scheduler.
//!
//! Knows nothing about HTTP or the registry.

pub mod bench;
pub mod chat;
pub mod engine;
pub mod generate;
pub mod kv_manager;
pub mod perplexity;
pub mod prompt;
pub mod runtime;
pub mod sampler;
pub mod scheduler;

pub use engine::{
    Engine, EngineConfig, EngineStats, Finish, GenerateRequest, ModelInfo, TokenEvent, TokenOut,
    TopLogprob, Usage,
};
pub use generate::{generate, FinishReason, GenerateOptions, Generation};
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
