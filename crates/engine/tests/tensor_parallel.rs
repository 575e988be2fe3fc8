//! The engine loop over `TpCpuRunner` (the real default model split over CPU ranks on
//! threads): batched requests decode the whole model's greedy prefix, blocks come
//! back, the device says so, and impossible degrees are refused with the reason.

use hangar_engine::{Engine, EngineConfig, LoadedModel, TpCpuRunner};
use hangar_formats::GgufFile;
use hangar_models::{LoadOptions, Numerics};

mod common;
use common::greedy_tokens;

#[test]
fn a_tensor_parallel_engine_decodes_like_the_whole_model() {
    let Some(path) = hangar_testkit::model_path() else {
        return;
    };
    let whole = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let prompts: Vec<Vec<u32>> = [
        "The capital of France is",
        "def fibonacci(n):",
        "Water boils at",
    ]
    .iter()
    .map(|p| whole.tokenizer().encode(p, true, false))
    .collect();
    let want = greedy_tokens(&whole, &prompts, 8);
    let file = GgufFile::open(&path).unwrap();
    let opts = LoadOptions {
        numerics: Numerics::Fast,
        ..LoadOptions::default()
    };
    let runner = TpCpuRunner::new(&file, 2, 1, opts).unwrap();
    let tok = hangar_tokenizer::Tokenizer::from_gguf(&file).unwrap();
    let tp =
        Engine::start_with_runner(Box::new(runner), tok, None, EngineConfig::default()).unwrap();
    assert_eq!(tp.info().device, "cpu (tensor-parallel 2)");
    let got = greedy_tokens(&tp, &prompts, 8);
    // The first tokens agree; later ones may part at a near-tie (the row-parallel
    // sums round differently: crates/parallel/tests/sharded_forward.rs).
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g[..4], w[..4], "{got:?} vs {want:?}");
    }
    assert_eq!(tp.stats().kv_blocks_used(), 0);
    // Gemma 3 270M has 4 query heads: 8 ranks cannot split them.
    let err = TpCpuRunner::new(&file, 8, 1, opts)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("attention heads (4)"), "{err}");
    let ggml = LoadOptions {
        numerics: Numerics::Ggml,
        ..LoadOptions::default()
    };
    let err = TpCpuRunner::new(&file, 2, 1, ggml)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("fast numerics"), "{err}");
}
