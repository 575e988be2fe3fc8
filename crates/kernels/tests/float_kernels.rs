//! Float rows (F32, F16, BF16): conversions, round trips and dot products at every level.

use hangar_kernels::quants::{self, float};
use hangar_kernels::{cpu, GgmlType, SimdLevel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [GgmlType; 3] = [GgmlType::F32, GgmlType::F16, GgmlType::BF16];

fn levels() -> Vec<SimdLevel> {
    let best = cpu::detect();
    [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni]
        .into_iter()
        .filter(|l| *l <= best)
        .collect()
}

fn esize(t: GgmlType) -> usize {
    t.type_size()
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Every finite f16 / bf16 bit pattern decodes and re-encodes to itself, at every level.
#[test]
fn half_formats_round_trip_all_patterns() {
    for t in [GgmlType::F16, GgmlType::BF16] {
        let bits: Vec<u16> = (0..=u16::MAX).collect();
        let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
        for level in levels() {
            let mut f = vec![0.0f32; bits.len()];
            float::dequantize_row_with(level, t, &bytes, &mut f);
            let mut back = vec![0u8; bytes.len()];
            float::quantize_row_with(level, t, &f, &mut back);
            for (i, &b) in bits.iter().enumerate() {
                let want = match t {
                    GgmlType::F16 => half::f16::from_bits(b).to_f32(),
                    _ => half::bf16::from_bits(b).to_f32(),
                };
                let got = f[i];
                if want.is_nan() {
                    assert!(got.is_nan(), "{t} {level:?} {b:#06x}");
                    let rb = u16::from_le_bytes([back[2 * i], back[2 * i + 1]]);
                    let r = match t {
                        GgmlType::F16 => half::f16::from_bits(rb).to_f32(),
                        _ => half::bf16::from_bits(rb).to_f32(),
                    };
                    assert!(r.is_nan(), "{t} {level:?} NaN re-encoded as {rb:#06x}");
                    continue;
                }
                assert_eq!(
                    got.to_bits(),
                    want.to_bits(),
                    "{t} {level:?} decode {b:#06x}"
                );
                assert_eq!(
                    [back[2 * i], back[2 * i + 1]],
                    b.to_le_bytes(),
                    "{t} {level:?}"
                );
            }
        }
    }
}

#[test]
fn bf16_rounds_to_nearest_even() {
    let cases: [(u32, u16); 6] = [
        (0x3F80_8000, 0x3F80), // tie, even below
        (0x3F81_8000, 0x3F82), // tie, odd below -> up
        (0x3F80_8001, 0x3F81), // just above tie
        (0x3F80_7FFF, 0x3F80), // just below tie
        (0x7F7F_FFFF, 0x7F80), // max f32 rounds to inf
        (0xBF80_8000, 0xBF80), // negative tie
    ];
    for level in levels() {
        let x: Vec<f32> = cases.iter().map(|c| f32::from_bits(c.0)).collect();
        let mut out = vec![0u8; 2 * x.len()];
        // Pad to more than 8 elements so the SIMD loop runs.
        let mut xs = x.clone();
        xs.extend(x.iter().copied());
        let mut outs = vec![0u8; 2 * xs.len()];
        float::quantize_row_with(level, GgmlType::BF16, &x, &mut out);
        float::quantize_row_with(level, GgmlType::BF16, &xs, &mut outs);
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(
                u16::from_le_bytes([out[2 * i], out[2 * i + 1]]),
                c.1,
                "{level:?} {:#x}",
                c.0
            );
            assert_eq!(
                u16::from_le_bytes([outs[2 * i], outs[2 * i + 1]]),
                c.1,
                "{level:?}"
            );
        }
    }
}

#[test]
fn quantize_levels_bit_identical_and_bounded() {
    let mut rng = StdRng::seed_from_u64(11);
    let n = 1003;
    let mut x: Vec<f32> = (0..n)
        .map(|i| {
            let m = match i % 5 {
                0 => 1e-6,
                1 => 1e4,
                2 => 1e-40, // f32 subnormal
                _ => 1.0,
            };
            rng.gen_range(-1.0f32..1.0) * m
        })
        .collect();
    x[7] = f32::INFINITY;
    x[8] = f32::NEG_INFINITY;
    x[9] = 1e6; // overflows f16
    x[10] = -0.0;
    for t in TYPES {
        let mut want = vec![0u8; n * esize(t)];
        float::quantize_row_with(SimdLevel::Scalar, t, &x, &mut want);
        for level in levels() {
            let mut got = vec![0u8; want.len()];
            float::quantize_row_with(level, t, &x, &mut got);
            assert_eq!(got, want, "{t} {level:?}");
        }
        // Round trip error: half an ulp (relative 2^-11 for f16, 2^-8 for bf16) in range.
        let mut y = vec![0.0f32; n];
        quants::dequantize_row(t, &want, &mut y).unwrap();
        let rel = match t {
            GgmlType::F32 => 0.0,
            GgmlType::F16 => 1.0 / 2048.0,
            _ => 1.0 / 256.0,
        };
        for (a, b) in x.iter().zip(&y) {
            if t == GgmlType::F16 && (a.abs() > 65504.0 || a.abs() < 6.2e-5) {
                continue; // out of the normal f16 range
            }
            if t == GgmlType::BF16 && a.abs() < f32::MIN_POSITIVE {
                continue; // subnormal: fewer mantissa bits
            }
            if a.is_infinite() {
                assert_eq!(a, b);
                continue;
            }
            assert!((a - b).abs() <= rel * a.abs(), "{t}: {a} -> {b}");
        }
    }
}

#[test]
fn vec_dot_every_level_matches_scalar_and_f64() {
    let mut rng = StdRng::seed_from_u64(12);
    let mut sizes: Vec<usize> = (1..=70).collect();
    sizes.extend([127, 640, 2048, 4096, 4099]);
    for t in TYPES {
        for &n in &sizes {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let y: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
            let mut w = vec![0u8; n * esize(t)];
            quants::quantize_row(t, &x, &mut w).unwrap();
            let mut xw = vec![0.0f32; n];
            quants::dequantize_row(t, &w, &mut xw).unwrap();
            let a = f32_bytes(&y);
            let exact: f64 = xw.iter().zip(&y).map(|(p, q)| *p as f64 * *q as f64).sum();
            let mag: f64 = xw
                .iter()
                .zip(&y)
                .map(|(p, q)| (*p as f64 * *q as f64).abs())
                .sum();
            let tol = 1e-5 * mag + 1e-30;
            let s = float::vec_dot_scalar(t, n, &w, &a) as f64;
            assert!((s - exact).abs() <= tol, "scalar {t} n={n}: {s} vs {exact}");
            for level in levels() {
                let v = float::vec_dot_with(level, t, n, &w, &a) as f64;
                assert!((v - s).abs() <= tol, "{t} {level:?} n={n}: {v} vs {s}");
            }
            let v = quants::vec_dot(t, n, &w, &a) as f64;
            assert!((v - s).abs() <= tol, "dispatch {t} n={n}");
        }
    }
}
