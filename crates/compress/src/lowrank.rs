//! `hangar lowrank`: replace chosen linear weights by a truncated SVD, W ≈ A·B with
//! A = U_r Σ_r and B = V_rᵀ, at a fixed rank or the smallest rank that keeps a share of
//! the spectral energy (Σσᵢ²). Stored re-multiplied (loads anywhere, same size) or as
//! the two factors (`NAME.lr_a`, `NAME.lr_b`: the parameter saving made real, but no
//! runtime loads that yet).
//!
//! Owns rank selection and factorisation; the rewrite is shared with quantize.

use crate::error::{CompressError, Result};
use crate::hf_write::{check_float_type, dense_type};
use crate::linalg::{gram_cols, gram_rows, sym_eigen};
use crate::policy::glob_match;
use crate::quantize::{check_output, encode, rewrite, threads, OutFormat, Planned};
use crate::source::SourceModel;
use hangar_formats::GgmlType;
use indicatif::ProgressBar;
use serde::Serialize;
use std::borrow::Cow;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum RankRule {
    /// Keep this many singular values.
    Fixed(usize),
    /// Keep the fewest singular values whose squares sum to this share of the total.
    Energy(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Store {
    /// A·B written back in the tensor's place (same shape and type).
    Multiplied,
    /// `NAME.lr_a` (rows × r) and `NAME.lr_b` (r × cols) instead of `NAME`.
    Factors,
}

#[derive(Debug, Clone)]
pub struct LowrankOptions {
    pub rank: RankRule,
    pub include: Vec<String>,
    pub store: Store,
    /// Type of rewritten tensors (default: the source's if it is a float type, else
    /// Q8_0). With safetensors output: the type of every matrix (F16 or BF16;
    /// default: the input's float type, F16 for quantized inputs).
    pub ty: Option<GgmlType>,
    pub threads: usize,
    pub format: OutFormat,
}

#[derive(Debug, Clone, Serialize)]
pub struct LowrankTensor {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub rank: usize,
    pub energy_kept: f64,
    pub params_before: usize,
    pub params_after: usize,
    /// ‖W − A·B‖ / ‖W‖ (before storage rounding).
    pub rel_err: f64,
    /// Left unchanged: the chosen rank saves nothing.
    pub skipped: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LowrankReport {
    pub store: Store,
    pub tensors: Vec<LowrankTensor>,
    pub params_before: usize,
    pub params_after: usize,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub format: OutFormat,
    /// What a safetensors export converted, copied or left out.
    pub notes: Vec<String>,
}

impl LowrankReport {
    /// Fraction of the factorised tensors' parameters saved.
    pub fn saving(&self) -> f64 {
        1.0 - self.params_after as f64 / self.params_before.max(1) as f64
    }
}

/// A truncated factorisation of one row-major `rows × cols` matrix.
pub struct Factors {
    /// rows × r
    pub a: Vec<f32>,
    /// r × cols
    pub b: Vec<f32>,
    pub rank: usize,
    pub energy_kept: f64,
}

/// Factorises `w` through the eigendecomposition of its smaller Gram matrix.
pub fn factorize(w: &[f32], rows: usize, cols: usize, rule: RankRule, n_threads: usize) -> Factors {
    let small_cols = cols <= rows;
    let k = cols.min(rows);
    let g = if small_cols {
        gram_cols(w, rows, cols, n_threads)
    } else {
        gram_rows(w, rows, cols, n_threads)
    };
    let (vals, vecs) = sym_eigen(&g, k);
    let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
    let r = match rule {
        RankRule::Fixed(r) => r.clamp(1, k),
        RankRule::Energy(e) => {
            let mut acc = 0.0;
            let mut r = k;
            for (i, v) in vals.iter().enumerate() {
                acc += v.max(0.0);
                if acc >= e * total {
                    r = i + 1;
                    break;
                }
            }
            r
        }
    };
    let kept: f64 = vals[..r].iter().map(|v| v.max(0.0)).sum();
    // Q: k × r, the leading eigenvectors.
    let q: Vec<f64> = (0..k * r).map(|i| vecs[(i / r) * k + i % r]).collect();
    let (a, b) = if small_cols {
        // W ≈ (W Q) Qᵀ
        let mut a = vec![0f32; rows * r];
        for i in 0..rows {
            let wr = &w[i * cols..(i + 1) * cols];
            for j in 0..r {
                let mut s = 0f64;
                for (c, &x) in wr.iter().enumerate() {
                    s += x as f64 * q[c * r + j];
                }
                a[i * r + j] = s as f32;
            }
        }
        let b: Vec<f32> = (0..r * cols)
            .map(|i| q[(i % cols) * r + i / cols] as f32)
            .collect();
        (a, b)
    } else {
        // W ≈ Q (Qᵀ W)
        let a: Vec<f32> = q.iter().map(|&v| v as f32).collect();
        let mut b = vec![0f64; r * cols];
        for i in 0..rows {
            let wr = &w[i * cols..(i + 1) * cols];
            for j in 0..r {
                let qij = q[i * r + j];
                let br = &mut b[j * cols..(j + 1) * cols];
                for (o, &x) in br.iter_mut().zip(wr) {
                    *o += qij * x as f64;
                }
            }
        }
        (a, b.into_iter().map(|v| v as f32).collect())
    };
    Factors {
        a,
        b,
        rank: r,
        energy_kept: if total > 0.0 { kept / total } else { 1.0 },
    }
}

/// A·B (rows × cols).
pub fn multiply(f: &Factors, rows: usize, cols: usize) -> Vec<f32> {
    let r = f.rank;
    let mut out = vec![0f32; rows * cols];
    for i in 0..rows {
        let o = &mut out[i * cols..(i + 1) * cols];
        for j in 0..r {
            let aij = f.a[i * r + j];
            for (x, &bv) in o.iter_mut().zip(&f.b[j * cols..(j + 1) * cols]) {
                *x += aij * bv;
            }
        }
    }
    out
}

fn out_type(src: GgmlType, want: Option<GgmlType>, row_len: usize) -> GgmlType {
    let t = want.unwrap_or(match src {
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => src,
        _ => GgmlType::Q8_0,
    });
    if row_len.is_multiple_of(t.block_size()) {
        t
    } else {
        GgmlType::F32
    }
}

pub fn lowrank(
    src: &SourceModel,
    out: &Path,
    opts: &LowrankOptions,
    bar: &ProgressBar,
) -> Result<LowrankReport> {
    match opts.rank {
        RankRule::Fixed(0) => {
            return Err(CompressError::Invalid("--rank must be at least 1".into()))
        }
        RankRule::Energy(e) if !(e > 0.0 && e <= 1.0) => {
            return Err(CompressError::Invalid(format!(
                "--energy {e} must be in (0, 1]"
            )))
        }
        _ => {}
    }
    let dense = opts.format == OutFormat::Safetensors;
    if dense {
        if opts.store == Store::Factors {
            return Err(CompressError::Invalid(
                "--store factors writes tensors (NAME.lr_a, NAME.lr_b) that have no Hugging Face name: use --format gguf, or --store multiplied".into(),
            ));
        }
        if let Some(ty) = opts.ty {
            check_float_type(ty)?;
        }
        // Every tensor keeps its name; check the folder before the factorisations.
        let plan: Vec<Planned> = src
            .tensors()
            .iter()
            .map(|t| Planned {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: dense_type(t.ty, t.is_matrix(), opts.ty),
            })
            .collect();
        check_output(src, out, opts.format, &plan)?;
    }
    let nt = threads(opts.threads);
    let selected: Vec<usize> = (0..src.tensors().len())
        .filter(|&i| {
            let t = &src.tensors()[i];
            t.is_matrix()
                && t.dims.len() == 2
                && opts.include.iter().any(|p| glob_match(p, &t.name))
        })
        .collect();
    if selected.is_empty() {
        return Err(CompressError::Invalid(format!(
            "no matrix matches {:?}",
            opts.include.join(",")
        )));
    }
    // Factorise first: the directory needs the ranks.
    bar.set_length(selected.len() as u64);
    let mut done: Vec<Option<(Factors, LowrankTensor)>> =
        (0..src.tensors().len()).map(|_| None).collect();
    for &i in &selected {
        let t = &src.tensors()[i];
        bar.set_message(t.name.clone());
        let (rows, cols) = (t.n_rows(), t.row_len());
        let w = src.to_f32(t)?;
        let f = factorize(&w, rows, cols, opts.rank, nt);
        let after = f.rank * (rows + cols);
        let approx = multiply(&f, rows, cols);
        let (mut num, mut den) = (0f64, 0f64);
        for (x, y) in w.iter().zip(&approx) {
            num += ((x - y) as f64).powi(2);
            den += (*x as f64).powi(2);
        }
        let skipped = after >= rows * cols;
        let rep = LowrankTensor {
            name: t.name.clone(),
            rows,
            cols,
            rank: f.rank,
            energy_kept: f.energy_kept,
            params_before: rows * cols,
            params_after: if skipped { rows * cols } else { after },
            rel_err: if skipped {
                0.0
            } else {
                (num / den.max(1e-30)).sqrt()
            },
            skipped,
        };
        done[i] = Some((f, rep));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut plan = Vec::new();
    // (source index, which part: 0 whole, 1 = A, 2 = B)
    let mut parts = Vec::new();
    for (i, t) in src.tensors().iter().enumerate() {
        match &done[i] {
            _ if dense => {
                plan.push(Planned {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: dense_type(t.ty, t.is_matrix(), opts.ty),
                });
                parts.push((i, 0));
            }
            Some((f, rep)) if !rep.skipped => {
                let ty = out_type(t.ty, opts.ty, t.row_len());
                match opts.store {
                    Store::Multiplied => {
                        plan.push(Planned {
                            name: t.name.clone(),
                            dims: t.dims.clone(),
                            ty,
                        });
                        parts.push((i, 0));
                    }
                    Store::Factors => {
                        let base = t.name.strip_suffix(".weight").unwrap_or(&t.name);
                        let ta = out_type(t.ty, opts.ty, f.rank);
                        plan.push(Planned {
                            name: format!("{base}.lr_a"),
                            dims: vec![f.rank as u64, rep.rows as u64],
                            ty: ta,
                        });
                        parts.push((i, 1));
                        plan.push(Planned {
                            name: format!("{base}.lr_b"),
                            dims: vec![rep.cols as u64, f.rank as u64],
                            ty,
                        });
                        parts.push((i, 2));
                    }
                }
            }
            _ => {
                plan.push(Planned {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty: t.ty,
                });
                parts.push((i, 0));
            }
        }
    }
    let store = opts.store;
    let written = rewrite(
        src,
        out,
        opts.format,
        |h| {
            if store == Store::Factors {
                h.set(
                    "hangar.lowrank.factors",
                    hangar_formats::MetaValue::Bool(true),
                );
            }
        },
        &plan,
        |k| {
            let (i, part) = parts[k];
            let t = &src.tensors()[i];
            let ty = plan[k].ty;
            match (&done[i], part) {
                (Some((f, rep)), 0) if !rep.skipped => {
                    let m = multiply(f, rep.rows, rep.cols);
                    Ok(Cow::Owned(encode(ty, &m, rep.cols, None, nt)?))
                }
                (Some((f, _)), 1) => Ok(Cow::Owned(encode(ty, &f.a, f.rank, None, nt)?)),
                (Some((f, rep)), 2) => Ok(Cow::Owned(encode(ty, &f.b, rep.cols, None, nt)?)),
                _ if ty == t.ty => Ok(Cow::Borrowed(src.bytes(t))),
                _ => Ok(Cow::Owned(encode(
                    ty,
                    &src.to_f32(t)?,
                    t.row_len(),
                    None,
                    nt,
                )?)),
            }
        },
    )?;
    let tensors: Vec<LowrankTensor> = done.into_iter().flatten().map(|(_, r)| r).collect();
    Ok(LowrankReport {
        store: opts.store,
        params_before: tensors.iter().map(|t| t.params_before).sum(),
        params_after: tensors.iter().map(|t| t.params_after).sum(),
        tensors,
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
    fn full_rank_reconstructs_and_low_rank_recovers_a_rank_two_matrix() {
        let (rows, cols) = (12, 7);
        // A rank-2 matrix.
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (r, c) = ((i / cols) as f32, (i % cols) as f32);
                (r + 1.0) * (c - 3.0) + (r * 0.5 - 2.0) * (c * c * 0.1)
            })
            .collect();
        for (rr, cc, m) in [
            (rows, cols, w.clone()),
            (cols, rows, transpose(&w, rows, cols)),
        ] {
            let f = factorize(&m, rr, cc, RankRule::Energy(0.999999), 1);
            assert_eq!(f.rank, 2);
            let back = multiply(&f, rr, cc);
            for (a, b) in m.iter().zip(&back) {
                assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
            }
        }
    }

    fn transpose(w: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut t = vec![0f32; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                t[c * rows + r] = w[r * cols + c];
            }
        }
        t
    }
}
