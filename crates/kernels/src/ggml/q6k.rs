//! Q6_K weights times f32 activations, bit for bit as ggml-cpu's MUL_MAT computes it
//! (x86-64 build with AVX2/FMA/AVX-512 VNNI, see the module doc of `ggml`).
//!
//! ggml first quantizes every activation row to Q8_K (`quantize_row_q8_K`, which on
//! x86 is the scalar `quantize_row_q8_K_ref` of ggml-base, built without FMA), then
//! picks one of two kernels by the batch size `n` (src1->ne[1]):
//!
//! - `n < 8`: the stock path, `ggml_vec_dot_q6_K_q8_K` (its `__AVX2__` branch) once per
//!   (weight row, activation row). Per 256-block it forms eight exact i32 lane sums,
//!   scales them by `d = d_x * d_w` (one f32 product) with an FMA into eight f32
//!   lanes, and reduces the lanes pairwise at the end (`hsum_float_8`).
//!   llamafile_sgemm does not take Q6_K, and Q6_K has no x86 repack.
//! - `n >= 8`: the tiled K-quant matmul (`ggml_compute_forward_mul_mat_tiled`, VNNI
//!   microkernel `tiled_run_micro_vnni_8x16<16, false, 32, ..>`). Per 256-block it
//!   forms the block's exact integer sum, then `r = (float)isum * d_w` and
//!   `acc = fma(r, d_x, acc)` (GCC contracts the intrinsics' mul + add; checked in the
//!   disassembly), blocks in K order. Narrow (n_src1 <= 16, K read in 512-element
//!   slabs here) and standard windows do the same arithmetic per element, and the
//!   2-thread chunking only moves whole elements between threads, so no result
//!   depends on the tile or thread split.
//!
//! Both kernels' integer sums are exact (no i16 saturation in maddubs: 2*63*127 <
//! 32767; no i32 overflow), so only the float steps above need mirroring.

use std::thread;

/// Elements per K-quant block.
pub const QK_K: usize = 256;
/// Bytes of a GGUF `block_q6_K`: ql[128], qh[64], scales i8[16], d f16.
pub const Q6K_BLOCK_BYTES: usize = 210;
/// Bytes of a ggml `block_q8_K`: d f32, qs i8[256], bsums i16[16].
pub const Q8K_BLOCK_BYTES: usize = 292;
/// Smallest batch (src1 rows) for which ggml takes the tiled matmul.
pub const TILED_MIN_BATCH: usize = 8;

/// One quantized activation block (ggml `block_q8_K`).
#[derive(Clone)]
struct Q8K {
    d: f32,
    qs: [i8; QK_K],
    bsums: [i16; 16],
}

/// `nearest_int` of ggml-quants.c: round to nearest even through the 1.5*2^23 trick.
#[inline]
fn nearest_int(v: f32) -> i32 {
    let t = v + 12_582_912.0f32;
    (t.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `quantize_row_q8_K_ref` for one 256-block. ggml leaves `bsums` untouched for an
/// all-zero block (stale buffer contents); they are multiplied by `d = 0` there, so
/// zeros here give the same results.
fn quantize_block(x: &[f32]) -> Q8K {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in &x[..QK_K] {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    let mut b = Q8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; 16],
    };
    if amax == 0.0 {
        return b;
    }
    let iscale = -127.0f32 / max;
    for (q, &v) in b.qs.iter_mut().zip(&x[..QK_K]) {
        *q = nearest_int(iscale * v).min(127) as i8;
    }
    for (s, c) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = c.iter().map(|&q| q as i32).sum::<i32>() as i16;
    }
    b.d = 1.0 / iscale;
    b
}

fn quantize_row(x: &[f32]) -> Vec<Q8K> {
    assert!(
        x.len().is_multiple_of(QK_K),
        "row length {} is not a multiple of 256",
        x.len()
    );
    x.chunks_exact(QK_K).map(quantize_block).collect()
}

/// ggml's x86 `quantize_row_q8_K`: `x.len()` (a multiple of 256) floats into
/// `x.len() / 256` `block_q8_K`s of 292 bytes (f32 d, 256 i8, 16 i16 bsums, little
/// endian). All-zero blocks get zero bsums (ggml leaves them unwritten).
pub fn quantize_row_q8_k(x: &[f32], out: &mut [u8]) {
    let blocks = quantize_row(x);
    assert!(
        out.len() >= blocks.len() * Q8K_BLOCK_BYTES,
        "output too short"
    );
    for (b, o) in blocks.iter().zip(out.chunks_exact_mut(Q8K_BLOCK_BYTES)) {
        o[..4].copy_from_slice(&b.d.to_le_bytes());
        for (dst, &q) in o[4..4 + QK_K].iter_mut().zip(&b.qs) {
            *dst = q as u8;
        }
        for (dst, s) in o[4 + QK_K..].chunks_exact_mut(2).zip(&b.bsums) {
            dst.copy_from_slice(&s.to_le_bytes());
        }
    }
}

/// One Q6_K block unpacked: 6-bit codes 0..=63 (value = code - 32) in element order,
/// per-16 scales, d widened to f32.
#[derive(Clone)]
struct Q6KUnpacked {
    d: f32,
    q: [u8; QK_K],
    sc: [i8; 16],
}

fn unpack_q6k(b: &[u8]) -> Q6KUnpacked {
    let (ql, rest) = b.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(16);
    let mut u = Q6KUnpacked {
        d: half::f16::from_bits(u16::from_le_bytes([d[0], d[1]])).to_f32(),
        q: [0; QK_K],
        sc: [0; 16],
    };
    for (s, &v) in u.sc.iter_mut().zip(scales) {
        *s = v as i8;
    }
    for h in 0..2 {
        let (ql, qh, q) = (&ql[64 * h..], &qh[32 * h..], &mut u.q[128 * h..]);
        for l in 0..32 {
            let hb = qh[l];
            q[l] = (ql[l] & 0xf) | (hb & 3) << 4;
            q[l + 32] = (ql[l + 32] & 0xf) | ((hb >> 2) & 3) << 4;
            q[l + 64] = (ql[l] >> 4) | ((hb >> 4) & 3) << 4;
            q[l + 96] = (ql[l + 32] >> 4) | ((hb >> 6) & 3) << 4;
        }
    }
    u
}

/// The eight i32 lanes of `sumi` in the AVX2 `ggml_vec_dot_q6_K_q8_K` for one block:
/// lane p holds, over the eight 32-element groups g, scale[2g + p/4] times the dot of
/// elements 4p..4p+4 of the group (maddubs + madd), minus
/// 32 * (bsums[2p]*scale[2p] + bsums[2p+1]*scale[2p+1]) (the -32 offset via bsums).
/// Their wrapping sum is the block's exact integer dot, which the tiled kernel uses.
#[inline]
fn block_lanes(w: &Q6KUnpacked, y: &Q8K) -> [i32; 8] {
    let mut lane = [0i32; 8];
    for g in 0..8 {
        let qg = &w.q[32 * g..32 * g + 32];
        let yg = &y.qs[32 * g..32 * g + 32];
        let mut quad = [0i32; 8];
        for (p, qd) in quad.iter_mut().enumerate() {
            for e in 4 * p..4 * p + 4 {
                *qd += qg[e] as i32 * yg[e] as i32;
            }
        }
        let (s0, s1) = (w.sc[2 * g] as i32, w.sc[2 * g + 1] as i32);
        for p in 0..8 {
            let s = if p < 4 { s0 } else { s1 };
            lane[p] = lane[p].wrapping_add(quad[p].wrapping_mul(s));
        }
    }
    for (p, l) in lane.iter_mut().enumerate() {
        let sub = (y.bsums[2 * p] as i32 * w.sc[2 * p] as i32)
            .wrapping_add(y.bsums[2 * p + 1] as i32 * w.sc[2 * p + 1] as i32);
        *l = l.wrapping_sub(sub << 5);
    }
    lane
}

/// `ggml_vec_dot_q6_K_q8_K`, AVX2 branch (the n < 8 path).
fn vec_dot(w: &[Q6KUnpacked], y: &[Q8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (wb, yb) in w.iter().zip(y) {
        let d = yb.d * wb.d;
        let lane = block_lanes(wb, yb);
        for (a, &l) in acc.iter_mut().zip(&lane) {
            *a = d.mul_add(l as f32, *a);
        }
    }
    // hsum_float_8: high half + low half, then movehl, then movehdup
    let r: [f32; 4] = std::array::from_fn(|i| acc[4 + i] + acc[i]);
    (r[0] + r[2]) + (r[1] + r[3])
}

/// One output of the tiled VNNI kernel (the n >= 8 path).
fn tiled_dot(w: &[Q6KUnpacked], y: &[Q8K]) -> f32 {
    let mut acc = 0f32;
    for (wb, yb) in w.iter().zip(y) {
        let isum = block_lanes(wb, yb)
            .iter()
            .fold(0i32, |a, &l| a.wrapping_add(l));
        let r = isum as f32 * wb.d;
        acc = r.mul_add(yb.d, acc);
    }
    acc
}

/// `out[j * rows + i]` = row i of the Q6_K matrix `w` (GGUF block layout, `rows` rows
/// of `cols` elements) times row j of `x` (`n` rows of `cols` f32), exactly as ggml's
/// MUL_MAT computes it for batch `n`: vec_dot for `n < 8`, the tiled kernel for
/// `n >= 8` (see the module doc).
pub fn mul_mat_q6k(w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    assert!(
        cols.is_multiple_of(QK_K),
        "cols {cols} is not a multiple of 256"
    );
    let nb = cols / QK_K;
    assert!(
        w.len() >= rows * nb * Q6K_BLOCK_BYTES,
        "weight data too short"
    );
    assert!(x.len() >= n * cols, "activations too short");
    assert!(out.len() >= n * rows, "output too short");
    if rows == 0 || n == 0 {
        return;
    }
    let xq: Vec<Vec<Q8K>> = x[..n * cols].chunks_exact(cols).map(quantize_row).collect();
    let tiled = n >= TILED_MIN_BATCH;

    // rows [r0, r1): unpack each weight row once, result in [i - r0][j] order
    let work = |r0: usize, r1: usize| -> Vec<f32> {
        let mut res = vec![0f32; (r1 - r0) * n];
        for i in r0..r1 {
            let wr: Vec<Q6KUnpacked> = w[i * nb * Q6K_BLOCK_BYTES..(i + 1) * nb * Q6K_BLOCK_BYTES]
                .chunks_exact(Q6K_BLOCK_BYTES)
                .map(unpack_q6k)
                .collect();
            for (j, y) in xq.iter().enumerate() {
                res[(i - r0) * n + j] = if tiled {
                    tiled_dot(&wr, y)
                } else {
                    vec_dot(&wr, y)
                };
            }
        }
        res
    };
    let mid = rows / 2;
    let (a, b) = if rows * n * nb >= 64 {
        thread::scope(|s| {
            let h = s.spawn(|| work(mid, rows));
            (work(0, mid), h.join().expect("q6k worker panicked"))
        })
    } else {
        (work(0, mid), work(mid, rows))
    };
    for (r0, part) in [(0, a), (mid, b)] {
        for (k, v) in part.into_iter().enumerate() {
            let (i, j) = (r0 + k / n, k % n);
            out[j * rows + i] = v;
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
            (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
    }

    fn rand_q6k(rng: &mut Rng, rows: usize, cols: usize) -> Vec<u8> {
        let mut w = vec![0u8; rows * cols / QK_K * Q6K_BLOCK_BYTES];
        for b in w.chunks_exact_mut(Q6K_BLOCK_BYTES) {
            for v in b[..208].iter_mut() {
                *v = rng.next() as u8;
            }
            let d = half::f16::from_f32(0.0005 + 0.001 * rng.f32().abs());
            b[208..].copy_from_slice(&d.to_le_bytes());
        }
        w
    }

    /// Straightforward dequantization (dequantize_row_q6_K).
    fn dequant(b: &[u8]) -> Vec<f64> {
        let d = half::f16::from_bits(u16::from_le_bytes([b[208], b[209]])).to_f64();
        let mut y = vec![0f64; QK_K];
        for h in 0..2 {
            let (ql, qh) = (&b[64 * h..], &b[128 + 32 * h..]);
            let sc = |k: usize| b[192 + 8 * h + k] as i8 as f64;
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xf) | (qh[l] & 3) << 4) as f64 - 32.0;
                let q2 = ((ql[l + 32] & 0xf) | ((qh[l] >> 2) & 3) << 4) as f64 - 32.0;
                let q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as f64 - 32.0;
                let q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as f64 - 32.0;
                y[128 * h + l] = d * sc(is) * q1;
                y[128 * h + l + 32] = d * sc(is + 2) * q2;
                y[128 * h + l + 64] = d * sc(is + 4) * q3;
                y[128 * h + l + 96] = d * sc(is + 6) * q4;
            }
        }
        y
    }

    #[test]
    fn q8k_layout_and_rounding() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let mut x: Vec<f32> = (0..512).map(|_| rng.f32() * 3.0).collect();
        x[256..].iter_mut().for_each(|v| *v = 0.0);
        x[7] = -5.0; // the largest magnitude: code -127, d = -max / 127 > 0
        let mut out = vec![0u8; 2 * Q8K_BLOCK_BYTES];
        quantize_row_q8_k(&x, &mut out);
        let d = f32::from_le_bytes(out[..4].try_into().unwrap());
        assert_eq!(d, 1.0 / (-127.0f32 / -5.0));
        assert_eq!(out[4 + 7] as i8, -127);
        for s in 0..16 {
            let want: i32 = (0..16).map(|k| out[4 + 16 * s + k] as i8 as i32).sum();
            let got = i16::from_le_bytes([out[260 + 2 * s], out[261 + 2 * s]]);
            assert_eq!(got as i32, want);
        }
        for (k, &v) in x[..256].iter().enumerate() {
            assert!((d * out[4 + k] as i8 as f32 - v).abs() <= d.abs() * 0.5001);
        }
        assert!(out[Q8K_BLOCK_BYTES..].iter().all(|&b| b == 0));
    }

    #[test]
    fn matches_f64_reference() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (rows, cols) = (37, 512);
        let w = rand_q6k(&mut rng, rows, cols);
        let wd: Vec<Vec<f64>> = w
            .chunks_exact(cols / QK_K * Q6K_BLOCK_BYTES)
            .map(|r| r.chunks_exact(Q6K_BLOCK_BYTES).flat_map(dequant).collect())
            .collect();
        for n in [1usize, 3, 7, 8, 12, 17] {
            let x: Vec<f32> = (0..n * cols).map(|_| rng.f32()).collect();
            let mut out = vec![f32::NAN; n * rows];
            mul_mat_q6k(&w, rows, cols, &x, n, &mut out);
            for j in 0..n {
                // reference on the Q8_K-rounded activations, so only float order differs
                let mut q = vec![0u8; cols / QK_K * Q8K_BLOCK_BYTES];
                quantize_row_q8_k(&x[j * cols..(j + 1) * cols], &mut q);
                let xq: Vec<f64> = q
                    .chunks_exact(Q8K_BLOCK_BYTES)
                    .flat_map(|b| {
                        let d = f32::from_le_bytes(b[..4].try_into().unwrap()) as f64;
                        b[4..4 + QK_K].iter().map(move |&v| d * v as i8 as f64)
                    })
                    .collect();
                for (i, wr) in wd.iter().enumerate() {
                    let want: f64 = wr.iter().zip(&xq).map(|(a, b)| a * b).sum();
                    let mag: f64 = wr.iter().zip(&xq).map(|(a, b)| (a * b).abs()).sum();
                    let got = out[j * rows + i] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * mag,
                        "n={n} i={i} j={j}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
