//! GGUF v3 writer: metadata and a tensor directory, then tensor data streamed in
//! directory order, each tensor padded to the file's alignment.
//!
//! Owns the byte layout only (the mirror of [`crate::gguf`]); it does not choose types
//! or produce tensor data. Writing a file's own metadata and tensors back reproduces
//! the file byte for byte when it was laid out the way ggml lays files out.
//!
//! ```no_run
//! use hangar_formats::{GgmlType, GgufFileWriter, GgufHeader, MetaValue};
//! let mut h = GgufHeader::new();
//! h.set("general.architecture", MetaValue::String("llama".into()));
//! h.add_tensor("w", vec![4, 2], GgmlType::F32).unwrap();
//! let mut w = GgufFileWriter::create("out.gguf", &h).unwrap();
//! w.write_tensor(&[0u8; 32]).unwrap();
//! w.finish().unwrap();
//! ```

use crate::dtype::GgmlType;
use crate::gguf::{GgufFile, MetaArray, MetaValue};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// What can go wrong writing a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write failed: {0}")]
    Stream(#[from] std::io::Error),
    #[error("invalid GGUF content: {0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, GgufWriteError>;

/// One tensor's directory entry as it will be written (offsets are computed).
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    /// `dims[0]` is the innermost dimension, as in [`crate::TensorInfo`].
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    /// Bytes of this tensor's data (a whole number of blocks is checked on add).
    pub fn size(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        self.ty.bytes_for(n).unwrap_or(0)
    }
}

/// Everything before the tensor data: version, metadata in order, tensor directory.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorSpec>,
}

impl Default for GgufHeader {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufHeader {
    /// An empty version-3 header.
    pub fn new() -> Self {
        GgufHeader {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// A header with `f`'s version and metadata (in file order) and no tensors.
    pub fn with_metadata_of(f: &GgufFile) -> Self {
        GgufHeader {
            version: f.version(),
            metadata: f
                .metadata()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            tensors: Vec::new(),
        }
    }

    /// Sets `key`, keeping its position if it exists, else appending it.
    pub fn set(&mut self, key: &str, value: MetaValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Writes a SentencePiece (`"llama"`) vocabulary: pieces, scores and token types
    /// (llama.cpp's numbering: 1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte).
    /// Special-token ids and flags are the caller's, as they differ per model.
    pub fn set_spm_vocab(&mut self, tokens: Vec<String>, scores: Vec<f32>, types: Vec<i32>) {
        self.set("tokenizer.ggml.model", MetaValue::String("llama".into()));
        self.set(
            "tokenizer.ggml.tokens",
            MetaValue::Array(MetaArray::String(tokens)),
        );
        self.set(
            "tokenizer.ggml.scores",
            MetaValue::Array(MetaArray::F32(scores)),
        );
        self.set(
            "tokenizer.ggml.token_type",
            MetaValue::Array(MetaArray::I32(types)),
        );
    }

    /// Removes `key` if present.
    pub fn remove(&mut self, key: &str) {
        self.metadata.retain(|(k, _)| k != key);
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Appends a tensor to the directory. Its data must later be written in this order.
    pub fn add_tensor(&mut self, name: &str, dims: Vec<u64>, ty: GgmlType) -> Result<()> {
        if dims.is_empty() || dims.len() > 4 {
            return Err(GgufWriteError::Invalid(format!(
                "tensor {name:?} has {} dimensions (1 to 4 allowed)",
                dims.len()
            )));
        }
        if !dims[0].is_multiple_of(ty.block_size() as u64) {
            return Err(GgufWriteError::Invalid(format!(
                "tensor {name:?} row length {} is not a multiple of the {ty} block size {}",
                dims[0],
                ty.block_size()
            )));
        }
        let n = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .and_then(|n| ty.bytes_for(n));
        if n.is_none() {
            return Err(GgufWriteError::Invalid(format!(
                "tensor {name:?} size overflows"
            )));
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(GgufWriteError::Invalid(format!(
                "tensor {name:?} added twice"
            )));
        }
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            dims,
            ty,
        });
        Ok(())
    }

    /// The alignment the file will use (`general.alignment`, default 32).
    pub fn alignment(&self) -> Result<u64> {
        match self.get("general.alignment") {
            None => Ok(32),
            Some(v) => match v.as_i64() {
                Some(a) if a > 0 && (a as u64).is_power_of_two() => Ok(a as u64),
                _ => Err(GgufWriteError::Invalid(format!(
                    "general.alignment must be a power of two, got {v:?}"
                ))),
            },
        }
    }

    /// Serializes the header, directory and the padding up to the data section.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let align = self.alignment()?;
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut b, k);
            b.extend_from_slice(&value_type(v).to_le_bytes());
            put_value(&mut b, v);
        }
        let mut off = 0u64;
        for t in &self.tensors {
            put_str(&mut b, &t.name);
            b.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.extend_from_slice(&(t.ty as u32).to_le_bytes());
            b.extend_from_slice(&off.to_le_bytes());
            off += t.size().next_multiple_of(align);
        }
        b.resize((b.len() as u64).next_multiple_of(align) as usize, 0);
        Ok(b)
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn value_type(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

fn array_type(a: &MetaArray) -> u32 {
    match a {
        MetaArray::U8(_) => 0,
        MetaArray::I8(_) => 1,
        MetaArray::U16(_) => 2,
        MetaArray::I16(_) => 3,
        MetaArray::U32(_) => 4,
        MetaArray::I32(_) => 5,
        MetaArray::F32(_) => 6,
        MetaArray::Bool(_) => 7,
        MetaArray::String(_) => 8,
        MetaArray::Array(_) => 9,
        MetaArray::U64(_) => 10,
        MetaArray::I64(_) => 11,
        MetaArray::F64(_) => 12,
    }
}

fn put_value(b: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => b.push(*x),
        MetaValue::I8(x) => b.push(*x as u8),
        MetaValue::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => b.push(*x as u8),
        MetaValue::String(s) => put_str(b, s),
        MetaValue::Array(a) => put_array(b, a),
        MetaValue::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
    }
}

/// Element type, count, elements (the body of a type-9 value).
fn put_array(b: &mut Vec<u8>, a: &MetaArray) {
    b.extend_from_slice(&array_type(a).to_le_bytes());
    b.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! each {
        ($v:expr) => {
            for x in $v {
                b.extend_from_slice(&x.to_le_bytes());
            }
        };
    }
    match a {
        MetaArray::U8(v) => b.extend_from_slice(v),
        MetaArray::I8(v) => b.extend(v.iter().map(|&x| x as u8)),
        MetaArray::U16(v) => each!(v),
        MetaArray::I16(v) => each!(v),
        MetaArray::U32(v) => each!(v),
        MetaArray::I32(v) => each!(v),
        MetaArray::F32(v) => each!(v),
        MetaArray::Bool(v) => b.extend(v.iter().map(|&x| x as u8)),
        MetaArray::String(v) => {
            for s in v {
                put_str(b, s);
            }
        }
        MetaArray::Array(v) => {
            for inner in v {
                put_array(b, inner);
            }
        }
        MetaArray::U64(v) => each!(v),
        MetaArray::I64(v) => each!(v),
        MetaArray::F64(v) => each!(v),
    }
}

/// Streams a GGUF image into any writer: the header at construction, then each
/// tensor's bytes in directory order.
pub struct GgufWriter<W: Write> {
    w: W,
    specs: Vec<TensorSpec>,
    align: u64,
    next: usize,
}

impl<W: Write> GgufWriter<W> {
    /// Writes `header` (with its directory) and returns a writer for the tensor data.
    pub fn new(mut w: W, header: &GgufHeader) -> Result<Self> {
        let bytes = header.to_bytes()?;
        w.write_all(&bytes)?;
        Ok(GgufWriter {
            w,
            specs: header.tensors.clone(),
            align: header.alignment()?,
            next: 0,
        })
    }

    /// The directory entry whose data comes next, if any.
    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.specs.get(self.next)
    }

    /// Writes the next tensor's data (exactly its size) and the alignment padding.
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let spec = self.specs.get(self.next).ok_or_else(|| {
            GgufWriteError::Invalid("more tensors written than the directory lists".into())
        })?;
        if data.len() as u64 != spec.size() {
            return Err(GgufWriteError::Invalid(format!(
                "tensor {:?} ({} {:?}) needs {} bytes, got {}",
                spec.name,
                spec.ty,
                spec.dims,
                spec.size(),
                data.len()
            )));
        }
        self.w.write_all(data)?;
        let pad = (data.len() as u64).next_multiple_of(self.align) - data.len() as u64;
        self.w.write_all(&vec![0u8; pad as usize])?;
        self.next += 1;
        Ok(())
    }

    /// Checks that every tensor was written and returns the inner writer, flushed.
    pub fn finish(mut self) -> Result<W> {
        if self.next != self.specs.len() {
            return Err(GgufWriteError::Invalid(format!(
                "only {} of {} tensors were written",
                self.next,
                self.specs.len()
            )));
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

/// A [`GgufWriter`] into a file that appears at its path only when complete: data goes
/// to a temporary file beside it, which is synced and renamed by [`GgufFileWriter::finish`].
pub struct GgufFileWriter {
    inner: GgufWriter<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
}

impl GgufFileWriter {
    pub fn create(path: impl AsRef<Path>, header: &GgufHeader) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out.gguf".into());
        let tmp = path.with_file_name(format!(".{name}.partial"));
        let io = |source| GgufWriteError::Io {
            path: tmp.clone(),
            source,
        };
        let f = File::create(&tmp).map_err(io)?;
        let inner = GgufWriter::new(BufWriter::with_capacity(1 << 20, f), header)?;
        Ok(GgufFileWriter { inner, tmp, path })
    }

    pub fn next_tensor(&self) -> Option<&TensorSpec> {
        self.inner.next_tensor()
    }

    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        self.inner.write_tensor(data)
    }

    /// Flushes, syncs and renames the file into place.
    pub fn finish(self) -> Result<PathBuf> {
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| GgufWriteError::Io { path: p, source }
        };
        let bw = self.inner.finish()?;
        let f = bw
            .into_inner()
            .map_err(|e| GgufWriteError::Stream(e.into_error()))?;
        f.sync_all().map_err(io(&self.tmp))?;
        drop(f);
        std::fs::rename(&self.tmp, &self.path).map_err(io(&self.path))?;
        Ok(self.path)
    }
}

/// Writes `f`'s metadata and tensors unchanged to `w` (the identity round trip).
pub fn write_copy<W: Write>(f: &GgufFile, w: W) -> Result<W> {
    let mut h = GgufHeader::with_metadata_of(f);
    for t in f.tensors() {
        h.add_tensor(&t.name, t.dims.clone(), t.ty)?;
    }
    let mut out = GgufWriter::new(w, &h)?;
    for t in f.tensors() {
        out.write_tensor(f.tensor_data(t))?;
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_file_reads_back_with_same_metadata_and_tensors() {
        let mut h = GgufHeader::new();
        h.set("general.architecture", MetaValue::String("llama".into()));
        h.set("a.u8", MetaValue::U8(7));
        h.set("a.i64", MetaValue::I64(-3));
        h.set("a.f64", MetaValue::F64(0.25));
        h.set("a.bool", MetaValue::Bool(true));
        h.set(
            "a.strs",
            MetaValue::Array(MetaArray::String(vec!["x".into(), "".into()])),
        );
        h.set(
            "a.nested",
            MetaValue::Array(MetaArray::Array(vec![
                MetaArray::I32(vec![1, 2]),
                MetaArray::F32(vec![]),
            ])),
        );
        h.add_tensor("w", vec![4, 3], GgmlType::F32).unwrap();
        h.add_tensor("q", vec![32], GgmlType::Q8_0).unwrap();
        let mut out = GgufWriter::new(Vec::new(), &h).unwrap();
        let w: Vec<u8> = (0..48u8).collect();
        out.write_tensor(&w).unwrap();
        out.write_tensor(&[9u8; 34]).unwrap();
        let bytes = out.finish().unwrap();
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let meta: Vec<_> = f
            .metadata()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        assert_eq!(meta, h.metadata());
        assert_eq!(f.tensor_data(f.tensor("w").unwrap()), &w[..]);
        assert_eq!(f.tensor_data(f.tensor("q").unwrap()), &[9u8; 34][..]);
        let again = write_copy(&f, Vec::new()).unwrap();
        assert_eq!(again, bytes);
    }

    #[test]
    fn wrong_sizes_and_missing_tensors_are_errors() {
        let mut h = GgufHeader::new();
        assert!(h.add_tensor("bad", vec![31], GgmlType::Q8_0).is_err());
        h.add_tensor("w", vec![2], GgmlType::F32).unwrap();
        assert!(h.add_tensor("w", vec![2], GgmlType::F32).is_err());
        let mut out = GgufWriter::new(Vec::new(), &h).unwrap();
        assert!(out.write_tensor(&[0u8; 4]).is_err());
        let out = GgufWriter::new(Vec::new(), &h).unwrap();
        assert!(out.finish().is_err());
    }
}
