//! End-to-end tests of compression on the real default model (skipped when it is not
//! cached: run scripts/fetch-default-model.sh): GGUF round trip, Q8_0 requantization
//! keeps perplexity, an importance matrix beats plain rounding, pruning leaves exactly
//! the asked share of zeros and a model that still generates, multiple-choice scoring.

use hangar_compress::eval::{self, EvalModel, EvalOptions};
use hangar_compress::prune::{self, PruneMethod, PruneOptions};
use hangar_compress::quantize::{self, QuantizeOptions};
use hangar_compress::{tasks, Imatrix, SourceModel};
use hangar_formats::{GgmlType, GgufFile};
use hangar_kernels::ThreadPool;
use hangar_models::Numerics;
use hangar_testkit::{model_path, repo_file};
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The model tests share two cores; run them one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hangar-compress-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn pool() -> ThreadPool {
    ThreadPool::new(
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    )
}

fn opts(target: GgmlType) -> QuantizeOptions {
    QuantizeOptions {
        target,
        keep: vec![],
        imatrix: None,
        imatrix_file: None,
        threads: 0,
        pure: false,
        format: Default::default(),
    }
}

/// Perplexity of `model` (and KL to `base`) on the built-in text, no speed.
fn ppl(p: &ThreadPool, model: &Path, base: Option<&EvalModel>) -> eval::EvalReport {
    ppl_in(p, model, base, Numerics::Fast)
}

/// [`ppl`] with the evaluated model in `numerics` (the baseline as it was given).
fn ppl_in(
    p: &ThreadPool,
    model: &Path,
    base: Option<&EvalModel>,
    numerics: Numerics,
) -> eval::EvalReport {
    let mut m = EvalModel::load(model).unwrap();
    m.model.set_numerics(numerics);
    let o = EvalOptions {
        speed: None,
        ..Default::default()
    };
    eval::evaluate(
        p,
        &m,
        base,
        Some(eval::DEFAULT_TEXT),
        None,
        &o,
        |_, _, _| {},
    )
    .unwrap()
}

#[test]
fn gguf_round_trip_is_byte_identical() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    let out = hangar_formats::gguf_write::write_copy(&f, Vec::new()).unwrap();
    let orig = std::fs::read(&path).unwrap();
    assert_eq!(out.len(), orig.len());
    assert!(out == orig, "rewritten file differs from the original");
}

#[test]
fn q8_0_requantization_keeps_perplexity_within_one_percent() {
    let Some(path) = model_path() else { return };
    let _g = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let src = SourceModel::open(&path).unwrap();
    let out = tmp("q8.gguf");
    let r = quantize::quantize(&src, &out, &opts(GgmlType::Q8_0), &ProgressBar::hidden()).unwrap();
    assert!(r.requantized_from.iter().any(|t| t == "Q5_0"));
    // Norms untouched, every matrix Q8_0.
    let f = GgufFile::open(&out).unwrap();
    for t in f.tensors() {
        if t.n_rows() > 1 {
            assert_eq!(t.ty, GgmlType::Q8_0, "{}", t.name);
        } else {
            assert_eq!(t.ty, GgmlType::F32, "{}", t.name);
        }
    }
    assert_eq!(f.get("general.file_type").and_then(|v| v.as_i64()), Some(7));
    let p = pool();
    // Both in llama.cpp's arithmetic: the fast kernels' own rounding moves this short
    // text's perplexity by about 0.5% (K-quants packed or not), as much as half the
    // bound, and that is not the quantization's doing.
    let mut base = EvalModel::from_source(&src).unwrap();
    base.model.set_numerics(Numerics::Ggml);
    let rep = ppl_in(&p, &out, Some(&base), Numerics::Ggml);
    let (a, b) = (
        rep.model.ppl.unwrap(),
        rep.baseline.as_ref().unwrap().ppl.unwrap(),
    );
    eprintln!("Q8_0 ppl {a:.3} vs source {b:.3}; {:?}", rep.divergence);
    assert!((a - b).abs() / b < 0.01, "Q8_0 ppl {a} vs source {b}");
    let d = rep.divergence.unwrap();
    assert!(d.kl_mean < 0.02 && d.top1_agreement > 0.85, "{d:?}");
    std::fs::remove_file(out).ok();
}

#[test]
fn importance_matrix_beats_plain_rounding_at_q4_0() {
    let Some(path) = model_path() else { return };
    let _g = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let src = SourceModel::open(&path).unwrap();
    let p = pool();
    let base = EvalModel::from_source(&src).unwrap();
    let calib = std::fs::read_to_string(repo_file("tests/data/eval/calibration.txt")).unwrap();
    let tokens = base.tokenizer.encode(&calib, false, false);
    let im = Imatrix::collect(
        &base.model,
        &p,
        base.bos(),
        &tokens,
        512,
        Some(2),
        |_, _| {},
    )
    .unwrap();
    // Seven matrices a layer, and the output projection (Gemma's tied embedding).
    assert_eq!(im.entries.len(), 7 * base.model.cfg.n_layers + 1);
    let (out_sums, out_rows) = &im.entries["token_embd.weight"];
    assert_eq!(out_sums.len(), base.model.cfg.d_model);
    assert_eq!(
        *out_rows,
        2 * 512,
        "every position of both chunks feeds the output"
    );
    assert!(out_sums.iter().all(|v| v.is_finite() && *v >= 0.0));
    // Saved and loaded back unchanged.
    let im_path = tmp("imatrix.gguf");
    im.save(&im_path).unwrap();
    let back = Imatrix::load(&im_path).unwrap();
    assert_eq!(back.entries, im.entries);

    let plain = tmp("q4_0.gguf");
    let weighted = tmp("q4_0-imatrix.gguf");
    quantize::quantize(&src, &plain, &opts(GgmlType::Q4_0), &ProgressBar::hidden()).unwrap();
    let mut o = opts(GgmlType::Q4_0);
    o.imatrix = Some(back);
    let r = quantize::quantize(&src, &weighted, &o, &ProgressBar::hidden()).unwrap();
    assert!(r.imatrix_tensors >= 7 * base.model.cfg.n_layers - 18);
    let a = ppl(&p, &plain, Some(&base));
    let b = ppl(&p, &weighted, Some(&base));
    let (pa, pb) = (a.model.ppl.unwrap(), b.model.ppl.unwrap());
    let (ka, kb) = (a.divergence.unwrap().kl_mean, b.divergence.unwrap().kl_mean);
    eprintln!("Q4_0 plain ppl {pa:.3} KL {ka:.4}; with imatrix ppl {pb:.3} KL {kb:.4}");
    assert!(pb < pa * 0.95, "imatrix ppl {pb} vs plain {pa}");
    assert!(kb < ka * 0.8, "imatrix KL {kb} vs plain {ka}");
    for f in [plain, weighted, im_path] {
        std::fs::remove_file(f).ok();
    }
}

#[test]
fn pruning_to_half_leaves_half_zeros_and_the_model_still_generates() {
    let Some(path) = model_path() else { return };
    let _g = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let src = SourceModel::open(&path).unwrap();
    let out = tmp("pruned.gguf");
    let o = PruneOptions {
        method: PruneMethod::Magnitude,
        sparsity: 0.5,
        structured: None,
        include: vec![
            "blk.*.ffn_*.weight".into(),
            "blk.*.attn_output.weight".into(),
        ],
        imatrix: None,
        ty: None,
        threads: 0,
        format: Default::default(),
    };
    let r = prune::prune(&src, &out, &o, &ProgressBar::hidden()).unwrap();
    let n_layers = src.n_layers();
    assert_eq!(r.tensors.len(), 4 * n_layers);
    let f = GgufFile::open(&out).unwrap();
    for t in &r.tensors {
        assert_eq!(t.pruned * 2, t.elements, "{}", t.name);
        // Count zeros in the written file.
        let info = f.tensor(&t.name).unwrap();
        let x = hangar_compress::source::to_f32(
            &t.name,
            info.ty,
            f.tensor_data(info),
            info.row_len(),
            info.n_rows(),
        )
        .unwrap();
        let zeros = x.iter().filter(|v| **v == 0.0).count();
        assert_eq!(zeros, t.zeros_stored);
        assert!(
            zeros * 2 >= t.elements && (zeros as f64) < 0.505 * t.elements as f64,
            "{}: {zeros} zeros of {}",
            t.name,
            t.elements
        );
        if matches!(info.ty, GgmlType::Q5_0 | GgmlType::Q8_0) {
            // Exactly representable: the stored zeros are exactly the pruned half.
            assert_eq!(zeros * 2, t.elements, "{}", t.name);
        }
    }
    // It still generates (greedy, a few tokens of text).
    let lm = hangar_engine::LoadedModel::load(&out, 0).unwrap();
    let prompt = lm.tokenizer.encode("The capital of France is", true, false);
    let g = hangar_engine::generate(
        &lm,
        &prompt,
        &hangar_engine::GenerateOptions {
            max_tokens: 8,
            sampling: hangar_engine::sampler::SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        },
        |_| true,
    )
    .unwrap();
    eprintln!("pruned model says: {:?}", g.text);
    assert_eq!(g.tokens.len(), 8);
    assert!(!g.text.trim().is_empty());
    std::fs::remove_file(out).ok();
}

#[test]
fn shipped_task_file_scores_above_chance() {
    let Some(path) = model_path() else { return };
    let _g = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let t = tasks::load(&repo_file("tests/data/eval/general_knowledge.jsonl")).unwrap();
    assert!(t.len() >= 50);
    let m = EvalModel::load(&path).unwrap();
    let r = tasks::score(&pool(), &m, &t, |_, _| {}).unwrap();
    eprintln!(
        "tasks: {}/{} = {:.1}% [{:.1}, {:.1}]",
        r.correct,
        r.n,
        100.0 * r.accuracy,
        100.0 * r.ci_low,
        100.0 * r.ci_high
    );
    assert!(r.ci_low <= r.accuracy && r.accuracy <= r.ci_high);
    // Four choices: chance is 25%; the interval must clear it.
    assert!(r.ci_low > 0.25, "{r:?}");
}
