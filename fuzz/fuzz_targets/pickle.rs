//! Arbitrary bytes -> the registry's pickle recogniser (every protocol, by content).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = hangar_registry::safety::is_pickle_stream(&mut &data[..], data.len() as u64)
        .expect("reading from memory cannot fail");
    // A decision never looks past the opcode that made it.
    if let Some(end) = whole {
        let head = &data[..end as usize];
        let again = hangar_registry::safety::is_pickle_stream(&mut &head[..], end)
            .expect("reading from memory cannot fail");
        assert_eq!(
            again,
            Some(end),
            "the verdict depends on bytes after the deciding opcode"
        );
    }
    let _ = hangar_registry::safety::looks_like_pickle(data);
});
