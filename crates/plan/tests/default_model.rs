//! File-derived numbers against the default model's real tensors (Gemma 3 270M,
//! Q4_K_M GGUF, fetched by scripts/fetch-default-model.sh; located by hangar-testkit).

use hangar_formats::GgufFile;
use hangar_plan::kv::{kv_cache, KvDtype};
use hangar_plan::presets::by_name;
use hangar_plan::shape::ModelSource;
use hangar_plan::weights::{model_bytes, tensor_bytes, WeightFormat};
use hangar_plan::{plan, HostMemory, Model, ModelSpec, PlanOptions};
use hangar_testkit::model_path;

#[test]
fn shape_is_read_from_metadata_and_matches_the_preset() {
    let Some(model) = model_path() else { return };
    let m = Model::from_gguf_path(&model).unwrap();
    let s = m.shape.clone().unwrap();
    let p = by_name("gemma3-270m").unwrap().shape;
    assert_eq!(s.arch, "gemma3");
    assert_eq!(
        (s.n_layers, s.d_model, s.d_ff),
        (p.n_layers, p.d_model, p.d_ff)
    );
    assert_eq!(
        (s.n_heads, s.n_kv_heads, s.key_len, s.value_len),
        (4, 1, 256, 256)
    );
    assert_eq!(s.sliding_window, Some(512));
    assert_eq!(s.n_local_layers, 15);
    assert_eq!(s.local, p.local);
    assert_eq!(s.vocab, 262144);
    assert!(s.tied_embeddings && s.qk_norm && s.post_norms);
    // The preset generates the same parameter count as the file holds.
    let preset = Model::from_shape("p", p, ModelSource::ParamCount).unwrap();
    assert_eq!(preset.n_params, m.n_params);
}

#[test]
fn stored_bytes_are_the_sum_of_the_real_tensor_sizes() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    let m = Model::from_gguf_path(&path).unwrap();
    let real: u64 = f.tensors().iter().map(|t| t.size).sum();
    let from_blocks: u64 = f
        .tensors()
        .iter()
        .map(|t| t.ty.bytes_for(t.n_elements()).unwrap())
        .sum();
    assert_eq!(m.stored_bytes(), Some(real));
    assert_eq!(real, from_blocks);
    assert!(real <= f.bytes().len() as u64 - f.data_offset());
    assert_eq!(
        m.n_params,
        f.tensors().iter().map(|t| t.n_elements()).sum::<u64>()
    );
}

#[test]
fn converting_a_tensor_to_its_own_type_gives_its_stored_size() {
    let Some(model) = model_path() else { return };
    let m = Model::from_gguf_path(&model).unwrap();
    let mut checked = 0;
    for t in &m.tensors {
        let ty = t.stored.unwrap();
        let Ok(fmt) = WeightFormat::parse(ty.name()) else {
            continue;
        };
        if !t.is_matrix() || fmt.ggml() != Some(ty) {
            continue;
        }
        assert_eq!(
            tensor_bytes(t, fmt),
            t.stored_bytes.unwrap(),
            "{} ({ty})",
            t.name
        );
        checked += 1;
    }
    // Gemma 3 270M's 640-wide rows do not fit 256-blocks: most of its matrices are
    // Q5_0/Q8_0 fallbacks; the K-quant and Q8_0 ones are checked here.
    assert!(checked >= 40, "only {checked} matrices checked");
    // Every tensor in F32: four bytes per parameter.
    assert_eq!(model_bytes(&m, WeightFormat::F32), 4 * m.n_params);
}

#[test]
fn k_quant_fallbacks_match_what_the_quantizer_wrote() {
    let Some(model) = model_path() else { return };
    // Q4_K_M asks for Q4_K (and Q6_K for some tensors); rows of 640 are not a multiple
    // of 256, so the quantizer wrote Q5_0 and Q8_0 instead. The planner predicts that.
    use hangar_formats::GgmlType;
    let m = Model::from_gguf_path(&model).unwrap();
    let mut q5 = 0;
    for t in m
        .tensors
        .iter()
        .filter(|t| t.is_matrix() && t.row_len() % 256 != 0)
    {
        let stored = t.stored_bytes.unwrap();
        match t.stored.unwrap() {
            GgmlType::Q5_0 => {
                assert_eq!(tensor_bytes(t, WeightFormat::Q4K), stored, "{}", t.name);
                q5 += 1;
            }
            GgmlType::Q8_0 => assert_eq!(tensor_bytes(t, WeightFormat::Q6K), stored, "{}", t.name),
            _ => {}
        }
    }
    assert!(q5 > 0);
}

#[test]
fn kv_cache_of_the_default_model_honours_its_local_layers() {
    let Some(model) = model_path() else { return };
    let m = Model::from_gguf_path(&model).unwrap();
    let s = m.shape.unwrap();
    let r = kv_cache(&s, KvDtype::F16, 32768, 1);
    // 1 KV head x (256 + 256) x 2 bytes per layer-token; 15 layers keep 512 tokens.
    assert_eq!(r.total_bytes, 1024.0 * (15.0 * 512.0 + 3.0 * 32768.0));
}

#[test]
fn plan_of_the_file_renders_and_serializes() {
    let Some(model) = model_path() else { return };
    let spec = ModelSpec {
        model: Some(model.display().to_string()),
        ..Default::default()
    };
    let host = HostMemory {
        total_bytes: 8 << 30,
        available_bytes: 4 << 30,
    };
    let r = plan(spec.resolve().unwrap(), PlanOptions::default(), host).unwrap();
    let text = r.render();
    assert!(text.contains("as stored"), "{text}");
    assert!(text.contains("this host"));
    println!("{text}");
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["context"], 32768);
    assert!(j["fits"][0]["devices_needed"] == 1);
}
