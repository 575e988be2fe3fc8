//! BERT-family encoders (BERT, MiniLM, bge, e5 …) read from a Hugging Face folder
//! (`config.json` + `model.safetensors`): token ids of a batch of texts in, pooled text
//! vectors out, on Hangar's f32 kernels. Owns the architecture and sentence-transformers'
//! pooling settings; knows nothing about tokenizers, requests or scheduling.
//!
//! A batch is ragged: the texts' tokens are packed one after another (no pad rows) and
//! attention runs within each text only, which is exactly a padded batch with its
//! padding masked out, without computing the padding. Every kernel treats a token row
//! on its own, so a text's vector does not depend on the other texts in its batch.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use hangar_formats::SafetensorsFile;
use hangar_kernels::{gemm_f32, ops, ThreadPool};
use serde_json::Value;

use crate::ModelError;

/// The `config.json` fields an encoder needs.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
}

impl EncoderConfig {
    /// Parses a BERT-style `config.json` (`hidden_act` must be GELU, positions absolute).
    pub fn from_json(j: &Value) -> Result<Self, ModelError> {
        let num = |k: &str| {
            j[k].as_u64()
                .filter(|&v| v > 0 && v < (1 << 31))
                .map(|v| v as usize)
                .ok_or_else(|| {
                    ModelError::Config(format!(
                        "config.json: {k} is missing or not a positive integer"
                    ))
                })
        };
        match j["hidden_act"].as_str().unwrap_or("gelu") {
            "gelu" => {}
            o => {
                return Err(ModelError::Config(format!(
                    "config.json: hidden_act {o:?} is not supported (BERT's exact \"gelu\")"
                )))
            }
        }
        match j["position_embedding_type"].as_str().unwrap_or("absolute") {
            "absolute" => {}
            o => {
                return Err(ModelError::Config(format!(
                    "config.json: position_embedding_type {o:?} is not supported (\"absolute\")"
                )))
            }
        }
        let cfg = Self {
            vocab_size: num("vocab_size")?,
            hidden_size: num("hidden_size")?,
            num_layers: num("num_hidden_layers")?,
            num_heads: num("num_attention_heads")?,
            intermediate_size: num("intermediate_size")?,
            max_position_embeddings: num("max_position_embeddings")?,
            type_vocab_size: j["type_vocab_size"].as_u64().unwrap_or(2).max(1) as usize,
            layer_norm_eps: j["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32,
        };
        if !cfg.hidden_size.is_multiple_of(cfg.num_heads) {
            return Err(ModelError::Config(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                cfg.hidden_size, cfg.num_heads
            )));
        }
        Ok(cfg)
    }
}

/// How token vectors become one text vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first token's (`[CLS]`) vector: bge-style.
    Cls,
    /// The mean over the text's tokens: MiniLM, e5-style.
    Mean,
}

/// sentence-transformers' settings around the encoder: pooling, normalisation, the
/// model's input limit and named prompts (query/document prefixes).
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    pub normalize: bool,
    /// `sentence_bert_config.json`'s `max_seq_length`.
    pub max_seq_length: Option<usize>,
    /// `config_sentence_transformers.json`'s `prompts` (e.g. `"query": "query: "`).
    pub prompts: BTreeMap<String, String>,
    pub default_prompt_name: Option<String>,
}

fn read_json(path: &Path) -> Result<Option<Value>, ModelError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ModelError::Config(format!("{}: not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ModelError::Config(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

impl SentenceConfig {
    /// Reads `modules.json` (a `Pooling` module's folder and whether a `Normalize`
    /// module follows), `sentence_bert_config.json` and `config_sentence_transformers.json`.
    /// A plain Hugging Face folder without them gets mean pooling, no normalisation.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let mut cfg = Self {
            pooling: Pooling::Mean,
            normalize: false,
            max_seq_length: None,
            prompts: BTreeMap::new(),
            default_prompt_name: None,
        };
        if let Some(modules) = read_json(&dir.join("modules.json"))? {
            for m in modules.as_array().into_iter().flatten() {
                let ty = m["type"].as_str().unwrap_or_default();
                if ty.ends_with(".Normalize") {
                    cfg.normalize = true;
                } else if ty.ends_with(".Pooling") {
                    let sub = m["path"].as_str().unwrap_or("1_Pooling");
                    if sub.contains("..") {
                        return Err(ModelError::Config(format!(
                            "modules.json: bad path {sub:?}"
                        )));
                    }
                    if let Some(p) = read_json(&dir.join(sub).join("config.json"))? {
                        cfg.pooling = pooling_of(&p)?;
                    }
                }
            }
        }
        if let Some(s) = read_json(&dir.join("sentence_bert_config.json"))? {
            cfg.max_seq_length = s["max_seq_length"].as_u64().map(|v| v as usize);
        }
        if let Some(s) = read_json(&dir.join("config_sentence_transformers.json"))? {
            for (k, v) in s["prompts"].as_object().into_iter().flatten() {
                if let Some(v) = v.as_str() {
                    cfg.prompts.insert(k.clone(), v.to_string());
                }
            }
            cfg.default_prompt_name = s["default_prompt_name"].as_str().map(str::to_string);
        }
        Ok(cfg)
    }

    /// The prefix for queries (`prompts.query`), if the model has one.
    pub fn query_prompt(&self) -> Option<&str> {
        self.prompts.get("query").map(String::as_str)
    }

    /// The prefix for documents (`document`, `passage` or `corpus`), else the default
    /// prompt, if any.
    pub fn document_prompt(&self) -> Option<&str> {
        ["document", "passage", "corpus"]
            .iter()
            .find_map(|k| self.prompts.get(*k))
            .or_else(|| {
                self.default_prompt_name
                    .as_ref()
                    .and_then(|n| self.prompts.get(n))
            })
            .map(String::as_str)
    }
}

fn pooling_of(p: &Value) -> Result<Pooling, ModelError> {
    let mode = p["pooling_mode"].as_str();
    let flag = |k: &str| p[k].as_bool().unwrap_or(false);
    if mode == Some("cls") || flag("pooling_mode_cls_token") {
        Ok(Pooling::Cls)
    } else if mode == Some("mean") || flag("pooling_mode_mean_tokens") {
        Ok(Pooling::Mean)
    } else {
        Err(ModelError::Config(format!(
            "pooling config {p}: only CLS and mean pooling are supported"
        )))
    }
}

/// `y = x · wᵀ + b` for a batch of rows.
struct Linear {
    w: Vec<f32>,
    b: Vec<f32>,
    n_in: usize,
    n_out: usize,
}

impl Linear {
    fn forward(&self, pool: &ThreadPool, x: &[f32], t: usize, out: &mut [f32]) {
        gemm_f32(
            pool,
            x,
            t,
            self.n_in,
            &self.w,
            self.n_out,
            Some(&self.b),
            out,
        );
    }
}

struct LayerNorm {
    w: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn forward(&self, x: &mut [f32]) {
        for row in x.chunks_mut(self.w.len()) {
            ops::layer_norm_inplace(row, &self.w, &self.b, self.eps);
        }
    }
}

struct Embeddings {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    norm: LayerNorm,
}

/// Self-attention with Q, K and V fused into one matrix, then the output projection,
/// the residual and LayerNorm (BERT is post-norm).
struct SelfAttention {
    qkv: Linear,
    out: Linear,
    norm: LayerNorm,
    heads: usize,
}

/// Up-projection, GELU, down-projection, residual, LayerNorm.
struct FeedForward {
    up: Linear,
    down: Linear,
    norm: LayerNorm,
}

struct EncoderLayer {
    attention: SelfAttention,
    feed_forward: FeedForward,
}

/// Reusable buffers for [`Encoder::forward`] (grown, never shrunk).
#[derive(Default)]
pub struct EncoderWorkspace {
    hidden: Vec<f32>,
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    proj: Vec<f32>,
    inter: Vec<f32>,
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// A BERT encoder with its weights in memory (f32).
pub struct Encoder {
    pub cfg: EncoderConfig,
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").field("cfg", &self.cfg).finish()
    }
}

/// Reads named tensors of one checkpoint, with the prefix its names carry (`bert.` …).
struct Tensors<'a> {
    file: &'a SafetensorsFile,
    prefix: &'static str,
}

impl Tensors<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let (v, got) = self.file.f32_tensor(&full)?;
        if got != shape {
            return Err(ModelError::BadShape {
                name: full,
                got: got.iter().map(|&d| d as u64).collect(),
                want: shape.iter().map(|&d| d as u64).collect(),
            });
        }
        Ok(v)
    }

    /// LayerNorm weights, under either naming (`weight`/`bias` or `gamma`/`beta`).
    fn norm(&self, name: &str, h: usize, eps: f32) -> Result<LayerNorm, ModelError> {
        let has = |s: &str| {
            self.file
                .tensors()
                .contains_key(&format!("{}{name}.{s}", self.prefix))
        };
        let (w, b) = if has("weight") {
            ("weight", "bias")
        } else {
            ("gamma", "beta")
        };
        Ok(LayerNorm {
            w: self.get(&format!("{name}.{w}"), &[h])?,
            b: self.get(&format!("{name}.{b}"), &[h])?,
            eps,
        })
    }

    fn linear(&self, name: &str, n_out: usize, n_in: usize) -> Result<Linear, ModelError> {
        Ok(Linear {
            w: self.get(&format!("{name}.weight"), &[n_out, n_in])?,
            b: self.get(&format!("{name}.bias"), &[n_out])?,
            n_in,
            n_out,
        })
    }
}

impl Encoder {
    /// Loads `config.json` and `model.safetensors` from a Hugging Face folder.
    pub fn load(dir: &Path) -> Result<Self, ModelError> {
        let cfg_json = read_json(&dir.join("config.json"))?.ok_or_else(|| {
            ModelError::Config(format!(
                "{} has no config.json: expected a Hugging Face model folder",
                dir.display()
            ))
        })?;
        let cfg = EncoderConfig::from_json(&cfg_json)?;
        let file = SafetensorsFile::open(dir.join("model.safetensors"))?;
        Self::from_safetensors(cfg, &file)
    }

    /// Builds the encoder from an open checkpoint.
    pub fn from_safetensors(
        cfg: EncoderConfig,
        file: &SafetensorsFile,
    ) -> Result<Self, ModelError> {
        let prefix = ["", "bert.", "model."]
            .into_iter()
            .find(|p| {
                file.tensors()
                    .contains_key(&format!("{p}embeddings.word_embeddings.weight"))
            })
            .ok_or_else(|| ModelError::MissingTensor("embeddings.word_embeddings.weight".into()))?;
        let t = Tensors { file, prefix };
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let embeddings = Embeddings {
            word: t.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: t.get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type: t.get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?,
            norm: t.norm("embeddings.LayerNorm", h, eps)?,
        };
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = format!("encoder.layer.{i}");
            let (q, k, v) = (
                t.linear(&format!("{p}.attention.self.query"), h, h)?,
                t.linear(&format!("{p}.attention.self.key"), h, h)?,
                t.linear(&format!("{p}.attention.self.value"), h, h)?,
            );
            let qkv = Linear {
                w: [q.w, k.w, v.w].concat(),
                b: [q.b, k.b, v.b].concat(),
                n_in: h,
                n_out: 3 * h,
            };
            layers.push(EncoderLayer {
                attention: SelfAttention {
                    qkv,
                    out: t.linear(&format!("{p}.attention.output.dense"), h, h)?,
                    norm: t.norm(&format!("{p}.attention.output.LayerNorm"), h, eps)?,
                    heads: cfg.num_heads,
                },
                feed_forward: FeedForward {
                    up: t.linear(&format!("{p}.intermediate.dense"), cfg.intermediate_size, h)?,
                    down: t.linear(&format!("{p}.output.dense"), h, cfg.intermediate_size)?,
                    norm: t.norm(&format!("{p}.output.LayerNorm"), h, eps)?,
                },
            });
        }
        Ok(Self {
            cfg,
            embeddings,
            layers,
        })
    }

    /// The last layer's hidden states of a batch of texts, their tokens packed one after
    /// another (`Σ len × hidden_size`). Each text must be 1..=`max_position_embeddings`
    /// ids below the vocabulary size.
    pub fn forward<'w>(
        &self,
        pool: &ThreadPool,
        seqs: &[&[u32]],
        ws: &'w mut EncoderWorkspace,
    ) -> Result<&'w [f32], ModelError> {
        let h = self.cfg.hidden_size;
        let mut ranges = Vec::with_capacity(seqs.len());
        let mut t = 0;
        for s in seqs {
            if s.is_empty() || s.len() > self.cfg.max_position_embeddings {
                return Err(ModelError::BadBatch(format!(
                    "a text has {} tokens; this encoder takes 1 to {}",
                    s.len(),
                    self.cfg.max_position_embeddings
                )));
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
                return Err(ModelError::BadToken {
                    id,
                    vocab: self.cfg.vocab_size,
                });
            }
            ranges.push(t..t + s.len());
            t += s.len();
        }
        let hidden = grow(&mut ws.hidden, t * h);
        self.embeddings.forward(seqs, hidden);
        let hidden = &mut ws.hidden[..t * h];
        for layer in &self.layers {
            layer.attention.forward(
                pool,
                hidden,
                &ranges,
                &mut ws.qkv,
                &mut ws.ctx,
                &mut ws.proj,
            );
            layer
                .feed_forward
                .forward(pool, hidden, t, &mut ws.inter, &mut ws.proj);
        }
        Ok(&ws.hidden[..t * h])
    }

    /// One vector per text: [`Encoder::forward`], then `pooling`, then (when
    /// `normalize`) scaling to unit length. `out` gets `seqs.len() × hidden_size` values.
    pub fn embed(
        &self,
        pool: &ThreadPool,
        seqs: &[&[u32]],
        pooling: Pooling,
        normalize: bool,
        ws: &mut EncoderWorkspace,
        out: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let h = self.cfg.hidden_size;
        let hidden = self.forward(pool, seqs, ws)?;
        out.clear();
        out.resize(seqs.len() * h, 0.0);
        let mut t0 = 0;
        for (s, v) in seqs.iter().zip(out.chunks_mut(h)) {
            let rows = &hidden[t0 * h..(t0 + s.len()) * h];
            match pooling {
                Pooling::Cls => v.copy_from_slice(&rows[..h]),
                Pooling::Mean => {
                    for row in rows.chunks(h) {
                        for (a, &x) in v.iter_mut().zip(row) {
                            *a += x;
                        }
                    }
                    let inv = 1.0 / s.len() as f32;
                    v.iter_mut().for_each(|a| *a *= inv);
                }
            }
            if normalize {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
            }
            t0 += s.len();
        }
        Ok(())
    }
}

impl Embeddings {
    /// word + position + token type (0) embeddings, then LayerNorm.
    fn forward(&self, seqs: &[&[u32]], out: &mut [f32]) {
        let h = self.norm.w.len();
        let mut rows = out.chunks_mut(h);
        for s in seqs {
            for (pos, &id) in s.iter().enumerate() {
                let row = rows.next().expect("sized by the caller");
                let w = &self.word[id as usize * h..][..h];
                let p = &self.position[pos * h..][..h];
                for i in 0..h {
                    row[i] = w[i] + p[i] + self.token_type[i];
                }
                self.norm.forward(row);
            }
        }
    }
}

impl SelfAttention {
    fn forward(
        &self,
        pool: &ThreadPool,
        x: &mut [f32],
        seqs: &[Range<usize>],
        qkv: &mut Vec<f32>,
        ctx: &mut Vec<f32>,
        proj: &mut Vec<f32>,
    ) {
        let h = self.out.n_in;
        let t = x.len() / h;
        let qkv = grow(qkv, t * 3 * h);
        self.qkv.forward(pool, x, t, qkv);
        let ctx = grow(ctx, t * h);
        attend_within_texts(pool, qkv, seqs, self.heads, h, ctx);
        let proj = grow(proj, t * h);
        self.out.forward(pool, ctx, t, proj);
        for (a, &p) in x.iter_mut().zip(proj.iter()) {
            *a += p;
        }
        self.norm.forward(x);
    }
}

/// Scaled dot-product attention of every head, each text attending only to its own
/// tokens (the padding mask of a padded batch). `qkv` rows are `[q | k | v]`.
fn attend_within_texts(
    pool: &ThreadPool,
    qkv: &[f32],
    seqs: &[Range<usize>],
    heads: usize,
    h: usize,
    ctx: &mut [f32],
) {
    let d = h / heads;
    let scale = 1.0 / (d as f32).sqrt();
    let ctx_ptr = SendPtr(ctx.as_mut_ptr());
    let ctx_len = ctx.len();
    pool.for_each_chunk(seqs.len() * heads, 1, |a, b| {
        let mut scores = Vec::new();
        for task in a..b {
            let (r, head) = (&seqs[task / heads], task % heads);
            // SAFETY: this task alone writes columns head*d..(head+1)*d of rows r.
            let ctx = unsafe { std::slice::from_raw_parts_mut(ctx_ptr.get(), ctx_len) };
            scores.resize(r.len(), 0.0);
            for i in r.clone() {
                let q = &qkv[i * 3 * h + head * d..][..d];
                for (s, j) in scores.iter_mut().zip(r.clone()) {
                    let k = &qkv[j * 3 * h + h + head * d..][..d];
                    *s = ops::dot_f32(q, k) * scale;
                }
                ops::softmax_inplace(&mut scores);
                let out = &mut ctx[i * h + head * d..][..d];
                out.fill(0.0);
                for (&p, j) in scores.iter().zip(r.clone()) {
                    ops::axpy_f32(p, &qkv[j * 3 * h + 2 * h + head * d..][..d], out);
                }
            }
        }
    });
}

impl FeedForward {
    fn forward(
        &self,
        pool: &ThreadPool,
        x: &mut [f32],
        t: usize,
        inter: &mut Vec<f32>,
        proj: &mut Vec<f32>,
    ) {
        let inter = grow(inter, t * self.up.n_out);
        self.up.forward(pool, x, t, inter);
        let n_out = self.up.n_out;
        let ptr = SendPtr(inter.as_mut_ptr());
        pool.for_each_chunk(t, 16, |a, b| {
            // SAFETY: rows a..b belong to this chunk alone.
            let rows = unsafe {
                std::slice::from_raw_parts_mut(ptr.get().add(a * n_out), (b - a) * n_out)
            };
            ops::gelu_erf_inplace(rows);
        });
        let proj = grow(proj, t * self.down.n_out);
        self.down.forward(pool, inter, t, proj);
        for (a, &p) in x.iter_mut().zip(proj.iter()) {
            *a += p;
        }
        self.norm.forward(x);
    }
}
