//! The tracker's error type: each variant is one kind of answer a client can act on
//! (missing, already there, invalid), plus storage failures. Never formats for HTTP.

/// Everything that can go wrong in the tracker.
#[derive(Debug, thiserror::Error)]
pub enum TrackError {
    /// An experiment, run, metric or artifact does not exist.
    #[error("{0}")]
    NotFound(String),
    /// An experiment (or other named thing) with that name already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// A bad argument: malformed filter, limit exceeded, changed param, deleted run...
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("tracking database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = TrackError> = std::result::Result<T, E>;

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> TrackError {
    let context = context.into();
    move |source| TrackError::Io { context, source }
}

pub(crate) fn invalid(msg: impl Into<String>) -> TrackError {
    TrackError::Invalid(msg.into())
}
