//! The registry's error type: one enum whose messages say what went wrong and what to
//! do next. Library code returns these; only the command-line edge turns them into text.

use std::path::PathBuf;

use crate::auth::Role;

/// Everything that can go wrong in the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A model, stage, alias, tag or file name failed validation.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// A file was refused on import (format not accepted, pickle, malformed).
    #[error("refused {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    /// The model, version, stage or alias does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// No valid token was presented.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token is valid but its role is too low for the action.
    #[error("forbidden: {action} needs the {needed} role, token {who:?} has {has}")]
    Forbidden {
        action: String,
        needed: Role,
        who: String,
        has: Role,
    },
    /// The action conflicts with the registry's state (e.g. deleting a production version).
    #[error("{0}")]
    Conflict(String),
    /// Bytes did not match their recorded hash or size.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// Another process holds a lease that excludes this action (import vs gc).
    #[error("busy: {0}")]
    Busy(String),
    /// A bad argument or configuration value.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A prompt template does not parse or cannot be rendered.
    #[error("prompt template {prompt}: {reason}")]
    Template { prompt: String, reason: String },
    /// A prompt was rendered without values for some of its variables.
    #[error(
        "prompt {prompt} needs the variable(s) {}; it uses {}; give a value for each",
        missing.join(", "), needed.join(", ")
    )]
    MissingVariables {
        prompt: String,
        missing: Vec<String>,
        needed: Vec<String>,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The metadata database failed.
    #[error("registry database: {0}")]
    Db(#[from] rusqlite::Error),
    /// The chunk store (local or S3) failed.
    #[error("chunk store: {0}")]
    Store(String),
    /// A download from a hub failed after its retries.
    #[error("transfer failed: {0}")]
    Transfer(String),
}

/// Shorthand used throughout the crate.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Attaches a context line to an I/O error: `io_err("open x")(e)`.
pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RegistryError {
    let context = context.into();
    move |source| RegistryError::Io { context, source }
}
