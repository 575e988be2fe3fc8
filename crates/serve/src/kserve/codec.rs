//! The KServe tensor codec: input tensors from JSON `data` or the binary tensor
//! extension into typed values, checked against their datatype and shape; BYTES
//! outputs into the binary form. Pure functions over bytes and JSON, no model.

use super::types::InferInput;
use serde_json::{Number, Value};

/// A decoded input tensor's elements, by datatype family.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// BYTES, as UTF-8 text.
    Bytes(Vec<String>),
    /// INT8/16/32/64 and UINT8/16/32 (UINT64 too when it fits).
    Int(Vec<i64>),
    /// FP16 is not accepted; FP32 and FP64 become f64.
    Fp(Vec<f64>),
    Bool(Vec<bool>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::Bytes(v) => v.len(),
            TensorData::Int(v) => v.len(),
            TensorData::Fp(v) => v.len(),
            TensorData::Bool(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first element as JSON (how scalar option tensors are read).
    pub fn first(&self) -> Option<Value> {
        match self {
            TensorData::Bytes(v) => v.first().map(|s| Value::String(s.clone())),
            TensorData::Int(v) => v.first().map(|&i| Value::from(i)),
            TensorData::Fp(v) => v
                .first()
                .and_then(|&x| Number::from_f64(x).map(Value::Number)),
            TensorData::Bool(v) => v.first().map(|&b| Value::Bool(b)),
        }
    }
}

/// A decoded input tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// What is wrong with a tensor, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    #[error("input {name}: datatype {datatype} is not supported (use BYTES, BOOL, INT8-64, UINT8-64, FP32 or FP64)")]
    Datatype { name: String, datatype: String },
    #[error("input {name}: element {index} is {got}, but the datatype is {datatype}")]
    Element {
        name: String,
        index: usize,
        datatype: String,
        got: String,
    },
    #[error("input {name}: shape {shape:?} holds {expected} elements, but {got} were sent")]
    Shape {
        name: String,
        shape: Vec<i64>,
        expected: i64,
        got: usize,
    },
    #[error("input {name}: {reason}")]
    Binary { name: String, reason: String },
    #[error("input {name}: {reason}")]
    Data { name: String, reason: String },
}

/// Bytes per element of a fixed-size datatype; `None` for BYTES.
fn width(datatype: &str) -> Option<usize> {
    match datatype {
        "BOOL" | "INT8" | "UINT8" => Some(1),
        "INT16" | "UINT16" => Some(2),
        "INT32" | "UINT32" | "FP32" => Some(4),
        "INT64" | "UINT64" | "FP64" => Some(8),
        _ => None,
    }
}

fn supported(datatype: &str) -> bool {
    datatype == "BYTES" || width(datatype).is_some()
}

/// Decodes one input: its binary part (taken from the front of `binary` when the input
/// has `binary_data_size`) or its JSON `data`; then checks the shape.
pub fn decode_input(input: &InferInput, binary: &mut &[u8]) -> Result<Tensor, CodecError> {
    let name = &input.name;
    if !supported(&input.datatype) {
        return Err(CodecError::Datatype {
            name: name.clone(),
            datatype: input.datatype.clone(),
        });
    }
    let data = match input.parameters.get("binary_data_size") {
        Some(size) => {
            let bin_err = |reason: String| CodecError::Binary {
                name: name.clone(),
                reason,
            };
            let size = size
                .as_u64()
                .and_then(|s| usize::try_from(s).ok())
                .ok_or_else(|| bin_err("binary_data_size must be a non-negative integer".into()))?;
            if size > binary.len() {
                return Err(bin_err(format!(
                    "binary_data_size {size} exceeds the {} binary bytes sent",
                    binary.len()
                )));
            }
            let (mine, rest) = binary.split_at(size);
            *binary = rest;
            decode_binary(name, &input.datatype, mine)?
        }
        None => {
            let data = input.data.as_ref().ok_or_else(|| CodecError::Data {
                name: name.clone(),
                reason: "the input has neither data nor binary_data_size".into(),
            })?;
            let mut flat = Vec::new();
            flatten(data, &mut flat, 0).map_err(|reason| CodecError::Data {
                name: name.clone(),
                reason,
            })?;
            decode_json(name, &input.datatype, &flat)?
        }
    };
    check_shape(name, &input.shape, data.len())?;
    Ok(Tensor {
        name: name.clone(),
        shape: input.shape.clone(),
        data,
    })
}

/// Decodes one input sent in the raw form (the binary tensor extension's layout, which
/// is also gRPC's `raw_input_contents`), then checks the shape.
pub fn decode_raw(
    name: &str,
    datatype: &str,
    shape: &[i64],
    raw: &[u8],
) -> Result<Tensor, CodecError> {
    if !supported(datatype) {
        return Err(CodecError::Datatype {
            name: name.to_string(),
            datatype: datatype.to_string(),
        });
    }
    let data = decode_binary(name, datatype, raw)?;
    check_shape(name, shape, data.len())?;
    Ok(Tensor {
        name: name.to_string(),
        shape: shape.to_vec(),
        data,
    })
}

/// A shape must list non-negative sizes whose product is the element count; a missing
/// shape (`[]` from an omitted field) is taken as "whatever was sent".
pub fn check_shape(name: &str, shape: &[i64], got: usize) -> Result<(), CodecError> {
    if shape.is_empty() {
        return Ok(());
    }
    let expected = shape.iter().try_fold(
        1i64,
        |acc, &d| if d < 0 { None } else { acc.checked_mul(d) },
    );
    match expected {
        Some(e) if e == got as i64 => Ok(()),
        _ => Err(CodecError::Shape {
            name: name.to_string(),
            shape: shape.to_vec(),
            expected: expected.unwrap_or(-1),
            got,
        }),
    }
}

fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>, depth: usize) -> Result<(), String> {
    if depth > 8 {
        return Err("data is nested too deeply".into());
    }
    match v {
        Value::Array(a) => a.iter().try_for_each(|x| flatten(x, out, depth + 1)),
        other => {
            out.push(other);
            Ok(())
        }
    }
}

/// Integer bounds of an integer datatype.
pub fn int_range(datatype: &str) -> Option<(i128, i128)> {
    Some(match datatype {
        "INT8" => (i8::MIN as i128, i8::MAX as i128),
        "INT16" => (i16::MIN as i128, i16::MAX as i128),
        "INT32" => (i32::MIN as i128, i32::MAX as i128),
        "INT64" => (i64::MIN as i128, i64::MAX as i128),
        "UINT8" => (0, u8::MAX as i128),
        "UINT16" => (0, u16::MAX as i128),
        "UINT32" => (0, u32::MAX as i128),
        "UINT64" => (0, i64::MAX as i128),
        _ => return None,
    })
}

fn decode_json(name: &str, datatype: &str, flat: &[&Value]) -> Result<TensorData, CodecError> {
    let bad = |index: usize, v: &Value| CodecError::Element {
        name: name.to_string(),
        index,
        datatype: datatype.to_string(),
        got: match v {
            Value::String(_) => "a string".into(),
            Value::Bool(_) => "a boolean".into(),
            Value::Null => "null".into(),
            Value::Object(_) => "an object".into(),
            other => other.to_string(),
        },
    };
    let items = flat.iter().enumerate();
    Ok(match datatype {
        "BYTES" => TensorData::Bytes(
            items
                .map(|(i, v)| v.as_str().map(str::to_string).ok_or_else(|| bad(i, v)))
                .collect::<Result<_, _>>()?,
        ),
        "BOOL" => TensorData::Bool(
            items
                .map(|(i, v)| v.as_bool().ok_or_else(|| bad(i, v)))
                .collect::<Result<_, _>>()?,
        ),
        "FP32" | "FP64" => TensorData::Fp(
            items
                .map(|(i, v)| v.as_f64().ok_or_else(|| bad(i, v)))
                .collect::<Result<_, _>>()?,
        ),
        dt => {
            let (lo, hi) = int_range(dt).ok_or_else(|| CodecError::Datatype {
                name: name.to_string(),
                datatype: dt.to_string(),
            })?;
            TensorData::Int(
                items
                    .map(|(i, v)| {
                        let x = v
                            .as_i64()
                            .map(i128::from)
                            .or_else(|| v.as_u64().map(i128::from))
                            .filter(|x| (lo..=hi).contains(x))
                            .ok_or_else(|| bad(i, v))?;
                        i64::try_from(x).map_err(|_| bad(i, v))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

fn decode_binary(name: &str, datatype: &str, mut b: &[u8]) -> Result<TensorData, CodecError> {
    let bad = |reason: &str| CodecError::Binary {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if datatype == "BYTES" {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (len, rest) = b
                .split_first_chunk::<4>()
                .ok_or_else(|| bad("truncated BYTES element length"))?;
            let n = u32::from_le_bytes(*len) as usize;
            if n > rest.len() {
                return Err(bad("BYTES element longer than the data sent"));
            }
            let s = std::str::from_utf8(&rest[..n])
                .map_err(|_| bad("BYTES element is not UTF-8 text"))?;
            out.push(s.to_string());
            b = &rest[n..];
        }
        return Ok(TensorData::Bytes(out));
    }
    let w = width(datatype).ok_or_else(|| CodecError::Datatype {
        name: name.to_string(),
        datatype: datatype.to_string(),
    })?;
    if !b.len().is_multiple_of(w) {
        return Err(bad(&format!(
            "{} bytes is not a whole number of {w}-byte {datatype} elements",
            b.len()
        )));
    }
    let chunks = b.chunks_exact(w);
    let le8 = |c: &[u8]| {
        let mut a = [0u8; 8];
        a[..c.len()].copy_from_slice(c);
        a
    };
    Ok(match datatype {
        "BOOL" => TensorData::Bool(chunks.map(|c| c[0] != 0).collect()),
        "FP32" => TensorData::Fp(
            chunks
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
        ),
        "FP64" => TensorData::Fp(chunks.map(|c| f64::from_le_bytes(le8(c))).collect()),
        "INT8" => TensorData::Int(chunks.map(|c| c[0] as i8 as i64).collect()),
        "INT16" => TensorData::Int(
            chunks
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
        ),
        "INT32" => TensorData::Int(
            chunks
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        "INT64" => TensorData::Int(chunks.map(|c| i64::from_le_bytes(le8(c))).collect()),
        "UINT64" => TensorData::Int(
            chunks
                .map(|c| {
                    i64::try_from(u64::from_le_bytes(le8(c)))
                        .map_err(|_| bad("UINT64 element is larger than 2^63 - 1"))
                })
                .collect::<Result<_, _>>()?,
        ),
        // UINT8, UINT16, UINT32: zero-extended little-endian.
        _ => TensorData::Int(chunks.map(|c| u64::from_le_bytes(le8(c)) as i64).collect()),
    })
}

/// BYTES elements in the binary tensor form: each a 4-byte little-endian length, then
/// its bytes.
pub fn encode_bytes(items: &[String]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(items.iter().map(|s| s.len() + 4).sum());
    for s in items {
        blob.extend_from_slice(&(s.len() as u32).to_le_bytes());
        blob.extend_from_slice(s.as_bytes());
    }
    blob
}

/// Splits a body into its JSON header and binary part by the
/// `Inference-Header-Content-Length` value (`None`: all JSON).
pub fn split_body<'a>(
    body: &'a [u8],
    header_len: Option<&str>,
) -> Result<(&'a [u8], &'a [u8]), String> {
    let Some(h) = header_len else {
        return Ok((body, &[]));
    };
    let n: usize = h.trim().parse().map_err(|_| {
        format!("Inference-Header-Content-Length must be a non-negative integer, got {h:?}")
    })?;
    if n > body.len() {
        return Err(format!(
            "Inference-Header-Content-Length {n} is larger than the body ({} bytes)",
            body.len()
        ));
    }
    Ok(body.split_at(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> InferInput {
        serde_json::from_value(v).unwrap()
    }

    fn decode(v: Value, mut bin: &[u8]) -> Result<Tensor, CodecError> {
        decode_input(&input(v), &mut bin)
    }

    #[test]
    fn json_bytes_tensor_keeps_strings_and_shape() {
        let t = decode(
            json!({"name": "text_input", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["bé"]]}),
            &[],
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Bytes(vec!["a".into(), "bé".into()]));
        assert_eq!(t.shape, vec![2, 1]);
    }

    #[test]
    fn binary_bytes_round_trip_through_encode_bytes() {
        let items = vec!["hello".to_string(), String::new(), "wörld".to_string()];
        let blob = encode_bytes(&items);
        let mut rest: &[u8] = &[blob.as_slice(), b"tail"].concat();
        let t = decode_input(
            &input(json!({"name": "t", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": blob.len()}})),
            &mut rest,
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Bytes(items));
        assert_eq!(rest, b"tail", "only this tensor's bytes are taken");
    }

    #[test]
    fn int_and_fp_tensors_decode_from_json_and_binary() {
        let t = decode(
            json!({"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": [8]}),
            &[],
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Int(vec![8]));
        assert_eq!(t.data.first(), Some(json!(8)));
        let bin: Vec<u8> = [-3i32, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        let t = decode(
            json!({"name": "x", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}}),
            &bin,
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Int(vec![-3, 7]));
        let bin = 0.25f32.to_le_bytes();
        let t = decode(
            json!({"name": "temperature", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}}),
            &bin,
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Fp(vec![0.25]));
        let t = decode(
            json!({"name": "p", "datatype": "FP64", "shape": [1], "data": [1]}),
            &[],
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Fp(vec![1.0]));
        let bin: Vec<u8> = [u64::MAX].iter().flat_map(|x| x.to_le_bytes()).collect();
        assert!(decode(
            json!({"name": "u", "datatype": "UINT64", "shape": [1], "parameters": {"binary_data_size": 8}}),
            &bin
        )
        .is_err());
        let t = decode(
            json!({"name": "b", "datatype": "BOOL", "shape": [2], "data": [true, false]}),
            &[],
        )
        .unwrap();
        assert_eq!(t.data, TensorData::Bool(vec![true, false]));
    }

    #[test]
    fn elements_of_the_wrong_type_are_named() {
        let e = decode(
            json!({"name": "text_input", "datatype": "BYTES", "shape": [2], "data": ["a", 5]}),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, CodecError::Element { index: 1, .. }), "{e}");
        let e = decode(
            json!({"name": "max_tokens", "datatype": "INT32", "shape": [1], "data": ["8"]}),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("a string"), "{e}");
        let e = decode(
            json!({"name": "n", "datatype": "INT8", "shape": [1], "data": [300]}),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, CodecError::Element { .. }), "{e}");
        let e = decode(
            json!({"name": "n", "datatype": "INT32", "shape": [1], "data": [1.5]}),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, CodecError::Element { .. }), "{e}");
        let e = decode(
            json!({"name": "h", "datatype": "FP16", "shape": [1], "data": [1.0]}),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, CodecError::Datatype { .. }), "{e}");
    }

    #[test]
    fn shapes_must_match_the_element_count() {
        let e = decode(
            json!({"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a"]}),
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                CodecError::Shape {
                    expected: 2,
                    got: 1,
                    ..
                }
            ),
            "{e}"
        );
        let e = decode(
            json!({"name": "t", "datatype": "INT32", "shape": [-1], "data": [1]}),
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, CodecError::Shape { .. }), "{e}");
        let e = decode(json!({"name": "t", "datatype": "INT64", "shape": [4611686018427387904i64, 4], "data": [1]}), &[]).unwrap_err();
        assert!(matches!(e, CodecError::Shape { .. }), "{e}");
        // An omitted shape accepts what was sent.
        assert!(decode(
            json!({"name": "t", "datatype": "BYTES", "data": ["a", "b"]}),
            &[]
        )
        .is_ok());
    }

    #[test]
    fn malformed_binary_data_is_refused() {
        let e = decode(json!({"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 3}}), &[1, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = decode(json!({"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}), &[9, 0, 0, 0, b'a', b'b']).unwrap_err();
        assert!(e.to_string().contains("longer"), "{e}");
        let e = decode(json!({"name": "t", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 5}}), &[1, 0, 0, 0, 0xff]).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");
        let e = decode(json!({"name": "t", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 3}}), &[1, 2, 3]).unwrap_err();
        assert!(e.to_string().contains("whole number"), "{e}");
        let e = decode(json!({"name": "t", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": 8}}), &[1, 2, 3, 4]).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        let e = decode(json!({"name": "t", "datatype": "INT32", "shape": [1], "parameters": {"binary_data_size": -1}}), &[]).unwrap_err();
        assert!(matches!(e, CodecError::Binary { .. }), "{e}");
        let e = decode(json!({"name": "t", "datatype": "INT32", "shape": [1]}), &[]).unwrap_err();
        assert!(e.to_string().contains("neither"), "{e}");
    }

    #[test]
    fn deeply_nested_data_is_refused() {
        let mut v = json!(["x"]);
        for _ in 0..10 {
            v = json!([v]);
        }
        let e = decode(json!({"name": "t", "datatype": "BYTES", "data": v}), &[]).unwrap_err();
        assert!(e.to_string().contains("nested"), "{e}");
    }

    #[test]
    fn body_splits_at_the_header_length() {
        assert_eq!(
            split_body(b"{}abc", Some("2")).unwrap(),
            (&b"{}"[..], &b"abc"[..])
        );
        assert_eq!(split_body(b"{}", None).unwrap(), (&b"{}"[..], &b""[..]));
        assert!(split_body(b"{}", Some("3")).is_err());
        assert!(split_body(b"{}", Some("x")).is_err());
    }
}
