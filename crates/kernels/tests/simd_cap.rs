//! The process-wide SIMD cap: once set, every dispatcher runs at that level (this file
//! is its own test process, so the cap cannot leak into other tests).

use hangar_kernels::{cpu, ops, set_simd_cap, simd_level, SimdLevel};

fn data(n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * k % 1013) as f32 - 506.0) / 97.0)
        .collect()
}

#[test]
fn a_scalar_cap_makes_the_dispatchers_compute_the_scalar_results() {
    let (a, b) = (data(1001, 37), data(1001, 53));
    assert_eq!(set_simd_cap(SimdLevel::Scalar), SimdLevel::Scalar);
    assert_eq!(simd_level(), SimdLevel::Scalar);
    // The dispatcher takes the scalar path: bit for bit the scalar twin's sum.
    assert_eq!(
        ops::dot_f32(&a, &b).to_bits(),
        ops::dot_f32_scalar(&a, &b).to_bits()
    );
    // A cap above the CPU's best is clamped to it.
    assert_eq!(set_simd_cap(SimdLevel::Avx512Vnni), cpu::detect());
    assert_eq!(simd_level(), cpu::detect());
}
