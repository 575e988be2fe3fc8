//! Extraction (`hangar lora extract`): per adapted projection, `D = W_tuned − W_base`
//! factorised by truncated SVD (`hangar_compress::lowrank`) into `B = U_r Σ_r`,
//! `A = V_rᵀ`, scale 1. Exact when the checkpoints differ by a rank-r delta;
//! otherwise the best rank-r approximation (reported per tensor).

use crate::merge::dequantize;
use crate::{invalid, Result};
use hangar_compress::lowrank::{factorize, RankRule};
use hangar_formats::GgufFile;
use hangar_models::{LoraAdapter, LoraMatrix, LoraShape, LoraTarget};
use std::path::Path;

/// How one projection was extracted.
#[derive(Debug, Clone)]
pub struct ExtractedTensor {
    pub name: String,
    pub rank: usize,
    /// Share of ‖D‖² the kept singular values hold.
    pub energy_kept: f64,
    /// ‖D − B·A‖ / ‖D‖.
    pub rel_err: f64,
}

/// What `extract` returns besides the adapter.
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    pub tensors: Vec<ExtractedTensor>,
    /// Projections whose weights are identical in both files (left out).
    pub unchanged: usize,
}

/// An adapter of rank `rank` that turns `base` into (approximately) `tuned` on the
/// `targets` projections. Both files must be the same model shape.
pub fn extract(
    base_path: &Path,
    tuned_path: &Path,
    shape: &LoraShape,
    rank: usize,
    targets: &[LoraTarget],
    threads: usize,
) -> Result<(LoraAdapter, ExtractReport)> {
    if rank == 0 {
        return Err(invalid(base_path, "the rank must be at least 1"));
    }
    let open = |p: &Path| {
        GgufFile::open(p).map_err(|e| invalid(p, format!("not a readable GGUF model: {e}")))
    };
    let (base, tuned) = (open(base_path)?, open(tuned_path)?);
    let mut adapter = LoraAdapter::new(shape.clone());
    let mut report = ExtractReport::default();
    for layer in 0..shape.n_layers {
        for &t in targets {
            let name = format!("blk.{layer}.{}.weight", t.gguf_name());
            let (wb, rows, cols) = dequantize(base_path, &base, &name)?;
            let (wt, rows_t, cols_t) = dequantize(tuned_path, &tuned, &name)?;
            if (rows, cols) != (rows_t, cols_t) {
                return Err(invalid(
                    tuned_path,
                    format!("{name} is {rows_t}x{cols_t} here and {rows}x{cols} in the base; the checkpoints are different models"),
                ));
            }
            let d: Vec<f32> = wt.iter().zip(&wb).map(|(a, b)| a - b).collect();
            let norm2: f64 = d.iter().map(|v| f64::from(*v) * f64::from(*v)).sum();
            if norm2 == 0.0 {
                report.unchanged += 1;
                continue;
            }
            let f = factorize(&d, rows, cols, RankRule::Fixed(rank), threads);
            // compress's factors: a = rows × r (U Σ), b = r × cols (Vᵀ); LoRA's B and A.
            let m = LoraMatrix::new(f.rank, rows, cols, f.b.clone(), &f.a, 1.0)
                .map_err(|e| invalid(tuned_path, format!("{name}: {e}")))?;
            let mut approx = vec![0f32; rows * cols];
            m.add_delta_to(&mut approx);
            let err2: f64 = approx
                .iter()
                .zip(&d)
                .map(|(a, b)| f64::from(a - b) * f64::from(a - b))
                .sum();
            report.tensors.push(ExtractedTensor {
                name,
                rank: f.rank,
                energy_kept: f.energy_kept,
                rel_err: (err2 / norm2).sqrt(),
            });
            adapter
                .insert(layer, t, m)
                .map_err(|e| invalid(tuned_path, e.to_string()))?;
        }
    }
    if adapter.n_matrices() == 0 {
        return Err(invalid(
            tuned_path,
            "no adapted projection differs from the base: nothing to extract",
        ));
    }
    adapter.description = format!(
        "rank-{rank} extraction of {} − {}",
        tuned_path.display(),
        base_path.display()
    );
    Ok((adapter, report))
}
