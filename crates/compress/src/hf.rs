//! safetensors checkpoints in the Hugging Face layout (`config.json`, and optionally a
//! byte-level BPE `tokenizer.json` or a SentencePiece `tokenizer.model`, with
//! `tokenizer_config.json`, beside the weights) converted to GGUF names, metadata and
//! tensor layout for the llama/mistral, qwen2/qwen3 and gemma3 families.
//!
//! Owns the name map and the conversions llama.cpp's converter makes (Q/K row
//! permutation for llama-style rope, Gemma's `1 + w` norms); nothing else.

use crate::error::{CompressError, Result};
use crate::source::SourceModel;
use crate::spm::{piece_type, SpmModel};
use hangar_formats::gguf::MetaArray;
use hangar_formats::{GgmlType, GgufHeader, MetaValue};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Opens `path` (a `.safetensors` file, or a folder of them) with its `config.json`.
pub fn open_safetensors(path: &Path) -> Result<SourceModel> {
    let (dir, files): (PathBuf, Vec<PathBuf>) = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(CompressError::io(path))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
            .collect();
        v.sort();
        (path.to_path_buf(), v)
    } else {
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            vec![path.to_path_buf()],
        )
    };
    if files.is_empty() {
        return Err(CompressError::bad(path, "no .safetensors files"));
    }
    let cfg_path = dir.join("config.json");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(|e| {
        CompressError::bad(
            path,
            format!("not GGUF, and no config.json beside it to read it as safetensors ({e})"),
        )
    })?)
    .map_err(|e| CompressError::bad(&cfg_path, e.to_string()))?;
    let cfg = cfg.get("text_config").cloned().unwrap_or(cfg);
    let model_type = cfg["model_type"].as_str().unwrap_or("");
    let arch = match model_type {
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        "gemma3" | "gemma3_text" => "gemma3",
        t => {
            return Err(CompressError::bad(
                &cfg_path,
                format!("model_type {t:?} is not supported (llama, mistral, qwen2, qwen3, gemma3)"),
            ))
        }
    };
    let num = |k: &str| cfg.get(k).and_then(|v| v.as_u64());
    let need =
        |k: &str| num(k).ok_or_else(|| CompressError::bad(&cfg_path, format!("{k} is missing")));
    let n_layers = need("num_hidden_layers")?;
    let d = need("hidden_size")?;
    let n_head = need("num_attention_heads")?;
    let n_kv = num("num_key_value_heads").unwrap_or(n_head);
    let head_dim = num("head_dim").unwrap_or(d / n_head.max(1));

    let mut h = GgufHeader::new();
    let s = |v: &str| MetaValue::String(v.to_string());
    let u = |v: u64| MetaValue::U32(v as u32);
    h.set("general.architecture", s(arch));
    h.set(
        "general.name",
        s(dir.file_name().and_then(|n| n.to_str()).unwrap_or("model")),
    );
    h.set("general.file_type", u(1));
    let k = |x: &str| format!("{arch}.{x}");
    h.set(&k("block_count"), u(n_layers));
    h.set(
        &k("context_length"),
        u(num("max_position_embeddings").unwrap_or(4096)),
    );
    h.set(&k("embedding_length"), u(d));
    h.set(&k("feed_forward_length"), u(need("intermediate_size")?));
    h.set(&k("attention.head_count"), u(n_head));
    h.set(&k("attention.head_count_kv"), u(n_kv));
    h.set(&k("attention.key_length"), u(head_dim));
    h.set(&k("attention.value_length"), u(head_dim));
    let eps = cfg["rms_norm_eps"].as_f64().unwrap_or(1e-6) as f32;
    h.set(&k("attention.layer_norm_rms_epsilon"), MetaValue::F32(eps));
    let theta = cfg["rope_theta"].as_f64().unwrap_or(10_000.0) as f32;
    h.set(&k("rope.freq_base"), MetaValue::F32(theta));
    if let Some(w) = num("sliding_window") {
        if arch == "gemma3" || cfg["use_sliding_window"].as_bool().unwrap_or(false) {
            h.set(&k("attention.sliding_window"), u(w));
        }
    }
    if let Some(c) = cfg["final_logit_softcapping"].as_f64() {
        h.set(&k("final_logit_softcapping"), MetaValue::F32(c as f32));
    }
    let bos = num("bos_token_id");
    let eos = cfg["eos_token_id"]
        .as_u64()
        .or_else(|| cfg["eos_token_id"].get(0).and_then(|v| v.as_u64()));
    let pad = num("pad_token_id");
    tokenizer_metadata(&dir, arch, [bos, eos, pad], &mut h)?;

    let mut tensors = Vec::new();
    let mut size = 0u64;
    for file in &files {
        let bytes = std::fs::read(file).map_err(CompressError::io(file))?;
        size += bytes.len() as u64;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| CompressError::bad(file, e.to_string()))?;
        let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
        names.sort();
        for name in names {
            let Some(gname) = gguf_name(&name, arch) else {
                continue;
            };
            let view = st
                .tensor(&name)
                .map_err(|e| CompressError::bad(file, e.to_string()))?;
            let shape: Vec<u64> = view.shape().iter().map(|&x| x as u64).collect();
            let mut vals = to_f32(view.dtype(), view.data()).ok_or_else(|| {
                CompressError::bad(
                    file,
                    format!("{name}: dtype {:?} is not F32/F16/BF16", view.dtype()),
                )
            })?;
            if arch == "gemma3" && gname.ends_with("norm.weight") {
                for v in &mut vals {
                    *v += 1.0;
                }
            }
            if arch == "llama" && shape.len() == 2 {
                if gname.ends_with("attn_q.weight") {
                    vals = permute_rows(&vals, n_head as usize, shape[1] as usize);
                } else if gname.ends_with("attn_k.weight") {
                    vals = permute_rows(&vals, n_kv as usize, shape[1] as usize);
                }
            }
            let dims: Vec<u64> = shape.iter().rev().copied().collect();
            let (ty, data) = if dims.len() == 1 || view.dtype() == Dtype::F32 {
                (
                    GgmlType::F32,
                    vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            } else if view.dtype() == Dtype::BF16 {
                (
                    GgmlType::BF16,
                    vals.iter()
                        .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                        .collect(),
                )
            } else {
                (
                    GgmlType::F16,
                    vals.iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                        .collect(),
                )
            };
            tensors.push((gname, dims, ty, data));
        }
    }
    if tensors.is_empty() {
        return Err(CompressError::bad(path, "no tensors with known names"));
    }
    Ok(SourceModel::from_parts(path, h, tensors, size))
}

fn to_f32(dt: Dtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dt {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// Hugging Face → GGUF tensor name (`None`: not part of the model, e.g. rotary caches).
pub fn gguf_name(hf: &str, arch: &str) -> Option<String> {
    let hf = hf.strip_prefix("language_model.").unwrap_or(hf);
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (stem, suffix) = rest.rsplit_once('.')?;
    let g = match stem {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if arch == "gemma3" => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// llama.cpp's Q/K permutation for llama-style (interleaved) rope: within each head,
/// row `j·half + i` moves to `2i + j`.
pub fn permute_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / n_head.max(1);
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let src = h * hd + j * half + i;
                let dst = h * hd + 2 * i + j;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// GGUF tokenizer keys from the tokenizer files beside the weights: a byte-level BPE
/// `tokenizer.json` (GPT-2 style: Llama 3, Qwen), else a SentencePiece
/// `tokenizer.model` (Llama 2, Gemma), plus `tokenizer_config.json`'s BOS/EOS switches
/// and chat template. Other tokenizers are left out: the model quantizes, but
/// evaluation needs a GGUF tokenizer and says so. `ids`: BOS, EOS, padding from
/// `config.json`.
fn tokenizer_metadata(
    dir: &Path,
    arch: &str,
    ids: [Option<u64>; 3],
    h: &mut GgufHeader,
) -> Result<()> {
    let tc_path = dir.join("tokenizer_config.json");
    let tc: Value = match std::fs::read_to_string(&tc_path) {
        Ok(t) => {
            serde_json::from_str(&t).map_err(|e| CompressError::bad(&tc_path, e.to_string()))?
        }
        Err(_) => Value::Null,
    };
    let [mut bos, mut eos, mut pad] = ids;
    if !bpe_tokenizer(dir, arch, h)? {
        let p = dir.join("tokenizer.model");
        let Ok(bytes) = std::fs::read(&p) else {
            return Ok(());
        };
        let m = SpmModel::decode(&bytes).map_err(|e| CompressError::bad(&p, e))?;
        spm_tokenizer(m, &tc, h, [&mut bos, &mut eos, &mut pad]);
    }
    for (key, v) in [
        ("tokenizer.ggml.bos_token_id", bos),
        ("tokenizer.ggml.eos_token_id", eos),
        ("tokenizer.ggml.padding_token_id", pad),
    ] {
        if let Some(v) = v.and_then(|v| u32::try_from(v).ok()) {
            h.set(key, MetaValue::U32(v));
        }
    }
    for (json_key, key) in [
        ("add_bos_token", "tokenizer.ggml.add_bos_token"),
        ("add_eos_token", "tokenizer.ggml.add_eos_token"),
    ] {
        if let Some(b) = tc[json_key].as_bool() {
            h.set(key, MetaValue::Bool(b));
        }
    }
    if let Some(t) = tc["chat_template"].as_str() {
        h.set("tokenizer.chat_template", MetaValue::String(t.to_string()));
    }
    Ok(())
}

/// The `"llama"` (SentencePiece) vocabulary keys, as llama.cpp's converter writes
/// them: pieces, scores and types from `tokenizer.model`, entries of
/// `tokenizer_config.json`'s `added_tokens_decoder` marked control (special) or
/// user-defined. Missing ids are taken from the model's trainer spec.
fn spm_tokenizer(m: SpmModel, tc: &Value, h: &mut GgufHeader, ids: [&mut Option<u64>; 3]) {
    let n = m.pieces.len();
    let mut tokens = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for (t, s, ty) in m.pieces {
        tokens.push(t);
        scores.push(s);
        types.push(ty);
    }
    if let Some(added) = tc["added_tokens_decoder"].as_object() {
        for (id, d) in added {
            let (Ok(id), Some(content)) = (id.parse::<usize>(), d["content"].as_str()) else {
                continue;
            };
            if id >= n {
                continue;
            }
            types[id] = if d["special"].as_bool().unwrap_or(false) {
                piece_type::CONTROL
            } else {
                piece_type::USER_DEFINED
            };
            scores[id] = -1000.0;
            tokens[id] = content.to_string();
        }
    }
    let [bos, eos, pad] = ids;
    let from_spec = |v: i32| u64::try_from(v).ok().filter(|&v| (v as usize) < n);
    *bos = bos.or(from_spec(m.bos_id));
    *eos = eos.or(from_spec(m.eos_id));
    *pad = pad.or(from_spec(m.pad_id));
    h.set_spm_vocab(tokens, scores, types);
    h.set("tokenizer.ggml.pre", MetaValue::String("default".into()));
    if let Some(u) = from_spec(m.unk_id) {
        h.set("tokenizer.ggml.unknown_token_id", MetaValue::U32(u as u32));
    }
    h.set(
        "tokenizer.ggml.add_space_prefix",
        MetaValue::Bool(m.add_dummy_prefix),
    );
}

/// The `"gpt2"` vocabulary keys from a byte-level BPE `tokenizer.json`; `false` when
/// there is none (absent, or another kind of tokenizer).
fn bpe_tokenizer(dir: &Path, arch: &str, h: &mut GgufHeader) -> Result<bool> {
    let p = dir.join("tokenizer.json");
    let Ok(text) = std::fs::read_to_string(&p) else {
        return Ok(false);
    };
    let j: Value =
        serde_json::from_str(&text).map_err(|e| CompressError::bad(&p, e.to_string()))?;
    let model = &j["model"];
    if model["type"].as_str() != Some("BPE") || model["byte_fallback"].as_bool() == Some(true) {
        return Ok(false);
    }
    let Some(vocab) = model["vocab"].as_object() else {
        return Ok(false);
    };
    let mut n = vocab.values().filter_map(|v| v.as_u64()).max().unwrap_or(0) as usize + 1;
    let added = j["added_tokens"].as_array().cloned().unwrap_or_default();
    for a in &added {
        if let Some(id) = a["id"].as_u64() {
            n = n.max(id as usize + 1);
        }
    }
    if n > 1 << 24 {
        return Err(CompressError::bad(
            &p,
            format!("token id {} is too large", n - 1),
        ));
    }
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (t, id) in vocab {
        if let Some(id) = id.as_u64() {
            tokens[id as usize] = t.clone();
        }
    }
    for a in &added {
        if let (Some(id), Some(c)) = (a["id"].as_u64(), a["content"].as_str()) {
            tokens[id as usize] = c.to_string();
            types[id as usize] = if a["special"].as_bool().unwrap_or(false) {
                3
            } else {
                4
            };
        }
    }
    for (i, t) in tokens.iter_mut().enumerate() {
        if t.is_empty() {
            *t = format!("[PAD{i}]");
            types[i] = 5;
        }
    }
    let merges: Vec<String> = model["merges"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(p) => {
                        Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    h.set("tokenizer.ggml.model", MetaValue::String("gpt2".into()));
    let pre = match arch {
        "qwen2" | "qwen3" => "qwen2",
        _ => "llama-bpe",
    };
    h.set("tokenizer.ggml.pre", MetaValue::String(pre.into()));
    h.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(MetaArray::String(tokens)),
    );
    h.set(
        "tokenizer.ggml.token_type",
        MetaValue::Array(MetaArray::I32(types)),
    );
    h.set(
        "tokenizer.ggml.merges",
        MetaValue::Array(MetaArray::String(merges)),
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_gguf() {
        assert_eq!(
            gguf_name("model.layers.3.self_attn.q_proj.weight", "llama").unwrap(),
            "blk.3.attn_q.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight", "llama").unwrap(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.0.post_attention_layernorm.weight", "gemma3").unwrap(),
            "blk.0.post_attention_norm.weight"
        );
        assert_eq!(
            gguf_name("model.layers.1.mlp.down_proj.weight", "qwen2").unwrap(),
            "blk.1.ffn_down.weight"
        );
        assert!(gguf_name("model.rotary_emb.inv_freq", "llama").is_none());
    }

    #[test]
    fn permutation_interleaves_halves_of_each_head() {
        // 1 head of 4 rows, 1 column: rows [a0 a1 | b0 b1] -> [a0 b0 a1 b1].
        assert_eq!(
            permute_rows(&[0.0, 1.0, 2.0, 3.0], 1, 1),
            vec![0.0, 2.0, 1.0, 3.0]
        );
    }
}
