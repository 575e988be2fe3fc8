//! Model weights: tensors located in the memory-mapped GGUF file, plus the small norm
//! vectors held as f32; a matrix is never copied except into its packed form.

use crate::config::{Arch, ModelConfig};
use crate::{LoadOptions, ModelError, Numerics, Packing};
use hangar_formats::{GgmlType, GgufFile, TensorInfo};
use hangar_kernels::packed::{self, Packed};
use hangar_kernels::quants;
use hangar_kernels::{QMatrix, ThreadPool};
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// A weight matrix inside the mapped file.
#[derive(Debug, Clone)]
pub(crate) struct Weight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    len: usize,
    /// The row-interleaved copy used by the AVX-512 kernels (Q4_0/Q5_0/Q8_0), made on
    /// first use; shared by clones (a tied output matrix is the embedding).
    packed: Arc<OnceLock<Option<Packed>>>,
}

pub(crate) struct Layer {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub wo: Weight,
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    pub post_attn_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate: Weight,
    pub up: Weight,
    pub down: Weight,
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// A loaded model: configuration plus weights borrowed from the file.
pub struct Model {
    pub cfg: ModelConfig,
    file: Arc<GgufFile>,
    pub(crate) tok_embd: Weight,
    pub(crate) output: Weight,
    pub(crate) output_norm: Vec<f32>,
    pub(crate) layers: Vec<Layer>,
    pub(crate) rope_freqs: Option<Vec<f32>>,
    /// Which arithmetic `forward` uses.
    pub(crate) numerics: Numerics,
    /// Which matrices the fast numerics repack.
    packing: Packing,
}

impl Model {
    /// Maps and loads a GGUF model file with the default [`LoadOptions`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        Self::load_with(path, LoadOptions::default())
    }

    /// Maps and loads a GGUF model file with the given numerics and packing.
    pub fn load_with(path: impl AsRef<Path>, opts: LoadOptions) -> Result<Self, ModelError> {
        Self::from_gguf_with(Arc::new(GgufFile::open(path)?), opts)
    }

    /// Builds the model over an already-parsed file (shared with the tokenizer), with
    /// the default [`LoadOptions`].
    pub fn from_gguf(file: Arc<GgufFile>) -> Result<Self, ModelError> {
        Self::from_gguf_with(file, LoadOptions::default())
    }

    /// As [`Model::from_gguf`], with the given numerics and packing.
    pub fn from_gguf_with(file: Arc<GgufFile>, opts: LoadOptions) -> Result<Self, ModelError> {
        let mut cfg = ModelConfig::from_gguf(&file)?;
        let (d, q, kv, ff) = (cfg.d_model, cfg.q_dim(), cfg.kv_dim(), cfg.ffn_dim);
        let tok_embd = weight(&file, "token_embd.weight", d, None)?;
        cfg.vocab_size = tok_embd.rows;
        // A vocabulary-parallel shard: its rows are a slice of the whole vocabulary.
        if let Some(total) = file
            .get("hangar.tensor_parallel.vocab_size")
            .and_then(|v| v.as_i64())
        {
            let start = file
                .get("hangar.tensor_parallel.vocab_start")
                .and_then(|v| v.as_i64())
                .unwrap_or(0);
            let (start, total) = (start.max(0) as usize, total.max(0) as usize);
            if start + tok_embd.rows > total {
                return Err(ModelError::Config(format!(
                    "a shard's vocabulary rows {start}..{} pass the whole vocabulary of {total}",
                    start + tok_embd.rows
                )));
            }
            cfg.vocab_size = total;
            cfg.vocab_offset = start;
        }
        let output = match file.tensor("output.weight") {
            Some(_) => weight(&file, "output.weight", d, Some(tok_embd.rows))?,
            None => tok_embd.clone(),
        };
        let output_norm = vector(&file, "output_norm.weight", d)?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        let hd = cfg.head_dim;
        for i in 0..cfg.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            let opt_vec = |s: &str, len: usize| -> Result<Option<Vec<f32>>, ModelError> {
                match file.tensor(&n(s)) {
                    Some(_) => vector(&file, &n(s), len).map(Some),
                    None => Ok(None),
                }
            };
            let layer = Layer {
                attn_norm: vector(&file, &n("attn_norm.weight"), d)?,
                wq: weight(&file, &n("attn_q.weight"), d, Some(q))?,
                wk: weight(&file, &n("attn_k.weight"), d, Some(kv))?,
                wv: weight(&file, &n("attn_v.weight"), d, Some(kv))?,
                wo: weight(&file, &n("attn_output.weight"), q, Some(d))?,
                bq: opt_vec("attn_q.bias", q)?,
                bk: opt_vec("attn_k.bias", kv)?,
                bv: opt_vec("attn_v.bias", kv)?,
                q_norm: opt_vec("attn_q_norm.weight", hd)?,
                k_norm: opt_vec("attn_k_norm.weight", hd)?,
                post_attn_norm: opt_vec("post_attention_norm.weight", d)?,
                ffn_norm: vector(&file, &n("ffn_norm.weight"), d)?,
                gate: weight(&file, &n("ffn_gate.weight"), d, Some(ff))?,
                up: weight(&file, &n("ffn_up.weight"), d, Some(ff))?,
                down: weight(&file, &n("ffn_down.weight"), ff, Some(d))?,
                post_ffn_norm: opt_vec("post_ffw_norm.weight", d)?,
            };
            if cfg.arch == Arch::Gemma3
                && (layer.q_norm.is_none()
                    || layer.post_attn_norm.is_none()
                    || layer.post_ffn_norm.is_none())
            {
                return Err(ModelError::MissingTensor(n(
                    "attn_q_norm.weight / post norms",
                )));
            }
            layers.push(layer);
        }
        let rope_freqs = match file.tensor("rope_freqs.weight") {
            Some(_) => Some(vector(&file, "rope_freqs.weight", cfg.rope_dims / 2)?),
            None => None,
        };
        let (mut kquant, mut total) = (output.len, output.len);
        for l in &layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                total += w.len;
                if matches!(w.ty, GgmlType::Q4K | GgmlType::Q6K) {
                    kquant += w.len;
                }
            }
        }
        if !matches!(output.ty, GgmlType::Q4K | GgmlType::Q6K) {
            kquant -= output.len;
        }
        Ok(Model {
            cfg,
            file,
            tok_embd,
            output,
            output_norm,
            layers,
            rope_freqs,
            numerics: opts.numerics,
            packing: opts.packing.resolve(kquant, total),
        })
    }

    /// The parsed file (metadata for the tokenizer and chat template).
    pub fn gguf(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// The arithmetic `forward` uses.
    pub fn numerics(&self) -> Numerics {
        self.numerics
    }

    /// Which matrices the fast numerics repack (`Auto` already decided).
    pub fn packing(&self) -> Packing {
        self.packing
    }

    /// Chooses the arithmetic of `forward` (results change; KV caches written under
    /// one setting should not be continued under the other).
    pub fn set_numerics(&mut self, n: Numerics) {
        self.numerics = n;
    }

    pub(crate) fn mat(&self, w: &Weight) -> QMatrix<'_> {
        QMatrix {
            ty: w.ty,
            rows: w.rows,
            cols: w.cols,
            data: &self.file.bytes()[w.offset..w.offset + w.len],
        }
    }

    /// The packed copy of `w`, made now if needed; `None` when this CPU or type has
    /// no packed kernel or the [`Packing`] option leaves it unpacked. A packed matrix is used
    /// for every product (so results stay batch-invariant), and its source pages are
    /// released from the resident set as they are copied.
    pub(crate) fn packed<'w>(&self, pool: &ThreadPool, w: &'w Weight) -> Option<&'w Packed> {
        if !packed::packable(w.ty) || !self.packing.packs(w.ty) {
            return None;
        }
        w.packed
            .get_or_init(|| {
                let rb = w.len / w.rows.max(1);
                // Source rows are released as they are copied, so the resident set
                // never holds both copies of a large matrix.
                Packed::pack_with(pool, &self.mat(w), |r0, r1| {
                    self.file.release_range(w.offset + r0 * rb, (r1 - r0) * rb)
                })
                .ok()
            })
            .as_ref()
    }

    /// Packs every matrix that has a packed kernel now (at load), instead of on first
    /// use, so the first request does not pay for it.
    pub fn pack_weights(&self, pool: &ThreadPool) {
        self.packed(pool, &self.output);
        self.packed(pool, &self.tok_embd);
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                self.packed(pool, w);
            }
        }
    }

    /// Bytes of weights read to produce one token in decode (every matrix once).
    pub fn weight_bytes_per_token(&self) -> usize {
        let mut n = self.output.len;
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                n += w.len;
            }
        }
        n
    }

    /// Parameters in matrix-vector products per token (for FLOP estimates), excluding
    /// the embedding lookup.
    pub fn matmul_params(&self) -> usize {
        let mut n = self.output.rows * self.output.cols;
        for l in &self.layers {
            for w in [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down] {
                n += w.rows * w.cols;
            }
        }
        n
    }
}

fn find<'a>(f: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    f.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

/// A 2-D weight with `cols` inputs and (if given) `rows` outputs.
fn weight(
    f: &GgufFile,
    name: &str,
    cols: usize,
    rows: Option<usize>,
) -> Result<Weight, ModelError> {
    let t = find(f, name)?;
    let got_rows = t.n_rows();
    if t.dims.len() != 2 || t.row_len() != cols || rows.is_some_and(|r| r != got_rows) {
        return Err(ModelError::BadShape {
            name: name.into(),
            got: t.dims.clone(),
            want: vec![cols as u64, rows.unwrap_or(got_rows) as u64],
        });
    }
    quants::act_type(t.ty).map_err(|source| ModelError::Kernel {
        name: name.into(),
        source,
    })?;
    Ok(Weight {
        ty: t.ty,
        rows: got_rows,
        cols,
        offset: t.offset as usize,
        len: t.size as usize,
        packed: Arc::default(),
    })
}

/// A 1-D tensor of `len` elements, converted to f32.
fn vector(f: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let t = find(f, name)?;
    if t.n_elements() != len as u64 {
        return Err(ModelError::BadShape {
            name: name.into(),
            got: t.dims.clone(),
            want: vec![len as u64],
        });
    }
    let mut out = vec![0f32; len];
    quants::dequantize_row(t.ty, f.tensor_data(t), &mut out).map_err(|source| {
        ModelError::Kernel {
            name: name.into(),
            source,
        }
    })?;
    Ok(out)
}

/// A weight matrix as stored in the file (its GGUF block format, shape and bytes), for
/// backends that upload weights elsewhere (a GPU).
#[derive(Debug, Clone, Copy)]
pub struct MatrixView<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
}

/// One layer's tensors, borrowed from the model.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    pub attn_norm: &'a [f32],
    pub wq: MatrixView<'a>,
    pub wk: MatrixView<'a>,
    pub wv: MatrixView<'a>,
    pub wo: MatrixView<'a>,
    pub bq: Option<&'a [f32]>,
    pub bk: Option<&'a [f32]>,
    pub bv: Option<&'a [f32]>,
    pub q_norm: Option<&'a [f32]>,
    pub k_norm: Option<&'a [f32]>,
    pub post_attn_norm: Option<&'a [f32]>,
    pub ffn_norm: &'a [f32],
    pub gate: MatrixView<'a>,
    pub up: MatrixView<'a>,
    pub down: MatrixView<'a>,
    pub post_ffn_norm: Option<&'a [f32]>,
}

impl Model {
    fn view(&self, w: &Weight) -> MatrixView<'_> {
        let m = self.mat(w);
        MatrixView {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            data: m.data,
        }
    }
    /// The token embedding matrix (`vocab_size` rows of `d_model`).
    pub fn token_embedding(&self) -> MatrixView<'_> {
        self.view(&self.tok_embd)
    }
    /// The output projection (the embedding when tied).
    pub fn output_matrix(&self) -> MatrixView<'_> {
        self.view(&self.output)
    }
    /// The final norm's weights.
    pub fn output_norm(&self) -> &[f32] {
        &self.output_norm
    }
    /// Llama 3 RoPE frequency factors, when the file has them.
    pub fn rope_freq_factors(&self) -> Option<&[f32]> {
        self.rope_freqs.as_deref()
    }
    /// Every layer's tensors, in order.
    pub fn layer_views(&self) -> Vec<LayerView<'_>> {
        self.layers
            .iter()
            .map(|l| LayerView {
                attn_norm: &l.attn_norm,
                wq: self.view(&l.wq),
                wk: self.view(&l.wk),
                wv: self.view(&l.wv),
                wo: self.view(&l.wo),
                bq: l.bq.as_deref(),
                bk: l.bk.as_deref(),
                bv: l.bv.as_deref(),
                q_norm: l.q_norm.as_deref(),
                k_norm: l.k_norm.as_deref(),
                post_attn_norm: l.post_attn_norm.as_deref(),
                ffn_norm: &l.ffn_norm,
                gate: self.view(&l.gate),
                up: self.view(&l.up),
                down: self.view(&l.down),
                post_ffn_norm: l.post_ffn_norm.as_deref(),
            })
            .collect()
    }
}
