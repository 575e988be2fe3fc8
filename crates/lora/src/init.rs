//! Random adapters (`hangar lora init`): A and B both nonzero (unlike a training
//! initialisation, where B starts at zero), sized so each delta's RMS is a chosen
//! fraction of the RMS of the weight it changes. For tests and benchmarks: such an
//! adapter changes greedy output without turning it into noise. Strength 0 gives the
//! training initialisation (B = 0): an adapter that changes nothing.

use crate::merge::dequantize;
use crate::{invalid, Result};
use hangar_formats::GgufFile;
use hangar_models::{LoraAdapter, LoraMatrix, LoraShape, LoraTarget};
use std::path::Path;

/// What `random` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub rank: usize,
    /// `alpha` (scale = alpha / rank); default: `rank` (scale 1).
    pub alpha: Option<f32>,
    pub targets: Vec<LoraTarget>,
    pub seed: u64,
    /// RMS of each delta as a fraction of the RMS of its weight.
    pub strength: f32,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            rank: 16,
            alpha: None,
            targets: LoraTarget::ALL.to_vec(),
            seed: 0,
            strength: 0.1,
        }
    }
}

/// splitmix64: small, seedable, good enough for test weights.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-√3, √3): unit variance.
    fn unit(&mut self) -> f32 {
        let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * 3f32.sqrt()
    }
}

/// A random adapter for the model in `base` (its weights set each delta's size).
pub fn random(base_path: &Path, shape: &LoraShape, opts: &InitOptions) -> Result<LoraAdapter> {
    if opts.rank == 0 {
        return Err(invalid(base_path, "the rank must be at least 1"));
    }
    if !(opts.strength.is_finite() && opts.strength >= 0.0) {
        return Err(invalid(
            base_path,
            "the strength must be a number of 0 or more",
        ));
    }
    let base = GgufFile::open(base_path)
        .map_err(|e| invalid(base_path, format!("not a readable GGUF model: {e}")))?;
    let alpha = opts.alpha.unwrap_or(opts.rank as f32);
    let scale = alpha / opts.rank as f32;
    if !(scale.is_finite() && scale != 0.0) {
        return Err(invalid(
            base_path,
            format!("alpha {alpha} gives no usable scale"),
        ));
    }
    let mut rng = Rng(opts.seed ^ 0x6c6f_7261);
    let mut adapter = LoraAdapter::new(shape.clone());
    for layer in 0..shape.n_layers {
        for &t in &opts.targets {
            let (w, rows, cols) = dequantize(
                base_path,
                &base,
                &format!("blk.{layer}.{}.weight", t.gguf_name()),
            )?;
            let rms = (w.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>()
                / w.len().max(1) as f64)
                .sqrt() as f32;
            let r = opts.rank.min(rows).min(cols);
            // A: unit variance / cols; B: sigma. Then RMS(scale·B·A) = scale·sigma·√(r/cols).
            let sigma = opts.strength * rms / (scale.abs() * (r as f32 / cols as f32).sqrt());
            let a: Vec<f32> = (0..r * cols)
                .map(|_| rng.unit() / (cols as f32).sqrt())
                .collect();
            let b: Vec<f32> = (0..rows * r).map(|_| rng.unit() * sigma).collect();
            let m = LoraMatrix::new(r, rows, cols, a, &b, scale)
                .map_err(|e| invalid(base_path, e.to_string()))?;
            adapter
                .insert(layer, t, m)
                .map_err(|e| invalid(base_path, e.to_string()))?;
        }
    }
    adapter.description = format!(
        "random rank-{} adapter (seed {}, strength {}) for {}",
        opts.rank,
        opts.seed,
        opts.strength,
        base_path.display()
    );
    Ok(adapter)
}
