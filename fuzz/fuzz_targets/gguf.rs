//! GGUF bytes -> reader -> every metadata accessor and tensor slice -> model
//! configuration -> weight loading -> the tokenizer's reader.
//!
//! Any panic, abort, overflow or out-of-memory here is a bug: a model file is hostile
//! input, and each stage must turn what it cannot use into an error.
#![no_main]

use hangar_formats::GgufFile;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    for (key, v) in f.metadata() {
        let _ = (v.as_i64(), v.as_f64(), v.as_str(), v.type_name());
        let _ = (
            f.get_usize(key),
            f.get_u32(key),
            f.get_f32(key),
            f.get_bool(key),
        );
        let _ = (
            f.get_str_array(key),
            f.get_f32_array(key),
            f.get_i64_array(key),
        );
    }
    for t in f.tensors() {
        assert_eq!(f.tensor_data(t).len() as u64, t.size);
        let _ = (t.n_elements(), t.row_len(), t.n_rows());
    }
    let _ = hangar_plan::shape::shape_from_gguf(&f);
    let f = Arc::new(f);
    if hangar_models::ModelConfig::from_gguf(&f).is_ok() {
        let _ = hangar_models::Model::from_gguf(f.clone());
    }
    if let Ok(tok) = hangar_tokenizer::Tokenizer::from_gguf(&f) {
        let ids = tok.encode("Hello <s> world\n", true, true);
        let _ = tok.decode(&ids, false);
    }
});
