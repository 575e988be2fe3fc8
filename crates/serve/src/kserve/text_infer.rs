//! What an infer call means to Hangar, whatever the transport (HTTP/JSON or gRPC):
//! decoded tensors in, the prompts of `text_input` and sampling options out, engine
//! requests submitted, texts and usage back. Also the model signature and server
//! metadata both transports report. Knows tensors as `codec::Tensor`, never wire bytes.

use super::codec::{Tensor, TensorData};
use super::options::{options_from, set_option};
use super::types::{ServerMetadata, TensorMetadata};
use crate::error::ApiError;
use crate::gen::{self, submit_all, ChoiceStream, SamplingOptions, MAX_CHOICES};
use crate::InferenceState;
use hangar_engine::{GenerateRequest, Prompt};
use serde_json::{Map, Value};

/// The version every served model reports (one model, one version).
pub const MODEL_VERSION: &str = "1";
/// Tokens generated when the client gives no `max_tokens`.
const DEFAULT_MAX_TOKENS: usize = 64;

/// Server metadata (`GET /v2`, gRPC `ServerMetadata`).
pub fn server_metadata() -> ServerMetadata {
    ServerMetadata {
        name: "hangar",
        version: env!("CARGO_PKG_VERSION"),
        extensions: vec!["binary_tensor_data", "generate"],
    }
}

fn tensor(name: &'static str, datatype: &'static str, optional: bool) -> TensorMetadata {
    TensorMetadata {
        name,
        datatype,
        shape: vec![if datatype == "BYTES" { -1 } else { 1 }],
        optional,
    }
}

/// The model's inputs and outputs (`GET /v2/models/{name}`, gRPC `ModelMetadata`).
pub fn signature() -> (Vec<TensorMetadata>, Vec<TensorMetadata>) {
    (
        vec![
            tensor("text_input", "BYTES", false),
            tensor("max_tokens", "INT32", true),
            tensor("temperature", "FP32", true),
            tensor("top_p", "FP32", true),
            tensor("top_k", "INT32", true),
            tensor("seed", "INT64", true),
        ],
        vec![tensor("text_output", "BYTES", false)],
    )
}

/// An infer request being assembled from its decoded input tensors.
#[derive(Debug)]
pub struct TextInfer {
    texts: Option<(Vec<String>, Vec<i64>)>,
    opts: SamplingOptions,
}

impl TextInfer {
    /// Starts from the request's `parameters` (sampling options under OpenAI's names).
    pub fn new(parameters: &Map<String, Value>) -> Result<Self, ApiError> {
        Ok(TextInfer {
            texts: None,
            opts: options_from(parameters)?,
        })
    }

    /// Takes one input: `text_input` (or `prompt`) must be BYTES; any other input is a
    /// scalar sampling option read from its first element.
    pub fn input(&mut self, t: Tensor, datatype: &str) -> Result<(), ApiError> {
        if t.name == "text_input" || t.name == "prompt" {
            match t.data {
                TensorData::Bytes(s) => self.texts = Some((s, t.shape)),
                _ => {
                    return Err(ApiError::param(
                        "text_input",
                        format!("text_input must be BYTES, got {datatype}"),
                    ))
                }
            }
        } else if let Some(v) = t.data.first() {
            set_option(&mut self.opts, &t.name, &v)?;
        }
        Ok(())
    }

    /// Checks the prompts and options and tokenizes: one engine request per prompt,
    /// and the shape the outputs take.
    pub fn requests(
        self,
        state: &InferenceState,
    ) -> Result<(Vec<GenerateRequest>, Vec<i64>), ApiError> {
        let Some((texts, shape)) = self.texts else {
            return Err(ApiError::param(
                "inputs",
                "a BYTES input named text_input is required",
            ));
        };
        if texts.is_empty() || texts.len() > MAX_CHOICES {
            return Err(ApiError::param(
                "text_input",
                format!("text_input must hold 1 to {MAX_CHOICES} strings"),
            ));
        }
        let v = self.opts.validate(state.engine().info())?;
        let k = texts.len();
        let reqs = texts
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let ids = gen::encode(state, Prompt::Text(t))?;
                v.request(ids, i, Some(DEFAULT_MAX_TOKENS), state.engine().info())
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The outputs keep the inputs' shape when it describes them, else a flat list.
        let shape = if !shape.is_empty() && shape.iter().product::<i64>() == k as i64 {
            shape
        } else {
            vec![k as i64]
        };
        Ok((reqs, shape))
    }

    /// Submits every prompt; the choices' event streams and the output shape.
    pub fn submit(self, state: &InferenceState) -> Result<(Vec<ChoiceStream>, Vec<i64>), ApiError> {
        let (reqs, shape) = self.requests(state)?;
        Ok((submit_all(state, reqs)?, shape))
    }

    /// Generates every prompt to the end.
    pub async fn run(self, state: &InferenceState) -> Result<InferDone, ApiError> {
        let (choices, shape) = self.submit(state)?;
        let done = gen::collect(choices, false).await?;
        let mut out = InferDone {
            texts: Vec::with_capacity(done.len()),
            shape,
            finish_reasons: Vec::with_capacity(done.len()),
            prompt_tokens: 0,
            completion_tokens: 0,
        };
        for c in done {
            out.texts.push(c.text);
            out.finish_reasons.push(gen::finish_reason(c.finish));
            out.prompt_tokens += c.usage.prompt_tokens;
            out.completion_tokens += c.usage.completion_tokens;
        }
        Ok(out)
    }
}

/// A finished infer call: one text per prompt, in order, and what it cost.
#[derive(Debug)]
pub struct InferDone {
    pub texts: Vec<String>,
    pub shape: Vec<i64>,
    pub finish_reasons: Vec<&'static str>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

impl InferDone {
    /// Response parameters: `finish_reason` (one per prompt, comma-separated),
    /// `prompt_tokens` and `completion_tokens` (summed over the prompts).
    pub fn parameters(&self) -> Map<String, Value> {
        usage_parameters(
            &self.finish_reasons.join(","),
            self.prompt_tokens,
            self.completion_tokens,
        )
    }
}

/// The usage parameters of a response (or of a stream's last response).
pub fn usage_parameters(
    finish_reason: &str,
    prompt_tokens: usize,
    completion_tokens: usize,
) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert("finish_reason".into(), Value::from(finish_reason));
    p.insert("prompt_tokens".into(), Value::from(prompt_tokens));
    p.insert("completion_tokens".into(), Value::from(completion_tokens));
    p
}
