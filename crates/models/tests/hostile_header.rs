//! The real default model with one header value changed in place (same bytes, same
//! size) loads as a clear error, never an abort or a silently broken model.

use hangar_formats::GgufFile;
use hangar_models::Model;
use std::path::PathBuf;
use std::sync::Arc;

fn model_path() -> PathBuf {
    let p = std::env::var_os("HANGAR_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").unwrap_or_default();
            PathBuf::from(home).join(".cache/hangar/models/gemma-3-270m-q4_k_m.gguf")
        });
    assert!(
        p.is_file(),
        "the default model is missing at {}; run scripts/fetch-default-model.sh or set HANGAR_MODEL",
        p.display()
    );
    p
}

/// Byte offset of the value of metadata `key`, whose type id must be `ty`.
fn value_at(bytes: &[u8], key: &str, ty: u32) -> usize {
    let mut pat = (key.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(key.as_bytes());
    pat.extend_from_slice(&ty.to_le_bytes());
    let header = &bytes[..bytes.len().min(64 << 20)];
    let at = header
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap_or_else(|| panic!("{key} (type {ty}) not found in the model header"));
    at + pat.len()
}

fn load_patched(original: &[u8], key: &str, ty: u32, value: &[u8]) -> String {
    let mut b = original.to_vec();
    let at = value_at(&b, key, ty);
    b[at..at + value.len()].copy_from_slice(value);
    let f = GgufFile::from_bytes(b).expect("the header still parses");
    match Model::from_gguf(Arc::new(f)) {
        Ok(_) => panic!("{key} patched to {value:?}: the model loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn patched_header_values_of_the_real_model_are_clear_errors() {
    let original = std::fs::read(model_path()).unwrap();
    const U32: u32 = 4;
    const F32: u32 = 6;
    let cases: [(&str, u32, Vec<u8>, &str); 5] = [
        (
            "gemma3.block_count",
            U32,
            (1u32 << 31).to_le_bytes().to_vec(),
            "gemma3.block_count is 2147483648, but the file holds tensors for 18 layers",
        ),
        (
            "gemma3.attention.layer_norm_rms_epsilon",
            F32,
            f32::NAN.to_le_bytes().to_vec(),
            "layer_norm_rms_epsilon is NaN",
        ),
        (
            "gemma3.rope.freq_base",
            F32,
            0f32.to_le_bytes().to_vec(),
            "rope.freq_base is 0",
        ),
        (
            "tokenizer.ggml.bos_token_id",
            U32,
            300_000u32.to_le_bytes().to_vec(),
            "bos_token_id is 300000, outside the vocabulary",
        ),
        (
            "tokenizer.ggml.eos_token_id",
            U32,
            u32::MAX.to_le_bytes().to_vec(),
            "eos_token_id is 4294967295, outside the vocabulary",
        ),
    ];
    for (key, ty, value, want) in cases {
        let e = load_patched(&original, key, ty, &value);
        assert!(e.contains(want), "{key}: expected {want:?} in: {e}");
    }
}
