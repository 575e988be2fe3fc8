//! The model being compressed: a GGUF file (tensors borrowed from its map) or a
//! safetensors checkpoint converted on the fly (see [`crate::hf`]).
//!
//! Owns reading tensors as bytes or f32; it does not decide what to do with them.

use crate::error::{CompressError, Result};
use hangar_formats::{GgmlType, GgufFile, GgufHeader, GgufWriter};
use hangar_kernels::quants;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One tensor of the source model.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    pub name: String,
    /// Innermost first, as in GGUF.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    data: Data,
}

#[derive(Debug, Clone)]
enum Data {
    /// Index into the GGUF file's tensor directory.
    Gguf(usize),
    Owned(Arc<Vec<u8>>),
}

impl SourceTensor {
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
    pub fn n_elements(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
    /// A matrix (2-D or more), as opposed to a norm or bias vector.
    pub fn is_matrix(&self) -> bool {
        self.dims.len() >= 2 && self.n_rows() > 1
    }
}

/// A model file opened for compression.
pub struct SourceModel {
    path: PathBuf,
    gguf: Option<Arc<GgufFile>>,
    metadata: GgufHeader,
    tensors: Vec<SourceTensor>,
    file_size: u64,
}

impl SourceModel {
    /// Opens a GGUF file, or a `.safetensors` file with `config.json` beside it, or a
    /// folder holding both.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if path.is_dir() {
            return crate::hf::open_safetensors(path);
        }
        let mut magic = [0u8; 4];
        {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(CompressError::io(path))?;
            let _ = f.read(&mut magic).map_err(CompressError::io(path))?;
        }
        if &magic == b"GGUF" {
            let f = Arc::new(GgufFile::open(path)?);
            Ok(Self::from_gguf(f, path))
        } else {
            crate::hf::open_safetensors(path)
        }
    }

    /// Wraps an already-parsed GGUF file.
    pub fn from_gguf(f: Arc<GgufFile>, path: &Path) -> Self {
        let tensors = f
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| SourceTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
                data: Data::Gguf(i),
            })
            .collect();
        SourceModel {
            path: path.to_path_buf(),
            metadata: GgufHeader::with_metadata_of(&f),
            file_size: f.bytes().len() as u64,
            gguf: Some(f),
            tensors,
        }
    }

    /// A model built from converted metadata and owned tensors (safetensors input).
    pub(crate) fn from_parts(
        path: &Path,
        metadata: GgufHeader,
        tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
        file_size: u64,
    ) -> Self {
        SourceModel {
            path: path.to_path_buf(),
            gguf: None,
            metadata,
            tensors: tensors
                .into_iter()
                .map(|(name, dims, ty, data)| SourceTensor {
                    name,
                    dims,
                    ty,
                    data: Data::Owned(Arc::new(data)),
                })
                .collect(),
            file_size,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    /// A GGUF file (as opposed to a converted safetensors checkpoint).
    pub fn is_gguf(&self) -> bool {
        self.gguf.is_some()
    }
    /// Size of the input on disk, bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }
    /// Metadata only (no tensors), in file order.
    pub fn metadata(&self) -> &GgufHeader {
        &self.metadata
    }
    pub fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }
    pub fn tensor(&self, name: &str) -> Option<&SourceTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// `general.architecture`.
    pub fn arch(&self) -> &str {
        self.metadata
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("")
    }
    /// Number of transformer blocks (`{arch}.block_count`), 0 if unknown.
    pub fn n_layers(&self) -> usize {
        self.metadata
            .get(&format!("{}.block_count", self.arch()))
            .and_then(|v| v.as_i64())
            .unwrap_or(0)
            .max(0) as usize
    }

    /// The tensor's stored bytes.
    pub fn bytes<'a>(&'a self, t: &'a SourceTensor) -> &'a [u8] {
        match &t.data {
            Data::Gguf(i) => {
                let f = self.gguf.as_ref().expect("GGUF-backed tensor");
                f.tensor_data(&f.tensors()[*i])
            }
            Data::Owned(v) => v,
        }
    }

    /// The tensor as f32 (dequantized if stored quantized).
    pub fn to_f32(&self, t: &SourceTensor) -> Result<Vec<f32>> {
        to_f32(&t.name, t.ty, self.bytes(t), t.row_len(), t.n_rows())
    }

    /// The model as a GGUF file the engine can run: the file itself, or an in-memory
    /// GGUF image of a converted checkpoint.
    pub fn gguf_image(&self) -> Result<Arc<GgufFile>> {
        if let Some(f) = &self.gguf {
            return Ok(f.clone());
        }
        let mut h = self.metadata.clone();
        for t in &self.tensors {
            h.add_tensor(&t.name, t.dims.clone(), t.ty)?;
        }
        let mut w = GgufWriter::new(Vec::new(), &h)?;
        for t in &self.tensors {
            w.write_tensor(self.bytes(t))?;
        }
        Ok(Arc::new(GgufFile::from_bytes(w.finish()?)?))
    }
}

/// Dequantizes `rows` rows of `row_len` elements of type `ty`.
pub fn to_f32(
    name: &str,
    ty: GgmlType,
    bytes: &[u8],
    row_len: usize,
    rows: usize,
) -> Result<Vec<f32>> {
    let unsupported = || CompressError::UnsupportedType {
        tensor: name.to_string(),
        ty,
    };
    if ty == GgmlType::F32 {
        return Ok(bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    if !matches!(
        ty,
        GgmlType::F16
            | GgmlType::BF16
            | GgmlType::Q4_0
            | GgmlType::Q5_0
            | GgmlType::Q8_0
            | GgmlType::Q4K
            | GgmlType::Q5K
            | GgmlType::Q6K
    ) {
        return Err(unsupported());
    }
    let rb = quants::row_bytes(ty, row_len);
    let mut out = vec![0f32; row_len * rows];
    for (r, dst) in out.chunks_exact_mut(row_len).enumerate() {
        quants::dequantize_row(ty, &bytes[r * rb..(r + 1) * rb], dst).map_err(|_| unsupported())?;
    }
    Ok(out)
}
