//! hangar-registry: the model registry. Versions (immutable, numbered), stages and
//! aliases, tags, metadata, lineage, a content-addressed chunk store (local or S3) with
//! FastCDC dedup, role-based tokens with an audit log, and downloads from Hugging
//! Face-style hubs.
//!
//! Prompt templates are registry objects too ([`prompts`]): versioned, aliased and
//! stored the same way, rendered with minijinja. So are LoRA adapters (kind
//! `adapter`, [`ImportKind::Adapter`]): files like a model's, with lineage to the base
//! model version they were trained on, resolved by [`Registry::resolve_adapter`].
//!
//! Knows nothing about engines, serving or HTTP; `hangar-serve` exposes it over HTTP
//! and `hangar serve` asks [`Registry::resolve`] for a model's files.
//!
//! ```no_run
//! use hangar_registry::{ImportRequest, Registry};
//! let mut reg = Registry::open(None)?;
//! let who = reg.principal(None)?;
//! let out = reg.import(&who, &ImportRequest {
//!     path: "model.gguf".into(),
//!     name: "my-model".into(),
//!     ..Default::default()
//! })?;
//! reg.promote(&who, &format!("my-model@{}", out.version), "production")?;
//! # Ok::<(), hangar_registry::RegistryError>(())
//! ```

pub mod auth;
pub mod bench;
mod db;
pub mod default_model;
pub mod error;
pub mod hub;
pub mod keys;
mod maintain;
pub mod names;
pub mod prompts;
pub mod pypi;
mod registry;
pub mod safety;
pub mod store;
mod transfer;

pub use auth::{Principal, Role};
pub use error::{RegistryError, Result};
pub use keys::{ActiveKey, ApiKeyInfo, KeyLimits, KeyRole, KeyStore, KeyUsage};
pub use maintain::{sha256_file, GcReport, VerifyReport};
pub use names::ModelRef;
pub use prompts::{NewPrompt, PromptSummary, PromptTemplate, PromptVersion, RenderedPrompt};
pub use registry::{
    default_home, AuditEntry, FileRecord, LineageInfo, ModelInfo, ModelSummary, Registry,
    StoreSpec, StoreStats, TokenInfo, VersionInfo,
};
pub use store::S3Config;
pub use transfer::{
    AdapterSummary, ExportOutcome, ImportKind, ImportOutcome, ImportRequest, LineageSpec,
    ResolvedAdapter, ResolvedModel, CHUNK_AVG, CHUNK_MAX, CHUNK_MIN,
};

/// The model `hangar pull default` installs and `hangar serve` serves by default.
pub const DEFAULT_MODEL: &str = "gemma3-270m";
/// Registry name of the default embedding model (`hangar pull embedder`).
pub const DEFAULT_EMBEDDER: &str = "all-minilm-l6-v2";
