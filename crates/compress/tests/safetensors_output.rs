//! `--format safetensors`: compression steps write a Hugging Face folder that Hangar
//! reads back into the same model — from a safetensors input (config and tokenizer
//! copied, llama Q/K permutation undone) and from a GGUF input (config.json and the
//! tokenizer written from metadata); float types only, clear errors otherwise.

use hangar_compress::eval::{self, EvalModel, EvalOptions};
use hangar_compress::lowrank::{self, LowrankOptions, RankRule, Store};
use hangar_compress::prune::{self, PruneMethod, PruneOptions};
use hangar_compress::quantize::{self, QuantizeOptions};
use hangar_compress::{OutFormat, SourceModel};
use hangar_formats::GgmlType;
use hangar_kernels::ThreadPool;
use indicatif::ProgressBar;
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

mod common;
use common::write_checkpoint;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hangar-st-out-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn qopts(target: GgmlType, format: OutFormat) -> QuantizeOptions {
    QuantizeOptions {
        target,
        keep: vec![],
        imatrix: None,
        imatrix_file: None,
        threads: 1,
        pure: false,
        format,
    }
}

/// KL and top-1 agreement of `a` against `b` on a byte-level text (the tiny vocabulary).
fn compare(a: &EvalModel, b: &EvalModel) -> eval::EvalReport {
    let text = "the quick brown fox jumps over the lazy dog. ".repeat(12);
    eval::evaluate(
        &ThreadPool::new(1),
        a,
        Some(b),
        Some(&text),
        None,
        &EvalOptions {
            ctx: 64,
            max_windows: None,
            speed: None,
        },
        |_, _, _| {},
    )
    .unwrap()
}

/// Every tensor of the file: name → (dtype, shape, bytes).
fn tensors(path: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn safetensors_input_round_trips_bit_exact_with_its_tokenizer() {
    let dir = scratch("hf");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    write_checkpoint(&input);
    // A folder input (not only a .safetensors file).
    let src = SourceModel::open(&input).unwrap();
    let out = dir.join("out-f16");
    let r = quantize::quantize(
        &src,
        &out,
        &qopts(GgmlType::F16, OutFormat::Safetensors),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(r.format, OutFormat::Safetensors);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    // Same tensors, names, shapes and bytes as the input: F16 matrices are copied, the
    // llama Q/K permutation the reader applies is undone, F32 norms are unchanged.
    let a = tensors(&input.join("model.safetensors"));
    let b = tensors(&out.join("model.safetensors"));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "{}", x.0);
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert_eq!(cfg["torch_dtype"], "float16");

    // Hangar loads the folder into the same model.
    let base = EvalModel::from_source(&src).unwrap();
    let back = EvalModel::load(&out).unwrap();
    let text = "tokenizer round trip: ünïcödé, digits 12345.";
    assert_eq!(
        back.tokenizer.encode(text, false, false),
        base.tokenizer.encode(text, false, false)
    );
    let rep = compare(&back, &base);
    let d = rep.divergence.unwrap();
    assert_eq!(rep.model.ppl, rep.baseline.unwrap().ppl);
    assert!(d.kl_mean < 1e-9 && d.top1_agreement == 1.0, "{d:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn gguf_input_exports_config_and_byte_level_tokenizer() {
    let dir = scratch("gguf");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    write_checkpoint(&input);
    // Through GGUF first, so that the export works from metadata alone.
    let gguf = dir.join("tiny-f16.gguf");
    let src = SourceModel::open(&input).unwrap();
    quantize::quantize(
        &src,
        &gguf,
        &qopts(GgmlType::F16, OutFormat::Gguf),
        &ProgressBar::hidden(),
    )
    .unwrap();
    let g = SourceModel::open(&gguf).unwrap();
    assert!(g.is_gguf());
    let out = dir.join("from-gguf");
    let r = quantize::quantize(
        &g,
        &out,
        &qopts(GgmlType::F16, OutFormat::Safetensors),
        &ProgressBar::hidden(),
    )
    .unwrap();
    assert!(
        r.notes.iter().any(|n| n.contains("tokenizer.json")),
        "{:?}",
        r.notes
    );
    let tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer.json")).unwrap())
            .unwrap();
    assert_eq!(tok["model"]["type"], "BPE");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 2);
    assert_eq!(cfg["num_key_value_heads"], 2);
    assert_eq!(cfg["tie_word_embeddings"], false);
    assert_eq!(cfg["bos_token_id"], 256);
    // The tensors are the original checkpoint's, bit for bit.
    let a = tensors(&input.join("model.safetensors"));
    let b = tensors(&out.join("model.safetensors"));
    assert_eq!(a, b);
    let base = EvalModel::load(&gguf).unwrap();
    let back = EvalModel::load(&out).unwrap();
    let text = "byte-level: ünïcödé 12345";
    assert_eq!(
        back.tokenizer.encode(text, true, false),
        base.tokenizer.encode(text, true, false)
    );
    let d = compare(&back, &base).divergence.unwrap();
    assert!(d.kl_mean < 1e-9 && d.top1_agreement == 1.0, "{d:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn pruned_safetensors_store_exact_zeros_and_lowrank_multiplies_back() {
    let dir = scratch("prune");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    write_checkpoint(&input);
    let src = SourceModel::open(&input).unwrap();
    let out = dir.join("pruned");
    let o = PruneOptions {
        method: PruneMethod::Magnitude,
        sparsity: 0.5,
        structured: None,
        include: vec!["blk.*.ffn_*.weight".into()],
        imatrix: None,
        ty: Some(GgmlType::BF16),
        threads: 1,
        format: OutFormat::Safetensors,
    };
    let r = prune::prune(&src, &out, &o, &ProgressBar::hidden()).unwrap();
    assert_eq!(r.tensors.len(), 6);
    for (name, dt, shape, data) in tensors(&out.join("model.safetensors")) {
        if shape.len() == 1 {
            assert_eq!(dt, Dtype::F32, "{name}: norms stay F32");
            continue;
        }
        // --type BF16 applies to every matrix.
        assert_eq!(dt, Dtype::BF16, "{name}");
        let zeros = data
            .chunks_exact(2)
            .filter(|c| c[0] == 0 && c[1] & 0x7f == 0)
            .count();
        let n = data.len() / 2;
        if name.contains(".mlp.") {
            assert_eq!(zeros * 2, n, "{name}: {zeros} zeros of {n}");
        } else {
            assert!(zeros * 100 < n, "{name}: {zeros} zeros of {n}");
        }
    }
    assert!(EvalModel::load(&out).is_ok());

    let out = dir.join("lowrank");
    let o = LowrankOptions {
        rank: RankRule::Fixed(8),
        include: vec!["blk.0.ffn_up.weight".into()],
        store: Store::Multiplied,
        ty: None,
        threads: 1,
        format: OutFormat::Safetensors,
    };
    lowrank::lowrank(&src, &out, &o, &ProgressBar::hidden()).unwrap();
    let back = SourceModel::open(&out).unwrap();
    let t = back.tensor("blk.0.ffn_up.weight").unwrap();
    assert_eq!(t.ty, GgmlType::F16);
    assert!(back.tensor("blk.1.ffn_up.weight").unwrap().ty == GgmlType::F16);
    std::fs::remove_dir_all(&dir).ok();
}

fn err<T>(r: Result<T, hangar_compress::CompressError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn impossible_safetensors_outputs_are_clear_errors() {
    let dir = scratch("errors");
    let input = dir.join("in");
    std::fs::create_dir_all(&input).unwrap();
    write_checkpoint(&input);
    let src = SourceModel::open(&input).unwrap();
    let bar = ProgressBar::hidden();

    let e = err(quantize::quantize(
        &src,
        &dir.join("q4k"),
        &qopts(GgmlType::Q4K, OutFormat::Safetensors),
        &bar,
    ));
    assert!(
        e.contains("float tensors only") && e.contains("--format gguf"),
        "{e}"
    );
    assert!(!dir.join("q4k").exists(), "nothing written");

    let e = err(quantize::quantize(
        &src,
        &dir.join("out.safetensors"),
        &qopts(GgmlType::F16, OutFormat::Safetensors),
        &bar,
    ));
    assert!(e.contains("give a directory"), "{e}");

    // --keep of a quantized type cannot be stored.
    let mut o = qopts(GgmlType::F16, OutFormat::Safetensors);
    o.keep = vec!["blk.0.ffn_up.weight=Q8_0".parse().unwrap()];
    let e = err(quantize::quantize(&src, &dir.join("keep"), &o, &bar));
    assert!(
        e.contains("blk.0.ffn_up.weight") && e.contains("Q8_0"),
        "{e}"
    );

    // A folder that already holds other weights is refused.
    let busy = dir.join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("model-00001-of-00002.safetensors"), b"x").unwrap();
    let e = err(quantize::quantize(
        &src,
        &busy,
        &qopts(GgmlType::F16, OutFormat::Safetensors),
        &bar,
    ));
    assert!(e.contains("already holds other weights"), "{e}");

    let o = LowrankOptions {
        rank: RankRule::Fixed(8),
        include: vec!["blk.0.ffn_up.weight".into()],
        store: Store::Factors,
        ty: None,
        threads: 1,
        format: OutFormat::Safetensors,
    };
    let e = err(lowrank::lowrank(&src, &dir.join("lr"), &o, &bar));
    assert!(e.contains("--store multiplied"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
