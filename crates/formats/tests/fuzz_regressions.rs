//! Inputs the fuzzers found (fuzz/, docs/RELIABILITY.md), kept as regression tests:
//! each must be a clear error or a file whose every accessor is safe to call.

use hangar_formats::GgufFile;

#[test]
fn zero_dimension_beside_huge_ones_is_refused_not_an_overflow_later() {
    // dims like [0, 2^40, 2^40]: the element count is 0, but the row count overflowed
    // u64 in `n_rows` (a panic with overflow checks, a wrong answer without).
    let bytes = include_bytes!("data/fuzz-gguf-zero-dim-overflow.bin").to_vec();
    match GgufFile::from_bytes(bytes) {
        Err(e) => assert!(e.to_string().contains("overflows"), "{e}"),
        Ok(f) => {
            for t in f.tensors() {
                let _ = (
                    t.n_elements(),
                    t.n_rows(),
                    t.row_len(),
                    f.tensor_data(t).len(),
                );
            }
        }
    }
}
