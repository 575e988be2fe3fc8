//! Importance-weighted quantizers: the same block layouts as `hangar-kernels`' reference
//! quantizers, but scales chosen to minimise Σ wᵢ (xᵢ − x̂ᵢ)² for per-column weights
//! (from an importance matrix), instead of plain rounding from the block maximum.
//!
//! Owns the scale searches and the block packing; dequantization stays in the kernels
//! (the tests check every layout by dequantizing with them).

#![allow(clippy::needless_range_loop)] // block arithmetic indexes several arrays at once

use hangar_formats::GgmlType;
use hangar_kernels::quants::{self, KernelError};

const QK_K: usize = 256;

fn f16(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}
fn f16_back(v: f32) -> f32 {
    half::f16::from_f32(v).to_f32()
}

/// Quantizes one row with element weights `w` (same length as `x`, all ≥ 0). Types
/// without a weighted search here (Q8_0, floats) use the reference quantizer.
pub fn quantize_row_weighted(
    ty: GgmlType,
    x: &[f32],
    w: &[f32],
    dst: &mut [u8],
) -> Result<(), KernelError> {
    quants::check_len(ty, x.len())?;
    match ty {
        GgmlType::Q4_0 => legacy(x, w, dst, 8, 18, pack_q4_0),
        GgmlType::Q5_0 => legacy(x, w, dst, 16, 22, pack_q5_0),
        GgmlType::Q4K => {
            for (i, (xb, wb)) in x.chunks_exact(QK_K).zip(w.chunks_exact(QK_K)).enumerate() {
                k_asym(xb, wb, 15, &mut dst[i * 144..(i + 1) * 144]);
            }
        }
        GgmlType::Q5K => {
            for (i, (xb, wb)) in x.chunks_exact(QK_K).zip(w.chunks_exact(QK_K)).enumerate() {
                k_asym(xb, wb, 31, &mut dst[i * 176..(i + 1) * 176]);
            }
        }
        GgmlType::Q6K => {
            for (i, (xb, wb)) in x.chunks_exact(QK_K).zip(w.chunks_exact(QK_K)).enumerate() {
                q6k(xb, wb, &mut dst[i * 210..(i + 1) * 210]);
            }
        }
        _ => quants::quantize_row(ty, x, dst)?,
    }
    Ok(())
}

/// Whether [`quantize_row_weighted`] does anything different from the reference.
pub fn has_weighted(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K
    )
}

/// Element weights of one row from column importances: importance times a term that
/// grows with the weight's own magnitude (large weights matter more for the output).
pub fn element_weights(x: &[f32], importance: &[f32], out: &mut [f32]) {
    let sigma2 = x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32;
    for ((o, &v), &imp) in out.iter_mut().zip(x).zip(importance) {
        *o = imp * (sigma2 + v * v).sqrt();
    }
}

/// Symmetric search: `x ≈ d·l` with integer `l` in `[-nmax, nmax-1]`. Returns `d`.
fn sym_search(x: &[f32], w: &[f32], nmax: i32, l: &mut [i32]) -> f32 {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-30 {
        l.fill(0);
        return 0.0;
    }
    let mut best = (-1.0f64, 0.0f32);
    let mut tmp = vec![0i32; x.len()];
    let try_scale = |iscale: f32, tmp: &mut [i32]| -> Option<(f64, f32)> {
        let (mut sumlx, mut suml2) = (0.0f64, 0.0f64);
        for j in 0..x.len() {
            let q = ((iscale * x[j]).round() as i32).clamp(-nmax, nmax - 1);
            tmp[j] = q;
            sumlx += (w[j] * x[j]) as f64 * q as f64;
            suml2 += w[j] as f64 * (q * q) as f64;
        }
        (suml2 > 0.0).then(|| (sumlx * sumlx / suml2, (sumlx / suml2) as f32))
    };
    for is in -12..=12 {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        if let Some((score, d)) = try_scale(iscale, &mut tmp) {
            if score > best.0 {
                best = (score, d);
                l.copy_from_slice(&tmp);
            }
        }
    }
    // One refinement: round again at the fitted scale.
    if best.1 != 0.0 {
        if let Some((score, d)) = try_scale(1.0 / best.1, &mut tmp) {
            if score > best.0 {
                best = (score, d);
                l.copy_from_slice(&tmp);
            }
        }
    }
    if best.0 < 0.0 {
        l.fill(0);
        return 0.0;
    }
    best.1
}

/// Q4_0 / Q5_0: blocks of 32, one f16 scale, quants stored with an offset of `nmax`.
fn legacy(
    x: &[f32],
    w: &[f32],
    dst: &mut [u8],
    nmax: i32,
    bytes: usize,
    pack: fn(f32, &[i32], &mut [u8]),
) {
    let mut l = [0i32; 32];
    for (i, (xb, wb)) in x.chunks_exact(32).zip(w.chunks_exact(32)).enumerate() {
        let d = sym_search(xb, wb, nmax, &mut l);
        // Re-round at the scale as stored (f16).
        let d16 = f16_back(d);
        if d16 != 0.0 {
            for j in 0..32 {
                l[j] = ((xb[j] / d16).round() as i32).clamp(-nmax, nmax - 1);
            }
        }
        pack(d, &l, &mut dst[i * bytes..(i + 1) * bytes]);
    }
}

fn pack_q4_0(d: f32, l: &[i32], out: &mut [u8]) {
    out[..2].copy_from_slice(&f16(d).to_le_bytes());
    for j in 0..16 {
        let q0 = (l[j] + 8) as u8;
        let q1 = (l[j + 16] + 8) as u8;
        out[2 + j] = q0 | (q1 << 4);
    }
}

fn pack_q5_0(d: f32, l: &[i32], out: &mut [u8]) {
    out[..2].copy_from_slice(&f16(d).to_le_bytes());
    let mut qh = 0u32;
    for j in 0..16 {
        let q0 = (l[j] + 16) as u32;
        let q1 = (l[j + 16] + 16) as u32;
        out[6 + j] = ((q0 & 0xf) | ((q1 & 0xf) << 4)) as u8;
        qh |= ((q0 >> 4) & 1) << j;
        qh |= ((q1 >> 4) & 1) << (j + 16);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Asymmetric search: `x ≈ s·l − m` with `l` in `[0, nmax]`, `s > 0`, `m ≥ 0`.
/// Returns `(s, m)` and the quants in `l`.
fn asym_search(x: &[f32], w: &[f32], nmax: i32, l: &mut [i32]) -> (f32, f32) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min).min(0.0);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max <= min {
        l.fill(0);
        return (0.0, -min);
    }
    let sw: f64 = w.iter().map(|&v| v as f64).sum();
    let sx: f64 = w.iter().zip(x).map(|(&a, &b)| (a * b) as f64).sum();
    let mut best_err = f64::INFINITY;
    let mut best = (0.0f32, -min);
    let mut tmp = vec![0i32; x.len()];
    for is in 0..=24 {
        let iscale = (nmax as f32 - 1.2 + 0.1 * is as f32) / (max - min);
        let (mut sl, mut sl2, mut slx) = (0.0f64, 0.0f64, 0.0f64);
        for j in 0..x.len() {
            let q = ((iscale * (x[j] - min)).round() as i32).clamp(0, nmax);
            tmp[j] = q;
            let (wq, q) = (w[j] as f64 * q as f64, q as f64);
            sl += wq;
            sl2 += wq * q;
            slx += wq * x[j] as f64;
        }
        let det = sw * sl2 - sl * sl;
        if det <= 0.0 {
            continue;
        }
        let mut s = (sw * slx - sl * sx) / det;
        let mut b = (sl2 * sx - sl * slx) / det;
        if b > 0.0 {
            b = 0.0;
            s = slx / sl2;
        }
        if s <= 0.0 {
            continue;
        }
        let err: f64 = (0..x.len())
            .map(|j| {
                let e = s * tmp[j] as f64 + b - x[j] as f64;
                w[j] as f64 * e * e
            })
            .sum();
        if err < best_err {
            best_err = err;
            best = (s as f32, -b as f32);
            l.copy_from_slice(&tmp);
        }
    }
    if best_err.is_infinite() {
        // Degenerate weights (all zero): plain min/max rounding.
        let s = (max - min) / nmax as f32;
        for j in 0..x.len() {
            l[j] = (((x[j] - min) / s).round() as i32).clamp(0, nmax);
        }
        return (s, -min);
    }
    best
}

fn pack_scales_mins(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0xf) | ((lm[j] & 0xf) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Q4_K (`nmax` 15, 144 bytes) or Q5_K (`nmax` 31, 176 bytes): 8 sub-blocks of 32
/// with 6-bit scales and mins under two f16 super-scales.
fn k_asym(x: &[f32], w: &[f32], nmax: i32, out: &mut [u8]) {
    let mut l = [0i32; 32];
    let mut s = [0f32; 8];
    let mut m = [0f32; 8];
    for b in 0..8 {
        let (sb, mb) = asym_search(
            &x[32 * b..32 * b + 32],
            &w[32 * b..32 * b + 32],
            nmax,
            &mut l,
        );
        s[b] = sb;
        m[b] = mb;
    }
    let max_s = s.iter().copied().fold(0.0f32, f32::max);
    let max_m = m.iter().copied().fold(0.0f32, f32::max);
    let d = f16_back(max_s / 63.0);
    let dmin = f16_back(max_m / 63.0);
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for b in 0..8 {
        ls[b] = if d > 0.0 {
            (s[b] / d).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
        lm[b] = if dmin > 0.0 {
            (m[b] / dmin).round().clamp(0.0, 63.0) as u8
        } else {
            0
        };
    }
    let mut q = [0u8; QK_K];
    for b in 0..8 {
        let ds = d * ls[b] as f32;
        let dm = dmin * lm[b] as f32;
        for j in 0..32 {
            let i = 32 * b + j;
            q[i] = if ds > 0.0 {
                (((x[i] + dm) / ds).round() as i32).clamp(0, nmax) as u8
            } else {
                0
            };
        }
    }
    out[0..2].copy_from_slice(&f16(d).to_le_bytes());
    out[2..4].copy_from_slice(&f16(dmin).to_le_bytes());
    out[4..16].copy_from_slice(&pack_scales_mins(&ls, &lm));
    let (qh, qs) = if nmax == 15 {
        (None, &mut out[16..144])
    } else {
        let (a, b) = out[16..176].split_at_mut(32);
        (Some(a), b)
    };
    let mut hbits = [0u8; 32];
    for c in 0..4 {
        for l in 0..32 {
            let lo = q[64 * c + l];
            let hi = q[64 * c + 32 + l];
            qs[32 * c + l] = (lo & 0xf) | ((hi & 0xf) << 4);
            hbits[l] |= ((lo >> 4) & 1) << (2 * c);
            hbits[l] |= ((hi >> 4) & 1) << (2 * c + 1);
        }
    }
    if let Some(qh) = qh {
        qh.copy_from_slice(&hbits);
    }
}

/// Q6_K: 16 sub-blocks of 16 with i8 scales under one f16 super-scale; quants in
/// `[-32, 31]` stored +32.
fn q6k(x: &[f32], w: &[f32], out: &mut [u8]) {
    let mut l = [0i32; 16];
    let mut sc = [0f32; 16];
    for b in 0..16 {
        sc[b] = sym_search(&x[16 * b..16 * b + 16], &w[16 * b..16 * b + 16], 32, &mut l);
    }
    let mut max_abs = 0.0f32;
    let mut max_scale = 0.0f32;
    for &s in &sc {
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = s;
        }
    }
    let mut q = [0u8; QK_K];
    let mut isc = [0i8; 16];
    let d = if max_abs < 1e-30 {
        q.fill(32);
        0.0
    } else {
        let iscale = -128.0 / max_scale;
        for b in 0..16 {
            isc[b] = ((iscale * sc[b]).round() as i32).clamp(-128, 127) as i8;
        }
        let d = f16_back(1.0 / iscale);
        for b in 0..16 {
            let dl = d * isc[b] as f32;
            for j in 0..16 {
                let i = 16 * b + j;
                let v = if dl != 0.0 {
                    ((x[i] / dl).round() as i32).clamp(-32, 31)
                } else {
                    0
                };
                q[i] = (v + 32) as u8;
            }
        }
        d
    };
    let (ql, rest) = out.split_at_mut(128);
    let (qh, rest) = rest.split_at_mut(64);
    ql.fill(0);
    qh.fill(0);
    for (i, &v) in q.iter().enumerate() {
        let h = i / 128;
        let k = (i % 128) / 32;
        let li = i % 32;
        let byte = 64 * h + 32 * (k & 1) + li;
        if k < 2 {
            ql[byte] |= v & 0xf;
        } else {
            ql[byte] |= (v & 0xf) << 4;
        }
        qh[32 * h + li] |= (v >> 4) << (2 * k);
    }
    for b in 0..16 {
        rest[b] = isc[b] as u8;
    }
    rest[16..18].copy_from_slice(&f16(d).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f32) / (1u64 << 24) as f32 - 0.5;
                // Heavy-ish tails, like real weights.
                u * u * u * 8.0 + u * 0.5
            })
            .collect()
    }

    fn werr(ty: GgmlType, x: &[f32], w: &[f32], q: &[u8]) -> f64 {
        let mut y = vec![0f32; x.len()];
        quants::dequantize_row(ty, q, &mut y).unwrap();
        x.iter()
            .zip(&y)
            .zip(w)
            .map(|((a, b), w)| (*w as f64) * ((a - b) as f64).powi(2))
            .sum::<f64>()
            / w.iter().map(|&v| v as f64).sum::<f64>()
    }

    #[test]
    fn weighted_quantizers_beat_the_reference_on_weighted_error() {
        let n = 1024;
        let x = data(n, 3);
        // Importance concentrated on a few columns, as real activations are.
        let imp: Vec<f32> = (0..n)
            .map(|j| if j % 7 == 0 { 50.0 } else { 0.5 })
            .collect();
        let mut w = vec![0f32; n];
        element_weights(&x, &imp, &mut w);
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let rb = quants::row_bytes(ty, n);
            let (mut a, mut b) = (vec![0u8; rb], vec![0u8; rb]);
            quants::quantize_row(ty, &x, &mut a).unwrap();
            quantize_row_weighted(ty, &x, &w, &mut b).unwrap();
            let (ea, eb) = (werr(ty, &x, &imp, &a), werr(ty, &x, &imp, &b));
            assert!(eb < ea * 0.95, "{ty}: weighted {eb} vs reference {ea}");
        }
    }

    #[test]
    fn uniform_weights_stay_close_to_the_reference() {
        let n = 512;
        let x = data(n, 11);
        let ones = vec![1f32; n];
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let rb = quants::row_bytes(ty, n);
            let (mut a, mut b) = (vec![0u8; rb], vec![0u8; rb]);
            quants::quantize_row(ty, &x, &mut a).unwrap();
            quantize_row_weighted(ty, &x, &ones, &mut b).unwrap();
            let (ea, eb) = (werr(ty, &x, &ones, &a), werr(ty, &x, &ones, &b));
            assert!(eb < ea * 1.1, "{ty}: weighted {eb} vs reference {ea}");
        }
    }

    #[test]
    fn zero_rows_quantize_to_zero() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
        ] {
            let x = vec![0f32; 256];
            let mut q = vec![0u8; quants::row_bytes(ty, 256)];
            quantize_row_weighted(ty, &x, &[1.0; 256], &mut q).unwrap();
            let mut y = vec![1f32; 256];
            quants::dequantize_row(ty, &q, &mut y).unwrap();
            assert!(y.iter().all(|&v| v == 0.0), "{ty}");
        }
    }
}
