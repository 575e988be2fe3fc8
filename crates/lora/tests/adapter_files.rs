//! Adapter files end to end on small synthetic models (exact shapes, random weights,
//! written by Hangar's own GGUF writer): GGUF and PEFT round trips, the llama Q/K
//! layout, the forward pass with an adapter against the merged model, extraction,
//! and hostile or mismatched files refused with a message (never a panic).

use hangar_formats::GgmlType;
use hangar_kernels::ThreadPool;
use hangar_lora::merge::MergeType;
use hangar_lora::{Format, LoraFileError, LoraShape, LoraTarget};
use hangar_models::synth::{self, SynthArch, SynthType};
use hangar_models::{KvCache, LogitsWanted, LoraAdapter, Model, SeqInput, Workspace};
use std::path::{Path, PathBuf};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hangar-lora-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny synthetic model of `arch` in `dir`.
fn synth_model(dir: &Path, arch: SynthArch, ty: SynthType) -> PathBuf {
    let path = dir.join(format!("{arch:?}.gguf"));
    let shape = synth::preset(arch, "tiny").unwrap();
    synth::write(arch, &shape, ty, 7, &path, 2, |_, _| {}).unwrap();
    path
}

fn shape_of(path: &Path) -> LoraShape {
    LoraShape::of(&Model::load(path).unwrap().cfg)
}

fn init(base: &Path, rank: usize, seed: u64, targets: &[LoraTarget]) -> LoraAdapter {
    let opts = hangar_lora::init::InitOptions {
        rank,
        alpha: Some(2.0 * rank as f32),
        targets: targets.to_vec(),
        seed,
        strength: 0.2,
    };
    hangar_lora::init::random(base, &shape_of(base), &opts).unwrap()
}

fn assert_same(a: &LoraAdapter, b: &LoraAdapter, tol: f32) {
    assert_eq!(a.n_matrices(), b.n_matrices());
    for (l, t, m) in a.matrices() {
        let n = b
            .get(l, t)
            .unwrap_or_else(|| panic!("layer {l} {t} missing"));
        assert_eq!(
            (m.rank(), m.rows(), m.cols()),
            (n.rank(), n.rows(), n.cols())
        );
        let (mut da, mut db) = (
            vec![0f32; m.rows() * m.cols()],
            vec![0f32; m.rows() * m.cols()],
        );
        m.add_delta_to(&mut da);
        n.add_delta_to(&mut db);
        let scale = da.iter().map(|v| v.abs()).fold(0f32, f32::max);
        for (x, y) in da.iter().zip(&db) {
            assert!((x - y).abs() <= tol * scale, "layer {l} {t}: {x} vs {y}");
        }
    }
}

/// Last-token logits of `prompt` (one sequence), under `adapter` when given.
fn logits(model: &Model, prompt: &[u32], adapter: Option<&LoraAdapter>) -> Vec<f32> {
    let pool = ThreadPool::new(2);
    let mut kv = KvCache::for_single_sequence(&model.cfg, 16, 64);
    let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let (mut ws, mut out) = (Workspace::default(), Vec::new());
    let seq = SeqInput {
        tokens: prompt,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::Last,
    };
    model
        .forward_lora(&pool, &[seq], &[adapter], &mut kv, &mut ws, &mut out)
        .unwrap();
    out
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().map(|v| v.abs()).fold(0f32, f32::max);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn gguf_round_trip_is_exact_in_f32_and_close_in_f16() {
    let dir = tmp("gguf");
    let base = synth_model(&dir, SynthArch::Gemma3, SynthType::F16);
    let a = init(&base, 4, 1, &LoraTarget::ALL);
    let f32_path = dir.join("a.gguf");
    hangar_lora::gguf::write(&a, &f32_path, GgmlType::F32).unwrap();
    assert_eq!(hangar_lora::detect(&f32_path).unwrap(), Format::Gguf);
    let back = hangar_lora::load(&f32_path, &shape_of(&base)).unwrap();
    assert_same(&a, &back, 0.0);
    let f16_path = dir.join("a16.gguf");
    hangar_lora::gguf::write(&a, &f16_path, GgmlType::F16).unwrap();
    assert_same(
        &a,
        &hangar_lora::load(&f16_path, &shape_of(&base)).unwrap(),
        2e-3,
    );
}

#[test]
fn peft_and_gguf_forms_hold_the_same_adapter() {
    for arch in [SynthArch::Gemma3, SynthArch::Llama, SynthArch::Qwen2] {
        let dir = tmp(&format!("peft-{arch:?}"));
        let base = synth_model(&dir, arch, SynthType::F16);
        let shape = shape_of(&base);
        let a = init(&base, 4, 2, &LoraTarget::ALL);
        let gguf = dir.join("a.gguf");
        let peft = dir.join("peft");
        hangar_lora::gguf::write(&a, &gguf, GgmlType::F32).unwrap();
        hangar_lora::peft::write(&a, &peft, Some("base")).unwrap();
        assert_eq!(hangar_lora::detect(&peft).unwrap(), Format::Peft);
        let from_gguf = hangar_lora::load(&gguf, &shape).unwrap();
        let from_peft = hangar_lora::load(&peft, &shape).unwrap();
        assert_same(&from_gguf, &from_peft, 0.0);
        // The safetensors file itself names the folder too.
        let from_file = hangar_lora::load(&peft.join("adapter_model.safetensors"), &shape).unwrap();
        assert_same(&from_gguf, &from_file, 0.0);
        // And the forward pass agrees.
        let model = Model::load(&base).unwrap();
        let prompt = [1u32, 300, 301, 302, 303];
        let (x, y) = (
            logits(&model, &prompt, Some(&from_gguf)),
            logits(&model, &prompt, Some(&from_peft)),
        );
        assert_eq!(x, y, "{arch:?}");
    }
}

#[test]
fn llama_q_and_k_rows_are_permuted_from_the_hugging_face_layout() {
    use hangar_compress::hf::permute_rows;
    let dir = tmp("perm");
    let base = synth_model(&dir, SynthArch::Llama, SynthType::F16);
    let shape = shape_of(&base);
    let a = init(&base, 2, 3, &[LoraTarget::Q, LoraTarget::K, LoraTarget::V]);
    let peft = dir.join("peft");
    hangar_lora::peft::write(&a, &peft, None).unwrap();
    // In the file B is in Hugging Face order: permuting it the way llama.cpp's
    // converter permutes q_proj / k_proj gives back Hangar's (GGUF) B.
    let st = hangar_formats::SafetensorsFile::open(peft.join("adapter_model.safetensors")).unwrap();
    for (t, module, heads) in [
        (LoraTarget::Q, "self_attn.q_proj", shape.n_heads),
        (LoraTarget::K, "self_attn.k_proj", shape.n_kv_heads),
        (LoraTarget::V, "self_attn.v_proj", 0),
    ] {
        let (hf_b, _) = st
            .f32_tensor(&format!(
                "base_model.model.model.layers.0.{module}.lora_B.weight"
            ))
            .unwrap();
        let gguf_b = a.get(0, t).unwrap().b();
        let m = a.get(0, t).unwrap();
        if heads > 0 {
            assert_ne!(hf_b, gguf_b, "{t} is stored permuted");
            assert_eq!(permute_rows(&hf_b, heads, m.rank()), gguf_b, "{t}");
        } else {
            assert_eq!(hf_b, gguf_b, "v_proj is not permuted");
        }
    }
}

#[test]
fn forward_with_an_adapter_equals_the_merged_model() {
    let dir = tmp("merge");
    for arch in [SynthArch::Gemma3, SynthArch::Llama] {
        let base = synth_model(&dir, arch, SynthType::F16);
        let a = init(&base, 8, 4, &LoraTarget::ALL);
        let merged = dir.join(format!("{arch:?}-merged.gguf"));
        let r = hangar_lora::merge::merge(&base, &a, &merged, MergeType::F32).unwrap();
        assert_eq!(r.adapted, a.n_matrices());
        let (bm, mm) = (Model::load(&base).unwrap(), Model::load(&merged).unwrap());
        let prompt = [1u32, 280, 290, 300, 310, 320];
        let with = logits(&bm, &prompt, Some(&a));
        let plain = logits(&bm, &prompt, None);
        let want = logits(&mm, &prompt, None);
        // F16 base weights are exact in f32, so only the summation order differs
        // (W x + s·B(A x) against (W + s·B A) x).
        assert!(
            max_rel_diff(&want, &with) < 5e-4,
            "{arch:?}: {}",
            max_rel_diff(&want, &with)
        );
        assert!(
            max_rel_diff(&want, &plain) > 1e-2,
            "{arch:?}: the adapter must matter"
        );
    }
}

#[test]
fn merge_keeps_the_base_type_when_asked_and_copies_other_tensors() {
    let dir = tmp("same");
    let base = synth_model(&dir, SynthArch::Qwen2, SynthType::Q8_0);
    let a = init(&base, 4, 5, &[LoraTarget::V, LoraTarget::Down]);
    let out = dir.join("same.gguf");
    hangar_lora::merge::merge(&base, &a, &out, MergeType::Same).unwrap();
    let (b, m) = (
        hangar_formats::GgufFile::open(&base).unwrap(),
        hangar_formats::GgufFile::open(&out).unwrap(),
    );
    assert_eq!(b.tensors().len(), m.tensors().len());
    for t in b.tensors() {
        let n = m.tensor(&t.name).unwrap();
        assert_eq!((t.ty, &t.dims), (n.ty, &n.dims), "{}", t.name);
        let changed = b.tensor_data(t) != m.tensor_data(n);
        let adapted = t.name.contains("attn_v.weight") || t.name.contains("ffn_down.weight");
        assert_eq!(changed, adapted, "{}", t.name);
    }
    assert!(m.get("hangar.lora.merged").is_some());
}

#[test]
fn extract_recovers_a_low_rank_delta() {
    let dir = tmp("extract");
    let base = synth_model(&dir, SynthArch::Llama, SynthType::F16);
    let shape = shape_of(&base);
    let a = init(
        &base,
        4,
        6,
        &[LoraTarget::Q, LoraTarget::Up, LoraTarget::Down],
    );
    let tuned = dir.join("tuned.gguf");
    hangar_lora::merge::merge(&base, &a, &tuned, MergeType::F32).unwrap();
    let (x, report) =
        hangar_lora::extract::extract(&base, &tuned, &shape, 4, &LoraTarget::ALL, 2).unwrap();
    // Only the three adapted projections differ; each is exactly rank 4.
    assert_eq!(x.n_matrices(), a.n_matrices());
    assert_eq!(report.unchanged, shape.n_layers * 4);
    for t in &report.tensors {
        assert!(t.rel_err < 1e-3, "{} {}", t.name, t.rel_err);
        assert!(t.energy_kept > 0.999, "{} {}", t.name, t.energy_kept);
    }
    // F16 base + f32 merge: the delta read back is exact to rounding.
    assert_same(&a, &x, 1e-3);
    // A lower rank is an approximation, reported as such.
    let (_, low) =
        hangar_lora::extract::extract(&base, &tuned, &shape, 2, &[LoraTarget::Q], 2).unwrap();
    assert!(low.tensors.iter().all(|t| t.rel_err > 0.05));
    // Identical checkpoints: nothing to extract.
    let err =
        hangar_lora::extract::extract(&base, &base, &shape, 4, &LoraTarget::ALL, 2).unwrap_err();
    assert!(err.to_string().contains("nothing to extract"), "{err}");
}

fn err_of(path: &Path, shape: &LoraShape) -> String {
    match hangar_lora::load(path, shape) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_adapter_files_are_refused_with_the_reason() {
    let dir = tmp("bad");
    let base = synth_model(&dir, SynthArch::Gemma3, SynthType::F16);
    let shape = shape_of(&base);
    let good = dir.join("good.gguf");
    hangar_lora::gguf::write(&init(&base, 4, 7, &LoraTarget::ALL), &good, GgmlType::F32).unwrap();

    // Missing: a NotFound error (the server answers 404).
    let missing = hangar_lora::load(&dir.join("nope.gguf"), &shape).unwrap_err();
    assert!(
        matches!(missing, LoraFileError::NotFound { .. }),
        "{missing}"
    );
    // A model is not an adapter.
    assert!(err_of(&base, &shape).contains("not a LoRA adapter"));
    // Garbage, and a truncated adapter.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"definitely not an adapter").unwrap();
    assert!(err_of(&junk, &shape).contains("neither a GGUF adapter"));
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        err_of(&cut, &shape).contains("GGUF"),
        "{}",
        err_of(&cut, &shape)
    );
    // Pickles are never read.
    let bin = dir.join("adapter_model.bin");
    std::fs::write(&bin, b"\x80\x02}q\x00.").unwrap();
    assert!(err_of(&bin, &shape).contains("pickle"));
    // An adapter made for another model shape (and another architecture).
    let other = synth_model(&dir, SynthArch::Qwen2, SynthType::F16);
    let foreign = dir.join("foreign.gguf");
    hangar_lora::gguf::write(
        &init(&other, 4, 8, &LoraTarget::ALL),
        &foreign,
        GgmlType::F32,
    )
    .unwrap();
    assert!(err_of(&foreign, &shape).contains("for \"qwen2\" models"));
    let bigger = {
        let s = synth::preset(SynthArch::Gemma3, "tiny").unwrap();
        let mut wide = s;
        wide.ffn *= 2;
        let p = dir.join("wide.gguf");
        synth::write(
            SynthArch::Gemma3,
            &wide,
            SynthType::F16,
            1,
            &p,
            2,
            |_, _| {},
        )
        .unwrap();
        p
    };
    let wide_adapter = dir.join("wide-adapter.gguf");
    hangar_lora::gguf::write(
        &init(&bigger, 4, 9, &LoraTarget::ALL),
        &wide_adapter,
        GgmlType::F32,
    )
    .unwrap();
    assert!(err_of(&wide_adapter, &shape).contains("made for another model"));
    // A PEFT folder without its config, and one that asks for DoRA.
    let peft = dir.join("peft");
    hangar_lora::peft::write(&init(&base, 4, 10, &LoraTarget::ALL), &peft, None).unwrap();
    let cfg = std::fs::read_to_string(peft.join("adapter_config.json")).unwrap();
    std::fs::write(
        peft.join("adapter_config.json"),
        cfg.replace("\"use_dora\": false", "\"use_dora\": true"),
    )
    .unwrap();
    assert!(err_of(&peft, &shape).contains("DoRA"));
    std::fs::remove_file(peft.join("adapter_config.json")).unwrap();
    assert!(err_of(&peft, &shape).contains("adapter_config.json"));
}

#[test]
fn gguf_adapters_with_unsupported_tensors_or_values_are_refused() {
    use hangar_formats::{GgufFileWriter, GgufHeader, MetaValue};
    let dir = tmp("tensors");
    let base = synth_model(&dir, SynthArch::Gemma3, SynthType::F16);
    let shape = shape_of(&base);
    let write = |name: &str, tensors: &[(&str, Vec<u64>, Vec<f32>)], alora: bool| -> PathBuf {
        let mut h = GgufHeader::new();
        h.set("general.architecture", MetaValue::String("gemma3".into()));
        h.set("general.type", MetaValue::String("adapter".into()));
        h.set("adapter.type", MetaValue::String("lora".into()));
        h.set("adapter.lora.alpha", MetaValue::F32(8.0));
        if alora {
            h.set("adapter.alora.invocation_tokens", MetaValue::U32(5));
        }
        for (n, dims, _) in tensors {
            h.add_tensor(n, dims.clone(), GgmlType::F32).unwrap();
        }
        let p = dir.join(name);
        let mut w = GgufFileWriter::create(&p, &h).unwrap();
        for (_, _, v) in tensors {
            let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            w.write_tensor(&b).unwrap();
        }
        w.finish().unwrap();
        p
    };
    let d = shape.d_model as u64;
    let (q_rows, _) = shape.dims(LoraTarget::Q);
    let a = |r: u64| vec![0.01f32; (d * r) as usize];
    let b = |r: u64, rows: usize| vec![0.01f32; r as usize * rows];
    let ok = [
        ("blk.0.attn_q.weight.lora_a", vec![d, 2], a(2)),
        (
            "blk.0.attn_q.weight.lora_b",
            vec![2, q_rows as u64],
            b(2, q_rows),
        ),
    ];
    assert!(hangar_lora::load(&write("ok.gguf", &ok, false), &shape).is_ok());
    assert!(err_of(&write("alora.gguf", &ok, true), &shape).contains("activated LoRA"));
    let out = [("output.weight.lora_a", vec![d, 2], a(2))];
    assert!(err_of(&write("out.gguf", &out, false), &shape).contains("does not adapt"));
    let half = [ok[0].clone()];
    assert!(err_of(&write("half.gguf", &half, false), &shape).contains("only one of"));
    let ranks = [
        ("blk.0.attn_q.weight.lora_a", vec![d, 2], a(2)),
        (
            "blk.0.attn_q.weight.lora_b",
            vec![3, q_rows as u64],
            b(3, q_rows),
        ),
    ];
    assert!(err_of(&write("ranks.gguf", &ranks, false), &shape).contains("rank"));
    let mut nan = ok.clone();
    nan[0].2[5] = f32::NAN;
    assert!(err_of(&write("nan.gguf", &nan, false), &shape).contains("non-finite"));
    let deep = [
        ("blk.99.attn_q.weight.lora_a", vec![d, 2], a(2)),
        (
            "blk.99.attn_q.weight.lora_b",
            vec![2, q_rows as u64],
            b(2, q_rows),
        ),
    ];
    assert!(err_of(&write("deep.gguf", &deep, false), &shape).contains("layer 99"));
    // alpha 8 over rank 2: scale 4, as llama.cpp computes it.
    let loaded = hangar_lora::load(&write("ok2.gguf", &ok, false), &shape).unwrap();
    assert_eq!(loaded.get(0, LoraTarget::Q).unwrap().scale(), 4.0);
}
