//! The engine loop over `PpCpuRunner` (the real default model's 18 layers in 2 and 3
//! stages of CPU threads, steps cut into micro-batches): the arithmetic of every
//! layer is unchanged, so concurrent requests decode token for token like the whole
//! model; the stages' measured idle share is reported beside the schedule's.

use hangar_engine::{Engine, EngineConfig, LoadedModel, PpCpuRunner};
use hangar_formats::GgufFile;
use hangar_models::{LoadOptions, Numerics};
use std::sync::Arc;

mod common;
use common::greedy_tokens;

#[test]
fn a_pipelined_engine_decodes_token_for_token_like_the_whole_model() {
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
        "Once upon a time,",
    ]
    .iter()
    .map(|p| whole.tokenizer().encode(p, true, false))
    .collect();
    let want = greedy_tokens(&whole, &prompts, 12);
    let opts = LoadOptions {
        numerics: Numerics::Fast,
        ..LoadOptions::default()
    };
    let file = Arc::new(GgufFile::open(&path).unwrap());
    for (stages, micro) in [(2, 2), (3, 4)] {
        let runner = PpCpuRunner::new(file.clone(), stages, micro, 1, opts).unwrap();
        let tok = hangar_tokenizer::Tokenizer::from_gguf(&file).unwrap();
        let pp = Engine::start_with_runner(Box::new(runner), tok, None, EngineConfig::default())
            .unwrap();
        assert!(pp
            .info()
            .device
            .contains(&format!("pipeline-parallel {stages}")));
        assert_eq!(greedy_tokens(&pp, &prompts, 12), want, "{stages} stages");
        assert_eq!(pp.stats().kv_blocks_used(), 0);
    }
    // More stages than layers, and llama.cpp's arithmetic, are refused.
    let err = PpCpuRunner::new(file.clone(), 19, 2, 1, opts)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("18 layers"), "{err}");
    let ggml = LoadOptions {
        numerics: Numerics::Ggml,
        ..LoadOptions::default()
    };
    let err = PpCpuRunner::new(file, 2, 2, 1, ggml)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("fast numerics"), "{err}");
}
