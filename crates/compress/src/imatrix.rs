//! Importance matrix: for every weight matrix, the mean square of each input column's
//! activation over a calibration text (`hangar imatrix`). Quantization weighs rounding
//! errors by it; Wanda pruning scores weights by it.
//!
//! Stored as GGUF with llama.cpp's tensor naming (`NAME.in_sum2`, `NAME.counts`). The
//! output projection's input is collected too, under `output.weight`, or under
//! `token_embd.weight` when the model ties its output to the embedding (llama.cpp
//! collects `output.weight` only with `--process-output`, and never a tied embedding;
//! its `llama-quantize` looks entries up by tensor name, so both read these files).

use crate::error::{CompressError, Result};
use crate::session::Session;
use hangar_formats::gguf::MetaArray;
use hangar_formats::{GgmlType, GgufFile, GgufFileWriter, GgufHeader, MetaValue};
use hangar_kernels::ThreadPool;
use hangar_models::{LogitsWanted, Model, Tap};
use std::collections::BTreeMap;
use std::path::Path;

/// Activation statistics per weight matrix.
#[derive(Debug, Clone, Default)]
pub struct Imatrix {
    /// Tensor name → (Σ x² per input column, number of rows seen).
    pub entries: BTreeMap<String, (Vec<f32>, u64)>,
    pub chunks: usize,
    pub chunk_size: usize,
    pub dataset: String,
}

/// The matrices whose inputs a tap shows.
pub fn tap_tensors(layer: usize, tap: Tap) -> Vec<String> {
    let names: &[&str] = match tap {
        Tap::AttnIn => &["attn_q", "attn_k", "attn_v"],
        Tap::AttnOutIn => &["attn_output"],
        Tap::FfnIn => &["ffn_gate", "ffn_up"],
        Tap::FfnDownIn => &["ffn_down"],
        // The output projection: see [`output_tensor`] for the tied case.
        Tap::OutputIn => return vec!["output.weight".into()],
    };
    names
        .iter()
        .map(|n| format!("blk.{layer}.{n}.weight"))
        .collect()
}

const TAPS: [Tap; 4] = [Tap::AttnIn, Tap::AttnOutIn, Tap::FfnIn, Tap::FfnDownIn];

/// The matrix the output projection multiplies by: `output.weight`, or the embedding
/// when the model has no separate output matrix (Gemma ties them).
pub fn output_tensor(model: &Model) -> &'static str {
    if model.gguf().tensor("output.weight").is_some() {
        "output.weight"
    } else {
        "token_embd.weight"
    }
}

/// Tokens fed per forward call while collecting: the output projection's input is
/// only observed for rows whose logits are computed, and this bounds those logits to
/// `FEED × vocab` floats.
const FEED: usize = 64;

impl Imatrix {
    /// Mean square activation per column of `tensor`'s input, if collected.
    pub fn importance(&self, tensor: &str) -> Option<Vec<f32>> {
        let (s, n) = self.entries.get(tensor)?;
        let n = (*n).max(1) as f32;
        Some(s.iter().map(|v| v / n).collect())
    }

    /// Runs `model` over `tokens` (no BOS) in windows of `ctx` tokens (BOS first) and
    /// accumulates the input statistics of every layer's matrices and of the output
    /// projection (stored under [`output_tensor`]'s name).
    pub fn collect(
        model: &Model,
        pool: &ThreadPool,
        bos: u32,
        tokens: &[u32],
        ctx: usize,
        max_chunks: Option<usize>,
        mut on_chunk: impl FnMut(usize, usize),
    ) -> Result<Imatrix> {
        if ctx < 8 {
            return Err(CompressError::Invalid(format!(
                "--ctx {ctx} is too small (at least 8)"
            )));
        }
        let per = ctx - 1;
        let mut n = tokens.len() / per;
        if let Some(m) = max_chunks {
            n = n.min(m);
        }
        if n == 0 {
            return Err(CompressError::Invalid(format!(
                "the calibration text has {} tokens; one chunk of --ctx {ctx} needs {per}",
                tokens.len()
            )));
        }
        let layers = model.cfg.n_layers;
        // (layer, tap) → Σ x², rows
        // The last slot is the output projection's.
        let mut acc: Vec<(Vec<f64>, u64)> = vec![(Vec::new(), 0); layers * TAPS.len() + 1];
        let mut sess = Session::new(model, ctx);
        let mut toks = Vec::with_capacity(ctx);
        for c in 0..n {
            toks.clear();
            toks.push(bos);
            toks.extend_from_slice(&tokens[c * per..(c + 1) * per]);
            let mut obs = |layer: usize, tap: Tap, rows: &[f32], width: usize| {
                let slot = match TAPS.iter().position(|t| *t == tap) {
                    Some(ti) if layer < layers => layer * TAPS.len() + ti,
                    None if tap == Tap::OutputIn => layers * TAPS.len(),
                    _ => return,
                };
                let slot = &mut acc[slot];
                if slot.0.len() != width {
                    slot.0 = vec![0.0; width];
                }
                for row in rows.chunks_exact(width) {
                    for (s, &x) in slot.0.iter_mut().zip(row) {
                        *s += (x as f64) * (x as f64);
                    }
                }
                slot.1 += (rows.len() / width.max(1)) as u64;
            };
            // Logits of every position, so that the output projection's input shows;
            // in pieces, to bound the logits buffer.
            let mut start = 0;
            while start < toks.len() {
                let end = (start + FEED).min(toks.len());
                sess.feed(
                    pool,
                    &toks[start..end],
                    start,
                    LogitsWanted::All,
                    Some(&mut obs),
                )?;
                start = end;
            }
            on_chunk(c + 1, n);
        }
        let mut entries = BTreeMap::new();
        for layer in 0..layers {
            for (ti, &tap) in TAPS.iter().enumerate() {
                let (s, rows) = &acc[layer * TAPS.len() + ti];
                if *rows == 0 {
                    continue;
                }
                for name in tap_tensors(layer, tap) {
                    entries.insert(name, (s.iter().map(|&v| v as f32).collect(), *rows));
                }
            }
        }
        let (s, rows) = &acc[layers * TAPS.len()];
        if *rows > 0 {
            entries.insert(
                output_tensor(model).to_string(),
                (s.iter().map(|&v| v as f32).collect(), *rows),
            );
        }
        Ok(Imatrix {
            entries,
            chunks: n,
            chunk_size: ctx,
            dataset: String::new(),
        })
    }

    /// Writes the statistics as a GGUF file.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut h = GgufHeader::new();
        h.set("general.type", MetaValue::String("imatrix".into()));
        h.set("imatrix.chunk_count", MetaValue::U32(self.chunks as u32));
        h.set("imatrix.chunk_size", MetaValue::U32(self.chunk_size as u32));
        h.set(
            "imatrix.datasets",
            MetaValue::Array(MetaArray::String(vec![self.dataset.clone()])),
        );
        for (name, (s, _)) in &self.entries {
            h.add_tensor(
                &format!("{name}.in_sum2"),
                vec![s.len() as u64, 1],
                GgmlType::F32,
            )?;
            h.add_tensor(&format!("{name}.counts"), vec![1, 1], GgmlType::F32)?;
        }
        let mut w = GgufFileWriter::create(path, &h)?;
        for (s, n) in self.entries.values() {
            let bytes: Vec<u8> = s.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_tensor(&bytes)?;
            w.write_tensor(&(*n as f32).to_le_bytes())?;
        }
        w.finish()?;
        Ok(())
    }

    /// Reads a file written by [`Imatrix::save`] (or llama.cpp's GGUF imatrix).
    pub fn load(path: &Path) -> Result<Imatrix> {
        let f = GgufFile::open(path)?;
        let mut entries = BTreeMap::new();
        let f32s = |t: &hangar_formats::TensorInfo| -> Result<Vec<f32>> {
            if t.ty != GgmlType::F32 {
                return Err(CompressError::bad(
                    path,
                    format!("tensor {} is not F32", t.name),
                ));
            }
            Ok(f.tensor_data(t)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect())
        };
        for t in f.tensors() {
            let Some(name) = t.name.strip_suffix(".in_sum2") else {
                continue;
            };
            let counts = f
                .tensor(&format!("{name}.counts"))
                .ok_or_else(|| CompressError::bad(path, format!("{name}.counts is missing")))?;
            let width = t.row_len();
            let sums = f32s(t)?;
            let counts = f32s(counts)?;
            // Several experts would be several rows; we fold them into one.
            let mut s = vec![0f32; width];
            for row in sums.chunks_exact(width) {
                for (a, b) in s.iter_mut().zip(row) {
                    *a += b;
                }
            }
            let n: f32 = counts.iter().sum();
            entries.insert(name.to_string(), (s, n.max(0.0) as u64));
        }
        if entries.is_empty() {
            return Err(CompressError::bad(
                path,
                "no .in_sum2 tensors: not an importance matrix",
            ));
        }
        let get = |k: &str| f.get(k).and_then(|v| v.as_i64()).unwrap_or(0) as usize;
        Ok(Imatrix {
            entries,
            chunks: get("imatrix.chunk_count"),
            chunk_size: get("imatrix.chunk_size"),
            dataset: match f.get("imatrix.datasets").and_then(|v| v.as_array()) {
                Some(MetaArray::String(v)) => v.join(", "),
                _ => String::new(),
            },
        })
    }
}
