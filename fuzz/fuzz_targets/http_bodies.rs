//! Arbitrary bytes -> JSON request bodies of the OpenAI (chat, completions) and KServe
//! V2 (infer) routes, deserialised into serve's public request types.
//!
//! Only the wire types are public today: validation and the KServe tensor codec are
//! private to `hangar-serve`, so they are not reached here yet (docs/RELIABILITY.md).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<hangar_serve::openai::ChatRequest>(data);
    let _ = serde_json::from_slice::<hangar_serve::openai::CompletionRequest>(data);
    let _ = serde_json::from_slice::<hangar_serve::kserve::InferRequest>(data);
});
