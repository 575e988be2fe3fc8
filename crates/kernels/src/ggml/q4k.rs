//! Q4_K weights times f32 activations, bit-exact with ggml-cpu's CPU_REPACK path.
//!
//! On this build a Q4_K weight with `rows % 8 == 0` is repacked at load time into
//! `block_q4_Kx8` (eight rows interleaved; `ggml_repack_get_optimal_repack_type` picks
//! `q4_K_8x8_q8_K` because the CPU has AVX2), and MUL_MAT goes through
//! `repack.cpp: tensor_traits<block_q4_K, 8, 8, Q8_K>::forward_mul_mat`:
//!
//! * Activations are quantized to Q8_K per 256-value block. The first `n - n % 4` rows
//!   are quantized four at a time by `ggml_quantize_mat_q8_K_4x8` (AVX2 branch), the
//!   remaining `n % 4` rows by `quantize_row_q8_K` (= `quantize_row_q8_K_ref`, compiled
//!   into libggml-base without FMA).
//! * Every thread chunk spans all `n` activation rows and a range of weight rows (a
//!   multiple of 8). Inside a chunk `ggml_gemm_q4_K_8x8_q8_K` handles the first
//!   `n - n % 4` activation rows (only when `n > 3`) and `ggml_gemv_q4_K_8x8_q8_K` each
//!   of the remaining `n % 4` rows. So n = 1, 2, 3 is all gemv, n = 4, 8, 12, ... all
//!   gemm, and e.g. n = 6 is gemm for rows 0..4 and gemv for rows 4 and 5.
//! * Each output element is computed by one kernel invocation from start to end, and
//!   all kernel variants (AVX-512 16-column/16-row tiles, AVX2 8-column tiles, 4-row
//!   tails) share the same per-element float sequence, so the result does not depend
//!   on the number of threads or on how the weight rows are chunked.
//!
//! Integer parts are exact (no int16 saturation is reachable: a sub-block partial sum
//! is at most 16 * 15 * 127 = 30480). The float parts, per output element with weight
//! scales `d`, `dmin` (f16 -> f32) and activation block scale `d8`:
//!
//! * gemm: for every super-block and every pair of sub-blocks (64 values)
//!   `acc = fma(f32(sc0*dot0 + sc1*dot1), d*d8, acc)` and
//!   `accm = fma(f32(m0*bsum0 + m1*bsum1), dmin*d8, accm)`; result `acc - accm`.
//! * gemv: the same but one fma per super-block with the integer sums of all eight
//!   sub-blocks.

use half::f16;

/// Bytes of one `block_q4_K`: d (f16), dmin (f16), 12 bytes of 6-bit scales/mins,
/// 128 bytes of nibbles.
pub const BLOCK_BYTES: usize = 144;
const QK: usize = 256;

/// One activation row quantized to Q8_K.
struct Q8Row {
    /// Scale per 256-value block.
    d: Vec<f32>,
    qs: Vec<i8>,
    /// Sum of the quants of every 32-value sub-block.
    bsum: Vec<i32>,
}

fn bsums(qs: &[i8]) -> Vec<i32> {
    qs.chunks_exact(32)
        .map(|c| c.iter().map(|&q| q as i32).sum())
        .collect()
}

/// `quantize_row_q8_K_ref`: the sign of the scale follows the first element of
/// largest magnitude; rounding by the 1.5 * 2^23 trick (ties to even).
fn quantize_row_ref(x: &[f32]) -> Q8Row {
    let mut d = Vec::with_capacity(x.len() / QK);
    let mut qs = vec![0i8; x.len()];
    for (blk, q) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in blk {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            d.push(0.0);
            continue;
        }
        let iscale = -127.0f32 / max;
        for (o, &v) in q.iter_mut().zip(blk) {
            let t = iscale * v + 12582912.0f32;
            let i = (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000;
            *o = i.min(127) as i8;
        }
        d.push(1.0 / iscale);
    }
    let bsum = bsums(&qs);
    Q8Row { d, qs, bsum }
}

/// The per-row arithmetic of `ggml_quantize_mat_q8_K_4x8` (AVX2 branch): the scale is
/// negative whenever some element equals +amax, `_mm256_round_ps` to nearest even,
/// saturating packs.
fn quantize_row_4x8(x: &[f32]) -> Q8Row {
    let mut d = Vec::with_capacity(x.len() / QK);
    let mut qs = vec![0i8; x.len()];
    for (blk, q) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)) {
        let amax = blk
            .iter()
            .fold(0f32, |m, v| if m > v.abs() { m } else { v.abs() });
        let positive = blk.contains(&amax);
        let iscale = if amax == 0.0 {
            0.0
        } else if positive {
            -127.0f32 / amax
        } else {
            127.0f32 / amax
        };
        for (o, &v) in q.iter_mut().zip(blk) {
            *o = (v * iscale).round_ties_even().clamp(-128.0, 127.0) as i8;
        }
        d.push(if amax != 0.0 { 1.0 / iscale } else { 0.0 });
    }
    let bsum = bsums(&qs);
    Q8Row { d, qs, bsum }
}

/// One Q4_K weight row unpacked: per super-block d, dmin, 8 scales, 8 mins, and the
/// 4-bit quants in element order.
struct W4Row {
    d: Vec<f32>,
    dmin: Vec<f32>,
    sc: Vec<[i32; 8]>,
    m: Vec<[i32; 8]>,
    q: Vec<u8>,
}

fn unpack_row(row: &[u8]) -> W4Row {
    let nb = row.len() / BLOCK_BYTES;
    let mut w = W4Row {
        d: Vec::with_capacity(nb),
        dmin: Vec::with_capacity(nb),
        sc: Vec::with_capacity(nb),
        m: Vec::with_capacity(nb),
        q: Vec::with_capacity(nb * QK),
    };
    for blk in row.chunks_exact(BLOCK_BYTES) {
        w.d.push(f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32());
        w.dmin
            .push(f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32());
        let s = &blk[4..16];
        let (mut sc, mut m) = ([0i32; 8], [0i32; 8]);
        for j in 0..8 {
            let (a, b) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                (
                    (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
                    (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                )
            };
            sc[j] = a as i32;
            m[j] = b as i32;
        }
        w.sc.push(sc);
        w.m.push(m);
        for l in 0..4 {
            let qs = &blk[16 + 32 * l..48 + 32 * l];
            w.q.extend(qs.iter().map(|b| b & 0xf));
            w.q.extend(qs.iter().map(|b| b >> 4));
        }
    }
    w
}

/// Integer dot products of the eight 32-value sub-blocks of super-block `b`.
fn sub_dots(w: &W4Row, a: &Q8Row, b: usize) -> [i32; 8] {
    let mut dot = [0i32; 8];
    for (s, o) in dot.iter_mut().enumerate() {
        let k = b * QK + 32 * s;
        *o = w.q[k..k + 32]
            .iter()
            .zip(&a.qs[k..k + 32])
            .map(|(&q, &y)| q as i32 * y as i32)
            .sum();
    }
    dot
}

/// `ggml_gemm_q4_K_8x8_q8_K` for one output element (one fma per 64 values).
fn dot_gemm(w: &W4Row, a: &Q8Row) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for b in 0..w.d.len() {
        let dot = sub_dots(w, a, b);
        let (sc, m, bs) = (&w.sc[b], &w.m[b], &a.bsum[8 * b..8 * b + 8]);
        let ds = w.d[b] * a.d[b];
        let dm = w.dmin[b] * a.d[b];
        for p in 0..4 {
            let (s0, s1) = (2 * p, 2 * p + 1);
            let isum = sc[s0] * dot[s0] + sc[s1] * dot[s1];
            let imin = m[s0] * bs[s0] + m[s1] * bs[s1];
            acc = (isum as f32).mul_add(ds, acc);
            accm = (imin as f32).mul_add(dm, accm);
        }
    }
    acc - accm
}

/// `ggml_gemv_q4_K_8x8_q8_K` for one output element (one fma per super-block).
fn dot_gemv(w: &W4Row, a: &Q8Row) -> f32 {
    let (mut acc, mut accm) = (0f32, 0f32);
    for b in 0..w.d.len() {
        let dot = sub_dots(w, a, b);
        let (sc, m, bs) = (&w.sc[b], &w.m[b], &a.bsum[8 * b..8 * b + 8]);
        let isum: i32 = (0..8).map(|s| sc[s] * dot[s]).sum();
        let imin: i32 = (0..8).map(|s| m[s] * bs[s]).sum();
        acc = (isum as f32).mul_add(w.d[b] * a.d[b], acc);
        accm = (imin as f32).mul_add(w.dmin[b] * a.d[b], accm);
    }
    acc - accm
}

/// `out[j * rows + i] = W[i] · x[j]` exactly as ggml-cpu's repacked Q4_K MUL_MAT
/// computes it for batch size `n` (see the module doc). `w` is plain GGUF
/// `block_q4_K` data, `rows` rows of `cols` (a multiple of 256) values.
pub fn mul_mat_q4k(w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    assert_eq!(cols % QK, 0, "Q4_K rows must be whole super-blocks");
    let row_bytes = cols / QK * BLOCK_BYTES;
    assert_eq!(w.len(), rows * row_bytes);
    assert_eq!(x.len(), n * cols);
    assert_eq!(out.len(), n * rows);
    if rows == 0 || n == 0 {
        return;
    }
    let n_gemm = if n > 3 { n - n % 4 } else { 0 };
    let acts: Vec<Q8Row> = x
        .chunks_exact(cols)
        .enumerate()
        .map(|(j, r)| {
            if j < n_gemm {
                quantize_row_4x8(r)
            } else {
                quantize_row_ref(r)
            }
        })
        .collect();
    // Row-major scratch (i * n + j) so each thread owns a contiguous range.
    let mut tmp = vec![0f32; rows * n];
    let half = rows.div_ceil(2);
    std::thread::scope(|s| {
        for (t, chunk) in tmp.chunks_mut(half * n).enumerate() {
            let acts = &acts;
            s.spawn(move || {
                for (r, o) in chunk.chunks_exact_mut(n).enumerate() {
                    let i = t * half + r;
                    let wr = unpack_row(&w[i * row_bytes..(i + 1) * row_bytes]);
                    for (j, (o, a)) in o.iter_mut().zip(acts).enumerate() {
                        *o = if j < n_gemm {
                            dot_gemm(&wr, a)
                        } else {
                            dot_gemv(&wr, a)
                        };
                    }
                }
            });
        }
    });
    for i in 0..rows {
        for j in 0..n {
            out[j * rows + i] = tmp[i * n + j];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn f32(&mut self) -> f32 {
            ((self.next() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }
    }

    fn dequant_row(row: &[u8]) -> Vec<f64> {
        let w = unpack_row(row);
        let mut out = Vec::with_capacity(w.q.len());
        for b in 0..w.d.len() {
            for s in 0..8 {
                let scale = w.d[b] as f64 * w.sc[b][s] as f64;
                let min = w.dmin[b] as f64 * w.m[b][s] as f64;
                for k in 0..32 {
                    out.push(scale * w.q[b * QK + 32 * s + k] as f64 - min);
                }
            }
        }
        out
    }

    /// Random Q4_K weights against an f64 reference; the allowed error is the Q8_K
    /// rounding bound (half a step of each activation block) plus float slack.
    #[test]
    fn matches_f64_reference() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (rows, cols) = (24, 512);
        let mut w = vec![0u8; rows * cols / QK * BLOCK_BYTES];
        for blk in w.chunks_exact_mut(BLOCK_BYTES) {
            for b in blk.iter_mut() {
                *b = rng.next() as u8;
            }
            let d = f16::from_f32(0.001 + 0.01 * rng.f32().abs())
                .to_bits()
                .to_le_bytes();
            let dmin = f16::from_f32(0.001 + 0.01 * rng.f32().abs())
                .to_bits()
                .to_le_bytes();
            blk[..4].copy_from_slice(&[d[0], d[1], dmin[0], dmin[1]]);
        }
        for n in [1, 3, 4, 6, 9] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f32() * 3.0).collect();
            let mut out = vec![0f32; n * rows];
            mul_mat_q4k(&w, rows, cols, &x, n, &mut out);
            let row_bytes = cols / QK * BLOCK_BYTES;
            for i in 0..rows {
                let wr = dequant_row(&w[i * row_bytes..(i + 1) * row_bytes]);
                for j in 0..n {
                    let xr = &x[j * cols..(j + 1) * cols];
                    let (mut want, mut bound) = (0f64, 0f64);
                    for (wb, xb) in wr.chunks(QK).zip(xr.chunks(QK)) {
                        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
                        for (a, b) in wb.iter().zip(xb) {
                            want += a * *b as f64;
                            bound += a.abs() * (amax / 254.0 + 1e-6 * b.abs() as f64);
                        }
                    }
                    let got = out[j * rows + i] as f64;
                    assert!(
                        (got - want).abs() <= 1.01 * bound + 1e-4,
                        "n={n} row {i} col {j}: {got} vs {want} (bound {bound})"
                    );
                }
            }
        }
    }

    /// Both activation quantizers give identical products (their only difference,
    /// the sign of the scale when +amax and -amax both occur, cancels exactly).
    #[test]
    fn quantizer_sign_choice_cancels() {
        let mut x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[3] = -9.0;
        x[200] = 9.0;
        let (a, b) = (quantize_row_ref(&x), quantize_row_4x8(&x));
        assert_eq!(a.d[0], -b.d[0]);
        assert!(a.qs.iter().zip(&b.qs).all(|(p, q)| *p == -*q));
    }
}
