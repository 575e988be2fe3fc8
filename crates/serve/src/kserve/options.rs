//! Sampling options as KServe clients send them: request `parameters`, top-level
//! generate fields, or scalar input tensors, under OpenAI's names (and a few aliases).
//! Reads values only; ranges are checked by `gen::SamplingOptions::validate`.

use crate::error::ApiError;
use crate::gen::SamplingOptions;
use serde_json::{Map, Value};

fn as_f32(name: &str, v: &Value) -> Result<f32, ApiError> {
    v.as_f64()
        .map(|x| x as f32)
        .ok_or_else(|| ApiError::param(name, format!("{name} must be a number, got {v}")))
}

fn as_i64(name: &str, v: &Value) -> Result<i64, ApiError> {
    v.as_i64()
        .or_else(|| {
            v.as_f64()
                .filter(|x| x.fract() == 0.0 && x.abs() < 9e15)
                .map(|x| x as i64)
        })
        .ok_or_else(|| ApiError::param(name, format!("{name} must be an integer, got {v}")))
}

/// Reads one sampling option by name; unknown names are ignored (as KServe servers do).
pub(super) fn set_option(o: &mut SamplingOptions, name: &str, v: &Value) -> Result<(), ApiError> {
    match name {
        "max_tokens" | "max_new_tokens" => o.max_tokens = Some(as_i64(name, v)?),
        "temperature" => o.temperature = Some(as_f32(name, v)?),
        "top_p" => o.top_p = Some(as_f32(name, v)?),
        "top_k" => o.top_k = Some(as_i64(name, v)?),
        "min_p" => o.min_p = Some(as_f32(name, v)?),
        "presence_penalty" => o.presence_penalty = Some(as_f32(name, v)?),
        "frequency_penalty" => o.frequency_penalty = Some(as_f32(name, v)?),
        "repetition_penalty" => o.repetition_penalty = Some(as_f32(name, v)?),
        "seed" | "random_seed" => o.seed = Some(as_i64(name, v)?),
        "ignore_eos" => {
            o.ignore_eos = v
                .as_bool()
                .ok_or_else(|| ApiError::param(name, "ignore_eos must be a boolean"))?
        }
        "stop" | "stop_words" => match v {
            Value::String(s) if s.is_empty() => {}
            Value::String(s) => o.stop.push(s.clone()),
            Value::Array(a) => {
                for x in a {
                    let s = x.as_str().ok_or_else(|| {
                        ApiError::param(name, "stop must be a string or a list of strings")
                    })?;
                    if !s.is_empty() {
                        o.stop.push(s.to_string());
                    }
                }
            }
            _ => {
                return Err(ApiError::param(
                    name,
                    "stop must be a string or a list of strings",
                ))
            }
        },
        _ => {}
    }
    Ok(())
}

/// Options from a `parameters` object (KServe skips special tokens in its output).
pub(super) fn options_from(params: &Map<String, Value>) -> Result<SamplingOptions, ApiError> {
    let mut o = SamplingOptions {
        skip_special_tokens: true,
        ..Default::default()
    };
    for (k, v) in params {
        set_option(&mut o, k, v)?;
    }
    Ok(o)
}
