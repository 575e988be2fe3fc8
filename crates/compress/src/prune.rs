//! `hangar prune`: zero the least important weights of the linear layers — by
//! magnitude, or by Wanda's |W|·‖X‖ (calibration activations), unstructured or N:M
//! semi-structured — and store them in a type that keeps the zeros exact (GGUF), or
//! dense at float precision (safetensors output).
//!
//! Owns the masks and the per-tensor report; the rewrite is shared with quantize.

use crate::error::{CompressError, Result};
use crate::hf_write::{check_float_type, dense_type};
use crate::imatrix::Imatrix;
use crate::policy::glob_match;
use crate::quantize::{check_output, encode, rewrite, OutFormat, Planned};
use crate::source::SourceModel;
use hangar_formats::GgmlType;
use indicatif::ProgressBar;
use serde::Serialize;
use std::borrow::Cow;
use std::path::Path;

/// How weights are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PruneMethod {
    /// |W|.
    Magnitude,
    /// |W| · ‖X_col‖₂ over calibration activations (Sun et al., 2023).
    Wanda,
}

/// The linear weights pruned unless `include` says otherwise.
pub const DEFAULT_INCLUDE: &str = "blk.*.attn_q.weight,blk.*.attn_k.weight,blk.*.attn_v.weight,blk.*.attn_output.weight,blk.*.ffn_gate.weight,blk.*.ffn_up.weight,blk.*.ffn_down.weight";

#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub method: PruneMethod,
    /// Fraction of each row to zero (unstructured).
    pub sparsity: f64,
    /// N:M — keep N of every M consecutive weights (overrides `sparsity`).
    pub structured: Option<(usize, usize)>,
    /// Name patterns (`*` wildcard) of the tensors to prune.
    pub include: Vec<String>,
    /// Column statistics for Wanda.
    pub imatrix: Option<Imatrix>,
    /// Storage type of pruned tensors (default: one that keeps zeros exact). With
    /// safetensors output: the type of every matrix (F16 or BF16; default: the
    /// input's float type, F16 for quantized inputs).
    pub ty: Option<GgmlType>,
    pub threads: usize,
    pub format: OutFormat,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrunedTensor {
    pub name: String,
    pub from: String,
    pub to: String,
    pub elements: usize,
    /// Weights set to zero by the mask.
    pub pruned: usize,
    /// Exact zeros in the stored tensor (≥ pruned: quantization can round more to 0).
    pub zeros_stored: usize,
    pub sparsity: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub method: PruneMethod,
    pub pattern: String,
    pub tensors: Vec<PrunedTensor>,
    pub pruned_params: usize,
    pub total_params_pruned_tensors: usize,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub format: OutFormat,
    /// What a safetensors export converted, copied or left out.
    pub notes: Vec<String>,
}

/// A type that stores exact zeros and is close to `src` in precision.
fn zero_safe_type(src: GgmlType, row_len: usize) -> GgmlType {
    match src {
        GgmlType::F32
        | GgmlType::F16
        | GgmlType::BF16
        | GgmlType::Q8_0
        | GgmlType::Q4_0
        | GgmlType::Q5_0
        | GgmlType::Q6K => src,
        _ if row_len.is_multiple_of(256) => GgmlType::Q6K,
        _ => GgmlType::Q8_0,
    }
}

/// Zeroes weights of one row in place by score; returns how many were zeroed.
pub fn prune_row(
    w: &mut [f32],
    scale: Option<&[f32]>,
    sparsity: f64,
    nm: Option<(usize, usize)>,
) -> usize {
    let score = |j: usize, v: f32| v.abs() * scale.map_or(1.0, |s| s[j]);
    match nm {
        Some((n, m)) => {
            let mut zeroed = 0;
            for (g, grp) in w.chunks_mut(m).enumerate() {
                let mut idx: Vec<usize> = (0..grp.len()).collect();
                idx.sort_by(|&a, &b| score(g * m + a, grp[a]).total_cmp(&score(g * m + b, grp[b])));
                let drop = grp.len().saturating_sub(n);
                for &i in &idx[..drop] {
                    grp[i] = 0.0;
                }
                zeroed += drop;
            }
            zeroed
        }
        None => {
            let k = ((w.len() as f64) * sparsity).round() as usize;
            if k == 0 {
                return 0;
            }
            let mut idx: Vec<usize> = (0..w.len()).collect();
            idx.select_nth_unstable_by(k - 1, |&a, &b| score(a, w[a]).total_cmp(&score(b, w[b])));
            for &i in &idx[..k] {
                w[i] = 0.0;
            }
            k
        }
    }
}

pub fn prune(
    src: &SourceModel,
    out: &Path,
    opts: &PruneOptions,
    bar: &ProgressBar,
) -> Result<PruneReport> {
    if let Some((n, m)) = opts.structured {
        if n == 0 || m == 0 || n >= m {
            return Err(CompressError::Invalid(format!(
                "--structured {n}:{m}: need 0 < N < M"
            )));
        }
    } else if !(0.0..1.0).contains(&opts.sparsity) {
        return Err(CompressError::Invalid(format!(
            "--sparsity {} must be in [0, 1)",
            opts.sparsity
        )));
    }
    if opts.method == PruneMethod::Wanda && opts.imatrix.is_none() {
        return Err(CompressError::Invalid(
            "Wanda needs calibration activations: give --file TEXT or --imatrix FILE".into(),
        ));
    }
    let selected: Vec<bool> = src
        .tensors()
        .iter()
        .map(|t| t.is_matrix() && opts.include.iter().any(|p| glob_match(p, &t.name)))
        .collect();
    if !selected.iter().any(|&s| s) {
        return Err(CompressError::Invalid(format!(
            "no tensor matches {:?}",
            opts.include.join(",")
        )));
    }
    let dense = opts.format == OutFormat::Safetensors;
    if let (true, Some(ty)) = (dense, opts.ty) {
        check_float_type(ty)?;
    }
    let plan: Vec<Planned> = src
        .tensors()
        .iter()
        .zip(&selected)
        .map(|(t, &s)| Planned {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: if dense {
                dense_type(t.ty, t.is_matrix(), opts.ty)
            } else if s {
                opts.ty.unwrap_or_else(|| zero_safe_type(t.ty, t.row_len()))
            } else {
                t.ty
            },
        })
        .collect();
    check_output(src, out, opts.format, &plan)?;
    bar.set_length(selected.iter().filter(|&&s| s).count() as u64);
    let mut reports = Vec::new();
    let written = rewrite(
        src,
        out,
        opts.format,
        |_| {},
        &plan,
        |i| {
            let t = &src.tensors()[i];
            if !selected[i] {
                if plan[i].ty == t.ty {
                    return Ok(Cow::Borrowed(src.bytes(t)));
                }
                let x = src.to_f32(t)?;
                return Ok(Cow::Owned(encode(
                    plan[i].ty,
                    &x,
                    t.row_len(),
                    None,
                    opts.threads,
                )?));
            }
            bar.set_message(t.name.clone());
            let mut x = src.to_f32(t)?;
            let scale: Option<Vec<f32>> = match opts.method {
                PruneMethod::Magnitude => None,
                PruneMethod::Wanda => {
                    let im = opts.imatrix.as_ref().expect("checked above");
                    let imp = im
                        .importance(&t.name)
                        .filter(|v| v.len() == t.row_len())
                        .ok_or_else(|| {
                            CompressError::Invalid(format!(
                                "the activation statistics have no entry for {}",
                                t.name
                            ))
                        })?;
                    Some(imp.iter().map(|v| v.max(0.0).sqrt()).collect())
                }
            };
            let row = t.row_len();
            let pruned: usize = x
                .chunks_mut(row)
                .map(|r| prune_row(r, scale.as_deref(), opts.sparsity, opts.structured))
                .sum();
            let ty = plan[i].ty;
            let q = encode(ty, &x, row, None, opts.threads)?;
            let back = crate::source::to_f32(&t.name, ty, &q, row, t.n_rows())?;
            let zeros = back.iter().filter(|v| **v == 0.0).count();
            reports.push(PrunedTensor {
                name: t.name.clone(),
                from: t.ty.name().into(),
                to: ty.name().into(),
                elements: x.len(),
                pruned,
                zeros_stored: zeros,
                sparsity: pruned as f64 / x.len() as f64,
            });
            bar.inc(1);
            Ok(Cow::Owned(q))
        },
    )?;
    bar.finish_and_clear();
    let pruned_params = reports.iter().map(|r| r.pruned).sum();
    let total = reports.iter().map(|r| r.elements).sum();
    Ok(PruneReport {
        method: opts.method,
        pattern: match opts.structured {
            Some((n, m)) => format!("{n}:{m}"),
            None => format!("unstructured {:.0}%", opts.sparsity * 100.0),
        },
        tensors: reports,
        pruned_params,
        total_params_pruned_tensors: total,
        in_bytes: src.file_size(),
        out_bytes: written.bytes,
        format: opts.format,
        notes: written.notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unstructured_zeroes_exactly_the_fraction_with_smallest_scores() {
        let mut w: Vec<f32> = (0..10).map(|i| i as f32 - 4.5).collect();
        assert_eq!(prune_row(&mut w, None, 0.5, None), 5);
        assert_eq!(w.iter().filter(|v| **v == 0.0).count(), 5);
        assert!(w[0] != 0.0 && w[9] != 0.0 && w[4] == 0.0 && w[5] == 0.0);
    }

    #[test]
    fn two_four_keeps_two_of_every_four() {
        let mut w = vec![1.0, -4.0, 3.0, 0.5, 9.0, 8.0, -7.0, 6.0];
        prune_row(&mut w, None, 0.0, Some((2, 4)));
        assert_eq!(w, vec![0.0, -4.0, 3.0, 0.0, 9.0, 8.0, 0.0, 0.0]);
        // Wanda scale changes the choice.
        let mut w = vec![1.0, 2.0, 3.0, 4.0];
        prune_row(&mut w, Some(&[100.0, 1.0, 1.0, 1.0]), 0.0, Some((2, 4)));
        assert_eq!(w, vec![1.0, 0.0, 0.0, 4.0]);
    }
}
