//! `hangar quantize`: a new GGUF file (or safetensors folder) where each tensor gets the type the
//! [`crate::policy`] chooses, quantized from f32 (dequantizing first when the input is
//! already quantized), importance-weighted when an [`Imatrix`] is given.
//!
//! Owns the conversion loop and the rewrite shared with prune and low-rank.

use crate::error::{CompressError, Result};
use crate::hf_write;
use crate::imatrix::Imatrix;
use crate::policy::{self, Choice, KeepRule, TensorShape};
use crate::source::SourceModel;
use crate::wquant;
use hangar_formats::{GgmlType, GgufFileWriter, GgufHeader, MetaValue};
use hangar_kernels::quants;
use indicatif::ProgressBar;
use serde::Serialize;
use std::borrow::Cow;
use std::path::Path;

/// What a compression step writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutFormat {
    /// One GGUF file.
    #[default]
    Gguf,
    /// A Hugging Face folder: `model.safetensors`, `config.json`, tokenizer files
    /// (float tensors only; see [`crate::hf_write`]).
    Safetensors,
}

/// Options of one quantization.
#[derive(Debug, Clone)]
pub struct QuantizeOptions {
    pub target: GgmlType,
    pub keep: Vec<KeepRule>,
    pub imatrix: Option<Imatrix>,
    /// Name recorded in the output's metadata.
    pub imatrix_file: Option<String>,
    /// Worker threads (0 = one per core).
    pub threads: usize,
    /// No mix: every matrix gets the target type (fallbacks still apply).
    pub pure: bool,
    pub format: OutFormat,
}

/// What happened to one tensor.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub bytes: u64,
    /// ‖x − x̂‖ / ‖x‖ against the (dequantized) input; `None` when copied.
    pub rel_rmse: Option<f64>,
    pub weighted: bool,
}

/// Summary of a quantization.
#[derive(Debug, Clone, Serialize)]
pub struct QuantizeReport {
    pub target: String,
    pub tensors: Vec<TensorReport>,
    pub in_bytes: u64,
    pub out_bytes: u64,
    /// Input types that had to be dequantized before requantizing.
    pub requantized_from: Vec<String>,
    pub imatrix_tensors: usize,
    pub format: OutFormat,
    /// What a safetensors export converted, copied or left out.
    pub notes: Vec<String>,
}

impl QuantizeReport {
    /// Counts of tensors per output type, e.g. `Q4_K 72, Q6_K 18, F32 110`.
    pub fn type_mix(&self) -> String {
        let mut m: std::collections::BTreeMap<&str, usize> = Default::default();
        for t in &self.tensors {
            *m.entry(t.to.as_str()).or_default() += 1;
        }
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub(crate) fn threads(n: usize) -> usize {
    if n > 0 {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Encodes f32 rows as type `ty`, in parallel; importance-weighted when `importance`
/// (one value per column) is given and the type has a weighted search.
pub fn encode(
    ty: GgmlType,
    x: &[f32],
    row_len: usize,
    importance: Option<&[f32]>,
    n_threads: usize,
) -> Result<Vec<u8>> {
    quants::check_len(ty, row_len).map_err(|e| CompressError::Invalid(e.to_string()))?;
    let rb = quants::row_bytes(ty, row_len);
    let rows = x.len() / row_len;
    let mut out = vec![0u8; rb * rows];
    let per = rows.div_ceil(threads(n_threads)).max(1);
    let errs: Vec<Option<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = out
            .chunks_mut(per * rb)
            .zip(x.chunks(per * row_len))
            .map(|(dst, src)| {
                s.spawn(move || {
                    let mut w = vec![0f32; row_len];
                    for (d, r) in dst.chunks_exact_mut(rb).zip(src.chunks_exact(row_len)) {
                        let res = match importance {
                            Some(imp) if wquant::has_weighted(ty) => {
                                wquant::element_weights(r, imp, &mut w);
                                wquant::quantize_row_weighted(ty, r, &w, d)
                            }
                            _ => quants::quantize_row(ty, r, d),
                        };
                        if let Err(e) = res {
                            return Some(e.to_string());
                        }
                    }
                    None
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Some("worker panicked".into())))
            .collect()
    });
    if let Some(e) = errs.into_iter().flatten().next() {
        return Err(CompressError::Invalid(e));
    }
    Ok(out)
}

/// ‖x − dequant(q)‖ / ‖x‖.
pub fn rel_rmse(ty: GgmlType, x: &[f32], q: &[u8], row_len: usize) -> f64 {
    let rb = quants::row_bytes(ty, row_len);
    let mut y = vec![0f32; row_len];
    let (mut num, mut den) = (0f64, 0f64);
    for (r, qr) in x.chunks_exact(row_len).zip(q.chunks_exact(rb)) {
        if quants::dequantize_row(ty, qr, &mut y).is_err() {
            return f64::NAN;
        }
        for (a, b) in r.iter().zip(&y) {
            num += ((a - b) as f64).powi(2);
            den += (*a as f64).powi(2);
        }
    }
    if den == 0.0 {
        0.0
    } else {
        (num / den).sqrt()
    }
}

/// A tensor of the output file.
pub(crate) struct Planned {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

/// What [`rewrite`] wrote.
pub(crate) struct Written {
    /// Size of the output (the file, or the folder's files), bytes.
    pub bytes: u64,
    pub notes: Vec<String>,
}

/// Checks that `plan` can be written in `format` before any work is spent on it.
pub(crate) fn check_output(
    src: &SourceModel,
    out: &Path,
    format: OutFormat,
    plan: &[Planned],
) -> Result<()> {
    match format {
        OutFormat::Gguf => Ok(()),
        OutFormat::Safetensors => hf_write::preflight(src, out, plan),
    }
}

/// Writes the planned tensors, whose bytes `data(i)` produces in order: as GGUF with
/// `src`'s metadata (edited by `edit`), or as a safetensors folder (float types only).
pub(crate) fn rewrite<'a>(
    src: &'a SourceModel,
    out: &Path,
    format: OutFormat,
    edit: impl FnOnce(&mut GgufHeader),
    plan: &[Planned],
    mut data: impl FnMut(usize) -> Result<Cow<'a, [u8]>>,
) -> Result<Written> {
    if format == OutFormat::Safetensors {
        hf_write::preflight(src, out, plan)?;
        let mut all = Vec::with_capacity(plan.len());
        for i in 0..plan.len() {
            all.push(data(i)?);
        }
        let ex = hf_write::write_checkpoint(src, out, plan, all)?;
        return Ok(Written {
            bytes: ex.bytes,
            notes: ex.notes,
        });
    }
    let mut h = src.metadata().clone();
    edit(&mut h);
    for p in plan {
        h.add_tensor(&p.name, p.dims.clone(), p.ty)?;
    }
    let mut w = GgufFileWriter::create(out, &h)?;
    for i in 0..plan.len() {
        let bytes = data(i)?;
        w.write_tensor(&bytes)?;
    }
    let path = w.finish()?;
    Ok(Written {
        bytes: std::fs::metadata(&path)
            .map_err(CompressError::io(&path))?
            .len(),
        notes: Vec::new(),
    })
}

/// The policy's choice for every tensor of `src`.
pub fn plan(src: &SourceModel, opts: &QuantizeOptions) -> Vec<Choice> {
    let tied = src.tensor("output.weight").is_none();
    src.tensors()
        .iter()
        .map(|t| {
            policy::choose(
                TensorShape {
                    name: &t.name,
                    dims: &t.dims,
                    src: t.ty,
                },
                opts.target,
                &opts.keep,
                src.n_layers(),
                tied,
                opts.pure,
            )
        })
        .collect()
}

/// Checks the options and the output before any work: the target type, and for
/// safetensors output that every chosen type is a float type and `out` a usable folder.
/// Returns the policy's choices and the output tensors.
fn check(
    src: &SourceModel,
    out: &Path,
    opts: &QuantizeOptions,
) -> Result<(Vec<Choice>, Vec<Planned>)> {
    if !policy::TARGETS.contains(&opts.target) {
        return Err(CompressError::Invalid(format!(
            "--type {} is not supported (use Q8_0, Q6_K, Q5_K, Q5_0, Q4_K, Q4_0, F16 or BF16)",
            opts.target
        )));
    }
    if opts.format == OutFormat::Safetensors {
        hf_write::check_float_type(opts.target)?;
    }
    let choices = plan(src, opts);
    let planned: Vec<Planned> = src
        .tensors()
        .iter()
        .zip(&choices)
        .map(|(t, c)| Planned {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ty: c.ty,
        })
        .collect();
    check_output(src, out, opts.format, &planned)?;
    Ok((choices, planned))
}

/// [`quantize`]'s checks alone (for callers that print things before starting).
pub fn validate(src: &SourceModel, out: &Path, opts: &QuantizeOptions) -> Result<()> {
    check(src, out, opts).map(|_| ())
}

/// Quantizes `src` into a new GGUF file at `out` (or, with [`OutFormat::Safetensors`]
/// and a float target, a safetensors folder).
pub fn quantize(
    src: &SourceModel,
    out: &Path,
    opts: &QuantizeOptions,
    bar: &ProgressBar,
) -> Result<QuantizeReport> {
    let (choices, plan) = check(src, out, opts)?;
    let mut requant: Vec<String> = src
        .tensors()
        .iter()
        .zip(&choices)
        .filter(|(t, c)| !c.copy && !matches!(t.ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16))
        .map(|(t, _)| t.ty.name().to_string())
        .collect();
    requant.sort();
    requant.dedup();
    let total: u64 = src.tensors().iter().map(|t| t.n_elements() as u64).sum();
    bar.set_length(total);
    let mut reports = Vec::with_capacity(plan.len());
    let mut n_imatrix = 0;
    let target = opts.target;
    let im = opts.imatrix.as_ref();
    let written = rewrite(
        src,
        out,
        opts.format,
        |h| {
            h.set(
                "general.file_type",
                MetaValue::U32(policy::file_type(target)),
            );
            h.set("general.quantization_version", MetaValue::U32(2));
            if let (Some(im), Some(f)) = (im, &opts.imatrix_file) {
                h.set("quantize.imatrix.file", MetaValue::String(f.clone()));
                h.set(
                    "quantize.imatrix.entries_count",
                    MetaValue::I32(im.entries.len() as i32),
                );
                h.set(
                    "quantize.imatrix.chunks_count",
                    MetaValue::I32(im.chunks as i32),
                );
            }
        },
        &plan,
        |i| {
            let t = &src.tensors()[i];
            let c = &choices[i];
            bar.set_message(t.name.clone());
            let result: Cow<[u8]> = if c.copy {
                reports.push(TensorReport {
                    name: t.name.clone(),
                    from: t.ty.name().into(),
                    to: c.ty.name().into(),
                    reason: c.reason.into(),
                    bytes: src.bytes(t).len() as u64,
                    rel_rmse: None,
                    weighted: false,
                });
                Cow::Borrowed(src.bytes(t))
            } else {
                let x = src.to_f32(t)?;
                let imp = im
                    .and_then(|m| m.importance(&t.name))
                    .filter(|v| v.len() == t.row_len());
                let weighted = imp.is_some() && wquant::has_weighted(c.ty);
                n_imatrix += weighted as usize;
                let q = encode(c.ty, &x, t.row_len(), imp.as_deref(), opts.threads)?;
                reports.push(TensorReport {
                    name: t.name.clone(),
                    from: t.ty.name().into(),
                    to: c.ty.name().into(),
                    reason: c.reason.into(),
                    bytes: q.len() as u64,
                    rel_rmse: Some(rel_rmse(c.ty, &x, &q, t.row_len())),
                    weighted,
                });
                Cow::Owned(q)
            };
            bar.inc(t.n_elements() as u64);
            Ok(result)
        },
    )?;
    bar.finish_and_clear();
    Ok(QuantizeReport {
        target: target.name().into(),
        tensors: reports,
        in_bytes: src.file_size(),
        out_bytes: written.bytes,
        requantized_from: requant,
        imatrix_tensors: n_imatrix,
        format: opts.format,
        notes: written.notes,
    })
}
