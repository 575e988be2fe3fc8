//! Files written by Hangar load in llama.cpp and continue text the same way: the
//! default model requantized to Q8_0 gives the same greedy tokens in llama.cpp
//! (through llama-cpp-python) as in Hangar. Needs `HANGAR_LLAMA_PYTHON` naming a
//! python with `llama_cpp` (scripts/install-llamacpp.sh prints one); see hangar-testkit.

use hangar_compress::quantize::{self, QuantizeOptions};
use hangar_compress::SourceModel;
use hangar_engine::sampler::SamplingParams;
use hangar_engine::{generate, GenerateOptions, LoadedModel};
use hangar_formats::GgmlType;
use std::path::Path;

const N: usize = 16;

fn last_logits(lm: &LoadedModel, ids: &[u32]) -> Vec<f32> {
    use hangar_models::{KvCache, LogitsWanted, SeqInput, Workspace};
    let mut kv = KvCache::for_single_sequence(&lm.model.cfg, 16, ids.len() + 1);
    let table: Vec<u32> = (0..(ids.len() + 1).div_ceil(16) as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let seq = SeqInput {
        tokens: ids,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::Last,
    };
    let mut logits = Vec::new();
    lm.model
        .forward(
            &lm.pool,
            &[seq],
            &mut kv,
            &mut Workspace::default(),
            &mut logits,
        )
        .unwrap();
    logits
}

#[test]
fn q8_0_written_by_hangar_generates_the_same_greedy_text_in_llama_cpp() {
    let Some(py) = hangar_testkit::llama_python() else {
        return;
    };
    let Some(model) = hangar_testkit::model_path() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("hangar-llamacpp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("q8_0.gguf");
    let src = SourceModel::open(&model).unwrap();
    let o = QuantizeOptions {
        target: GgmlType::Q8_0,
        keep: vec![],
        imatrix: None,
        imatrix_file: None,
        threads: 0,
        pure: false,
        format: Default::default(),
    };
    quantize::quantize(&src, &out, &o, &indicatif::ProgressBar::hidden()).unwrap();

    let lm = LoadedModel::load(&out, 0).unwrap();
    let prompts_txt = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/reference/prompts.txt"),
    )
    .unwrap();
    let prompts: Vec<Vec<u32>> = prompts_txt
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| lm.tokenizer.encode(l, true, false))
        .collect();
    let ours: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let opts = GenerateOptions {
                max_tokens: N,
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            };
            generate(&lm, p, &opts, |_| true).unwrap().tokens
        })
        .collect();
    let pj = dir.join("prompts.json");
    std::fs::write(&pj, serde_json::to_string(&prompts).unwrap()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/llama_greedy.py");
    let res = std::process::Command::new(py)
        .arg(&script)
        .arg(&out)
        .arg(&pj)
        .arg(N.to_string())
        .output()
        .expect("running llama-cpp-python");
    assert!(
        res.status.success(),
        "llama.cpp failed to load or run the file: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let theirs: Vec<Vec<u32>> = serde_json::from_slice(&res.stdout).unwrap();
    let mut same = 0;
    for ((p, a), b) in prompts.iter().zip(&ours).zip(&theirs) {
        let text = |ids: &[u32]| lm.tokenizer.decode(ids, false);
        eprintln!(
            "{:?}\n  hangar:    {:?}\n  llama.cpp: {:?}",
            text(&p[1..]),
            text(a),
            text(b)
        );
        same += (a == b) as usize;
        // Where they part, the two candidates must be a near tie in Hangar's logits
        // (quantized arithmetic differs slightly between implementations).
        if let Some(k) = a.iter().zip(b).position(|(x, y)| x != y) {
            let mut ctx = p.clone();
            ctx.extend_from_slice(&a[..k]);
            let l = last_logits(&lm, &ctx);
            let gap = l[a[k] as usize] - l[b[k] as usize];
            eprintln!("  diverge at {k}: logit gap {gap:.3}");
            assert!(
                gap < 0.5,
                "not a near tie at token {k} for {:?}: gap {gap}",
                text(p)
            );
        }
    }
    assert!(
        same * 2 > prompts.len(),
        "only {same} of {} greedy continuations are identical",
        prompts.len()
    );
    std::fs::remove_dir_all(&dir).ok();
}
