//! The shape of a transformer: what the planner needs to size weights, KV cache and
//! activations. Read from a GGUF file's metadata or taken from a built-in preset.
//! Owns no arithmetic on memory; that lives in the modules that use the shape.

use crate::error::{PlanError, Result};
use hangar_formats::{GgmlType, GgufFile};
use serde::Serialize;
use std::path::Path;

/// Hyper-parameters of a decoder-only transformer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShape {
    pub arch: String,
    pub n_layers: usize,
    /// Width of the residual stream (`embedding_length`).
    pub d_model: usize,
    /// Width of the feed-forward hidden layer (`feed_forward_length`).
    pub d_ff: usize,
    pub n_heads: usize,
    /// Key/value heads (GQA: fewer than `n_heads`; MQA: 1). The largest over layers.
    pub n_kv_heads: usize,
    /// Dimension of one key head (`attention.key_length`).
    pub key_len: usize,
    /// Dimension of one value head (`attention.value_length`).
    pub value_len: usize,
    pub vocab: usize,
    /// Longest context the model was trained for.
    pub context_length: usize,
    /// Window of the sliding-window (local) layers, if any.
    pub sliding_window: Option<usize>,
    /// Per layer: key/value heads (models may vary them by layer).
    #[serde(skip)]
    pub kv_heads: Vec<usize>,
    /// Per layer: whether the layer attends over the sliding window only.
    #[serde(skip)]
    pub local: Vec<bool>,
    pub n_local_layers: usize,
    /// The output projection shares the token embedding.
    pub tied_embeddings: bool,
    pub qkv_bias: bool,
    /// Per-head RMS norm on queries and keys (gemma3, qwen3).
    pub qk_norm: bool,
    /// Extra norms after attention and feed-forward (gemma2/3).
    pub post_norms: bool,
}

/// One tensor as the planner sees it: its shape and, when read from a file, how it
/// is stored there.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorShape {
    pub name: String,
    /// GGML order: `dims[0]` is the innermost (row) length.
    pub dims: Vec<u64>,
    /// Type in the file; `None` for a preset.
    pub stored: Option<GgmlType>,
    /// Bytes in the file; `None` for a preset.
    pub stored_bytes: Option<u64>,
}

impl TensorShape {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(1)
    }
    /// Matrices (2-D or more) are quantized; vectors (norms, biases) are not.
    pub fn is_matrix(&self) -> bool {
        self.dims.iter().filter(|&&d| d > 1).count() >= 2
    }
    fn new(name: String, dims: Vec<u64>) -> Self {
        TensorShape {
            name,
            dims,
            stored: None,
            stored_bytes: None,
        }
    }
}

/// Where a model description came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSource {
    /// A GGUF file: tensor shapes and stored sizes are real.
    File { path: String, file_bytes: u64 },
    /// A built-in preset: tensors are generated from the published shape.
    Preset { name: String },
    /// Only a parameter count (and perhaps an architecture) is known.
    ParamCount,
}

/// A model to plan for: its shape (when known) and its tensors.
#[derive(Debug, Clone, Serialize)]
pub struct Model {
    pub name: String,
    pub source: ModelSource,
    pub shape: Option<ModelShape>,
    #[serde(skip)]
    pub tensors: Vec<TensorShape>,
    pub n_params: u64,
}

impl ModelShape {
    /// Builds a shape with every layer global and the usual defaults
    /// (`n_kv_heads = n_heads`, head dim `d_model / n_heads`, untied, no biases).
    pub fn dense(arch: &str, n_layers: usize, d_model: usize, d_ff: usize, n_heads: usize) -> Self {
        let hd = d_model.checked_div(n_heads).unwrap_or(0);
        ModelShape {
            arch: arch.to_string(),
            n_layers,
            d_model,
            d_ff,
            n_heads,
            n_kv_heads: n_heads,
            key_len: hd,
            value_len: hd,
            vocab: 32000,
            context_length: 4096,
            sliding_window: None,
            kv_heads: vec![n_heads; n_layers],
            local: vec![false; n_layers],
            n_local_layers: 0,
            tied_embeddings: false,
            qkv_bias: false,
            qk_norm: false,
            post_norms: false,
        }
    }

    /// Sets the key/value head count on every layer.
    pub fn with_kv_heads(mut self, n: usize) -> Self {
        self.n_kv_heads = n;
        self.kv_heads = vec![n; self.n_layers];
        self
    }

    /// Sets the head dimension of keys and values.
    pub fn with_head_dim(mut self, hd: usize) -> Self {
        self.key_len = hd;
        self.value_len = hd;
        self
    }

    /// Marks layers local (sliding window `w`) where `is_local(i)` says so.
    pub fn with_window(mut self, w: usize, is_local: impl Fn(usize) -> bool) -> Self {
        self.sliding_window = Some(w);
        self.local = (0..self.n_layers).map(is_local).collect();
        self.n_local_layers = self.local.iter().filter(|&&l| l).count();
        self
    }

    /// Checks the numbers are usable (non-zero, consistent per-layer vectors).
    pub fn validate(&self) -> Result<()> {
        let zero = [
            ("layers", self.n_layers),
            ("embedding length", self.d_model),
            ("attention heads", self.n_heads),
            ("key/value heads", self.n_kv_heads),
            ("head dimension", self.key_len),
        ]
        .into_iter()
        .find(|(_, v)| *v == 0);
        if let Some((what, _)) = zero {
            return Err(PlanError::Shape(format!("{what} is 0")));
        }
        if self.kv_heads.len() != self.n_layers || self.local.len() != self.n_layers {
            return Err(PlanError::Shape(
                "per-layer lists do not match the layer count".into(),
            ));
        }
        if self.n_kv_heads > self.n_heads {
            return Err(PlanError::Shape(format!(
                "{} key/value heads exceed {} attention heads",
                self.n_kv_heads, self.n_heads
            )));
        }
        Ok(())
    }

    /// The tensors a model of this shape has, named as in GGUF (`blk.N.attn_q.weight`).
    pub fn tensors(&self) -> Vec<TensorShape> {
        let (d, ff, v) = (self.d_model as u64, self.d_ff as u64, self.vocab as u64);
        let q = (self.n_heads * self.key_len) as u64;
        let o_in = (self.n_heads * self.value_len) as u64;
        let mut t = vec![TensorShape::new("token_embd.weight".into(), vec![d, v])];
        for (i, &kvh) in self.kv_heads.iter().enumerate() {
            let k = (kvh * self.key_len) as u64;
            let vv = (kvh * self.value_len) as u64;
            let mut add = |n: &str, dims: Vec<u64>| {
                t.push(TensorShape::new(format!("blk.{i}.{n}"), dims));
            };
            add("attn_norm.weight", vec![d]);
            add("attn_q.weight", vec![d, q]);
            add("attn_k.weight", vec![d, k]);
            add("attn_v.weight", vec![d, vv]);
            add("attn_output.weight", vec![o_in, d]);
            if self.qkv_bias {
                add("attn_q.bias", vec![q]);
                add("attn_k.bias", vec![k]);
                add("attn_v.bias", vec![vv]);
            }
            if self.qk_norm {
                add("attn_q_norm.weight", vec![self.key_len as u64]);
                add("attn_k_norm.weight", vec![self.key_len as u64]);
            }
            if self.post_norms {
                add("post_attention_norm.weight", vec![d]);
                add("post_ffw_norm.weight", vec![d]);
            }
            add("ffn_norm.weight", vec![d]);
            add("ffn_gate.weight", vec![d, ff]);
            add("ffn_up.weight", vec![d, ff]);
            add("ffn_down.weight", vec![ff, d]);
        }
        t.push(TensorShape::new("output_norm.weight".into(), vec![d]));
        if !self.tied_embeddings {
            t.push(TensorShape::new("output.weight".into(), vec![d, v]));
        }
        t
    }

    /// Parameters in the layers' matrices (what a matmul reads per token).
    pub fn layer_matrix_params(&self) -> u64 {
        self.tensors()
            .iter()
            .filter(|t| t.name.starts_with("blk.") && t.is_matrix())
            .map(|t| t.n_elements())
            .sum()
    }
}

/// Most layers a header-only file (no tensors to count) may claim.
const MAX_LAYERS_WITHOUT_TENSORS: usize = 4096;

/// The layer count sizes per-layer vectors below: it must match the `blk.N` tensors
/// in the file (or, in a header-only file, be sane) before anything is allocated.
fn check_layer_count(f: &GgufFile, key: &str, n_layers: usize) -> Result<()> {
    let mut layers = std::collections::BTreeSet::new();
    let mut any = false;
    for t in f.tensors() {
        any = true;
        if let Some(i) = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|n| n.parse::<usize>().ok())
        {
            layers.insert(i);
        }
    }
    let ok = if any {
        layers.len() == n_layers && layers.iter().next_back().is_none_or(|&l| l + 1 == n_layers)
    } else {
        n_layers <= MAX_LAYERS_WITHOUT_TENSORS
    };
    if ok {
        Ok(())
    } else {
        Err(PlanError::Shape(format!(
            "{key} says {n_layers} layers but the file has tensors for {}; the file is damaged or crafted",
            layers.len()
        )))
    }
}

/// Reads the shape of a model from GGUF metadata.
///
/// Keys: `{arch}.block_count`, `embedding_length`, `feed_forward_length`,
/// `attention.head_count`, `attention.head_count_kv` (number or per-layer array),
/// `attention.key_length`, `attention.value_length`, `attention.sliding_window`,
/// `context_length`; vocabulary from `tokenizer.ggml.tokens`.
pub fn shape_from_gguf(f: &GgufFile) -> Result<ModelShape> {
    let shape_err = |e: hangar_formats::GgufError| PlanError::Shape(e.to_string());
    let arch = f.architecture().map_err(shape_err)?.to_string();
    let key = |k: &str| format!("{arch}.{k}");
    let req = |k: &str| f.get_usize(&key(k)).map_err(shape_err);
    let opt = |k: &str| f.get_usize(&key(k)).ok();
    let n_layers = req("block_count")?;
    check_layer_count(f, &key("block_count"), n_layers)?;
    let d_model = req("embedding_length")?;
    let n_heads = req("attention.head_count")?;
    let d_ff = opt("feed_forward_length")
        .or_else(|| {
            f.get_i64_array(&key("feed_forward_length"))
                .ok()
                .and_then(|v| v.into_iter().max())
                .map(|x| x.max(0) as usize)
        })
        .unwrap_or(0);
    let kv_heads: Vec<usize> = match opt("attention.head_count_kv") {
        Some(n) => vec![n; n_layers],
        None => match f.get_i64_array(&key("attention.head_count_kv")) {
            Ok(v) if v.len() == n_layers => v.into_iter().map(|x| x.max(0) as usize).collect(),
            Ok(v) => {
                return Err(PlanError::Shape(format!(
                    "{} lists {} layers, the model has {n_layers}",
                    key("attention.head_count_kv"),
                    v.len()
                )))
            }
            Err(_) => vec![n_heads; n_layers],
        },
    };
    let hd = d_model.checked_div(n_heads).unwrap_or(0);
    let key_len = opt("attention.key_length").unwrap_or(hd);
    let value_len = opt("attention.value_length").unwrap_or(key_len);
    let vocab = f
        .get_array("tokenizer.ggml.tokens")
        .map(|a| a.len())
        .ok()
        .or_else(|| opt("vocab_size"))
        .or_else(|| {
            f.tensor("token_embd.weight")
                .and_then(|t| t.dims.get(1).map(|&v| v as usize))
        })
        .unwrap_or(0);
    let window = opt("attention.sliding_window").filter(|&w| w > 0);
    let local: Vec<bool> = match (window, arch.as_str()) {
        (None, _) => vec![false; n_layers],
        // gemma3: five local layers, then one global.
        (Some(_), "gemma3") => (0..n_layers).map(|i| (i + 1) % 6 != 0).collect(),
        // gemma2: local and global alternate, starting local.
        (Some(_), "gemma2") => (0..n_layers).map(|i| i % 2 == 0).collect(),
        (Some(_), _) => vec![true; n_layers],
    };
    let has = |n: &str| f.tensor(n).is_some();
    let shape = ModelShape {
        n_kv_heads: kv_heads.iter().copied().max().unwrap_or(0),
        n_local_layers: local.iter().filter(|&&l| l).count(),
        context_length: opt("context_length").unwrap_or(0),
        tied_embeddings: !has("output.weight"),
        qkv_bias: has("blk.0.attn_q.bias"),
        qk_norm: has("blk.0.attn_q_norm.weight"),
        post_norms: has("blk.0.post_attention_norm.weight"),
        arch,
        n_layers,
        d_model,
        d_ff,
        n_heads,
        key_len,
        value_len,
        vocab,
        sliding_window: window,
        kv_heads,
        local,
    };
    shape.validate()?;
    Ok(shape)
}

impl Model {
    /// Opens a GGUF file and reads its shape and tensor directory.
    pub fn from_gguf_path(path: &Path) -> Result<Model> {
        let f = GgufFile::open(path).map_err(|source| PlanError::Model {
            path: path.to_path_buf(),
            source,
        })?;
        let mut m = Model::from_gguf(&f)?;
        m.source = ModelSource::File {
            path: path.display().to_string(),
            file_bytes: f.bytes().len() as u64,
        };
        m.name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(m)
    }

    /// Reads a parsed GGUF file (name and path are left for the caller).
    pub fn from_gguf(f: &GgufFile) -> Result<Model> {
        let shape = shape_from_gguf(f)?;
        let tensors: Vec<TensorShape> = f
            .tensors()
            .iter()
            .map(|t| TensorShape {
                name: t.name.clone(),
                dims: t.dims.clone(),
                stored: Some(t.ty),
                stored_bytes: Some(t.size),
            })
            .collect();
        let n_params = tensors.iter().map(|t| t.n_elements()).sum();
        Ok(Model {
            name: f
                .get_str("general.name")
                .unwrap_or(shape.arch.as_str())
                .to_string(),
            source: ModelSource::File {
                path: String::new(),
                file_bytes: f.bytes().len() as u64,
            },
            shape: Some(shape),
            tensors,
            n_params,
        })
    }

    /// A model built from a shape (a preset or flags): tensors generated from it.
    pub fn from_shape(name: &str, shape: ModelShape, source: ModelSource) -> Result<Model> {
        shape.validate()?;
        let tensors = shape.tensors();
        let n_params = tensors.iter().map(|t| t.n_elements()).sum();
        Ok(Model {
            name: name.to_string(),
            source,
            shape: Some(shape),
            tensors,
            n_params,
        })
    }

    /// A model known only by its parameter count.
    pub fn from_param_count(n_params: u64, arch: Option<&str>) -> Model {
        Model {
            name: match arch {
                Some(a) => format!("{a} ({} params)", crate::units::fmt_count(n_params as f64)),
                None => format!("{} params", crate::units::fmt_count(n_params as f64)),
            },
            source: ModelSource::ParamCount,
            shape: None,
            tensors: Vec::new(),
            n_params,
        }
    }

    /// Bytes of the weights as stored in the file, if read from one.
    pub fn stored_bytes(&self) -> Option<u64> {
        match self.source {
            ModelSource::File { .. } => {
                Some(self.tensors.iter().filter_map(|t| t.stored_bytes).sum())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod layer_count_tests {
    use super::*;
    use hangar_formats::gguf_write::GgufHeader;
    use hangar_formats::{GgmlType, MetaValue};

    fn file(block_count: u32, with_tensors: bool) -> GgufFile {
        let mut h = GgufHeader::new();
        h.set("general.architecture", MetaValue::String("llama".into()));
        h.set("llama.block_count", MetaValue::U32(block_count));
        h.set("llama.embedding_length", MetaValue::U32(64));
        h.set("llama.attention.head_count", MetaValue::U32(4));
        if with_tensors {
            for l in 0..2 {
                h.add_tensor(
                    &format!("blk.{l}.attn_norm.weight"),
                    vec![64],
                    GgmlType::F32,
                )
                .unwrap();
            }
        }
        let mut bytes = h.to_bytes().unwrap();
        let need = h.tensors().iter().map(|t| t.size()).sum::<u64>() as usize;
        bytes.resize(bytes.len() + need + 64, 0);
        GgufFile::from_bytes(bytes).unwrap()
    }

    #[test]
    fn a_crafted_layer_count_is_an_error_before_anything_is_sized_by_it() {
        // 2^31 layers used to allocate per-layer vectors of that length first.
        let err = shape_from_gguf(&file(1 << 31, true))
            .unwrap_err()
            .to_string();
        assert!(err.contains("2147483648 layers"), "{err}");
        assert!(shape_from_gguf(&file(1 << 31, false)).is_err());
        assert_eq!(shape_from_gguf(&file(2, true)).unwrap().n_layers, 2);
        assert_eq!(shape_from_gguf(&file(32, false)).unwrap().n_layers, 32);
    }
}
