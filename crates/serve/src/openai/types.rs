//! OpenAI wire types: the request and response bodies of `/v1/*` as serde structs.
//! Shapes only; validation and the mapping to engine requests live in the handlers.

use crate::error::ApiError;
use serde::{Deserialize, Serialize};

/// `{"error": {"message", "type", "param", "code"}}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: e.message,
                kind: e.kind.to_string(),
                param: e.param,
                code: e.code.map(str::to_string),
            },
        }
    }
}
