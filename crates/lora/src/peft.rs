//! PEFT's LoRA folders: `adapter_config.json` (`r`, `lora_alpha`, `target_modules`,
//! `use_rslora`, `alpha_pattern`) and `adapter_model.safetensors` with tensors named
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` (A: `rank × in`,
//! B: `out × rank`).
//!
//! Hugging Face module names map to GGUF weights (`q_proj` → `attn_q`, ...,
//! `down_proj` → `ffn_down`). For llama-architecture models llama.cpp's converter
//! permutes the rows of Q and K for its RoPE layout; the same permutation is applied
//! to B here (gemma3 and qwen are not permuted). Refused with a reason: DoRA,
//! `fan_in_fan_out`, embedding LoRA, bias and `modules_to_save` tensors.

use crate::{common_alpha, invalid, permutes_qk, LoraFileError, Result};
use hangar_compress::hf::permute_rows;
use hangar_formats::SafetensorsFile;
use hangar_models::{LoraAdapter, LoraMatrix, LoraShape, LoraTarget};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";

/// The folder and weights file `path` names (the folder, its config or its weights).
fn locate(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        return (path.to_path_buf(), path.join(WEIGHTS));
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    if path.file_name().and_then(|n| n.to_str()) == Some(CONFIG) {
        let w = dir.join(WEIGHTS);
        (dir, w)
    } else {
        (dir, path.to_path_buf())
    }
}

/// What the config says about scaling.
struct Scaling {
    alpha: f64,
    rslora: bool,
    /// Module name (or suffix) → alpha.
    alpha_pattern: Vec<(String, f64)>,
}

impl Scaling {
    fn scale(&self, module: &str, rank: usize) -> f32 {
        let alpha = self
            .alpha_pattern
            .iter()
            .find(|(k, _)| module == k || module.ends_with(&format!(".{k}")))
            .map_or(self.alpha, |(_, a)| *a);
        let r = rank.max(1) as f64;
        (if self.rslora {
            alpha / r.sqrt()
        } else {
            alpha / r
        }) as f32
    }
}

fn read_config(dir: &Path) -> Result<Scaling> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoraFileError::NotFound {
            path: path.clone(),
            msg: "no adapter found: a PEFT adapter folder needs adapter_config.json beside adapter_model.safetensors".into(),
        },
        _ => LoraFileError::Io {
            path: path.clone(),
            source: e,
        },
    })?;
    let cfg: Value =
        serde_json::from_str(&text).map_err(|e| invalid(&path, format!("not valid JSON: {e}")))?;
    let Some(cfg) = cfg.as_object() else {
        return Err(invalid(&path, "expected a JSON object"));
    };
    if let Some(t) = cfg.get("peft_type").and_then(Value::as_str) {
        if !t.eq_ignore_ascii_case("lora") {
            return Err(invalid(
                &path,
                format!("peft_type is {t:?}; only LORA adapters are supported"),
            ));
        }
    }
    let flag = |k: &str| cfg.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("use_dora") {
        return Err(invalid(&path, "use_dora is true: DoRA adapters rescale weight columns, which is not plain LoRA; merge it in PEFT (merge_and_unload) instead"));
    }
    if flag("fan_in_fan_out") {
        return Err(invalid(&path, "fan_in_fan_out is true (GPT-2 style Conv1D weights); only Linear layers of llama/gemma/qwen models are supported"));
    }
    let alpha = match cfg.get("lora_alpha") {
        Some(v) => v
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| invalid(&path, format!("lora_alpha is {v}; expected a number")))?,
        None => return Err(invalid(&path, "lora_alpha is missing")),
    };
    let mut alpha_pattern = Vec::new();
    if let Some(p) = cfg.get("alpha_pattern").and_then(Value::as_object) {
        for (k, v) in p {
            let a = v.as_f64().filter(|a| a.is_finite()).ok_or_else(|| {
                invalid(
                    &path,
                    format!("alpha_pattern[{k:?}] is {v}; expected a number"),
                )
            })?;
            alpha_pattern.push((k.clone(), a));
        }
    }
    Ok(Scaling {
        alpha,
        rslora: flag("use_rslora"),
        alpha_pattern,
    })
}

#[derive(Debug)]
/// One tensor's place: layer, target, A or B, and the module's name without the
/// `base_model.model.` prefix (for `alpha_pattern`).
struct Slot {
    layer: usize,
    target: LoraTarget,
    is_a: bool,
    module: String,
}

/// Parses `...layers.N.<self_attn|mlp>.<module>.lora_<A|B>[.<adapter>].weight`.
fn parse_name(name: &str) -> std::result::Result<Slot, String> {
    let parts: Vec<&str> = name.split('.').collect();
    let lora = parts
        .iter()
        .position(|p| *p == "lora_A" || *p == "lora_B")
        .ok_or_else(|| {
            if parts.iter().any(|p| p.starts_with("lora_embedding")) {
                format!("tensor {name:?} is an embedding LoRA; only the attention and MLP projections are supported")
            } else {
                format!("tensor {name:?} is not a LoRA A/B weight (bias and modules_to_save tensors are not applied); train with bias=\"none\" and no modules_to_save, or merge in PEFT")
            }
        })?;
    if parts.last() != Some(&"weight") {
        return Err(format!(
            "tensor {name:?} is a LoRA bias; only bias=\"none\" adapters are supported"
        ));
    }
    let is_a = parts[lora] == "lora_A";
    let module = lora
        .checked_sub(1)
        .map(|i| parts[i])
        .ok_or_else(|| format!("tensor {name:?} names no module"))?;
    let li = parts
        .iter()
        .position(|p| *p == "layers")
        .filter(|&i| i + 1 < lora)
        .ok_or_else(|| format!("tensor {name:?} is not inside a decoder layer (…layers.N…)"))?;
    let layer: usize = parts[li + 1]
        .parse()
        .map_err(|_| format!("tensor {name:?}: {:?} is not a layer number", parts[li + 1]))?;
    let target = LoraTarget::ALL
        .into_iter()
        .find(|t| t.hf_name() == module)
        .ok_or_else(|| {
            format!(
                "tensor {name:?} adapts {module:?}; supported modules: {}",
                LoraTarget::ALL.map(|t| t.hf_name()).join(", ")
            )
        })?;
    let start = if parts.len() > 2 && parts[0] == "base_model" && parts[1] == "model" {
        2
    } else {
        0
    };
    Ok(Slot {
        layer,
        target,
        is_a,
        module: parts[start..lora].join("."),
    })
}

/// Reads a PEFT adapter (`path`: the folder, its config or its safetensors file).
pub fn read(path: &Path, shape: &LoraShape) -> Result<LoraAdapter> {
    let (dir, weights) = locate(path);
    if !weights.is_file() {
        if dir.join("adapter_model.bin").is_file() {
            return Err(invalid(
                &dir,
                "only adapter_model.bin (pickle) is there; pickled weights are not loaded (they can run code) — save with safe_serialization=True",
            ));
        }
        return Err(LoraFileError::NotFound {
            path: weights,
            msg: "no adapter found: adapter_model.safetensors is missing".into(),
        });
    }
    let scaling = read_config(&dir)?;
    let st = SafetensorsFile::open(&weights)
        .map_err(|e| invalid(&weights, format!("not a readable safetensors file: {e}")))?;
    // Per slot: the A tensor's name, the B tensor's name, the module path.
    type Names = (Option<String>, Option<String>, String);
    let mut pairs: BTreeMap<(usize, LoraTarget), Names> = BTreeMap::new();
    for name in st.tensors().keys() {
        let slot = parse_name(name).map_err(|m| invalid(&weights, m))?;
        let e = pairs
            .entry((slot.layer, slot.target))
            .or_insert((None, None, slot.module));
        let place = if slot.is_a { &mut e.0 } else { &mut e.1 };
        if place.replace(name.clone()).is_some() {
            return Err(invalid(
                &weights,
                format!(
                    "layer {} {} has two lora_{} tensors (several adapters in one file?)",
                    slot.layer,
                    slot.target.hf_name(),
                    if slot.is_a { "A" } else { "B" }
                ),
            ));
        }
    }
    let mut adapter = LoraAdapter::new(shape.clone());
    for ((layer, target), (a_name, b_name, module)) in pairs {
        let (Some(a_name), Some(b_name)) = (a_name, b_name) else {
            return Err(invalid(
                &weights,
                format!("{module} has only one of lora_A and lora_B"),
            ));
        };
        let read = |n: &str| {
            st.f32_tensor(n)
                .map_err(|e| invalid(&weights, e.to_string()))
        };
        let (a, a_shape) = read(&a_name)?;
        let (mut b, b_shape) = read(&b_name)?;
        let (&[rank, cols], &[rows, rank_b]) = (a_shape.as_slice(), b_shape.as_slice()) else {
            return Err(invalid(&weights, format!("{module}: lora_A and lora_B must be matrices (got {a_shape:?} and {b_shape:?})")));
        };
        if rank != rank_b {
            return Err(invalid(
                &weights,
                format!(
                    "{module}: lora_A is {a_shape:?} and lora_B {b_shape:?}; their ranks differ"
                ),
            ));
        }
        if permutes_qk(shape.arch) {
            let heads = match target {
                LoraTarget::Q => Some(shape.n_heads),
                LoraTarget::K => Some(shape.n_kv_heads),
                _ => None,
            };
            if let Some(h) = heads {
                if rows % (2 * h.max(1)) != 0 {
                    return Err(invalid(
                        &weights,
                        format!("{module}: {rows} rows do not split into {h} heads"),
                    ));
                }
                b = permute_rows(&b, h, rank);
            }
        }
        let scale = scaling.scale(&module, rank);
        let m = LoraMatrix::new(rank, rows, cols, a, &b, scale)
            .map_err(|e| invalid(&weights, format!("{module}: {e}")))?;
        adapter
            .insert(layer, target, m)
            .map_err(|e| invalid(&weights, e.to_string()))?;
    }
    adapter.description = format!("{} (PEFT, lora_alpha {})", dir.display(), scaling.alpha);
    Ok(adapter)
}

/// Undoes [`permute_rows`] (llama.cpp's layout back to Hugging Face's).
fn unpermute_rows(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    let hd = rows / n_head.max(1);
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..half {
                let (hf, gg) = (h * hd + j * half + i, h * hd + 2 * i + j);
                out[hf * cols..(hf + 1) * cols].copy_from_slice(&w[gg * cols..(gg + 1) * cols]);
            }
        }
    }
    out
}

/// The module path of a slot in a Hugging Face decoder (`model.layers.3.self_attn.q_proj`).
fn module_name(layer: usize, t: LoraTarget) -> String {
    let block = match t {
        LoraTarget::Q | LoraTarget::K | LoraTarget::V | LoraTarget::O => "self_attn",
        _ => "mlp",
    };
    format!("model.layers.{layer}.{block}.{}", t.hf_name())
}

/// Writes `adapter` as a PEFT folder (`dir` is created). `base_model` goes into
/// `base_model_name_or_path`.
pub fn write(adapter: &LoraAdapter, dir: &Path, base_model: Option<&str>) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| LoraFileError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let shape = adapter.shape();
    let r = adapter.max_rank();
    let alpha = common_alpha(adapter);
    // Tensors (name → shape, values) in name order, as safetensors lists them.
    let mut tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    let mut rank_pattern = Map::new();
    let mut alpha_pattern = Map::new();
    let mut modules: Vec<&str> = Vec::new();
    for (layer, t, m) in adapter.matrices() {
        let name = module_name(layer, t);
        let mut b = m.b();
        if permutes_qk(shape.arch) {
            match t {
                LoraTarget::Q => b = unpermute_rows(&b, shape.n_heads, m.rank()),
                LoraTarget::K => b = unpermute_rows(&b, shape.n_kv_heads, m.rank()),
                _ => {}
            }
        }
        if m.rank() != r {
            rank_pattern.insert(name.clone(), json!(m.rank()));
        }
        let this_alpha = m.scale() * m.rank() as f32;
        if alpha.is_none() {
            alpha_pattern.insert(name.clone(), json!(this_alpha));
        }
        if !modules.contains(&t.hf_name()) {
            modules.push(t.hf_name());
        }
        let prefix = format!("base_model.model.{name}");
        tensors.insert(
            format!("{prefix}.lora_A.weight"),
            (vec![m.rank(), m.cols()], m.a().to_vec()),
        );
        tensors.insert(
            format!("{prefix}.lora_B.weight"),
            (vec![m.rows(), m.rank()], b),
        );
    }
    // alpha_pattern covers every module when scales differ; the default then only
    // matters to PEFT's own bookkeeping.
    let default_alpha = alpha.unwrap_or(r as f32);
    let config = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": r,
        "lora_alpha": default_alpha,
        "target_modules": modules,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "inference_mode": true,
    });
    // The safetensors file: header length, JSON directory, little-endian F32 data.
    let mut header = Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    let mut offset = 0usize;
    for (name, (shape, values)) in &tensors {
        let end = offset + values.len() * 4;
        header.insert(
            name.clone(),
            json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    let mut head =
        serde_json::to_vec(&Value::Object(header)).map_err(|e| invalid(dir, e.to_string()))?;
    while head.len() % 8 != 0 {
        head.push(b' ');
    }
    let weights = dir.join(WEIGHTS);
    let tmp = dir.join(format!(".{WEIGHTS}.partial"));
    {
        let f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::new(f);
        w.write_all(&(head.len() as u64).to_le_bytes())
            .map_err(io(&tmp))?;
        w.write_all(&head).map_err(io(&tmp))?;
        for (_, values) in tensors.values() {
            for v in values {
                w.write_all(&v.to_le_bytes()).map_err(io(&tmp))?;
            }
        }
        let f = w.into_inner().map_err(|e| LoraFileError::Io {
            path: tmp.clone(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &weights).map_err(io(&weights))?;
    let cfg_path = dir.join(CONFIG);
    let text = serde_json::to_string_pretty(&config).map_err(|e| invalid(dir, e.to_string()))?;
    std::fs::write(&cfg_path, text + "\n").map_err(io(&cfg_path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_peft_names() {
        let s =
            parse_name("base_model.model.model.layers.12.self_attn.q_proj.lora_A.weight").unwrap();
        assert_eq!((s.layer, s.target, s.is_a), (12, LoraTarget::Q, true));
        assert_eq!(s.module, "model.layers.12.self_attn.q_proj");
        let s = parse_name(
            "base_model.model.model.language_model.layers.0.mlp.down_proj.lora_B.default.weight",
        )
        .unwrap();
        assert_eq!((s.layer, s.target, s.is_a), (0, LoraTarget::Down, false));
        assert!(parse_name("base_model.model.lm_head.weight")
            .unwrap_err()
            .contains("modules_to_save"));
        assert!(
            parse_name("base_model.model.model.embed_tokens.lora_embedding_A")
                .unwrap_err()
                .contains("embedding")
        );
        assert!(
            parse_name("base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight")
                .unwrap_err()
                .contains("supported modules")
        );
        assert!(
            parse_name("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias")
                .unwrap_err()
                .contains("bias")
        );
    }

    #[test]
    fn unpermute_inverts_the_llama_permutation() {
        let w: Vec<f32> = (0..16 * 3).map(|v| v as f32).collect();
        for heads in [1, 2, 4] {
            assert_eq!(unpermute_rows(&permute_rows(&w, heads, 3), heads, 3), w);
        }
    }

    #[test]
    fn scaling_follows_alpha_pattern_and_rslora() {
        let s = Scaling {
            alpha: 16.0,
            rslora: false,
            alpha_pattern: vec![("q_proj".into(), 32.0)],
        };
        assert_eq!(s.scale("model.layers.0.self_attn.q_proj", 8), 4.0);
        assert_eq!(s.scale("model.layers.0.self_attn.v_proj", 8), 2.0);
        let s = Scaling {
            alpha: 16.0,
            rslora: true,
            alpha_pattern: Vec::new(),
        };
        assert_eq!(s.scale("x", 16), 4.0);
    }
}
