//! A tiny synthetic Llama checkpoint in the Hugging Face layout (safetensors,
//! config.json, a byte-level BPE tokenizer.json), shared by the safetensors tests.
#![allow(dead_code)]

use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;

/// GPT-2's printable stand-ins for the 256 byte values.
pub fn byte_tokens() -> Vec<String> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec![String::new(); 256];
    for (b, c) in bs.iter().zip(&cs) {
        out[*b as usize] = char::from_u32(*c).unwrap().to_string();
    }
    out
}

pub fn write_checkpoint(dir: &std::path::Path) {
    let (d, ff, layers, heads, kv, vocab) = (64usize, 128usize, 2usize, 4usize, 2usize, 257usize);
    let hd = d / heads;
    let mut seed = 5u64;
    let mut rnd = |n: usize, scale: f32| -> Vec<u8> {
        (0..n)
            .flat_map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((seed >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
                half::f16::from_f32(u * scale).to_le_bytes()
            })
            .collect()
    };
    let ones = |n: usize| -> Vec<u8> { (0..n).flat_map(|_| 1f32.to_le_bytes()).collect() };
    let mut t: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    t.insert(
        "model.embed_tokens.weight".into(),
        (Dtype::F16, vec![vocab, d], rnd(vocab * d, 1.0)),
    );
    t.insert("model.norm.weight".into(), (Dtype::F32, vec![d], ones(d)));
    t.insert(
        "lm_head.weight".into(),
        (Dtype::F16, vec![vocab, d], rnd(vocab * d, 0.5)),
    );
    for l in 0..layers {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        let mut m = |name: &str, rows: usize, cols: usize| {
            t.insert(
                p(name),
                (Dtype::F16, vec![rows, cols], rnd(rows * cols, 0.4)),
            );
        };
        m("self_attn.q_proj", heads * hd, d);
        m("self_attn.k_proj", kv * hd, d);
        m("self_attn.v_proj", kv * hd, d);
        m("self_attn.o_proj", d, heads * hd);
        m("mlp.gate_proj", ff, d);
        m("mlp.up_proj", ff, d);
        m("mlp.down_proj", d, ff);
        t.insert(p("input_layernorm"), (Dtype::F32, vec![d], ones(d)));
        t.insert(
            p("post_attention_layernorm"),
            (Dtype::F32, vec![d], ones(d)),
        );
    }
    let views: Vec<(String, TensorView)> = t
        .iter()
        .map(|(k, (dt, shape, data))| {
            (
                k.clone(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let cfg = serde_json::json!({
        "model_type": "llama", "hidden_size": d, "intermediate_size": ff,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "bos_token_id": 256, "eos_token_id": 256, "vocab_size": vocab
    });
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let vocab_map: serde_json::Map<String, serde_json::Value> = byte_tokens()
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, serde_json::json!(i)))
        .collect();
    let tok = serde_json::json!({
        "model": {"type": "BPE", "vocab": vocab_map, "merges": []},
        "added_tokens": [{"id": 256, "content": "<s>", "special": true}]
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
}
