//! llama.cpp's GGUF adapter format: `general.type = "adapter"`, `adapter.type =
//! "lora"`, `adapter.lora.alpha`, and per adapted weight `blk.N.attn_q.weight.lora_a`
//! (dims `[in, rank]`, i.e. A as `rank × in`) and `.lora_b` (dims `[rank, out]`).
//!
//! Scale as llama.cpp computes it: `alpha / rank`, or 1 when alpha is 0 or absent.
//! Reads F32, F16, BF16 and Q8_0 tensors; writes F32 or F16.

use crate::{arch_names, common_alpha, invalid, LoraFileError, Result};
use hangar_formats::{GgmlType, GgufFile, GgufFileWriter, GgufHeader, MetaValue, TensorInfo};
use hangar_kernels::quants;
use hangar_models::{LoraAdapter, LoraMatrix, LoraShape, LoraTarget};
use std::collections::BTreeMap;
use std::path::Path;

/// Splits `blk.N.attn_q.weight.lora_a` into (N, target, is_a).
fn parse_name(name: &str) -> Option<(usize, Option<LoraTarget>, bool)> {
    let (stem, is_a) = match name.strip_suffix(".lora_a") {
        Some(s) => (s, true),
        None => (name.strip_suffix(".lora_b")?, false),
    };
    let rest = stem.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = rest.strip_suffix(".weight")?;
    Some((
        layer,
        LoraTarget::parse(module).filter(|t| t.gguf_name() == module),
        is_a,
    ))
}

/// A 2-D tensor as f32 (any type the kernels dequantize).
fn tensor_f32(path: &Path, f: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>> {
    if t.dims.len() != 2 {
        return Err(invalid(
            path,
            format!(
                "tensor {:?} has {} dimensions; LoRA A and B are matrices",
                t.name,
                t.dims.len()
            ),
        ));
    }
    let n = t.n_elements() as usize;
    let mut out = vec![0f32; n];
    match t.ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 => {}
        ty => {
            return Err(invalid(
                path,
                format!(
                    "tensor {:?} is {ty}; adapters are read in F32, F16, BF16 or Q8_0",
                    t.name
                ),
            ))
        }
    }
    quants::dequantize_row(t.ty, f.tensor_data(t), &mut out)
        .map_err(|e| invalid(path, format!("tensor {:?}: {e}", t.name)))?;
    Ok(out)
}

/// Reads a GGUF adapter for a model of `shape`.
pub fn read(path: &Path, shape: &LoraShape) -> Result<LoraAdapter> {
    let f = GgufFile::open(path)
        .map_err(|e| invalid(path, format!("not a readable GGUF file: {e}")))?;
    match f.get("general.type").and_then(MetaValue::as_str) {
        Some("adapter") => {}
        Some(other) => {
            return Err(invalid(
                path,
                format!("general.type is {other:?}: this is a model, not a LoRA adapter (llama.cpp adapters have general.type = \"adapter\")"),
            ))
        }
        None if f.tensor("token_embd.weight").is_some() => {
            return Err(invalid(
                path,
                "this is a model (it has token_embd.weight), not a LoRA adapter (llama.cpp adapters have general.type = \"adapter\")",
            ))
        }
        None => {
            return Err(invalid(
                path,
                "no general.type key: not a llama.cpp adapter file (convert it with llama.cpp's convert_lora_to_gguf.py or `hangar lora convert`)",
            ))
        }
    }
    match f.get("adapter.type").and_then(MetaValue::as_str) {
        Some("lora") => {}
        other => {
            return Err(invalid(
                path,
                format!("adapter.type is {other:?}; only \"lora\" adapters are supported (control vectors are not)"),
            ))
        }
    }
    if f.metadata().any(|(k, _)| k.starts_with("adapter.alora.")) {
        return Err(invalid(
            path,
            "this is an activated LoRA (adapter.alora.*), which applies only after its invocation tokens; Hangar applies plain LoRA only",
        ));
    }
    if let Ok(arch) = f.architecture() {
        if !arch_names(shape.arch).contains(&arch) {
            return Err(invalid(
                path,
                format!(
                    "the adapter is for {arch:?} models; the served model is {:?}",
                    arch_names(shape.arch)[0]
                ),
            ));
        }
    }
    let alpha = match f.get("adapter.lora.alpha") {
        None => 0.0,
        Some(v) => match v.as_f64() {
            Some(a) if a.is_finite() => a as f32,
            _ => {
                return Err(invalid(
                    path,
                    format!("adapter.lora.alpha is {v:?}; expected a number"),
                ))
            }
        },
    };
    // Pair the A and B tensors of each slot.
    type Pair<'a> = (Option<&'a TensorInfo>, Option<&'a TensorInfo>);
    let mut pairs: BTreeMap<(usize, LoraTarget), Pair> = BTreeMap::new();
    for t in f.tensors() {
        let supported = || LoraTarget::ALL.map(|t| t.gguf_name()).join(", ");
        let Some((layer, target, is_a)) = parse_name(&t.name) else {
            let msg = if t.name.ends_with(".lora_a") || t.name.ends_with(".lora_b") {
                format!(
                    "tensor {:?} adapts a weight Hangar does not adapt (supported: {})",
                    t.name,
                    supported()
                )
            } else {
                format!(
                    "tensor {:?} is not a LoRA tensor (blk.N.<weight>.weight.lora_a / lora_b)",
                    t.name
                )
            };
            return Err(invalid(path, msg));
        };
        let Some(target) = target else {
            return Err(invalid(
                path,
                format!(
                    "tensor {:?} adapts a weight Hangar does not adapt (supported: {})",
                    t.name,
                    supported()
                ),
            ));
        };
        let slot = pairs.entry((layer, target)).or_default();
        if is_a {
            slot.0 = Some(t);
        } else {
            slot.1 = Some(t);
        }
    }
    let mut adapter = LoraAdapter::new(shape.clone());
    for ((layer, target), pair) in pairs {
        let (Some(a), Some(b)) = pair else {
            return Err(invalid(
                path,
                format!(
                    "blk.{layer}.{}.weight has only one of lora_a and lora_b",
                    target.gguf_name()
                ),
            ));
        };
        if a.dims.len() != 2 || b.dims.len() != 2 {
            return Err(invalid(
                path,
                format!(
                    "blk.{layer}.{}: lora_a and lora_b must be matrices",
                    target.gguf_name()
                ),
            ));
        }
        let (cols, rank) = (a.dims[0] as usize, a.dims[1] as usize);
        let (rank_b, rows) = (b.dims[0] as usize, b.dims[1] as usize);
        if rank != rank_b {
            return Err(invalid(
                path,
                format!(
                    "blk.{layer}.{}: lora_a has rank {rank} but lora_b {rank_b} (lora_a must be [in, rank], lora_b [rank, out]; transposed adapters from old llama.cpp finetune are not supported)",
                    target.gguf_name()
                ),
            ));
        }
        let scale = if alpha == 0.0 {
            1.0
        } else {
            alpha / rank.max(1) as f32
        };
        let m = LoraMatrix::new(
            rank,
            rows,
            cols,
            tensor_f32(path, &f, a)?,
            &tensor_f32(path, &f, b)?,
            scale,
        )
        .map_err(|e| invalid(path, format!("blk.{layer}.{}: {e}", target.gguf_name())))?;
        adapter
            .insert(layer, target, m)
            .map_err(|e| invalid(path, e.to_string()))?;
    }
    adapter.description = format!("{} (GGUF, alpha {alpha})", path.display());
    Ok(adapter)
}

/// Writes `adapter` as a llama.cpp GGUF adapter with tensors of type `ty` (F32 or
/// F16). When the matrices' scales differ, each B carries its scale and alpha is 0
/// (llama.cpp then applies scale 1).
pub fn write(adapter: &LoraAdapter, path: &Path, ty: GgmlType) -> Result<()> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16) {
        return Err(invalid(
            path,
            format!("adapters are written in F32 or F16, not {ty}"),
        ));
    }
    let alpha = common_alpha(adapter);
    let mut h = GgufHeader::new();
    h.set(
        "general.architecture",
        MetaValue::String(arch_names(adapter.shape().arch)[0].into()),
    );
    h.set("general.type", MetaValue::String("adapter".into()));
    h.set(
        "general.name",
        MetaValue::String("hangar LoRA adapter".into()),
    );
    h.set("adapter.type", MetaValue::String("lora".into()));
    h.set("adapter.lora.alpha", MetaValue::F32(alpha.unwrap_or(0.0)));
    let werr = |source| LoraFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut data: Vec<Vec<f32>> = Vec::new();
    for (layer, target, m) in adapter.matrices() {
        let base = format!("blk.{layer}.{}.weight", target.gguf_name());
        h.add_tensor(
            &format!("{base}.lora_a"),
            vec![m.cols() as u64, m.rank() as u64],
            ty,
        )
        .map_err(werr)?;
        h.add_tensor(
            &format!("{base}.lora_b"),
            vec![m.rank() as u64, m.rows() as u64],
            ty,
        )
        .map_err(werr)?;
        let mut b = m.b();
        if alpha.is_none() {
            b.iter_mut().for_each(|v| *v *= m.scale());
        }
        data.push(m.a().to_vec());
        data.push(b);
    }
    let mut w = GgufFileWriter::create(path, &h).map_err(werr)?;
    for values in &data {
        let mut bytes = vec![0u8; quants::row_bytes(ty, values.len())];
        quants::quantize_row(ty, values, &mut bytes).map_err(|e| invalid(path, e.to_string()))?;
        w.write_tensor(&bytes).map_err(werr)?;
    }
    w.finish().map_err(werr)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tensor_names() {
        assert_eq!(
            parse_name("blk.3.attn_q.weight.lora_a"),
            Some((3, Some(LoraTarget::Q), true))
        );
        assert_eq!(
            parse_name("blk.0.ffn_down.weight.lora_b"),
            Some((0, Some(LoraTarget::Down), false))
        );
        assert_eq!(
            parse_name("blk.0.q_proj.weight.lora_b"),
            Some((0, None, false))
        );
        assert_eq!(parse_name("output.weight.lora_a"), None);
        assert_eq!(parse_name("blk.x.attn_q.weight.lora_a"), None);
    }
}
