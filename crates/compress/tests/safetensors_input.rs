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
