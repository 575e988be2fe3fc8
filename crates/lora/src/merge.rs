//! Merging: base GGUF + adapter → a GGUF whose adapted weights are `W + scale·B·A`.
//! Every other tensor and all metadata are copied byte for byte.
//!
//! Quantized base weights are dequantized, the delta added in f32, and the sum
//! written as [`MergeType`] says: F32 (exact), F16 (the default: half the size, error
//! ~1e-3 of each weight), or requantized to the tensor's own type (same size as the
//! base, but a small delta can vanish into the quantization grid).

use crate::{invalid, LoraFileError, Result};
use hangar_formats::{GgmlType, GgufFile, GgufFileWriter, GgufHeader, MetaValue};
use hangar_kernels::quants;
use hangar_models::{LoraAdapter, LoraTarget};
use std::path::Path;

/// The type adapted tensors are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeType {
    F32,
    #[default]
    F16,
    /// The base tensor's own type (requantized).
    Same,
}

impl std::str::FromStr for MergeType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(MergeType::F32),
            "f16" => Ok(MergeType::F16),
            "same" | "requantize" => Ok(MergeType::Same),
            _ => Err(format!("{s:?}: expected f32, f16 or same")),
        }
    }
}

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// Tensors that received a delta.
    pub adapted: usize,
    pub bytes: u64,
}

/// The adapter slot a base tensor name belongs to (`blk.3.attn_q.weight`).
pub(crate) fn slot_of(name: &str) -> Option<(usize, LoraTarget)> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let module = rest.strip_suffix(".weight")?;
    let t = LoraTarget::ALL
        .into_iter()
        .find(|t| t.gguf_name() == module)?;
    Some((layer.parse().ok()?, t))
}

/// A whole weight tensor as f32 rows.
pub(crate) fn dequantize(
    path: &Path,
    f: &GgufFile,
    name: &str,
) -> Result<(Vec<f32>, usize, usize)> {
    let t = f
        .tensor(name)
        .ok_or_else(|| invalid(path, format!("tensor {name:?} is missing")))?;
    if t.dims.len() != 2 {
        return Err(invalid(path, format!("tensor {name:?} is not a matrix")));
    }
    let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut w = vec![0f32; rows * cols];
    quants::dequantize_row(t.ty, f.tensor_data(t), &mut w)
        .map_err(|e| invalid(path, format!("tensor {name:?}: {e}")))?;
    Ok((w, rows, cols))
}

/// Writes `base` with `adapter` merged into `out`.
pub fn merge(
    base_path: &Path,
    adapter: &LoraAdapter,
    out: &Path,
    ty: MergeType,
) -> Result<MergeReport> {
    let base = GgufFile::open(base_path)
        .map_err(|e| invalid(base_path, format!("not a readable GGUF model: {e}")))?;
    let mut h = GgufHeader::with_metadata_of(&base);
    h.set(
        "hangar.lora.merged",
        MetaValue::String(adapter.description.clone()),
    );
    let werr = |source| LoraFileError::Write {
        path: out.to_path_buf(),
        source,
    };
    let adapted = |name: &str| slot_of(name).and_then(|(l, t)| adapter.get(l, t));
    let mut n_adapted = 0;
    for t in base.tensors() {
        let ty_out = match (adapted(&t.name), ty) {
            (None, _) => t.ty,
            (Some(_), MergeType::F32) => GgmlType::F32,
            (Some(_), MergeType::F16) => GgmlType::F16,
            (Some(_), MergeType::Same) => t.ty,
        };
        if let Some(m) = adapted(&t.name) {
            n_adapted += 1;
            if t.dims.len() != 2 || (t.dims[0] as usize, t.dims[1] as usize) != (m.cols(), m.rows())
            {
                return Err(invalid(
                    base_path,
                    format!(
                        "{}: dims {:?} do not match the adapter's {}x{} pair",
                        t.name,
                        t.dims,
                        m.rows(),
                        m.cols()
                    ),
                ));
            }
        }
        h.add_tensor(&t.name, t.dims.clone(), ty_out)
            .map_err(werr)?;
    }
    if n_adapted != adapter.n_matrices() {
        return Err(invalid(
            base_path,
            format!(
                "the adapter changes {} weights but only {n_adapted} exist in this model",
                adapter.n_matrices()
            ),
        ));
    }
    let mut w = GgufFileWriter::create(out, &h).map_err(werr)?;
    for (t, spec) in base.tensors().iter().zip(h.tensors()) {
        match adapted(&t.name) {
            None => w.write_tensor(base.tensor_data(t)).map_err(werr)?,
            Some(m) => {
                let (mut vals, _, _) = dequantize(base_path, &base, &t.name)?;
                m.add_delta_to(&mut vals);
                let mut bytes = vec![0u8; quants::row_bytes(spec.ty, vals.len())];
                let rb = quants::row_bytes(spec.ty, m.cols());
                for (src, dst) in vals.chunks_exact(m.cols()).zip(bytes.chunks_exact_mut(rb)) {
                    quants::quantize_row(spec.ty, src, dst)
                        .map_err(|e| invalid(base_path, format!("{}: {e}", t.name)))?;
                }
                w.write_tensor(&bytes).map_err(werr)?;
            }
        }
    }
    w.finish().map_err(werr)?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(MergeReport {
        adapted: n_adapted,
        bytes,
    })
}
