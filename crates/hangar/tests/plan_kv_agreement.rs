//! `hangar plan` and the engine agree on what a token of KV costs, and on how many
//! 8 192-token sequences 1 GiB holds, for every storage type the engine has (f16,
//! Q8_0, Q4_0), on the real default model.

use hangar_models::kv::{KvFormat, KvLayout};
use hangar_models::Model;
use hangar_testkit::model_path;

#[test]
fn bytes_per_token_agree_with_hangar_plan() {
    let Some(path) = model_path() else { return };
    let model = Model::load(&path).unwrap();
    let planned = hangar_plan::shape::Model::from_gguf_path(&path).unwrap();
    let shape = planned.shape.expect("the planner reads the shape");
    for (format, dtype) in [
        (KvFormat::F16, hangar_plan::kv::KvDtype::F16),
        (KvFormat::Q8_0, hangar_plan::kv::KvDtype::Q8_0),
        (KvFormat::Q4_0, hangar_plan::kv::KvDtype::Q4_0),
    ] {
        let layout = KvLayout::for_model(&model.cfg)
            .with_format(&model.cfg, format)
            .unwrap();
        let plan = hangar_plan::kv::kv_cache(&shape, dtype, 8192, 1);
        assert_eq!(
            layout.bytes_per_token() as f64,
            plan.bytes_per_token,
            "{format:?}"
        );
    }
}

#[test]
fn concurrent_8k_sequences_in_1_gib_agree_with_hangar_plan() {
    let Some(path) = model_path() else { return };
    let planned = hangar_plan::shape::Model::from_gguf_path(&path).unwrap();
    let shape = planned.shape.expect("the planner reads the shape");
    for (format, dtype) in [
        (KvFormat::F16, hangar_plan::kv::KvDtype::F16),
        (KvFormat::Q8_0, hangar_plan::kv::KvDtype::Q8_0),
        (KvFormat::Q4_0, hangar_plan::kv::KvDtype::Q4_0),
    ] {
        let cfg = hangar_engine::EngineConfig {
            kv_format: format,
            kv_memory_bytes: 1 << 30,
            max_model_len: Some(8192),
            ..hangar_engine::EngineConfig::default()
        };
        let e =
            hangar_engine::Engine::start(hangar_engine::LoadedModel::load(&path, 1).unwrap(), cfg)
                .unwrap();
        let b = &e.info().kv_blocks;
        // An 8k sequence: 512 global blocks of 16, and its window's 33 (a 512-token
        // window straddles 33 blocks).
        let engine = (b[0] / 512).min(b[1] / 33).min(64);
        let plan = ((1u64 << 30) as f64 / hangar_plan::kv::sequence_bytes(&shape, dtype, 8192))
            .floor() as usize;
        // The engine runs at most --max-running (64) sequences; the planner counts
        // whole windows where the engine counts the block a window straddles.
        let want = plan.min(64);
        assert!(
            engine <= want && engine + (want / 20).max(1) >= want,
            "{format:?}: engine fits {engine} ({b:?}), plan {plan}"
        );
    }
}
