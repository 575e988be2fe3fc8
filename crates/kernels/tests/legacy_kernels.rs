//! Legacy block formats (Q4_0, Q5_0, Q8_0): every SIMD level against the scalar reference,
//! the scalar reference against an f64 dot of dequantized rows, and quantization error.

use hangar_kernels::quants::{self, legacy};
use hangar_kernels::{cpu, GgmlType, SimdLevel};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0];
const SIZES: [usize; 6] = [32, 64, 96, 640, 2048, 4096];

fn levels() -> Vec<SimdLevel> {
    let best = cpu::detect();
    [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni]
        .into_iter()
        .filter(|l| *l <= best)
        .collect()
}

/// A random f16 scale: usually moderate, sometimes tiny (subnormal) or huge, or negative.
fn rand_scale(rng: &mut StdRng) -> [u8; 2] {
    let mag: f32 = match rng.gen_range(0..10) {
        0 => rng.gen_range(1e-7..1e-5),
        1 => rng.gen_range(100.0..30000.0),
        2 => 0.0,
        _ => rng.gen_range(1e-4..1.0),
    };
    let s = if rng.gen_bool(0.2) { -mag } else { mag };
    half::f16::from_f32(s).to_le_bytes()
}

/// A random weight row: random scales and random (any) quant bits.
fn rand_weights(rng: &mut StdRng, t: GgmlType, n: usize) -> Vec<u8> {
    let bs = t.type_size();
    let mut v = vec![0u8; n / 32 * bs];
    for blk in v.chunks_exact_mut(bs) {
        rng.fill(&mut blk[2..]);
        blk[..2].copy_from_slice(&rand_scale(rng));
    }
    v
}

/// A random Q8_0 activation row with values in [-127, 127] (the kernels' contract).
fn rand_acts(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n / 32 * 34];
    for blk in v.chunks_exact_mut(34) {
        blk[..2].copy_from_slice(&rand_scale(rng));
        for q in &mut blk[2..] {
            *q = rng.gen_range(-127i8..=127) as u8;
        }
    }
    v
}

fn dequant(t: GgmlType, row: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    legacy::dequantize_row(t, row, &mut out);
    out
}

/// (f64 dot, sum of |products|) of dequantized rows.
fn ref_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> (f64, f64) {
    let x = dequant(t, w, n);
    let y = dequant(GgmlType::Q8_0, a, n);
    let mut s = 0.0f64;
    let mut m = 0.0f64;
    for (x, y) in x.iter().zip(&y) {
        let p = *x as f64 * *y as f64;
        s += p;
        m += p.abs();
    }
    (s, m)
}

fn assert_close(got: f32, want: f64, mag: f64, tol: f64, what: &str) {
    let err = (got as f64 - want).abs();
    assert!(
        err <= tol * mag + 1e-30,
        "{what}: got {got}, want {want}, err {err:e} > {tol:e} * {mag:e}"
    );
}

#[test]
#[allow(clippy::needless_range_loop)]
fn block_layouts_decode_as_documented() {
    // d = 1.0; byte j holds element j (low) and element j + 16 (high).
    let one = half::f16::from_f32(1.0).to_le_bytes();
    let mut q4 = vec![0u8; 18];
    q4[..2].copy_from_slice(&one);
    for j in 0..16 {
        q4[2 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let y = dequant(GgmlType::Q4_0, &q4, 32);
    for j in 0..16 {
        assert_eq!(y[j], j as f32 - 8.0);
        assert_eq!(y[j + 16], 7.0 - j as f32);
    }

    let mut q5 = vec![0u8; 22];
    let two = half::f16::from_f32(2.0).to_le_bytes();
    q5[..2].copy_from_slice(&two);
    let qh: u32 = 0xA5C3_0F81;
    q5[2..6].copy_from_slice(&qh.to_le_bytes());
    for j in 0..16 {
        q5[6 + j] = (j as u8) | ((15 - j as u8) << 4);
    }
    let y = dequant(GgmlType::Q5_0, &q5, 32);
    for j in 0..32 {
        let lo = if j < 16 {
            j as i32
        } else {
            15 - (j as i32 - 16)
        };
        let q = lo | ((((qh >> j) & 1) as i32) << 4);
        assert_eq!(y[j], (q - 16) as f32 * 2.0, "Q5_0 element {j}");
    }

    let mut q8 = vec![0u8; 34];
    q8[..2].copy_from_slice(&half::f16::from_f32(0.5).to_le_bytes());
    for j in 0..32 {
        q8[2 + j] = (j as i8 * 4 - 64) as u8;
    }
    let y = dequant(GgmlType::Q8_0, &q8, 32);
    for j in 0..32 {
        assert_eq!(y[j], (j as f32 * 4.0 - 64.0) * 0.5);
    }
}

#[test]
fn scalar_dot_matches_dequantized_f64() {
    let mut rng = StdRng::seed_from_u64(1);
    for t in TYPES {
        for n in SIZES {
            let w = rand_weights(&mut rng, t, n);
            let a = rand_acts(&mut rng, n);
            let (want, mag) = ref_dot(t, n, &w, &a);
            let got = legacy::vec_dot_scalar(t, n, &w, &a);
            assert_close(got, want, mag, 1e-5, &format!("scalar {t} n={n}"));
        }
    }
}

#[test]
fn vec_dot_every_level_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(2);
    for level in levels() {
        for t in TYPES {
            for n in SIZES {
                for _ in 0..8 {
                    let w = rand_weights(&mut rng, t, n);
                    let a = rand_acts(&mut rng, n);
                    let (_, mag) = ref_dot(t, n, &w, &a);
                    let want = legacy::vec_dot_scalar(t, n, &w, &a) as f64;
                    let got = legacy::vec_dot_with(level, t, n, &w, &a);
                    assert_close(got, want, mag, 1e-5, &format!("{level:?} {t} n={n}"));
                }
            }
        }
    }
    // The dispatching entry points agree too.
    let w = rand_weights(&mut rng, GgmlType::Q5_0, 640);
    let a = rand_acts(&mut rng, 640);
    let (_, mag) = ref_dot(GgmlType::Q5_0, 640, &w, &a);
    let want = quants::vec_dot_scalar(GgmlType::Q5_0, 640, &w, &a) as f64;
    assert_close(
        quants::vec_dot(GgmlType::Q5_0, 640, &w, &a),
        want,
        mag,
        1e-5,
        "dispatch",
    );
}

#[test]
fn vnni_exact_for_minus_128_activations() {
    // The AVX-512 path makes weights unsigned, so even -128 activations are exact.
    if cpu::detect() < SimdLevel::Avx512Vnni {
        return;
    }
    let mut rng = StdRng::seed_from_u64(3);
    for t in TYPES {
        let n = 256;
        let w = rand_weights(&mut rng, t, n);
        let mut a = rand_acts(&mut rng, n);
        for blk in a.chunks_exact_mut(34) {
            for q in &mut blk[2..] {
                if rng.gen_bool(0.3) {
                    *q = 0x80;
                }
            }
        }
        let (_, mag) = ref_dot(t, n, &w, &a);
        let want = legacy::vec_dot_scalar(t, n, &w, &a) as f64;
        for nr in [1, 4] {
            let mut out = vec![0.0f32; nr];
            legacy::dot_tile_with(
                SimdLevel::Avx512Vnni,
                t,
                n,
                &w,
                0,
                nr,
                &a,
                0,
                1,
                &mut out,
                1,
            );
            for v in out {
                assert_close(v, want, mag, 1e-5, &format!("vnni -128 {t} nr={nr}"));
            }
        }
    }
}

#[test]
fn dot_tile_every_level_matches_scalar_pairs() {
    let mut rng = StdRng::seed_from_u64(4);
    for level in levels() {
        for t in TYPES {
            for n in [32, 96, 640] {
                let rb = n / 32 * t.type_size();
                let ab = n / 32 * 34;
                for nr in 1..=5 {
                    for nc in 1..=9 {
                        // Padded strides, to catch stride mix-ups.
                        let w_stride = rb + 7;
                        let a_stride = ab + 3;
                        let out_stride = nc + 2;
                        let mut w = Vec::new();
                        for _ in 0..nr {
                            w.extend(rand_weights(&mut rng, t, n));
                            w.extend(std::iter::repeat_n(0xEEu8, 7));
                        }
                        let mut a = Vec::new();
                        for _ in 0..nc {
                            a.extend(rand_acts(&mut rng, n));
                            a.extend([0x55u8; 3]);
                        }
                        let mut out = vec![f32::NAN; nr * out_stride];
                        legacy::dot_tile_with(
                            level, t, n, &w, w_stride, nr, &a, a_stride, nc, &mut out, out_stride,
                        );
                        for r in 0..nr {
                            for c in 0..out_stride {
                                let got = out[r * out_stride + c];
                                if c >= nc {
                                    assert!(got.is_nan(), "wrote outside the tile");
                                    continue;
                                }
                                let wr = &w[r * w_stride..][..rb];
                                let ar = &a[c * a_stride..][..ab];
                                let (_, mag) = ref_dot(t, n, wr, ar);
                                let want = legacy::vec_dot_scalar(t, n, wr, ar) as f64;
                                let what =
                                    format!("{level:?} {t} n={n} nr={nr} nc={nc} r={r} c={c}");
                                assert_close(got, want, mag, 1e-5, &what);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn quantize_q8_0_levels_bit_identical() {
    let mut rng = StdRng::seed_from_u64(5);
    let n = 4096;
    let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
    // Blocks with exact ties (amax 127 -> id = 1): x.5 rounds half to even, as ggml's x86
    // quantizer (the one llama.cpp runs) does.
    for (j, v) in x[..64].iter_mut().enumerate() {
        *v = (j as f32 - 32.0) + 0.5;
    }
    x[0] = 127.0;
    x[32] = -127.0;
    // An all-zero block and a block of tiny and huge values.
    x[64..96].fill(0.0);
    for (j, v) in x[96..128].iter_mut().enumerate() {
        *v = if j % 2 == 0 {
            1e-30 * j as f32
        } else {
            -3e4 * j as f32
        };
    }
    let mut want = vec![0u8; n / 32 * 34];
    legacy::quantize_row_with(SimdLevel::Scalar, GgmlType::Q8_0, &x, &mut want);
    // Ties rounded to even.
    assert_eq!(want[2 + 1] as i8, -30); // x[1] = -30.5
    assert_eq!(want[2 + 31] as i8, 0); // x[31] = -0.5
    assert_eq!(want[34 + 2 + 1] as i8, 2); // x[33] = 1.5
    assert_eq!(want[34 + 2 + 2] as i8, 2); // x[34] = 2.5
    for level in levels() {
        let mut got = vec![0u8; want.len()];
        legacy::quantize_row_with(level, GgmlType::Q8_0, &x, &mut got);
        assert_eq!(got, want, "{level:?}");
    }
}

#[test]
fn quantize_dequantize_error_bounds() {
    let mut rng = StdRng::seed_from_u64(6);
    let n = 4096;
    for scale in [0.1f32, 1.0, 100.0] {
        let x: Vec<f32> = (0..n)
            .map(|_| rng.gen_range(-1.0f32..1.0) * scale)
            .collect();
        for (t, bound, mean_bound) in [
            // max error as a fraction of the block's max |x|; mean error bound likewise
            (GgmlType::Q8_0, 0.5 / 127.0 + 1e-3, 0.3 / 127.0),
            (GgmlType::Q5_0, 1.0 / 16.0 + 1e-3, 0.3 / 16.0),
            (GgmlType::Q4_0, 1.0 / 8.0 + 1e-3, 0.3 / 8.0),
        ] {
            let mut q = vec![0u8; n / 32 * t.type_size()];
            quants::quantize_row(t, &x, &mut q).unwrap();
            let mut y = vec![0.0f32; n];
            quants::dequantize_row(t, &q, &mut y).unwrap();
            let mut sum_rel = 0.0f64;
            for (xb, yb) in x.chunks(32).zip(y.chunks(32)) {
                let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for (a, b) in xb.iter().zip(yb) {
                    let e = (a - b).abs();
                    assert!(e <= bound * amax, "{t}: |{a} - {b}| > {bound} * {amax}");
                    sum_rel += (e / amax) as f64;
                }
                // The largest-magnitude element is reproduced (nearly) exactly.
                let i = xb.iter().position(|v| v.abs() == amax).unwrap();
                assert!((xb[i] - yb[i]).abs() <= amax * 2e-3, "{t}: max element");
            }
            let mean = sum_rel / n as f64;
            assert!(mean <= mean_bound, "{t}: mean rel error {mean}");
        }
    }
}

#[test]
fn quantized_activation_dot_tracks_f32_dot() {
    // End to end: quantize weights and activations, dot, compare with the f32 dot.
    let mut rng = StdRng::seed_from_u64(7);
    let n = 2048;
    let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let y: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let exact: f64 = x.iter().zip(&y).map(|(a, b)| *a as f64 * *b as f64).sum();
    let mag: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (*a as f64 * *b as f64).abs())
        .sum();
    let mut a = vec![0u8; n / 32 * 34];
    legacy::quantize_row(GgmlType::Q8_0, &y, &mut a);
    for (t, tol) in [
        (GgmlType::Q8_0, 0.01),
        (GgmlType::Q5_0, 0.03),
        (GgmlType::Q4_0, 0.06),
    ] {
        let mut w = vec![0u8; n / 32 * t.type_size()];
        legacy::quantize_row(t, &x, &mut w);
        let got = legacy::vec_dot(t, n, &w, &a) as f64;
        assert!(
            (got - exact).abs() <= tol * mag,
            "{t}: {got} vs {exact} (mag {mag})"
        );
    }
}
