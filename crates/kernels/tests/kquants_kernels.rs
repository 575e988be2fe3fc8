//! K-quant kernels: SIMD vs scalar, tiles vs single dots, quantization quality,
//! Q8_K activations.

use hangar_kernels::cpu::{detect, SimdLevel};
use hangar_kernels::quants::kquants::{self, BlockQ8K, QK_K};
use hangar_kernels::GgmlType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WTYPES: [GgmlType; 3] = [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K];
const SIZES: [usize; 5] = [256, 512, 1024, 2048, 4096];

fn levels() -> Vec<SimdLevel> {
    [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni]
        .into_iter()
        .filter(|&l| l <= detect())
        .collect()
}

fn row_bytes(t: GgmlType, n: usize) -> usize {
    n / QK_K * t.type_size()
}

/// Box-Muller gaussian.
fn gauss(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.gen_range(1e-7f32..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

fn gauss_vec(rng: &mut StdRng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n).map(|_| gauss(rng) * sigma).collect()
}

fn quantize(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; row_bytes(t, x.len())];
    hangar_kernels::quants::quantize_row(t, x, &mut out).unwrap();
    out
}

fn dequantize(t: GgmlType, b: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    hangar_kernels::quants::dequantize_row(t, b, &mut out).unwrap();
    out
}

/// A weight row of random bytes (every quant, scale and min value reachable) with
/// finite super-block scales.
fn random_weight_bytes(rng: &mut StdRng, t: GgmlType, n: usize, extreme: bool) -> Vec<u8> {
    let mut b: Vec<u8> = (0..row_bytes(t, n)).map(|_| rng.gen()).collect();
    let ts = t.type_size();
    for blk in b.chunks_exact_mut(ts) {
        let mut f16 = |scale: f32| {
            let v = if extreme {
                scale * 60000.0
            } else {
                scale * rng.gen_range(1e-4f32..0.1)
            };
            half::f16::from_f32(v).to_bits().to_le_bytes()
        };
        match t {
            GgmlType::Q6K => {
                let d = f16(1.0);
                blk[208..210].copy_from_slice(&d);
                if extreme {
                    blk[192..208].fill(0x80); // all scales -128
                    blk[..192].fill(0xff); // all quants 63
                }
            }
            _ => {
                let d = f16(1.0);
                let m = f16(0.5);
                blk[0..2].copy_from_slice(&d);
                blk[2..4].copy_from_slice(&m);
                if extreme {
                    blk[4..].fill(0xff); // scales/mins 63, quants max
                }
            }
        }
    }
    b
}

/// A Q8_K row of random quants (consistent bsums).
fn random_q8k(rng: &mut StdRng, n: usize, extreme: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(n / QK_K * 292);
    for _ in 0..n / QK_K {
        let mut b = BlockQ8K {
            d: if extreme {
                1000.0
            } else {
                rng.gen_range(1e-4f32..1.0)
            },
            qs: [0; 256],
            bsums: [0; 16],
        };
        for q in b.qs.iter_mut() {
            *q = if extreme {
                if rng.gen() {
                    127
                } else {
                    -127
                }
            } else {
                rng.gen_range(-127..=127)
            };
        }
        for g in 0..16 {
            b.bsums[g] = b.qs[16 * g..16 * g + 16].iter().map(|&q| q as i16).sum();
        }
        out.extend_from_slice(&b.d.to_le_bytes());
        out.extend(b.qs.iter().map(|&q| q as u8));
        for s in b.bsums {
            out.extend_from_slice(&s.to_le_bytes());
        }
    }
    out
}

/// Σ|w_i a_i| with dequantized values: the scale for tolerances.
fn abs_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f64 {
    let wf = dequantize(t, w, n);
    let af = dequantize(GgmlType::Q8K, a, n);
    wf.iter()
        .zip(&af)
        .map(|(x, y)| (*x as f64 * *y as f64).abs())
        .sum()
}

fn exact_dot(t: GgmlType, n: usize, w: &[u8], a: &[u8]) -> f64 {
    let wf = dequantize(t, w, n);
    let af = dequantize(GgmlType::Q8K, a, n);
    wf.iter().zip(&af).map(|(x, y)| *x as f64 * *y as f64).sum()
}

fn assert_close(got: f32, want: f32, scale: f64, tol: f64, what: &str) {
    let err = (got as f64 - want as f64).abs();
    assert!(
        err <= tol * scale.max(1e-30) && got.is_finite(),
        "{what}: got {got}, want {want}, err {err:e}, scale {scale:e}"
    );
}

#[test]
fn block_sizes_match_ggml() {
    use std::mem::size_of;
    assert_eq!(size_of::<kquants::BlockQ4K>(), GgmlType::Q4K.type_size());
    assert_eq!(size_of::<kquants::BlockQ5K>(), GgmlType::Q5K.type_size());
    assert_eq!(size_of::<kquants::BlockQ6K>(), GgmlType::Q6K.type_size());
    assert_eq!(size_of::<BlockQ8K>(), GgmlType::Q8K.type_size());
}

#[test]
fn scalar_dot_matches_dequantized_dot() {
    let mut rng = StdRng::seed_from_u64(1);
    for t in WTYPES {
        for &n in &SIZES {
            for extreme in [false, true] {
                let w = random_weight_bytes(&mut rng, t, n, extreme);
                let a = random_q8k(&mut rng, n, extreme);
                let got = kquants::vec_dot_scalar(t, n, &w, &a);
                let want = exact_dot(t, n, &w, &a) as f32;
                assert_close(
                    got,
                    want,
                    abs_dot(t, n, &w, &a),
                    1e-5,
                    &format!("{t} n={n}"),
                );
            }
            // Also on real quantized data.
            let w = quantize(t, &gauss_vec(&mut rng, n, 0.02));
            let a = quantize(GgmlType::Q8K, &gauss_vec(&mut rng, n, 1.0));
            let got = kquants::vec_dot_scalar(t, n, &w, &a);
            let want = exact_dot(t, n, &w, &a) as f32;
            assert_close(
                got,
                want,
                abs_dot(t, n, &w, &a),
                1e-5,
                &format!("{t} n={n} quantized"),
            );
        }
    }
}

#[test]
fn simd_vec_dot_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(2);
    for level in levels() {
        for t in WTYPES {
            for &n in &SIZES {
                for case in 0..3 {
                    let (w, a) = match case {
                        0 => (
                            random_weight_bytes(&mut rng, t, n, false),
                            random_q8k(&mut rng, n, false),
                        ),
                        1 => (
                            random_weight_bytes(&mut rng, t, n, true),
                            random_q8k(&mut rng, n, true),
                        ),
                        _ => (
                            quantize(t, &gauss_vec(&mut rng, n, 0.05)),
                            quantize(GgmlType::Q8K, &gauss_vec(&mut rng, n, 3.0)),
                        ),
                    };
                    let want = kquants::vec_dot_scalar(t, n, &w, &a);
                    let got = kquants::vec_dot_with(level, t, n, &w, &a);
                    let what = format!("{level:?} {t} n={n} case={case}");
                    assert_close(got, want, abs_dot(t, n, &w, &a), 1e-5, &what);
                }
            }
        }
    }
}

#[test]
fn dispatching_vec_dot_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(3);
    for t in WTYPES {
        let n = 1024;
        let w = random_weight_bytes(&mut rng, t, n, false);
        let a = random_q8k(&mut rng, n, false);
        let want = hangar_kernels::quants::vec_dot_scalar(t, n, &w, &a);
        let got = hangar_kernels::quants::vec_dot(t, n, &w, &a);
        assert_close(got, want, abs_dot(t, n, &w, &a), 1e-5, &format!("{t}"));
    }
}

#[test]
fn dot_tile_matches_scalar_per_pair() {
    let mut rng = StdRng::seed_from_u64(4);
    for level in levels() {
        for t in WTYPES {
            for &n in &[256usize, 768] {
                let wrow = row_bytes(t, n);
                let arow = row_bytes(GgmlType::Q8K, n);
                let (w_stride, a_stride) = (wrow + 7, arow + 3); // odd strides: unaligned rows
                let w: Vec<u8> = (0..5)
                    .flat_map(|_| {
                        let mut r = random_weight_bytes(&mut rng, t, n, false);
                        r.resize(w_stride, 0xAA);
                        r
                    })
                    .collect();
                let a: Vec<u8> = (0..9)
                    .flat_map(|_| {
                        let mut r = random_q8k(&mut rng, n, false);
                        r.resize(a_stride, 0x55);
                        r
                    })
                    .collect();
                for nr in 1..=5 {
                    for nc in 1..=9 {
                        let out_stride = nc + 2;
                        let mut out = vec![f32::NAN; nr * out_stride];
                        kquants::dot_tile_with(
                            level, t, n, &w, w_stride, nr, &a, a_stride, nc, &mut out, out_stride,
                        );
                        for r in 0..nr {
                            for c in 0..out_stride {
                                let got = out[r * out_stride + c];
                                if c >= nc {
                                    assert!(got.is_nan(), "{level:?} {t}: wrote outside the tile");
                                    continue;
                                }
                                let wr = &w[r * w_stride..r * w_stride + wrow];
                                let ac = &a[c * a_stride..c * a_stride + arow];
                                let want = kquants::vec_dot_scalar(t, n, wr, ac);
                                let what =
                                    format!("{level:?} {t} n={n} nr={nr} nc={nc} r={r} c={c}");
                                assert_close(got, want, abs_dot(t, n, wr, ac), 1e-5, &what);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn dispatching_dot_tile_matches_scalar() {
    let mut rng = StdRng::seed_from_u64(5);
    let n = 512;
    for t in WTYPES {
        let (wrow, arow) = (row_bytes(t, n), row_bytes(GgmlType::Q8K, n));
        let w: Vec<u8> = (0..3)
            .flat_map(|_| random_weight_bytes(&mut rng, t, n, false))
            .collect();
        let a: Vec<u8> = (0..4)
            .flat_map(|_| random_q8k(&mut rng, n, false))
            .collect();
        let mut out = vec![0f32; 12];
        hangar_kernels::quants::dot_tile(t, n, &w, wrow, 3, &a, arow, 4, &mut out, 4);
        for r in 0..3 {
            for c in 0..4 {
                let (wr, ac) = (&w[r * wrow..][..wrow], &a[c * arow..][..arow]);
                let want = kquants::vec_dot_scalar(t, n, wr, ac);
                assert_close(
                    out[r * 4 + c],
                    want,
                    abs_dot(t, n, wr, ac),
                    1e-5,
                    &format!("{t}"),
                );
            }
        }
    }
}

fn rms_rel_error(t: GgmlType, x: &[f32]) -> f64 {
    let y = dequantize(t, &quantize(t, x), x.len());
    let err: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let sig: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (err / sig).sqrt()
}

#[test]
fn quantization_error_bounds() {
    let mut rng = StdRng::seed_from_u64(6);
    let n = 16 * QK_K;
    // Gaussian weights, and heavy-tailed weights with outliers.
    let gaussian = gauss_vec(&mut rng, n, 0.02);
    let mut outliers = gauss_vec(&mut rng, n, 0.02);
    for i in (0..n).step_by(97) {
        outliers[i] *= 20.0;
    }
    let shifted: Vec<f32> = gauss_vec(&mut rng, n, 0.02)
        .iter()
        .map(|v| v + 0.03)
        .collect();
    for (name, x, bounds) in [
        ("gaussian", &gaussian, [0.085, 0.045, 0.022]),
        ("outliers", &outliers, [0.12, 0.065, 0.04]),
        ("shifted", &shifted, [0.06, 0.03, 0.022]),
    ] {
        let e: Vec<f64> = WTYPES.iter().map(|&t| rms_rel_error(t, x)).collect();
        eprintln!(
            "{name}: rel RMS error Q4_K {:.4} Q5_K {:.4} Q6_K {:.4}",
            e[0], e[1], e[2]
        );
        assert!(
            e[2] < e[1] && e[1] < e[0],
            "{name}: error not ordered Q6<Q5<Q4: {e:?}"
        );
        for (i, t) in WTYPES.iter().enumerate() {
            assert!(
                e[i] < bounds[i],
                "{name}: {t} error {} above {}",
                e[i],
                bounds[i]
            );
            assert!(e[i] > 1e-4, "{name}: {t} error {} suspiciously small", e[i]);
        }
    }
}

#[test]
fn quantize_degenerate_blocks() {
    for t in [GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K, GgmlType::Q8K] {
        for x in [vec![0f32; QK_K], vec![0.5f32; QK_K], vec![-3.0f32; QK_K]] {
            let y = dequantize(t, &quantize(t, &x), QK_K);
            for (a, b) in x.iter().zip(&y) {
                assert!(b.is_finite());
                assert!((a - b).abs() <= 0.02 * a.abs() + 1e-6, "{t}: {a} -> {b}");
            }
        }
        // A single nonzero element.
        let mut x = vec![0f32; QK_K];
        x[77] = -1.25;
        let y = dequantize(t, &quantize(t, &x), QK_K);
        assert!((y[77] + 1.25).abs() < 0.02, "{t}: spike -> {}", y[77]);
        // Types with mins may shift the zeros of the spike's own 32-element sub-block
        // by rounding (< half a step); everything else must stay exactly zero.
        for (i, v) in y.iter().enumerate() {
            let bound = if i / 32 == 77 / 32 && i != 77 {
                0.05
            } else {
                1e-6
            };
            assert!(i == 77 || v.abs() < bound, "{t}: spike leaked to {i}: {v}");
        }
    }
}

#[test]
fn q8k_quantization_and_bsums() {
    let mut rng = StdRng::seed_from_u64(7);
    for &n in &SIZES {
        let x: Vec<f32> = gauss_vec(&mut rng, n, 2.5);
        let q = quantize(GgmlType::Q8K, &x);
        assert_eq!(q.len(), n / QK_K * 292);
        for (bi, blk) in q.chunks_exact(292).enumerate() {
            let xs = &x[bi * QK_K..(bi + 1) * QK_K];
            let d = f32::from_le_bytes(blk[0..4].try_into().unwrap());
            let qs: Vec<i8> = blk[4..260].iter().map(|&b| b as i8).collect();
            let amax_i = (0..QK_K)
                .max_by(|&i, &j| xs[i].abs().total_cmp(&xs[j].abs()))
                .unwrap();
            // The largest magnitude maps to -127 (ggml's sign convention: d = max / -127).
            assert_eq!(qs[amax_i], -127, "block {bi}");
            assert!((d - xs[amax_i] / -127.0).abs() <= 1e-6 * d.abs());
            for g in 0..16 {
                let bs = i16::from_le_bytes(blk[260 + 2 * g..262 + 2 * g].try_into().unwrap());
                let want: i32 = qs[16 * g..16 * g + 16].iter().map(|&v| v as i32).sum();
                assert_eq!(bs as i32, want, "bsum {g} of block {bi}");
            }
            for (i, (&v, &qv)) in xs.iter().zip(&qs).enumerate() {
                assert!((-127..=127).contains(&qv));
                assert!((v - d * qv as f32).abs() <= 0.5001 * d.abs(), "element {i}");
            }
        }
    }
    // All-zero input: zero scale, zero quants and bsums.
    let q = quantize(GgmlType::Q8K, &[0f32; QK_K]);
    assert!(q.iter().all(|&b| b == 0));
}

#[test]
fn q8k_simd_quantization_is_bitwise_the_scalar_one() {
    let mut rng = StdRng::seed_from_u64(19);
    let as_bytes = |b: &BlockQ8K| {
        let mut v = b.d.to_bits().to_le_bytes().to_vec();
        v.extend(b.qs.iter().map(|&q| q as u8));
        v.extend(b.bsums.iter().flat_map(|s| s.to_le_bytes()));
        v
    };
    let mut blocks: Vec<[f32; QK_K]> = Vec::new();
    for case in 0..200 {
        let mut x = [0f32; QK_K];
        for v in x.iter_mut() {
            *v = rng.gen_range(-3.0f32..3.0) * if case % 7 == 0 { 1e-30 } else { 1.0 };
        }
        match case % 5 {
            // Ties for the largest magnitude, of both signs: the first one wins.
            1 => {
                x[40] = -5.0;
                x[41] = 5.0;
                x[200] = 5.0;
            }
            // Products that land on .5 exactly (round half to even).
            2 => {
                for (i, v) in x.iter_mut().enumerate() {
                    *v = (i as f32 - 128.0) * 0.5;
                }
                x[0] = -127.0;
            }
            3 => x.iter_mut().step_by(3).for_each(|v| *v = 0.0),
            _ => {}
        }
        blocks.push(x);
    }
    blocks.push([0f32; QK_K]);
    let mut inf = [1f32; QK_K];
    inf[9] = f32::INFINITY;
    blocks.push(inf);
    let mut nan = [1f32; QK_K];
    nan[100] = f32::NAN;
    blocks.push(nan);
    for (i, x) in blocks.iter().enumerate() {
        assert_eq!(
            as_bytes(&kquants::quantize_q8k(x)),
            as_bytes(&kquants::quantize_q8k_scalar(x)),
            "block {i}"
        );
    }
}

#[test]
fn q4k_layout_known_block() {
    // Hand-built block: d = 1, dmin = 0.5; sub-block j has scale j+1 (j < 4) or
    // 40 + j (j >= 4, exercising the high bits) and min 2j (j < 4) or 50 + j.
    let ls: Vec<u8> = (0..8).map(|j| if j < 4 { j + 1 } else { 40 + j }).collect();
    let lm: Vec<u8> = (0..8).map(|j| if j < 4 { 2 * j } else { 50 + j }).collect();
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = ls[j] | ((ls[j + 4] >> 4) << 6);
        s[j + 4] = lm[j] | ((lm[j + 4] >> 4) << 6);
        s[j + 8] = (ls[j + 4] & 0xf) | ((lm[j + 4] & 0xf) << 4);
    }
    let mut blk = Vec::new();
    blk.extend_from_slice(&half::f16::from_f32(1.0).to_bits().to_le_bytes());
    blk.extend_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
    blk.extend_from_slice(&s);
    let quant = |i: usize| ((i * 7 + 3) % 16) as u8;
    for c in 0..4 {
        for l in 0..32 {
            blk.push(quant(64 * c + l) | (quant(64 * c + 32 + l) << 4));
        }
    }
    let y = dequantize(GgmlType::Q4K, &blk, QK_K);
    for (i, v) in y.iter().enumerate() {
        let j = i / 32;
        let want = ls[j] as f32 * quant(i) as f32 - 0.5 * lm[j] as f32;
        assert_eq!(*v, want, "element {i}");
    }
}
