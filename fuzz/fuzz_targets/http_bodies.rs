//! Arbitrary bytes -> JSON request bodies of the OpenAI (chat, completions) and KServe
//! V2 (infer) routes, deserialised into serve's wire types; KServe bodies then go
//! through the tensor codec (JSON `data` and binary extension parts).
//!
//! The first two bytes, when present, pick an `Inference-Header-Content-Length` for
//! the KServe binary extension, so both body layouts are reached.
#![no_main]

use hangar_serve::kserve::codec;
use hangar_serve::kserve::types::InferRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<hangar_serve::openai::types::ChatRequest>(data);
    let _ = serde_json::from_slice::<hangar_serve::openai::types::CompletionRequest>(data);
    decode_infer(data, None);
    if data.len() >= 2 {
        let header_len = u16::from_le_bytes([data[0], data[1]]).to_string();
        decode_infer(&data[2..], Some(&header_len));
    }
});

fn decode_infer(body: &[u8], header_len: Option<&str>) {
    let Ok((json, mut binary)) = codec::split_body(body, header_len) else {
        return;
    };
    let Ok(req) = serde_json::from_slice::<InferRequest>(json) else {
        return;
    };
    for input in &req.inputs {
        if let Ok(t) = codec::decode_input(input, &mut binary) {
            let _ = (t.data.len(), t.data.is_empty(), t.data.first(), t.shape.len());
        }
    }
}
