//! safetensors output: a Hugging Face checkpoint folder (`model.safetensors`,
//! `config.json`, tokenizer files) that [`crate::hf`] reads back — the inverse of its
//! mapping: GGUF → Hugging Face tensor names, Gemma's `1 + w` norms back to `w`, the
//! llama-style Q/K row permutation undone, `config.json` written from GGUF metadata.
//!
//! Tokenizer: a safetensors input's own tokenizer files are copied. From a GGUF input a
//! SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`, e.g. Gemma) is written
//! as `tokenizer.model` and a byte-level BPE one (`"gpt2"`) as `tokenizer.json`, with
//! `tokenizer_config.json` beside either; nothing else of the GGUF metadata survives
//! (the report's notes say what is left out).
//!
//! Owns the layout conversion and the folder; which tensors hold what is decided by
//! the compression steps.

use crate::error::{CompressError, Result};
use crate::quantize::Planned;
use crate::source::SourceModel;
use crate::spm::{self, SpmModel};
use hangar_formats::gguf::MetaArray;
use hangar_formats::{GgmlType, GgufHeader, MetaValue};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The weights file of the folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Files copied from a safetensors input's folder when it has them.
const COPIED: [&str; 6] = [
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
];

/// Types a safetensors file can hold (ggml's block-quantized types have no dtype).
pub fn is_float(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
}

/// The type a tensor is stored in when the output is safetensors: vectors (norms,
/// biases) keep their float type; matrices get `want`, else keep a float source
/// type, else (a quantized source) are dequantized to F16.
pub fn dense_type(src: GgmlType, is_matrix: bool, want: Option<GgmlType>) -> GgmlType {
    if !is_matrix && is_float(src) {
        return src;
    }
    want.unwrap_or(if is_float(src) { src } else { GgmlType::F16 })
}

/// Checks a `--type` for safetensors output.
pub fn check_float_type(ty: GgmlType) -> Result<()> {
    if is_float(ty) {
        Ok(())
    } else {
        Err(CompressError::Invalid(format!(
            "--format safetensors stores float tensors only (F16, BF16): {ty} is a GGML block-quantized type, which needs --format gguf"
        )))
    }
}

/// GGUF → Hugging Face tensor name (the inverse of [`crate::hf::gguf_name`]).
pub fn hf_name(gguf: &str, arch: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (stem, suffix) = rest.rsplit_once('.')?;
    if !matches!(suffix, "weight" | "bias") {
        return None;
    }
    let h = match stem {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "post_attention_norm" if arch == "gemma3" => "post_attention_layernorm",
        "ffn_norm" if arch == "gemma3" => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_ffw_norm" if arch == "gemma3" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{h}.{suffix}"))
}

/// Undoes [`crate::hf::permute_rows`] on rows of `row_bytes` bytes: within each head,
/// row `2i + j` goes back to `j·half + i`.
pub fn unpermute_rows(w: &[u8], n_head: usize, row_bytes: usize) -> Option<Vec<u8>> {
    if row_bytes == 0 || n_head == 0 || !w.len().is_multiple_of(row_bytes) {
        return None;
    }
    let rows = w.len() / row_bytes;
    if !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return None;
    }
    let hd = rows / n_head;
    let half = hd / 2;
    let mut out = vec![0u8; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let src = h * hd + 2 * i + j;
                let dst = h * hd + j * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&w[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    Some(out)
}

/// What a safetensors export wrote.
#[derive(Debug, Clone, Default)]
pub struct Exported {
    /// Files written into the folder.
    pub files: Vec<String>,
    /// Size of the folder's files, bytes.
    pub bytes: u64,
    /// What was converted, copied or left out.
    pub notes: Vec<String>,
}

fn arch_supported(arch: &str) -> Result<()> {
    match arch {
        "gemma3" | "llama" | "qwen2" | "qwen3" => Ok(()),
        a => Err(CompressError::Invalid(format!(
            "--format safetensors: architecture {a:?} has no Hugging Face mapping here (gemma3, llama, qwen2, qwen3)"
        ))),
    }
}

fn meta_u64(h: &GgufHeader, key: &str) -> Option<u64> {
    h.get(key).and_then(|v| v.as_i64()).map(|v| v.max(0) as u64)
}

fn meta_f32(h: &GgufHeader, key: &str) -> Option<f32> {
    h.get(key).and_then(|v| v.as_f64()).map(|v| v as f32)
}

/// An f32 as the shortest JSON number that reads back as the same f32.
fn json_f32(v: f32) -> Value {
    v.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Checks, before any work is spent, that `plan` can be written to the folder `out`.
pub(crate) fn preflight(src: &SourceModel, out: &Path, plan: &[Planned]) -> Result<()> {
    if out
        .extension()
        .is_some_and(|e| e == "safetensors" || e == "gguf")
    {
        return Err(CompressError::Invalid(format!(
            "--format safetensors writes a Hugging Face folder (model.safetensors, config.json, tokenizer): give a directory as OUT, not {}",
            out.display()
        )));
    }
    if out.exists() && !out.is_dir() {
        return Err(CompressError::Invalid(format!(
            "{} exists and is not a directory (--format safetensors writes a folder)",
            out.display()
        )));
    }
    if out.is_dir() {
        let others: Vec<String> = std::fs::read_dir(out)
            .map_err(CompressError::io(out))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| {
                (n.ends_with(".safetensors") && n != WEIGHTS_FILE)
                    || n.ends_with(".safetensors.index.json")
            })
            .collect();
        if !others.is_empty() {
            return Err(CompressError::Invalid(format!(
                "{} already holds other weights ({}), which would be read with the new ones: choose an empty or new directory",
                out.display(),
                others.join(", ")
            )));
        }
    }
    let arch = src.arch();
    arch_supported(arch)?;
    if let (Some(rd), Some(hd)) = (
        meta_u64(src.metadata(), &format!("{arch}.rope.dimension_count")),
        meta_u64(src.metadata(), &format!("{arch}.attention.key_length")),
    ) {
        if rd != hd {
            return Err(CompressError::Invalid(format!(
                "--format safetensors: partial rotary embeddings ({rd} of {hd} dimensions) are not written to config.json here"
            )));
        }
    }
    let mut bad = Vec::new();
    for p in plan {
        if !is_float(p.ty) {
            return Err(CompressError::Invalid(format!(
                "--format safetensors stores float tensors only (F32, F16, BF16), but {} would be {} (a GGML block-quantized type: use --format gguf, or --type F16/BF16, or --keep {}=F16)",
                p.name, p.ty, p.name
            )));
        }
        if hf_name(&p.name, arch).is_none() {
            bad.push(p.name.clone());
        }
    }
    if !bad.is_empty() {
        return Err(CompressError::Invalid(format!(
            "--format safetensors: no Hugging Face name for {} (use --format gguf)",
            bad.join(", ")
        )));
    }
    Ok(())
}

fn dtype(ty: GgmlType) -> Dtype {
    match ty {
        GgmlType::F16 => Dtype::F16,
        GgmlType::BF16 => Dtype::BF16,
        _ => Dtype::F32,
    }
}

fn torch_dtype(ty: GgmlType) -> &'static str {
    match ty {
        GgmlType::F16 => "float16",
        GgmlType::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// `w - 1` for Gemma's norms, kept in the tensor's float type.
fn minus_one(ty: GgmlType, b: &[u8]) -> Vec<u8> {
    match ty {
        GgmlType::F16 => b
            .chunks_exact(2)
            .flat_map(|c| {
                half::f16::from_f32(half::f16::from_le_bytes([c[0], c[1]]).to_f32() - 1.0)
                    .to_le_bytes()
            })
            .collect(),
        GgmlType::BF16 => b
            .chunks_exact(2)
            .flat_map(|c| {
                half::bf16::from_f32(half::bf16::from_le_bytes([c[0], c[1]]).to_f32() - 1.0)
                    .to_le_bytes()
            })
            .collect(),
        _ => b
            .chunks_exact(4)
            .flat_map(|c| (f32::from_le_bytes([c[0], c[1], c[2], c[3]]) - 1.0).to_le_bytes())
            .collect(),
    }
}

/// Writes a file atomically: a temporary file beside it, synced, renamed.
fn write_atomic(path: &Path, f: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.partial"));
    f(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(CompressError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(CompressError::io(path))
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(CompressError::io(tmp))
    })
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text =
        serde_json::to_string_pretty(v).map_err(|e| CompressError::Invalid(e.to_string()))?;
    write_bytes(path, format!("{text}\n").as_bytes())
}

/// The input's folder when it is a safetensors checkpoint.
fn input_dir(src: &SourceModel) -> Option<PathBuf> {
    if src.is_gguf() {
        return None;
    }
    let p = src.path();
    Some(if p.is_dir() {
        p.to_path_buf()
    } else {
        p.parent().unwrap_or(Path::new(".")).to_path_buf()
    })
}

/// A tensor in Hugging Face form: name, dtype, shape (outermost first), bytes.
type HfTensor<'a> = (String, Dtype, Vec<usize>, Cow<'a, [u8]>);

/// Writes the planned tensors (`data[i]` holds `plan[i]`'s bytes, all float) and the
/// folder's other files into `out`.
pub(crate) fn write_checkpoint(
    src: &SourceModel,
    out: &Path,
    plan: &[Planned],
    data: Vec<Cow<'_, [u8]>>,
) -> Result<Exported> {
    preflight(src, out, plan)?;
    let arch = src.arch();
    let h = src.metadata();
    let k = |s: &str| format!("{arch}.{s}");
    let n_head = meta_u64(h, &k("attention.head_count")).unwrap_or(0) as usize;
    let n_kv = meta_u64(h, &k("attention.head_count_kv"))
        .map(|v| v as usize)
        .unwrap_or(n_head);
    std::fs::create_dir_all(out).map_err(CompressError::io(out))?;

    // Tensors in Hugging Face layout: same row-major bytes, shape outermost first.
    let mut converted: Vec<HfTensor> = Vec::new();
    for (p, bytes) in plan.iter().zip(data) {
        let name = hf_name(&p.name, arch).unwrap_or_default();
        let shape: Vec<usize> = p.dims.iter().rev().map(|&d| d as usize).collect();
        let row_bytes = p.dims.first().copied().unwrap_or(1) as usize * p.ty.type_size();
        let bytes = if arch == "gemma3" && p.name.ends_with("norm.weight") {
            Cow::Owned(minus_one(p.ty, &bytes))
        } else if arch == "llama" && p.dims.len() == 2 && p.name.ends_with("attn_q.weight") {
            Cow::Owned(unpermute_rows(&bytes, n_head, row_bytes).ok_or_else(|| {
                CompressError::Invalid(format!("{}: rows do not split into {n_head} heads", p.name))
            })?)
        } else if arch == "llama" && p.dims.len() == 2 && p.name.ends_with("attn_k.weight") {
            Cow::Owned(unpermute_rows(&bytes, n_kv, row_bytes).ok_or_else(|| {
                CompressError::Invalid(format!("{}: rows do not split into {n_kv} heads", p.name))
            })?)
        } else {
            bytes
        };
        converted.push((name, dtype(p.ty), shape, bytes));
    }
    let views = converted
        .iter()
        .map(|(n, dt, shape, b)| {
            TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| CompressError::Invalid(format!("{n}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let info: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let weights = out.join(WEIGHTS_FILE);
    write_atomic(&weights, |tmp| {
        safetensors::serialize_to_file(views, Some(info), tmp)
            .map_err(|e| CompressError::bad(tmp, e.to_string()))
    })?;
    drop(converted);

    let mut ex = Exported {
        files: vec![WEIGHTS_FILE.into()],
        ..Default::default()
    };
    // The matrices' dtype (the largest tensor's) names the checkpoint's dtype.
    let main_ty = plan
        .iter()
        .max_by_key(|p| p.dims.iter().product::<u64>())
        .map(|p| p.ty)
        .unwrap_or(GgmlType::F32);
    let tied = !plan.iter().any(|p| p.name == "output.weight");

    let in_dir = input_dir(src);
    let same_dir = |d: &Path| {
        let a = std::fs::canonicalize(d).ok();
        a.is_some() && a == std::fs::canonicalize(out).ok()
    };
    match &in_dir {
        Some(d) => {
            // The input's config, with the new dtype.
            let cfg_path = d.join("config.json");
            let text = std::fs::read_to_string(&cfg_path).map_err(CompressError::io(&cfg_path))?;
            let mut cfg: Value = serde_json::from_str(&text)
                .map_err(|e| CompressError::bad(&cfg_path, e.to_string()))?;
            if let Some(c) = cfg.as_object_mut() {
                if c.contains_key("dtype") {
                    c.insert("dtype".into(), json!(torch_dtype(main_ty)));
                }
                c.insert("torch_dtype".into(), json!(torch_dtype(main_ty)));
            }
            write_json(&out.join("config.json"), &cfg)?;
            ex.files.push("config.json".into());
            ex.notes
                .push("config.json: the input's, with torch_dtype updated".into());
            if !same_dir(d) {
                for f in COPIED {
                    let from = d.join(f);
                    if from.is_file() {
                        let b = std::fs::read(&from).map_err(CompressError::io(&from))?;
                        write_bytes(&out.join(f), &b)?;
                        ex.files.push(f.into());
                    }
                }
            }
            ex.notes.push(format!(
                "tokenizer and generation files copied from {}",
                d.display()
            ));
        }
        None => {
            let cfg = config_from_gguf(h, arch, tied, main_ty, plan)?;
            write_json(&out.join("config.json"), &cfg)?;
            ex.files.push("config.json".into());
            let prefix = format!("{arch}.");
            let unused: Vec<&str> = h
                .metadata()
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| {
                    k.strip_prefix(&prefix)
                        .is_some_and(|rest| !CONFIG_KEYS.contains(&rest))
                })
                .collect();
            if !unused.is_empty() {
                ex.notes.push(format!(
                    "GGUF keys not in config.json: {}",
                    unused.join(", ")
                ));
            }
            tokenizer_from_gguf(h, arch, out, &mut ex)?;
        }
    }
    for f in &ex.files {
        let p = out.join(f);
        ex.bytes += std::fs::metadata(&p).map_err(CompressError::io(&p))?.len();
    }
    Ok(ex)
}

/// The `{arch}.*` GGUF keys [`config_from_gguf`] carries over.
const CONFIG_KEYS: [&str; 14] = [
    "block_count",
    "context_length",
    "embedding_length",
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "attention.key_length",
    "attention.value_length",
    "attention.layer_norm_rms_epsilon",
    "rope.freq_base",
    "rope.dimension_count",
    "attention.sliding_window",
    "final_logit_softcapping",
    "vocab_size",
];

/// `config.json` from GGUF metadata: what [`crate::hf::open_safetensors`] reads back,
/// plus what transformers needs to build the same model.
fn config_from_gguf(
    h: &GgufHeader,
    arch: &str,
    tied: bool,
    ty: GgmlType,
    plan: &[Planned],
) -> Result<Value> {
    let k = |s: &str| format!("{arch}.{s}");
    let need = |s: &str| {
        meta_u64(h, &k(s)).ok_or_else(|| {
            CompressError::Invalid(format!("--format safetensors: {} is missing", k(s)))
        })
    };
    let n_layers = need("block_count")?;
    let d = need("embedding_length")?;
    let n_head = need("attention.head_count")?;
    let n_kv = meta_u64(h, &k("attention.head_count_kv")).unwrap_or(n_head);
    let head_dim = meta_u64(h, &k("attention.key_length")).unwrap_or(d / n_head.max(1));
    let vocab = plan
        .iter()
        .find(|p| p.name == "token_embd.weight")
        .and_then(|p| p.dims.get(1).copied())
        .unwrap_or(0);
    let id = |s: &str| meta_u64(h, &format!("tokenizer.ggml.{s}_token_id"));
    let mut c = Map::new();
    let (class, model_type) = match arch {
        "gemma3" => ("Gemma3ForCausalLM", "gemma3_text"),
        "qwen2" => ("Qwen2ForCausalLM", "qwen2"),
        "qwen3" => ("Qwen3ForCausalLM", "qwen3"),
        _ => ("LlamaForCausalLM", "llama"),
    };
    c.insert("architectures".into(), json!([class]));
    c.insert("model_type".into(), json!(model_type));
    c.insert("num_hidden_layers".into(), json!(n_layers));
    c.insert("hidden_size".into(), json!(d));
    c.insert(
        "intermediate_size".into(),
        json!(need("feed_forward_length")?),
    );
    c.insert("num_attention_heads".into(), json!(n_head));
    c.insert("num_key_value_heads".into(), json!(n_kv));
    c.insert("head_dim".into(), json!(head_dim));
    c.insert(
        "max_position_embeddings".into(),
        json!(meta_u64(h, &k("context_length")).unwrap_or(4096)),
    );
    c.insert(
        "rms_norm_eps".into(),
        json_f32(meta_f32(h, &k("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5)),
    );
    c.insert(
        "rope_theta".into(),
        json_f32(meta_f32(h, &k("rope.freq_base")).unwrap_or(10_000.0)),
    );
    c.insert("rope_scaling".into(), Value::Null);
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("tie_word_embeddings".into(), json!(tied));
    c.insert("torch_dtype".into(), json!(torch_dtype(ty)));
    for (key, s) in [
        ("bos_token_id", "bos"),
        ("eos_token_id", "eos"),
        ("pad_token_id", "padding"),
    ] {
        if let Some(v) = id(s) {
            c.insert(key.into(), json!(v));
        }
    }
    let window = meta_u64(h, &k("attention.sliding_window")).filter(|&w| w > 0);
    let bias = plan.iter().any(|p| p.name.ends_with("attn_q.bias"));
    match arch {
        "gemma3" => {
            c.insert("hidden_activation".into(), json!("gelu_pytorch_tanh"));
            // Hangar's and llama.cpp's rule: 1/sqrt(d/heads) for the 62-layer 27B.
            let scalar = if n_layers == 62 { d / n_head } else { head_dim };
            c.insert("query_pre_attn_scalar".into(), json!(scalar));
            c.insert("rope_local_base_freq".into(), json!(10_000.0));
            c.insert("sliding_window".into(), json!(window));
            c.insert("sliding_window_pattern".into(), json!(6));
            let types: Vec<&str> = (0..n_layers)
                .map(|i| match window {
                    Some(_) if (i + 1) % 6 != 0 => "sliding_attention",
                    _ => "full_attention",
                })
                .collect();
            c.insert("layer_types".into(), json!(types));
            c.insert(
                "final_logit_softcapping".into(),
                meta_f32(h, &k("final_logit_softcapping"))
                    .map(json_f32)
                    .unwrap_or(Value::Null),
            );
            c.insert("attn_logit_softcapping".into(), Value::Null);
        }
        _ => {
            c.insert("hidden_act".into(), json!("silu"));
            if arch == "llama" {
                c.insert("attention_bias".into(), json!(bias));
                c.insert("mlp_bias".into(), json!(false));
                c.insert("sliding_window".into(), json!(window));
            } else {
                c.insert("use_sliding_window".into(), json!(window.is_some()));
                c.insert("sliding_window".into(), json!(window));
                if arch == "qwen3" {
                    c.insert("attention_bias".into(), json!(bias));
                }
            }
        }
    }
    Ok(Value::Object(c))
}

fn tokens_of(h: &GgufHeader) -> Option<&[String]> {
    match h.get("tokenizer.ggml.tokens")?.as_array()? {
        MetaArray::String(v) => Some(v),
        _ => None,
    }
}

fn scores_of(h: &GgufHeader, n: usize) -> Vec<f32> {
    match h.get("tokenizer.ggml.scores").and_then(|v| v.as_array()) {
        Some(MetaArray::F32(v)) if v.len() >= n => v[..n].to_vec(),
        Some(MetaArray::F64(v)) if v.len() >= n => v[..n].iter().map(|&x| x as f32).collect(),
        _ => vec![0.0; n],
    }
}

fn types_of(h: &GgufHeader, n: usize) -> Vec<i32> {
    match h
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
        .and_then(|a| a.as_i64_vec())
    {
        Some(v) if v.len() >= n => v[..n].iter().map(|&t| t as i32).collect(),
        _ => vec![spm::piece_type::NORMAL; n],
    }
}

fn meta_bool(h: &GgufHeader, key: &str) -> Option<bool> {
    match h.get(key)? {
        MetaValue::Bool(b) => Some(*b),
        v => v.as_i64().map(|x| x != 0),
    }
}

/// The GGUF vocabulary as Hugging Face tokenizer files.
fn tokenizer_from_gguf(h: &GgufHeader, arch: &str, out: &Path, ex: &mut Exported) -> Result<()> {
    let model = h
        .get("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let Some(tokens) = tokens_of(h) else {
        ex.notes.push(
            "no tokenizer written: the input has no tokenizer.ggml.tokens (evaluation needs one)"
                .into(),
        );
        return Ok(());
    };
    let n = tokens.len();
    let id = |s: &str| meta_u64(h, &format!("tokenizer.ggml.{s}_token_id"));
    let text = |i: Option<u64>| {
        i.and_then(|i| tokens.get(i as usize))
            .map(|t| json!(t))
            .unwrap_or(Value::Null)
    };
    let mut tc = Map::new();
    match model {
        "llama" => {
            let types = types_of(h, n);
            let m = SpmModel {
                pieces: tokens
                    .iter()
                    .cloned()
                    .zip(scores_of(h, n))
                    .zip(types.iter().copied())
                    .map(|((t, s), ty)| (t, s, ty))
                    .collect(),
                model_type: spm::MODEL_BPE,
                byte_fallback: types.contains(&spm::piece_type::BYTE),
                unk_id: id("unknown").map(|v| v as i32).unwrap_or(0),
                bos_id: id("bos").map(|v| v as i32).unwrap_or(1),
                eos_id: id("eos").map(|v| v as i32).unwrap_or(2),
                pad_id: id("padding").map(|v| v as i32).unwrap_or(-1),
                add_dummy_prefix: meta_bool(h, "tokenizer.ggml.add_space_prefix").unwrap_or(true),
                remove_extra_whitespaces: false,
                escape_whitespaces: true,
            };
            write_bytes(&out.join("tokenizer.model"), &m.encode())?;
            ex.files.push("tokenizer.model".into());
            let class = if arch == "gemma3" {
                "GemmaTokenizer"
            } else {
                "LlamaTokenizer"
            };
            tc.insert("tokenizer_class".into(), json!(class));
            tc.insert("unk_token".into(), text(id("unknown")));
            tc.insert("pad_token".into(), text(id("padding")));
            ex.notes.push(
                "tokenizer: tokenizer.model (SentencePiece: pieces, scores, types) written from the GGUF vocabulary; no tokenizer.json (transformers converts tokenizer.model; Hangar reads it directly)".into(),
            );
        }
        "gpt2" => {
            let merges: Vec<String> =
                match h.get("tokenizer.ggml.merges").and_then(|v| v.as_array()) {
                    Some(MetaArray::String(m)) => m.clone(),
                    _ => Vec::new(),
                };
            let types = types_of(h, n);
            let pre = h
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.as_str())
                .unwrap_or("default");
            write_json(
                &out.join("tokenizer.json"),
                &bpe_tokenizer_json(tokens, &types, &merges, pre),
            )?;
            ex.files.push("tokenizer.json".into());
            tc.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
            let reread = match arch {
                "qwen2" | "qwen3" => "qwen2",
                _ => "llama-bpe",
            };
            ex.notes.push(format!(
                "tokenizer: tokenizer.json (byte-level BPE) written from the GGUF vocabulary (pre-tokenizer {pre:?}{})",
                if pre == reread {
                    String::new()
                } else {
                    format!("; reading the folder back assumes {reread:?}")
                }
            ));
        }
        m => {
            ex.notes.push(format!(
                "no tokenizer written: tokenizer.ggml.model {m:?} has no converter here (evaluation needs one)"
            ));
            return Ok(());
        }
    }
    tc.insert("bos_token".into(), text(id("bos")));
    tc.insert("eos_token".into(), text(id("eos")));
    if let Some(b) = meta_bool(h, "tokenizer.ggml.add_bos_token") {
        tc.insert("add_bos_token".into(), json!(b));
    }
    if let Some(b) = meta_bool(h, "tokenizer.ggml.add_eos_token") {
        tc.insert("add_eos_token".into(), json!(b));
    }
    if let Some(t) = h.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
        tc.insert("chat_template".into(), json!(t));
    }
    tc.insert("clean_up_tokenization_spaces".into(), json!(false));
    write_json(&out.join("tokenizer_config.json"), &Value::Object(tc))?;
    ex.files.push("tokenizer_config.json".into());
    let dropped: Vec<&str> = h
        .metadata()
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| {
            k.starts_with("tokenizer.")
                && !matches!(
                    *k,
                    "tokenizer.ggml.model"
                        | "tokenizer.ggml.tokens"
                        | "tokenizer.ggml.scores"
                        | "tokenizer.ggml.token_type"
                        | "tokenizer.ggml.merges"
                        | "tokenizer.ggml.pre"
                        | "tokenizer.ggml.bos_token_id"
                        | "tokenizer.ggml.eos_token_id"
                        | "tokenizer.ggml.unknown_token_id"
                        | "tokenizer.ggml.padding_token_id"
                        | "tokenizer.ggml.add_bos_token"
                        | "tokenizer.ggml.add_eos_token"
                        | "tokenizer.ggml.add_space_prefix"
                        | "tokenizer.chat_template"
                )
        })
        .collect();
    if !dropped.is_empty() {
        ex.notes.push(format!(
            "GGUF tokenizer keys not written: {}",
            dropped.join(", ")
        ));
    }
    Ok(())
}

/// The pre-tokenizer regexes of the byte-level vocabularies Hangar reads back.
fn pre_regex(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama-bpe" | "llama3" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        "qwen2" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        _ => return None,
    })
}

/// A Hugging Face `tokenizer.json` for a byte-level BPE vocabulary.
fn bpe_tokenizer_json(tokens: &[String], types: &[i32], merges: &[String], pre: &str) -> Value {
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        vocab.insert(t.clone(), json!(i));
        if ty == spm::piece_type::CONTROL || ty == spm::piece_type::USER_DEFINED {
            let special = ty == spm::piece_type::CONTROL;
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": !special, "special": special
            }));
        }
    }
    let pre_tokenizer = match pre_regex(pre) {
        Some(re) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}),
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hf::{gguf_name, permute_rows};

    #[test]
    fn names_invert_the_reader() {
        for arch in ["gemma3", "llama", "qwen2", "qwen3"] {
            let mut names = vec![
                "token_embd.weight".to_string(),
                "output_norm.weight".into(),
                "output.weight".into(),
            ];
            for s in [
                "attn_norm",
                "attn_q",
                "attn_k",
                "attn_v",
                "attn_output",
                "attn_q_norm",
                "attn_k_norm",
                "ffn_norm",
                "ffn_gate",
                "ffn_up",
                "ffn_down",
            ] {
                names.push(format!("blk.7.{s}.weight"));
            }
            names.push("blk.0.attn_q.bias".into());
            if arch == "gemma3" {
                names.push("blk.3.post_attention_norm.weight".into());
                names.push("blk.3.post_ffw_norm.weight".into());
            }
            for n in names {
                let h = hf_name(&n, arch).unwrap_or_else(|| panic!("{arch} {n}"));
                assert_eq!(
                    gguf_name(&h, arch).as_deref(),
                    Some(n.as_str()),
                    "{arch} {h}"
                );
            }
        }
        assert!(hf_name("rope_freqs.weight", "llama").is_none());
        assert!(hf_name("blk.0.attn_q.lr_a", "llama").is_none());
    }

    #[test]
    fn unpermute_inverts_the_reader_permutation() {
        let (heads, hd, cols) = (3usize, 8usize, 5usize);
        let w: Vec<f32> = (0..heads * hd * cols).map(|i| i as f32).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let hf = unpermute_rows(&bytes, heads, cols * 4).unwrap();
        let hf: Vec<f32> = hf
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(permute_rows(&hf, heads, cols), w);
        assert!(unpermute_rows(&bytes, 5, cols * 4).is_none());
    }

    #[test]
    fn dense_types() {
        use GgmlType::*;
        assert_eq!(dense_type(F32, false, Some(F16)), F32);
        assert_eq!(dense_type(Q4K, true, None), F16);
        assert_eq!(dense_type(BF16, true, None), BF16);
        assert_eq!(dense_type(Q8_0, true, Some(BF16)), BF16);
        assert!(check_float_type(Q4K).is_err() && check_float_type(BF16).is_ok());
    }

    #[test]
    fn json_floats_are_short_and_exact() {
        let eps = 1e-6f32;
        let v = json_f32(eps);
        assert_eq!(v.to_string(), "1e-6");
        assert_eq!(v.as_f64().unwrap() as f32, eps);
    }
}
