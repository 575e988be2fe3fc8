//! KServe V2 / Open Inference Protocol wire types as serde structs.
//! Shapes only; tensors are decoded in `codec.rs` and mapped to engine requests by the
//! handlers.

use serde::{Deserialize, Serialize};

/// `{"error": "..."}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
