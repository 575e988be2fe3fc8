//! The one error mapping of the server: domain errors (engine, prompt, registry) become
//! an [`ApiError`] (status + message), written in the calling API's own format.
//! Knows the three wire formats by name only; their structs live in each API's types.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_engine::{EngineError, PromptError};
use hangar_registry::RegistryError;

/// Which API's error format a response uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFormat {
    /// `{"error": {"message", "type", "param", "code"}}`
    OpenAi,
    /// `{"error": "..."}`
    KServe,
    /// `{"error": {"type", "message"}}`
    Registry,
    /// Qdrant's `{"status": {"error": "..."}, "time": 0.0}`
    Qdrant,
    /// `{"error_code", "message"}`
    Mlflow,
}

impl ApiFormat {
    /// The format of the API a path belongs to (used where no handler ran: auth, 404).
    pub fn of_path(path: &str) -> Self {
        if crate::mlflow_api::is_mlflow_path(path) {
            ApiFormat::Mlflow
        } else if path.starts_with("/v1/registry") {
            ApiFormat::Registry
        } else if path == "/collections" || path.starts_with("/collections/") {
            ApiFormat::Qdrant
        } else if path == "/v2" || path.starts_with("/v2/") {
            ApiFormat::KServe
        } else {
            ApiFormat::OpenAi
        }
    }
}

/// An error answered to the client.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Error type: OpenAI's `invalid_request_error`, `authentication_error`, ...; the
    /// registry's `not_found`, `forbidden`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds until a retry can succeed (`Retry-After`, on 429s).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }
    /// A parameter outside its allowed range or of the wrong shape.
    pub fn param(param: &str, message: impl Into<String>) -> Self {
        ApiError {
            param: Some(param.to_string()),
            ..Self::bad_request(message)
        }
    }
    pub fn unauthorized() -> Self {
        ApiError {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "missing or invalid API key: send `Authorization: Bearer <key>`",
            )
        }
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "invalid_request_error", message)
    }
    pub fn model_not_found(name: &str, served: &str) -> Self {
        ApiError {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::not_found(format!(
                "the model `{name}` does not exist; this server serves `{served}`"
            ))
        }
    }
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            code: Some("request_too_large"),
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is larger than the limit of {limit} bytes"),
            )
        }
    }
    /// The body did not arrive within the body read timeout.
    pub fn body_timeout() -> Self {
        ApiError {
            code: Some("request_timeout"),
            ..Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "invalid_request_error",
                "the request body did not arrive in time; send it without pauses",
            )
        }
    }
    pub fn context_length(message: impl Into<String>) -> Self {
        ApiError {
            code: Some("context_length_exceeded"),
            ..Self::bad_request(message)
        }
    }
    /// A valid caller without the rights for this route.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "permission_error", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
    }
    /// A JSON body that does not parse or has wrong types.
    pub fn json(e: serde_json::Error) -> Self {
        Self::bad_request(format!("invalid JSON body: {e}"))
    }

    /// This error as a response in `format`.
    pub fn render(self, format: ApiFormat) -> Response {
        let status = self.status;
        let retry_after = self.retry_after;
        let body = match format {
            ApiFormat::OpenAi => serde_json::to_vec(&crate::openai::types::ErrorBody::from(self)),
            ApiFormat::KServe => serde_json::to_vec(&crate::kserve::types::ErrorBody {
                error: self.message,
            }),
            ApiFormat::Registry => serde_json::to_vec(&crate::registry_api::ErrorBody::from(self)),
            ApiFormat::Qdrant => {
                serde_json::to_vec(&crate::qdrant_api::ErrorBody::new(self.message, 0.0))
            }
            ApiFormat::Mlflow => serde_json::to_vec(&serde_json::json!({
                "error_code": crate::mlflow_api::code_for_status(status),
                "message": self.message,
            })),
        };
        let mut resp = match body {
            Ok(b) => (
                status,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                b,
            )
                .into_response(),
            Err(_) => status.into_response(),
        };
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(m) => ApiError::bad_request(m),
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<PromptError> for ApiError {
    fn from(e: PromptError) -> Self {
        let msg = e.to_string();
        match e {
            PromptError::Empty | PromptError::OutOfVocabulary { .. } => {
                ApiError::param("prompt", msg)
            }
            PromptError::PromptTooLong { .. } | PromptError::BudgetTooLong { .. } => {
                ApiError::context_length(msg)
            }
            PromptError::Chat(_) => ApiError::param("messages", msg),
            PromptError::Overloaded { .. } | PromptError::Stopped | PromptError::Incomplete => {
                ApiError::unavailable(msg)
            }
            PromptError::Failed(_) => ApiError::internal(msg),
            PromptError::Engine(e) => e.into(),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let (status, kind) = match &e {
            RegistryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            RegistryError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            RegistryError::Forbidden { .. } => (StatusCode::FORBIDDEN, "forbidden"),
            RegistryError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            RegistryError::Busy(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            RegistryError::Invalid(_)
            | RegistryError::InvalidName { .. }
            | RegistryError::Template { .. }
            | RegistryError::MissingVariables { .. } => {
                (StatusCode::BAD_REQUEST, "invalid_request")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        ApiError::new(status, kind, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.render(ApiFormat::OpenAi)
    }
}

/// The same error in KServe V2 form.
#[derive(Debug)]
pub struct KsError(pub ApiError);

/// Domain errors convert into each API's error wrapper through [`ApiError`].
macro_rules! via_api_error {
    ($wrapper:ident: $($from:ty),*) => {
        $(impl From<$from> for $wrapper {
            fn from(e: $from) -> Self {
                $wrapper(e.into())
            }
        })*
    };
}

via_api_error!(KsError: ApiError, EngineError, PromptError, RegistryError);

impl IntoResponse for KsError {
    fn into_response(self) -> Response {
        self.0.render(ApiFormat::KServe)
    }
}

/// The same error in the registry API's form.
#[derive(Debug)]
pub struct RegistryApiError(pub ApiError);

via_api_error!(RegistryApiError: ApiError, RegistryError);

impl IntoResponse for RegistryApiError {
    fn into_response(self) -> Response {
        self.0.render(ApiFormat::Registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_choose_their_api_format() {
        assert_eq!(ApiFormat::of_path("/v1/completions"), ApiFormat::OpenAi);
        assert_eq!(ApiFormat::of_path("/v2/models/x/infer"), ApiFormat::KServe);
        assert_eq!(ApiFormat::of_path("/v2"), ApiFormat::KServe);
        assert_eq!(
            ApiFormat::of_path("/v1/registry/models"),
            ApiFormat::Registry
        );
        assert_eq!(ApiFormat::of_path("/v2x"), ApiFormat::OpenAi);
    }

    #[test]
    fn registry_errors_map_to_statuses() {
        let e: ApiError = RegistryError::NotFound("m".into()).into();
        assert_eq!((e.status, e.kind), (StatusCode::NOT_FOUND, "not_found"));
        let e: ApiError = RegistryError::Unauthorized("x".into()).into();
        assert_eq!(e.status, StatusCode::UNAUTHORIZED);
    }
}
