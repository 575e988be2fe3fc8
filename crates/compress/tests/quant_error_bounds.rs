//! Quantize → dequantize error bounds for every target type, for the kernels'
//! reference quantizers and for this crate's importance-weighted ones: per-block
//! maximum errors from the block formulas (legacy types, floats) and relative RMSE
//! bounds (K-quants, whose scales are themselves quantized).

use hangar_compress::wquant;
use hangar_formats::GgmlType;
use hangar_kernels::quants;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = ((s >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
            // Mixed scales across blocks, heavy tails, some exact zeros.
            if i % 97 == 0 {
                0.0
            } else {
                (u * u * u * 6.0 + u * 0.3) * (1.0 + (i / 256) as f32)
            }
        })
        .collect()
}

fn roundtrip(ty: GgmlType, x: &[f32], weighted: bool) -> Vec<f32> {
    let mut q = vec![0u8; quants::row_bytes(ty, x.len())];
    if weighted {
        let imp: Vec<f32> = (0..x.len()).map(|j| 0.2 + (j % 5) as f32).collect();
        let mut w = vec![0f32; x.len()];
        wquant::element_weights(x, &imp, &mut w);
        wquant::quantize_row_weighted(ty, x, &w, &mut q).unwrap();
    } else {
        quants::quantize_row(ty, x, &mut q).unwrap();
    }
    let mut y = vec![0f32; x.len()];
    quants::dequantize_row(ty, &q, &mut y).unwrap();
    y
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
    let den: f64 = x.iter().map(|a| (*a as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn floats_round_to_nearest_representable() {
    let x = data(1024, 1);
    for (ty, ulp) in [
        (GgmlType::F16, 2f32.powi(-11)),
        (GgmlType::BF16, 2f32.powi(-8)),
    ] {
        let y = roundtrip(ty, &x, false);
        for (a, b) in x.iter().zip(&y) {
            assert!(
                (a - b).abs() <= a.abs() * ulp * 1.0001 + 1e-7,
                "{ty}: {a} -> {b}"
            );
        }
    }
}

#[test]
fn legacy_blocks_err_at_most_one_step() {
    // Block step d = amax / n; the reference maps the signed max to -n exactly, so the
    // only element that can be clamped is on the other side, by at most one step; every
    // other element is within half a step. The weighted search trades the error of
    // unimportant elements for important ones, so it is held to the RMSE bound only.
    let x = data(4096, 2);
    for (ty, n) in [
        (GgmlType::Q4_0, 8.0f32),
        (GgmlType::Q5_0, 16.0),
        (GgmlType::Q8_0, 127.0),
    ] {
        for weighted in [false, true] {
            let y = roundtrip(ty, &x, weighted);
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let amax = bx.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / n;
                for (a, b) in bx.iter().zip(by).filter(|_| !weighted) {
                    assert!(
                        (a - b).abs() <= d * 1.01 + 1e-6,
                        "{ty} weighted={weighted}: {a} -> {b}, step {d}"
                    );
                }
                // Exact zeros stay zero (pruned weights survive quantization).
                for (a, b) in bx.iter().zip(by) {
                    if *a == 0.0 && !weighted {
                        assert_eq!(*b, 0.0, "{ty}");
                    }
                }
            }
            let e = rel_rmse(&x, &y);
            let bound = match ty {
                GgmlType::Q4_0 => 0.12,
                GgmlType::Q5_0 => 0.06,
                _ => 0.006,
            } * if weighted { 1.3 } else { 1.0 };
            assert!(e < bound, "{ty} weighted={weighted}: rel rmse {e}");
        }
    }
}

#[test]
fn k_quants_stay_within_their_precision() {
    let x = data(4096, 3);
    for (ty, bound) in [
        (GgmlType::Q4K, 0.09),
        (GgmlType::Q5K, 0.045),
        (GgmlType::Q6K, 0.022),
    ] {
        for weighted in [false, true] {
            let y = roundtrip(ty, &x, weighted);
            let e = rel_rmse(&x, &y);
            let bound = bound * if weighted { 1.3 } else { 1.0 };
            assert!(e < bound, "{ty} weighted={weighted}: rel rmse {e}");
            if weighted {
                continue;
            }
            // No element is off by more than the sub-block range / levels (+ scale rounding).
            let levels = match ty {
                GgmlType::Q4K => 15.0,
                GgmlType::Q5K => 31.0,
                _ => 63.0,
            };
            let sub = if ty == GgmlType::Q6K { 16 } else { 32 };
            for (bx, by) in x.chunks(sub).zip(y.chunks(sub)) {
                let lo = bx.iter().copied().fold(0f32, f32::min);
                let hi = bx.iter().copied().fold(0f32, f32::max);
                let step = (hi - lo) / levels;
                for (a, b) in bx.iter().zip(by) {
                    assert!(
                        (a - b).abs() <= 2.0 * step + 1e-6,
                        "{ty} weighted={weighted}: {a} -> {b} (step {step})"
                    );
                }
            }
        }
    }
}
