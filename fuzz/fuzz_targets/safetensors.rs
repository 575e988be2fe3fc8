//! safetensors bytes -> the `safetensors` crate the compressor reads checkpoints with
//! (called the way `hangar-compress` calls it) and the registry's import classifier
//! (its own header check, the GGUF check and the pickle scan, under several names).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One scratch file per fuzzing process, on tmpfs when there is one.
fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("hangar-fuzz-{}.bin", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(st) = safetensors::SafeTensors::deserialize(data) {
        for name in st.names() {
            if let Ok(t) = st.tensor(name) {
                let _ = (t.dtype(), t.shape(), t.data().len());
            }
        }
    }
    let path = scratch();
    if std::fs::write(path, data).is_err() {
        return;
    }
    for name in [
        "model.safetensors",
        "model.gguf",
        "notes.txt",
        "config.json",
        "tokenizer.model",
    ] {
        let _ = hangar_registry::safety::classify(path, name);
    }
});
