//! KServe V2 / Open Inference Protocol wire types as serde structs.
//! Shapes only; tensors are decoded in `codec.rs` and mapped to engine requests by the
//! handlers.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

// ---- requests --------------------------------------------------------------------

/// One input tensor of an infer request.
#[derive(Debug, Clone, Deserialize)]
pub struct InferInput {
    pub name: String,
    #[serde(default)]
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub data: Option<Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
}

/// `POST /v2/models/{name}/infer` (the JSON part, before any binary tensor data).
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    pub id: Option<String>,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    pub inputs: Vec<InferInput>,
    pub outputs: Option<Vec<RequestedOutput>>,
}

/// `POST /v2/models/{name}/generate[_stream]`: `text_input` (or `prompt`) and sampling
/// options, at the top level or under `parameters`.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    pub text_input: Option<Value>,
    pub prompt: Option<Value>,
    pub parameters: Option<Value>,
    #[serde(flatten)]
    pub options: Map<String, Value>,
}

// ---- responses -------------------------------------------------------------------

/// `GET /v2`
#[derive(Debug, Serialize)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}

/// `GET /v2/health/live`
#[derive(Debug, Serialize)]
pub struct Live {
    pub live: bool,
}

/// `GET /v2/health/ready`
#[derive(Debug, Serialize)]
pub struct Ready {
    pub ready: bool,
}

/// `GET /v2/models/{name}/ready`
#[derive(Debug, Serialize)]
pub struct ModelReady {
    pub name: String,
    pub ready: bool,
}

/// `GET /v2/models/{name}`
#[derive(Debug, Serialize)]
pub struct ModelMetadata {
    pub name: String,
    /// The registry version of the served weights ("1" for a plain file).
    pub versions: Vec<String>,
    pub platform: &'static str,
    /// `name@3` and the weights' sha256, when served from the registry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the model runs: `cpu`, or e.g. `cuda:0 (NVIDIA H200, sm_90a)`.
    pub device: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Debug, Serialize)]
pub struct TensorMetadata {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    #[serde(skip_serializing_if = "is_false")]
    pub optional: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `POST /v2/models/{name}/infer` answer (the JSON part).
#[derive(Debug, Serialize)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub outputs: Vec<OutputTensor>,
    /// `finish_reason`, `prompt_tokens`, `completion_tokens`.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub parameters: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct OutputTensor {
    pub name: &'static str,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
    /// Set when the data follows as binary (`binary_data_size`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BinaryDataSize>,
    /// Set when the data is inline JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct BinaryDataSize {
    pub binary_data_size: usize,
}

/// A generate answer, or one event of `generate_stream` (`finish_reason` only on the
/// last).
#[derive(Debug, Serialize)]
pub struct GenerateResponse {
    pub model_name: String,
    pub model_version: String,
    pub text_output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<&'static str>,
}

/// `{"error": "..."}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
