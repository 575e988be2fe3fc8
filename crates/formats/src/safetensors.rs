//! safetensors reader over a memory map: the JSON header's tensor directory, bounds
//! checked, and tensor bytes borrowed in place. Knows nothing about models: it hands out
//! bytes and, for the float types, f32 copies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Why a safetensors file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not a valid safetensors file: {1}")]
    Invalid(String, String),
    #[error("tensor {0} is missing: the checkpoint does not match the expected architecture")]
    Missing(String),
    #[error("tensor {name} has dtype {dtype}: only F32, F16 and BF16 weights are supported")]
    Dtype { name: String, dtype: String },
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafeTensorInfo {
    pub dtype: String,
    pub shape: Vec<usize>,
    /// Byte range within the data section.
    pub start: usize,
    pub end: usize,
}

enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

/// A safetensors file: header parsed, data borrowed from the map.
pub struct SafetensorsFile {
    bytes: Bytes,
    data_start: usize,
    tensors: BTreeMap<String, SafeTensorInfo>,
    label: String,
}

fn element_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

impl SafetensorsFile {
    /// Maps `path` and parses its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SafetensorsError> {
        let path = path.as_ref();
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map; the file is not expected to change while open.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Bytes::Map(map), path.display().to_string())
    }

    /// Parses an in-memory file (tests, fuzzing).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, SafetensorsError> {
        Self::parse(Bytes::Owned(bytes), "<memory>".into())
    }

    fn parse(bytes: Bytes, label: String) -> Result<Self, SafetensorsError> {
        let all: &[u8] = match &bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        };
        let bad = |why: String| SafetensorsError::Invalid(label.clone(), why);
        if all.len() < 8 {
            return Err(bad("shorter than its 8-byte header length".into()));
        }
        let n = u64::from_le_bytes(all[..8].try_into().expect("8 bytes"));
        let data_start = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&e| e <= all.len())
            .ok_or_else(|| bad(format!("header length {n} runs past the end of the file")))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&all[8..data_start])
                .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
        let data_len = all.len() - data_start;
        let mut tensors = BTreeMap::new();
        for (name, v) in header {
            if name == "__metadata__" {
                continue;
            }
            let dtype = v["dtype"]
                .as_str()
                .ok_or_else(|| bad(format!("{name}: no dtype")))?
                .to_string();
            let shape: Vec<usize> = v["shape"]
                .as_array()
                .ok_or_else(|| bad(format!("{name}: no shape")))?
                .iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(format!("{name}: shape is not a list of sizes")))?;
            let offs = v["data_offsets"]
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((a[0].as_u64()? as usize, a[1].as_u64()? as usize)))
                .ok_or_else(|| bad(format!("{name}: data_offsets is not [start, end]")))?;
            let es = element_size(&dtype).ok_or_else(|| bad(format!("{name}: dtype {dtype}")))?;
            let want = shape
                .iter()
                .try_fold(es, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("{name}: shape {shape:?} overflows")))?;
            if offs.0 > offs.1 || offs.1 > data_len || offs.1 - offs.0 != want {
                return Err(bad(format!(
                    "{name}: data_offsets {offs:?} do not hold {want} bytes within {data_len}"
                )));
            }
            tensors.insert(
                name,
                SafeTensorInfo {
                    dtype,
                    shape,
                    start: offs.0,
                    end: offs.1,
                },
            );
        }
        Ok(Self {
            bytes,
            data_start,
            tensors,
            label,
        })
    }

    /// The tensor directory, by name.
    pub fn tensors(&self) -> &BTreeMap<String, SafeTensorInfo> {
        &self.tensors
    }

    /// Where this file came from (for messages).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// A tensor's entry and raw bytes, borrowed.
    pub fn tensor(&self, name: &str) -> Result<(&SafeTensorInfo, &[u8]), SafetensorsError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| SafetensorsError::Missing(name.to_string()))?;
        let all: &[u8] = match &self.bytes {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        };
        Ok((t, &all[self.data_start + t.start..self.data_start + t.end]))
    }

    /// A float tensor (F32, F16 or BF16) converted to f32, with its shape.
    pub fn f32_tensor(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), SafetensorsError> {
        let (t, b) = self.tensor(name)?;
        let v: Vec<f32> = match t.dtype.as_str() {
            "F32" => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            "F16" => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            "BF16" => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => {
                return Err(SafetensorsError::Dtype {
                    name: name.to_string(),
                    dtype: t.dtype.clone(),
                })
            }
        };
        Ok((v, t.shape.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut v = (header.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(header.as_bytes());
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn reads_f32_f16_bf16_tensors() {
        let mut data = Vec::new();
        data.extend(1.5f32.to_le_bytes());
        data.extend(half::f16::from_f32(-2.0).to_le_bytes());
        data.extend(half::bf16::from_f32(0.25).to_le_bytes());
        let h = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]},"c":{"dtype":"BF16","shape":[1,1],"data_offsets":[6,8]}}"#;
        let f = SafetensorsFile::from_bytes(file(h, &data)).unwrap();
        assert_eq!(f.f32_tensor("a").unwrap().0, vec![1.5]);
        assert_eq!(f.f32_tensor("b").unwrap().0, vec![-2.0]);
        assert_eq!(f.f32_tensor("c").unwrap(), (vec![0.25], vec![1, 1]));
        assert!(matches!(
            f.f32_tensor("d"),
            Err(SafetensorsError::Missing(_))
        ));
    }

    #[test]
    fn refuses_hostile_headers() {
        for (h, data) in [
            (
                r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#,
                &[0u8; 4][..],
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}"#,
                &[0u8; 4][..],
            ),
            (
                r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,0]}}"#,
                &[][..],
            ),
            (
                r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#,
                &[0u8][..],
            ),
            ("[1,2]", &[][..]),
        ] {
            assert!(SafetensorsFile::from_bytes(file(h, data)).is_err(), "{h}");
        }
        let mut v = u64::MAX.to_le_bytes().to_vec();
        v.push(b'{');
        assert!(SafetensorsFile::from_bytes(v).is_err());
        assert!(SafetensorsFile::from_bytes(vec![1, 2]).is_err());
    }
}
