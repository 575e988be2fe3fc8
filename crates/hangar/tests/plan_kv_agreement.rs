//! `hangar plan` and the engine agree on what a token of KV costs, for every storage
//! type the engine has (f16, Q8_0, Q4_0), on the real default model.

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
