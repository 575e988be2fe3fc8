//! A safetensors checkpoint in the Hugging Face layout (a tiny synthetic Llama with a
//! byte-level BPE tokenizer) quantizes to a GGUF file that loads, runs and stays close
//! to its source.

use hangar_compress::eval::{self, EvalModel, EvalOptions};
use hangar_compress::quantize::{self, QuantizeOptions};
use hangar_compress::SourceModel;
use hangar_formats::{GgmlType, GgufFile};
use hangar_kernels::ThreadPool;
use std::path::PathBuf;

mod common;
use common::write_checkpoint;

#[test]
fn safetensors_llama_quantizes_to_a_runnable_gguf() {
    let dir = std::env::temp_dir().join(format!("hangar-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_checkpoint(&dir);
    let src = SourceModel::open(dir.join("model.safetensors")).unwrap();
    assert_eq!(src.arch(), "llama");
    assert_eq!(src.n_layers(), 2);
    assert_eq!(
        src.tensor("blk.1.attn_q.weight").unwrap().dims,
        vec![64, 64]
    );
    assert_eq!(src.tensor("blk.1.attn_q.weight").unwrap().ty, GgmlType::F16);
    assert_eq!(src.tensor("output_norm.weight").unwrap().ty, GgmlType::F32);

    let out: PathBuf = dir.join("q8.gguf");
    let o = QuantizeOptions {
        target: GgmlType::Q8_0,
        keep: vec![],
        imatrix: None,
        imatrix_file: None,
        threads: 1,
        pure: false,
        format: Default::default(),
    };
    let r = quantize::quantize(&src, &out, &o, &indicatif::ProgressBar::hidden()).unwrap();
    assert!(r.requantized_from.is_empty());
    let f = GgufFile::open(&out).unwrap();
    assert_eq!(
        f.tensor("blk.0.ffn_down.weight").unwrap().ty,
        GgmlType::Q8_0
    );

    let pool = ThreadPool::new(1);
    let base = EvalModel::from_source(&src).unwrap();
    let m = EvalModel::load(&out).unwrap();
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(12);
    let rep = eval::evaluate(
        &pool,
        &m,
        Some(&base),
        Some(&text),
        None,
        &EvalOptions {
            ctx: 64,
            max_windows: None,
            speed: None,
        },
        |_, _, _| {},
    )
    .unwrap();
    let d = rep.divergence.unwrap();
    assert!(rep.model.ppl.unwrap().is_finite());
    assert!(d.kl_mean < 0.01, "{d:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn sentencepiece_tokenizer_model_is_read_like_llama_cpp() {
    use hangar_compress::spm::{piece_type, SpmModel, MODEL_BPE};
    use hangar_formats::gguf::MetaArray;
    use hangar_formats::MetaValue;
    let dir = std::env::temp_dir().join(format!("hangar-st-spm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    write_checkpoint(&dir);
    // A Gemma-style folder: tokenizer.model and tokenizer_config.json, no tokenizer.json,
    // and a config.json without token ids (they come from the trainer spec).
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    let cfg_path = dir.join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    let c = cfg.as_object_mut().unwrap();
    c.remove("bos_token_id");
    c.remove("eos_token_id");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut pieces = vec![
        ("<unk>".to_string(), 0.0, piece_type::UNKNOWN),
        ("<s>".into(), 0.0, piece_type::CONTROL),
        ("</s>".into(), 0.0, piece_type::CONTROL),
    ];
    let normal = [
        "▁", "t", "h", "e", "c", "a", "▁t", "th", "he", "▁th", "the", "▁the",
    ];
    for p in normal {
        pieces.push((p.to_string(), -(pieces.len() as f32), piece_type::NORMAL));
    }
    while pieces.len() < 257 {
        pieces.push((format!("x{}", pieces.len()), -1e4, piece_type::NORMAL));
    }
    let m = SpmModel {
        pieces,
        model_type: MODEL_BPE,
        byte_fallback: false,
        unk_id: 0,
        bos_id: 1,
        eos_id: 2,
        pad_id: -1,
        add_dummy_prefix: true,
        remove_extra_whitespaces: false,
        escape_whitespaces: true,
    };
    std::fs::write(dir.join("tokenizer.model"), m.encode()).unwrap();
    let tc = serde_json::json!({
        "add_bos_token": true, "add_eos_token": false, "chat_template": "{{ messages }}",
        "added_tokens_decoder": {"256": {"content": "<start_of_turn>", "special": true}}
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();

    let src = SourceModel::open(&dir).unwrap();
    let h = src.metadata();
    let get = |k: &str| h.get(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(get("tokenizer.ggml.model").as_str(), Some("llama"));
    let Some(MetaArray::String(tokens)) = get("tokenizer.ggml.tokens").as_array() else {
        panic!("tokens")
    };
    assert_eq!(tokens.len(), 257);
    assert_eq!(tokens[256], "<start_of_turn>");
    let types = get("tokenizer.ggml.token_type")
        .as_array()
        .unwrap()
        .as_i64_vec()
        .unwrap();
    assert_eq!((types[0], types[1], types[256]), (2, 3, 3));
    let Some(MetaArray::F32(scores)) = get("tokenizer.ggml.scores").as_array() else {
        panic!("scores")
    };
    assert_eq!((scores[5], scores[256]), (-5.0, -1000.0));
    assert_eq!(get("tokenizer.ggml.bos_token_id").as_i64(), Some(1));
    assert_eq!(get("tokenizer.ggml.eos_token_id").as_i64(), Some(2));
    assert_eq!(get("tokenizer.ggml.unknown_token_id").as_i64(), Some(0));
    assert!(h.get("tokenizer.ggml.padding_token_id").is_none());
    assert_eq!(
        get("tokenizer.ggml.add_space_prefix"),
        &MetaValue::Bool(true)
    );
    assert_eq!(get("tokenizer.ggml.add_bos_token"), &MetaValue::Bool(true));
    assert_eq!(
        get("tokenizer.chat_template").as_str(),
        Some("{{ messages }}")
    );
    // The engine's tokenizer builds from it: " the" is one piece, BOS first.
    let m = EvalModel::from_source(&src).unwrap();
    let the = tokens.iter().position(|t| t == "▁the").unwrap() as u32;
    assert_eq!(m.tokenizer.encode("the", true, false), vec![1, the]);
    std::fs::remove_dir_all(&dir).ok();
}
