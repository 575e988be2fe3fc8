//! The process-wide SIMD cap: once set, every dispatcher runs at that level (this file
//! is its own test process, so the cap cannot leak into other tests).

use hangar_kernels::ggml::f16;
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
    // The ggml attention dots' scalar fallback is the f16 replica itself.
    let (ah, bh): (Vec<u16>, Vec<u16>) = (
        a[..1000].iter().map(|&v| f16::f32_to_f16(v)).collect(),
        b[..1000].iter().map(|&v| f16::f32_to_f16(v)).collect(),
    );
    let (af, bf): (Vec<f32>, Vec<f32>) = (
        ah.iter().map(|&h| f16::f16_to_f32(h)).collect(),
        bh.iter().map(|&h| f16::f16_to_f32(h)).collect(),
    );
    let rows = [&af[..992], &af[1..993], &af[2..994], &af[8..1000]];
    for (tiny, want) in [
        (false, f16::vec_dot_f16 as fn(&[u16], &[u16]) -> f32),
        (true, f16::tinyblas_dot_f16),
    ] {
        let got = f16::dot_f16_values(&af[..992], &bf[..992], tiny);
        assert_eq!(got.to_bits(), want(&ah[..992], &bh[..992]).to_bits());
        let four = f16::dot4_f16_values(rows, &bf[..992], tiny);
        for (r, v) in rows.iter().zip(four) {
            assert_eq!(
                v.to_bits(),
                f16::dot_f16_values(r, &bf[..992], tiny).to_bits()
            );
        }
    }
    // A cap above the CPU's best is clamped to it.
    assert_eq!(set_simd_cap(SimdLevel::Avx512Vnni), cpu::detect());
    assert_eq!(simd_level(), cpu::detect());
}
