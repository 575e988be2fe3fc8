//! GGUF v2/v3 reader over a memory map (or an owned buffer, for tests and fuzzing).
//!
//! Owns the header, metadata and tensor directory. Tensor bytes are borrowed from the
//! map, never copied. Every count, length and offset is checked against the bytes that
//! remain, so a truncated or hostile file is an error, never a panic or a huge
//! allocation.

use crate::dtype::GgmlType;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// What can go wrong reading a GGUF file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic bytes are {0:?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("GGUF version {0} is not supported (this build reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file is truncated: {what} at byte {offset} runs past the end ({len} bytes)")]
    Truncated {
        what: &'static str,
        offset: u64,
        len: u64,
    },
    #[error("malformed GGUF: {0}")]
    Invalid(String),
    #[error("tensor {tensor:?} has unknown element type id {id}")]
    UnknownType { tensor: String, id: u32 },
    #[error("metadata key {0:?} is missing")]
    MissingKey(String),
    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
}

type Result<T> = std::result::Result<T, GgufError>;

/// A typed metadata array. Arrays of numbers are stored unboxed; the token list of a
/// vocabulary (hundreds of thousands of strings) is one `Vec<String>`.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<MetaArray>),
}

impl MetaArray {
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::F64(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Integer elements widened to i64 (`None` for non-integer arrays).
    pub fn as_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            MetaArray::U8(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I8(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U16(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I16(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U32(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I32(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::U64(v) => v.iter().map(|&x| x as i64).collect(),
            MetaArray::I64(v) => v.clone(),
            MetaArray::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => return None,
        })
    }
    fn type_name(&self) -> &'static str {
        match self {
            MetaArray::String(_) => "array of strings",
            MetaArray::F32(_) | MetaArray::F64(_) => "array of floats",
            MetaArray::Array(_) => "array of arrays",
            _ => "array of integers",
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(MetaArray),
}

impl MetaValue {
    /// The value as an integer, if it is one of the integer types (or a bool).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            MetaValue::U8(v) => v as i64,
            MetaValue::I8(v) => v as i64,
            MetaValue::U16(v) => v as i64,
            MetaValue::I16(v) => v as i64,
            MetaValue::U32(v) => v as i64,
            MetaValue::I32(v) => v as i64,
            MetaValue::U64(v) => i64::try_from(v).ok()?,
            MetaValue::I64(v) => v,
            MetaValue::Bool(v) => v as i64,
            _ => return None,
        })
    }
    /// The value as a float, if it is numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&MetaArray> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }
    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::F32(_) | MetaValue::F64(_) => "float",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(a) => a.type_name(),
            _ => "integer",
        }
    }
}

/// A tensor's directory entry. `dims[0]` is the innermost (contiguous) dimension, as
/// in GGML: a weight matrix with `dims = [k, n]` has `n` rows of `k` elements.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: u64,
    /// Data size in bytes.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row length (innermost dimension).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }
    /// Number of rows (product of the outer dimensions).
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

enum Backing {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the memory map.
pub struct GgufFile {
    backing: Backing,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

const MAX_DIMS: u32 = 4;

/// Upper bound on any up-front `Vec`/`HashMap` reservation driven by a count read from
/// the file. Counts were already checked against the bytes left, but a container of
/// `String`s costs several times the bytes that describe it; above this the container
/// grows as elements actually parse, so memory follows the input, not its claims.
const MAX_PREALLOC: usize = 1 << 12;

fn prealloc(n: u64) -> usize {
    (n as usize).min(MAX_PREALLOC)
}

impl GgufFile {
    /// Opens and parses a GGUF file through a read-only memory map.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file changed underneath us by another process
        // is outside what any reader can defend against (llama.cpp, safetensors alike).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Self::parse(Backing::Map(map))
    }

    /// Parses a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Owned(bytes))
    }

    fn parse(backing: Backing) -> Result<Self> {
        let buf = backing.bytes();
        let mut r = Reader { buf, pos: 0 };
        let magic: [u8; 4] = r.take(4, "magic")?.try_into().expect("4 bytes");
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("tensor count")?;
        let n_kv = r.u64("metadata count")?;
        // Each kv needs at least 8 (key len) + 4 (type) + 1 bytes; each tensor at least 8+4+8+4+8.
        r.check_count(n_kv, 13, "metadata count")?;
        r.check_count(n_tensors, 32, "tensor count")?;

        let mut metadata = Vec::with_capacity(prealloc(n_kv));
        let mut meta_index = HashMap::with_capacity(prealloc(n_kv));
        for _ in 0..n_kv {
            let key = r.string("metadata key")?;
            let ty = r.u32("metadata type")?;
            let value = r.value(ty, 0)?;
            if meta_index.insert(key.clone(), metadata.len()).is_some() {
                return Err(GgufError::Invalid(format!(
                    "metadata key {key:?} appears twice"
                )));
            }
            metadata.push((key, value));
        }

        let alignment = match meta_index.get("general.alignment") {
            Some(&i) => {
                let a = metadata[i].1.as_i64().unwrap_or(0);
                if a <= 0 || (a as u64).count_ones() != 1 {
                    return Err(GgufError::Invalid(format!(
                        "general.alignment must be a power of two, got {:?}",
                        metadata[i].1
                    )));
                }
                a as u64
            }
            None => 32,
        };

        let mut raw = Vec::with_capacity(prealloc(n_tensors));
        for _ in 0..n_tensors {
            let name = r.string("tensor name")?;
            let n_dims = r.u32("tensor rank")?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!(
                    "tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64("tensor dimension")?);
            }
            let type_id = r.u32("tensor type")?;
            let ty = GgmlType::from_id(type_id).ok_or_else(|| GgufError::UnknownType {
                tensor: name.clone(),
                id: type_id,
            })?;
            let rel = r.u64("tensor offset")?;
            raw.push((name, dims, ty, rel));
        }

        let data_offset = align_up(r.pos as u64, alignment)
            .ok_or_else(|| GgufError::Invalid("data offset overflows".into()))?;
        let file_len = buf.len() as u64;
        let mut tensors = Vec::with_capacity(raw.len());
        let mut tensor_index = HashMap::with_capacity(raw.len());
        for (name, dims, ty, rel) in raw {
            // Zero dimensions are skipped here so that no partial product (rows,
            // elements) can overflow later either: [0, 2^40, 2^40] is refused.
            let n = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d.max(1)))
                .ok_or_else(|| GgufError::Invalid(format!("tensor {name:?} size overflows")))?;
            let n = if dims.contains(&0) { 0 } else { n };
            if !dims[0].is_multiple_of(ty.block_size() as u64) {
                return Err(GgufError::Invalid(format!(
                    "tensor {name:?} row length {} is not a multiple of the {} block size {}",
                    dims[0],
                    ty,
                    ty.block_size()
                )));
            }
            let size = ty
                .bytes_for(n)
                .ok_or_else(|| GgufError::Invalid(format!("tensor {name:?} size overflows")))?;
            if !rel.is_multiple_of(alignment) {
                return Err(GgufError::Invalid(format!(
                    "tensor {name:?} offset {rel} is not aligned to {alignment}"
                )));
            }
            let offset = data_offset
                .checked_add(rel)
                .ok_or_else(|| GgufError::Invalid(format!("tensor {name:?} offset overflows")))?;
            let end = offset
                .checked_add(size)
                .ok_or_else(|| GgufError::Invalid(format!("tensor {name:?} offset overflows")))?;
            if end > file_len {
                return Err(GgufError::Truncated {
                    what: "tensor data",
                    offset,
                    len: file_len,
                });
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                return Err(GgufError::Invalid(format!("tensor {name:?} appears twice")));
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
                size,
            });
        }

        check_no_overlap(&tensors)?;

        Ok(GgufFile {
            backing,
            version,
            metadata,
            meta_index,
            tensors,
            tensor_index,
            alignment,
            data_offset,
        })
    }

    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// Offset of the tensor data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.backing.bytes()
    }
    /// Tells the OS that the mapped bytes `offset .. offset + len` will not be read
    /// again soon (their data was copied elsewhere), so those pages leave this
    /// process's resident set. The file stays in the page cache; a later read simply
    /// maps the pages back in. Only whole pages inside the range are released.
    pub fn release_range(&self, offset: usize, len: usize) {
        const PAGE: usize = 4096;
        if let Backing::Map(m) = &self.backing {
            let start = offset.div_ceil(PAGE) * PAGE;
            let end = (offset.saturating_add(len)).min(m.len()) / PAGE * PAGE;
            if end > start {
                // SAFETY: the mapping is private and read-only; after DONTNEED a read
                // returns the file's bytes again, which is all this mapping ever shows.
                // A failure (e.g. larger pages) only leaves the pages resident.
                let _ = unsafe {
                    m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start)
                };
            }
        }
    }
    /// Metadata in file order.
    pub fn metadata(&self) -> impl Iterator<Item = (&str, &MetaValue)> {
        self.metadata.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }
    fn require(&self, key: &str) -> Result<&MetaValue> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }
    fn wrong(key: &str, expected: &'static str, v: &MetaValue) -> GgufError {
        GgufError::WrongType {
            key: key.to_string(),
            expected,
            found: v.type_name(),
        }
    }
    /// An integer key that must fit a u64/usize.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        let v = self.require(key)?;
        v.as_i64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| Self::wrong(key, "non-negative integer", v))
    }
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        let v = self.require(key)?;
        v.as_i64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| Self::wrong(key, "u32", v))
    }
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        let v = self.require(key)?;
        v.as_f64()
            .map(|x| x as f32)
            .ok_or_else(|| Self::wrong(key, "number", v))
    }
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        match self.require(key)? {
            MetaValue::Bool(b) => Ok(*b),
            v => v
                .as_i64()
                .map(|x| x != 0)
                .ok_or_else(|| Self::wrong(key, "bool", v)),
        }
    }
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong(key, "string", v))
    }
    pub fn get_array(&self, key: &str) -> Result<&MetaArray> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong(key, "array", v))
    }
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        match self.get_array(key)? {
            MetaArray::String(v) => Ok(v),
            a => Err(GgufError::WrongType {
                key: key.into(),
                expected: "array of strings",
                found: a.type_name(),
            }),
        }
    }
    pub fn get_f32_array(&self, key: &str) -> Result<Vec<f32>> {
        match self.get_array(key)? {
            MetaArray::F32(v) => Ok(v.clone()),
            MetaArray::F64(v) => Ok(v.iter().map(|&x| x as f32).collect()),
            a => a
                .as_i64_vec()
                .map(|v| v.into_iter().map(|x| x as f32).collect())
                .ok_or_else(|| GgufError::WrongType {
                    key: key.into(),
                    expected: "array of numbers",
                    found: a.type_name(),
                }),
        }
    }
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>> {
        let a = self.get_array(key)?;
        a.as_i64_vec().ok_or_else(|| GgufError::WrongType {
            key: key.into(),
            expected: "array of integers",
            found: a.type_name(),
        })
    }
    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }
    /// The bytes of a tensor (bounds were checked at parse time).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes()[t.offset as usize..(t.offset + t.size) as usize]
    }
}

/// Rejects two tensors whose data share bytes: a writer never lays files out that way,
/// and a reader that trusts it would see one tensor's bytes as another's.
fn check_no_overlap(tensors: &[TensorInfo]) -> Result<()> {
    let mut order: Vec<&TensorInfo> = tensors.iter().filter(|t| t.size > 0).collect();
    order.sort_by_key(|t| t.offset);
    let mut reach: Option<&TensorInfo> = None;
    for t in order {
        if let Some(prev) = reach {
            if prev.offset + prev.size > t.offset {
                return Err(GgufError::Invalid(format!(
                    "tensors {:?} (bytes {}..{}) and {:?} (bytes {}..{}) overlap",
                    prev.name,
                    prev.offset,
                    prev.offset + prev.size,
                    t.name,
                    t.offset,
                    t.offset + t.size
                )));
            }
        }
        if reach.is_none_or(|p| t.offset + t.size > p.offset + p.size) {
            reach = Some(t);
        }
    }
    Ok(())
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|v| v / a * a)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what,
                offset: self.pos as u64,
                len: self.buf.len() as u64,
            }),
        }
    }
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }
    /// Rejects counts that could not possibly fit in the bytes left (guards allocations).
    fn check_count(&self, n: u64, min_each: u64, what: &'static str) -> Result<()> {
        if n.saturating_mul(min_each) > self.remaining() {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos as u64,
                len: self.buf.len() as u64,
            });
        }
        Ok(())
    }
    fn arr<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &'static str) -> Result<String> {
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos as u64,
                len: self.buf.len() as u64,
            });
        }
        let bytes = self.take(n as usize, what)?;
        // Vocabularies sometimes hold invalid UTF-8 pieces; keep them lossily rather than
        // refusing the model.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.arr::<1>("u8")?[0]),
            1 => MetaValue::I8(self.arr::<1>("i8")?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.arr("u16")?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.arr("i16")?)),
            4 => MetaValue::U32(self.u32("u32")?),
            5 => MetaValue::I32(i32::from_le_bytes(self.arr("i32")?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.arr("f32")?)),
            7 => {
                let b = self.arr::<1>("bool")?[0];
                if b > 1 {
                    return Err(GgufError::Invalid(format!("bool value {b} is not 0 or 1")));
                }
                MetaValue::Bool(b == 1)
            }
            8 => MetaValue::String(self.string("string")?),
            9 => {
                if depth > 2 {
                    return Err(GgufError::Invalid("arrays nested too deeply".into()));
                }
                let et = self.u32("array type")?;
                let n = self.u64("array length")?;
                MetaValue::Array(self.array(et, n, depth)?)
            }
            10 => MetaValue::U64(self.u64("u64")?),
            11 => MetaValue::I64(i64::from_le_bytes(self.arr("i64")?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.arr("f64")?)),
            t => {
                return Err(GgufError::Invalid(format!(
                    "unknown metadata value type {t}"
                )))
            }
        })
    }
    fn array(&mut self, et: u32, n: u64, depth: u32) -> Result<MetaArray> {
        let min = match et {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10 | 11 | 12 => 8,
            9 => 12,
            t => {
                return Err(GgufError::Invalid(format!(
                    "unknown array element type {t}"
                )))
            }
        };
        self.check_count(n, min, "array")?;
        let n = n as usize;
        macro_rules! prim {
            ($variant:ident, $t:ty, $sz:expr) => {{
                let bytes = self.take(n * $sz, "array")?;
                MetaArray::$variant(
                    bytes
                        .chunks_exact($sz)
                        .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk")))
                        .collect(),
                )
            }};
        }
        Ok(match et {
            0 => MetaArray::U8(self.take(n, "array")?.to_vec()),
            1 => MetaArray::I8(self.take(n, "array")?.iter().map(|&b| b as i8).collect()),
            2 => prim!(U16, u16, 2),
            3 => prim!(I16, i16, 2),
            4 => prim!(U32, u32, 4),
            5 => prim!(I32, i32, 4),
            6 => prim!(F32, f32, 4),
            7 => MetaArray::Bool(self.take(n, "array")?.iter().map(|&b| b != 0).collect()),
            8 => {
                let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    v.push(self.string("array string")?);
                }
                MetaArray::String(v)
            }
            9 => {
                if depth >= 2 {
                    return Err(GgufError::Invalid("arrays nested too deeply".into()));
                }
                let mut v = Vec::with_capacity(n.min(MAX_PREALLOC));
                for _ in 0..n {
                    let et = self.u32("array type")?;
                    let m = self.u64("array length")?;
                    v.push(self.array(et, m, depth + 1)?);
                }
                MetaArray::Array(v)
            }
            10 => prim!(U64, u64, 8),
            11 => prim!(I64, i64, 8),
            12 => prim!(F64, f64, 8),
            _ => unreachable!("element type checked above"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small valid GGUF image: two metadata keys and one F32 tensor.
    pub(crate) fn tiny() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&2u64.to_le_bytes()); // kv
        let s = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&(s.len() as u64).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
        };
        s(&mut b, "general.architecture");
        b.extend_from_slice(&8u32.to_le_bytes());
        s(&mut b, "llama");
        s(&mut b, "tokenizer.ggml.scores");
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&1.5f32.to_le_bytes());
        b.extend_from_slice(&(-2.0f32).to_le_bytes());
        s(&mut b, "w");
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes());
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for i in 0..8 {
            b.extend_from_slice(&(i as f32).to_le_bytes());
        }
        b
    }

    #[test]
    fn parses_metadata_and_tensors() {
        let f = GgufFile::from_bytes(tiny()).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(
            f.get_f32_array("tokenizer.ggml.scores").unwrap(),
            vec![1.5, -2.0]
        );
        let t = f.tensor("w").unwrap();
        assert_eq!((t.row_len(), t.n_rows(), t.ty), (4, 2, GgmlType::F32));
        let data = f.tensor_data(t);
        assert_eq!(f32::from_le_bytes(data[28..32].try_into().unwrap()), 7.0);
        assert!(matches!(
            f.get_str("missing"),
            Err(GgufError::MissingKey(_))
        ));
        assert!(matches!(
            f.get_u32("general.architecture"),
            Err(GgufError::WrongType { .. })
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny();
        for n in 0..full.len() {
            assert!(
                GgufFile::from_bytes(full[..n].to_vec()).is_err(),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn hostile_counts_and_bytes_do_not_panic() {
        let full = tiny();
        // Flip every byte to a few hostile values; parsing must return (Ok or Err).
        for i in 0..full.len() {
            for v in [0u8, 0x7f, 0xff, 0x80] {
                let mut b = full.clone();
                b[i] = v;
                let _ = GgufFile::from_bytes(b);
            }
        }
        let mut b = full.clone();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(GgufFile::from_bytes(b).is_err());
    }

    /// An image with F32 tensors of `n` elements each at the given relative offsets.
    fn with_tensors(tensors: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        let mut end = 0;
        for &(name, n, rel) in tensors {
            b.extend_from_slice(&(name.len() as u64).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            b.extend_from_slice(&rel.to_le_bytes());
            end = end.max(rel + 4 * n);
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        b.resize(b.len() + end as usize, 0);
        b
    }

    #[test]
    fn overlapping_tensors_are_rejected() {
        GgufFile::from_bytes(with_tensors(&[("a", 8, 0), ("b", 8, 32)])).unwrap();
        for layout in [
            [("a", 8, 0), ("b", 8, 0)],
            [("a", 16, 0), ("b", 8, 32)],
            [("a", 8, 64), ("b", 32, 0)],
        ] {
            let e = GgufFile::from_bytes(with_tensors(&layout)).unwrap_err();
            assert!(e.to_string().contains("overlap"), "{layout:?}: {e}");
        }
        // Empty tensors take no bytes and overlap nothing.
        GgufFile::from_bytes(with_tensors(&[("a", 8, 0), ("e", 0, 0)])).unwrap();
    }

    #[test]
    fn array_counts_the_bytes_cannot_hold_are_errors() {
        // A string array that claims as many elements as the bytes left could at most
        // describe, followed by nothing: a clean "truncated" error.
        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
        b.push(b'k');
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&8u32.to_le_bytes());
        let claim_at = b.len();
        b.extend_from_slice(&0u64.to_le_bytes());
        b.resize(b.len() + (1 << 16), 0xff);
        let left = (b.len() - claim_at - 8) as u64;
        for claim in [left / 8, left, u64::MAX / 2] {
            b[claim_at..claim_at + 8].copy_from_slice(&claim.to_le_bytes());
            assert!(
                matches!(
                    GgufFile::from_bytes(b.clone()),
                    Err(GgufError::Truncated { .. })
                ),
                "claim {claim}"
            );
        }
    }

    #[test]
    fn rejects_wrong_magic_and_version() {
        let mut b = tiny();
        b[0] = b'X';
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::BadMagic(_))
        ));
        let mut b = tiny();
        b[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            GgufFile::from_bytes(b),
            Err(GgufError::UnsupportedVersion(1))
        ));
    }
}
