//! gRPC tensors and parameters to and from Hangar's: typed `contents` or
//! `raw_input_contents` into `codec::Tensor`, `InferParameter` maps into the JSON
//! parameter maps the HTTP side reads, and the BYTES `text_output` back.
//! Pure functions over messages; hostile input gives a `CodecError`, never a panic.

use super::pb::infer_parameter::ParameterChoice;
use super::pb::model_infer_request::InferInputTensor;
use super::pb::model_infer_response::InferOutputTensor;
use super::pb::{InferParameter, InferTensorContents, ModelInferRequest};
use crate::kserve::codec::{self, CodecError, Tensor, TensorData};
use serde_json::{Map, Number, Value};
use std::collections::HashMap;

/// Parameters as the JSON map the KServe HTTP side reads options from.
pub fn params_to_json(params: &HashMap<String, InferParameter>) -> Map<String, Value> {
    params
        .iter()
        .filter_map(|(k, p)| {
            let v = match p.parameter_choice.as_ref()? {
                ParameterChoice::BoolParam(b) => Value::Bool(*b),
                ParameterChoice::Int64Param(i) => Value::from(*i),
                ParameterChoice::StringParam(s) => Value::String(s.clone()),
                ParameterChoice::DoubleParam(d) => Value::Number(Number::from_f64(*d)?),
                ParameterChoice::Uint64Param(u) => Value::from(*u),
            };
            Some((k.clone(), v))
        })
        .collect()
}

/// JSON parameters (usage, finish reason) as gRPC parameters.
pub fn json_to_params(params: Map<String, Value>) -> HashMap<String, InferParameter> {
    params
        .into_iter()
        .filter_map(|(k, v)| {
            let choice = match v {
                Value::Bool(b) => ParameterChoice::BoolParam(b),
                Value::String(s) => ParameterChoice::StringParam(s),
                Value::Number(n) => match n.as_i64() {
                    Some(i) => ParameterChoice::Int64Param(i),
                    None => ParameterChoice::DoubleParam(n.as_f64()?),
                },
                _ => return None,
            };
            Some((
                k,
                InferParameter {
                    parameter_choice: Some(choice),
                },
            ))
        })
        .collect()
}

/// Whether a request parameter is a true boolean.
pub fn flag(params: &HashMap<String, InferParameter>, name: &str) -> bool {
    matches!(
        params.get(name).and_then(|p| p.parameter_choice.as_ref()),
        Some(ParameterChoice::BoolParam(true))
    )
}

/// Decodes every input of a request, with its datatype: from `raw_input_contents` (one
/// entry per input, in order) when the client sent them, else from each `contents`.
pub fn decode_inputs(req: &ModelInferRequest) -> Result<Vec<(Tensor, &str)>, CodecError> {
    let raw = &req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        let name = req
            .inputs
            .first()
            .map(|i| i.name.clone())
            .unwrap_or_default();
        return Err(CodecError::Data {
            name,
            reason: format!(
                "raw_input_contents has {} entries for {} inputs; send one per input, in order",
                raw.len(),
                req.inputs.len()
            ),
        });
    }
    req.inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            let t = match raw.get(i) {
                Some(bytes) => {
                    codec::decode_raw(&input.name, &input.datatype, &input.shape, bytes)?
                }
                None => decode_contents(input)?,
            };
            Ok((t, input.datatype.as_str()))
        })
        .collect()
}

/// The typed field a datatype's elements travel in, by name (for error messages).
fn field_of(datatype: &str) -> Option<&'static str> {
    Some(match datatype {
        "BYTES" => "bytes_contents",
        "BOOL" => "bool_contents",
        "INT8" | "INT16" | "INT32" => "int_contents",
        "INT64" => "int64_contents",
        "UINT8" | "UINT16" | "UINT32" => "uint_contents",
        "UINT64" => "uint64_contents",
        "FP32" => "fp32_contents",
        "FP64" => "fp64_contents",
        _ => return None,
    })
}

/// Elements sent in the typed fields in all (to tell "sent in the wrong field" apart).
fn elements(c: &InferTensorContents) -> usize {
    c.bool_contents.len()
        + c.int_contents.len()
        + c.int64_contents.len()
        + c.uint_contents.len()
        + c.uint64_contents.len()
        + c.fp32_contents.len()
        + c.fp64_contents.len()
        + c.bytes_contents.len()
}

fn decode_contents(input: &InferInputTensor) -> Result<Tensor, CodecError> {
    let name = input.name.as_str();
    let datatype = input.datatype.as_str();
    let field = field_of(datatype).ok_or_else(|| CodecError::Datatype {
        name: name.to_string(),
        datatype: datatype.to_string(),
    })?;
    let data_err = |reason: String| CodecError::Data {
        name: name.to_string(),
        reason,
    };
    let empty = InferTensorContents::default();
    let c = input.contents.as_ref().unwrap_or(&empty);
    let out_of_range = |index: usize, got: String| CodecError::Element {
        name: name.to_string(),
        index,
        datatype: datatype.to_string(),
        got,
    };
    let ints = |v: Vec<i64>| -> Result<TensorData, CodecError> {
        let (lo, hi) = codec::int_range(datatype).unwrap_or((i64::MIN as i128, i64::MAX as i128));
        match v.iter().position(|&x| !(lo..=hi).contains(&(x as i128))) {
            Some(i) => Err(out_of_range(i, v[i].to_string())),
            None => Ok(TensorData::Int(v)),
        }
    };
    let data = match datatype {
        "BYTES" => TensorData::Bytes(
            c.bytes_contents
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    String::from_utf8(b.clone())
                        .map_err(|_| data_err(format!("element {i} is not UTF-8 text")))
                })
                .collect::<Result<_, _>>()?,
        ),
        "BOOL" => TensorData::Bool(c.bool_contents.clone()),
        "INT8" | "INT16" | "INT32" => ints(c.int_contents.iter().map(|&x| i64::from(x)).collect())?,
        "INT64" => TensorData::Int(c.int64_contents.clone()),
        "UINT8" | "UINT16" | "UINT32" => {
            ints(c.uint_contents.iter().map(|&x| i64::from(x)).collect())?
        }
        "UINT64" => TensorData::Int(
            c.uint64_contents
                .iter()
                .enumerate()
                .map(|(i, &x)| i64::try_from(x).map_err(|_| out_of_range(i, x.to_string())))
                .collect::<Result<_, _>>()?,
        ),
        "FP32" => TensorData::Fp(c.fp32_contents.iter().map(|&x| f64::from(x)).collect()),
        _ => TensorData::Fp(c.fp64_contents.clone()),
    };
    if data.is_empty() {
        let reason = if elements(c) > 0 {
            format!("a {datatype} input's elements go in contents.{field}, but other fields were filled")
        } else {
            format!("the input has no data: fill contents.{field} or raw_input_contents")
        };
        return Err(data_err(reason));
    }
    codec::check_shape(name, &input.shape, data.len())?;
    Ok(Tensor {
        name: name.to_string(),
        shape: input.shape.clone(),
        data,
    })
}

/// The `text_output` tensor; its elements go in `raw_output_contents` (what Triton
/// sends, and what every client reads).
pub fn text_output(texts: &[String], shape: Vec<i64>) -> (InferOutputTensor, Vec<u8>) {
    (
        InferOutputTensor {
            name: "text_output".into(),
            datatype: "BYTES".into(),
            shape,
            parameters: HashMap::new(),
            contents: None,
        },
        codec::encode_bytes(texts),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(datatype: &str, shape: Vec<i64>, contents: InferTensorContents) -> InferInputTensor {
        InferInputTensor {
            name: "x".into(),
            datatype: datatype.into(),
            shape,
            parameters: HashMap::new(),
            contents: Some(contents),
        }
    }

    #[test]
    fn bytes_contents_decode_as_text() {
        let c = InferTensorContents {
            bytes_contents: vec![b"hi".to_vec(), b"yo".to_vec()],
            ..Default::default()
        };
        let t = decode_contents(&input("BYTES", vec![2], c)).unwrap();
        assert_eq!(t.data, TensorData::Bytes(vec!["hi".into(), "yo".into()]));
    }

    #[test]
    fn elements_in_the_wrong_field_are_refused() {
        let c = InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        };
        let e = decode_contents(&input("INT32", vec![1], c)).unwrap_err();
        assert!(e.to_string().contains("int_contents"), "{e}");
    }

    #[test]
    fn int8_elements_out_of_range_are_refused() {
        let c = InferTensorContents {
            int_contents: vec![1, 300],
            ..Default::default()
        };
        let e = decode_contents(&input("INT8", vec![2], c)).unwrap_err();
        assert!(matches!(e, CodecError::Element { index: 1, .. }), "{e}");
    }

    #[test]
    fn shapes_must_match_the_elements() {
        let c = InferTensorContents {
            bool_contents: vec![true],
            ..Default::default()
        };
        assert!(decode_contents(&input("BOOL", vec![3], c)).is_err());
    }

    #[test]
    fn raw_contents_need_one_entry_per_input() {
        let req = ModelInferRequest {
            inputs: vec![input("BYTES", vec![1], Default::default())],
            raw_input_contents: vec![vec![], vec![]],
            ..Default::default()
        };
        assert!(decode_inputs(&req).is_err());
    }

    #[test]
    fn parameters_round_trip_through_json() {
        let mut p = HashMap::new();
        p.insert(
            "max_tokens".to_string(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(8)),
            },
        );
        let j = params_to_json(&p);
        assert_eq!(j["max_tokens"], Value::from(8));
        assert_eq!(json_to_params(j), p);
    }
}
