//! Bit-exact replica of ggml-cpu's MUL_MAT for Q5_0 and Q8_0 weights (f32
//! activations, which ggml first quantizes to Q8_0).
//!
//! What ggml does (x86-64, AVX2 + AVX-512 VL/VNNI build, `GGML_USE_LLAMAFILE`):
//!
//! * The f32 activations are quantized row by row with `quantize_row_q8_0`
//!   (arch/x86/quants.c, AVX2 branch). The threads split each row at 32-element
//!   block boundaries, and blocks are quantized independently, so the split does
//!   not matter. Replicated by [`quantize_row_q8_0`].
//! * `n == 1` (decode): `llamafile_sgemm` declines (`n < 2`), and
//!   `ggml_compute_forward_mul_mat_one_chunk` calls `ggml_vec_dot_q5_0_q8_0` /
//!   `ggml_vec_dot_q8_0_q8_0` (AVX2 branch, `nrows == 1`) once per output.
//! * `n >= 2` (prompt): `llamafile_sgemm` runs `tinyBLAS_Q0_AVX<block_q5_0 |
//!   block_q8_0, block_q8_0, float>` (tiles `gemm4xN`, `gemmMx4`, `gemm<RM,RN>`
//!   picked by `mnpack`).
//!
//! Both paths do the same arithmetic for every output element, whatever the tile
//! shape or thread split: eight f32 lanes, lane `l` owning elements `4l..4l+4` of
//! each block; per block, in order, `lane = fma(dw * dx, (f32)isum_l, lane)`
//! where `dw * dx` is the f32 product of the two f16 scales and `isum_l` the
//! exact `vpdpbusd` sum of `|w| * sign(x, w)` over the lane's four bytes; then the
//! horizontal sum `((l4 + l0) + (l6 + l2)) + ((l5 + l1) + (l7 + l3))`
//! (`hsum_float_8` / sgemm's `hsum(__m256)`). So one routine serves every `n`.
//!
//! Q8_0 scales are written with `GGML_CPU_FP32_TO_FP16`, which on this (non-MSVC,
//! F16C) build resolves to ggml's *software* `ggml_compute_fp32_to_fp16`, not
//! `_cvtss_sh` (the F16C branch only defines the `COMPUTE` macro); it rounds to
//! nearest-even like F16C for finite values and writes NaN as 0x7E00.

use crate::GgmlType;

/// Elements per block (Q5_0 and Q8_0).
const QK: usize = 32;
/// Bytes per block_q8_0: f16 d, 32 x i8.
const Q8_0_BYTES: usize = 34;
/// Bytes per block_q5_0: f16 d, u8 qh[4], u8 qs[16].
const Q5_0_BYTES: usize = 22;

/// Exact f16 -> f32 (ggml's lookup table holds exact conversions).
#[inline]
fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// ggml's `ggml_compute_fp32_to_fp16` (the bit trick from ggml-impl.h), as GCC
/// compiled it (the `base * scale_to_zero + bias` became one FMA; this cannot
/// change the result, but we follow it anyway).
fn fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 2^112
    let scale_to_zero = f32::from_bits(0x0880_0000); // 2^-110
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let bias = (shl1_w & 0xFF00_0000).max(0x7100_0000);
    let base =
        (f.abs() * scale_to_inf).mul_add(scale_to_zero, f32::from_bits((bias >> 1) + 0x0780_0000));
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

/// x86 `maxps`/`maxss`: `a > b ? a : b` (the second operand wins on NaN).
#[inline]
fn maxps(a: f32, b: f32) -> f32 {
    if a > b {
        a
    } else {
        b
    }
}

/// `cvtps2dq` of an already rounded value: out of range or NaN gives i32::MIN.
#[inline]
fn cvtps2dq(v: f32) -> i32 {
    if (-2147483648.0..2147483648.0).contains(&v) {
        v as i32
    } else {
        i32::MIN
    }
}

/// ggml's `quantize_row_q8_0` (arch/x86/quants.c, AVX2 branch): `x.len()` must be
/// a multiple of 32; `out` receives `x.len() / 32` block_q8_0 (34 bytes each:
/// f16 `d` little-endian, then 32 i8).
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) {
    assert_eq!(x.len() % QK, 0, "row length must be a multiple of 32");
    let nb = x.len() / QK;
    assert!(out.len() >= nb * Q8_0_BYTES, "output too short");
    for (xb, yb) in x.chunks_exact(QK).zip(out.chunks_exact_mut(Q8_0_BYTES)) {
        // max |x| over the block in the register order ggml uses
        let mut m = [0f32; 8];
        for (k, mk) in m.iter_mut().enumerate() {
            let mut v = xb[k].abs();
            for r in 1..4 {
                v = maxps(v, xb[r * 8 + k].abs());
            }
            *mk = v;
        }
        let m4 = [0, 1, 2, 3].map(|k| maxps(m[k + 4], m[k]));
        let m2 = [maxps(m4[0], m4[2]), maxps(m4[1], m4[3])];
        let amax = maxps(m2[0], m2[1]);

        let d = amax / 127.0;
        yb[..2].copy_from_slice(&fp32_to_fp16(d).to_le_bytes());
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        for (q, &v) in yb[2..].iter_mut().zip(xb) {
            let i = cvtps2dq(round_even(v * id));
            // packssdw + packsswb saturate to i8
            *q = i.clamp(-128, 127) as i8 as u8;
        }
    }
}

/// Round half to even without a libm call: the 1.5·2^23 trick is exact below 2^22.
#[inline]
fn round_even(y: f32) -> f32 {
    const M: f32 = 12_582_912.0;
    if y.abs() < 4_194_304.0 {
        (y + M) - M
    } else {
        y.round_ties_even()
    }
}

/// Signed weight values of one block plus its f32 scale.
#[derive(Clone, Copy)]
struct Block {
    d: f32,
    q: [i8; QK],
}

/// A Q8_0 block (weights or quantized activations).
#[inline]
fn load_q8_0(b: &[u8]) -> Block {
    let mut q = [0i8; QK];
    for (o, &v) in q.iter_mut().zip(&b[2..Q8_0_BYTES]) {
        *o = v as i8;
    }
    Block {
        d: f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        q,
    }
}

/// A Q5_0 block: element j < 16 is the low nibble of qs[j], j >= 16 the high
/// nibble of qs[j - 16]; bit j of qh is the fifth bit; value = that - 16.
#[inline]
fn load_q5_0(b: &[u8]) -> Block {
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let qs = &b[6..Q5_0_BYTES];
    let mut q = [0i8; QK];
    for j in 0..16 {
        let lo = qs[j] & 0x0F;
        let hi = qs[j] >> 4;
        let hb_lo = ((qh >> j) & 1) as u8;
        let hb_hi = ((qh >> (j + 16)) & 1) as u8;
        q[j] = ((lo | (hb_lo << 4)) as i8) - 16;
        q[j + 16] = ((hi | (hb_hi << 4)) as i8) - 16;
    }
    Block {
        d: f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        q,
    }
}

/// Weight block pre-split for `vpdpbusd(|w|, sign(x, w))`.
#[derive(Clone, Copy)]
struct WBlock {
    d: f32,
    /// |w| as the unsigned byte `vpsignb(w, w)` gives (w = -128 -> 128).
    abs: [i32; QK],
    /// sign of w: -1, 0 or 1.
    sgn: [i32; QK],
}

impl WBlock {
    fn new(b: &Block) -> WBlock {
        let mut abs = [0i32; QK];
        let mut sgn = [0i32; QK];
        for j in 0..QK {
            abs[j] = (b.q[j].wrapping_abs() as u8) as i32;
            sgn[j] = b.q[j].signum() as i32;
        }
        WBlock { d: b.d, abs, sgn }
    }
}

/// Activation block in the form the dot needs. `x` holds the activation bytes
/// as i32; `has_min` flags a -128 (only from non-finite input), for which
/// `vpsignb` wraps (-(-128) = -128) and the plain product would be wrong.
#[derive(Clone, Copy)]
struct XBlock {
    d: f32,
    x: [i32; QK],
    has_min: bool,
}

impl XBlock {
    fn new(b: &Block) -> XBlock {
        let x = b.q.map(|v| v as i32);
        XBlock {
            d: b.d,
            x,
            has_min: b.q.contains(&i8::MIN),
        }
    }
}

/// The eight `vpdpbusd` lane sums of one block pair.
#[inline]
fn lane_sums(w: &WBlock, x: &XBlock) -> [i32; 8] {
    let mut p = [0i32; QK];
    if !x.has_min {
        // |w| * sign(x, w) == w * x when x != -128
        for (j, pj) in p.iter_mut().enumerate() {
            *pj = w.abs[j] * w.sgn[j] * x.x[j];
        }
    } else {
        for (j, pj) in p.iter_mut().enumerate() {
            let sx = (x.x[j] as i8).wrapping_mul(w.sgn[j] as i8) as i32;
            *pj = w.abs[j] * sx;
        }
    }
    let mut s = [0i32; 8];
    for (l, sl) in s.iter_mut().enumerate() {
        *sl = p[4 * l] + p[4 * l + 1] + p[4 * l + 2] + p[4 * l + 3];
    }
    s
}

/// One output: `ggml_vec_dot_{q5_0,q8_0}_q8_0` / tinyBLAS_Q0_AVX for one (row,
/// column) pair.
#[inline]
fn dot(w: &[WBlock], x: &[XBlock]) -> f32 {
    let mut acc = [0f32; 8];
    for (wb, xb) in w.iter().zip(x) {
        let d = wb.d * xb.d;
        let s = lane_sums(wb, xb);
        for l in 0..8 {
            acc[l] = d.mul_add(s[l] as f32, acc[l]);
        }
    }
    hsum8(&acc)
}

/// `hsum_float_8` (quants.c) == `hsum(__m256)` (sgemm.cpp).
#[inline]
fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// Computes rows `r0..r1` of the product into `out` (`n` columns of `r1 - r0`).
fn mul_rows(
    ty: GgmlType,
    w: &[u8],
    nb: usize,
    (r0, r1): (usize, usize),
    xq: &[XBlock],
    n: usize,
    out: &mut [f32],
) {
    let (bytes, load): (usize, fn(&[u8]) -> Block) = match ty {
        GgmlType::Q8_0 => (Q8_0_BYTES, load_q8_0),
        GgmlType::Q5_0 => (Q5_0_BYTES, load_q5_0),
        _ => unreachable!(),
    };
    let row_bytes = nb * bytes;
    let len = r1 - r0;
    let mut wrow: Vec<WBlock> = Vec::with_capacity(nb);
    for i in r0..r1 {
        wrow.clear();
        let row = &w[i * row_bytes..(i + 1) * row_bytes];
        wrow.extend(row.chunks_exact(bytes).map(|b| WBlock::new(&load(b))));
        for j in 0..n {
            out[j * len + (i - r0)] = dot(&wrow, &xq[j * nb..(j + 1) * nb]);
        }
    }
}

/// `out[j * rows + i] = W[i] · x[j]` exactly as ggml-cpu's MUL_MAT computes it for
/// Q5_0 or Q8_0 weights `w` (`rows` x `cols`, GGUF block layout) and `n` f32
/// activation rows `x` (`n` x `cols`). Same arithmetic for `n == 1` (vec_dot) and
/// `n >= 2` (llamafile tinyBLAS_Q0_AVX); see the module docs.
pub fn mul_mat_legacy(
    ty: GgmlType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let bytes = match ty {
        GgmlType::Q8_0 => Q8_0_BYTES,
        GgmlType::Q5_0 => Q5_0_BYTES,
        other => panic!("mul_mat_legacy: unsupported weight type {other:?}"),
    };
    assert_eq!(cols % QK, 0, "cols must be a multiple of 32");
    let nb = cols / QK;
    assert!(w.len() >= rows * nb * bytes, "weight data too short");
    assert!(x.len() >= n * cols, "activations too short");
    assert!(out.len() >= n * rows, "output too short");

    // src1 -> Q8_0, row by row
    let mut qbuf = vec![0u8; nb * Q8_0_BYTES];
    let mut xq: Vec<XBlock> = Vec::with_capacity(n * nb);
    for j in 0..n {
        quantize_row_q8_0(&x[j * cols..(j + 1) * cols], &mut qbuf);
        xq.extend(
            qbuf.chunks_exact(Q8_0_BYTES)
                .map(|b| XBlock::new(&load_q8_0(b))),
        );
    }

    // Results do not depend on how rows are split, so split freely.
    let threads = if rows * nb * n >= 1 << 16 {
        std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(2)
    } else {
        1
    };
    if threads <= 1 {
        mul_rows(ty, w, nb, (0, rows), &xq, n, &mut out[..n * rows]);
        return;
    }
    let per = rows.div_ceil(threads);
    let ranges: Vec<(usize, usize)> = (0..threads)
        .map(|t| (t * per, ((t + 1) * per).min(rows)))
        .filter(|r| r.0 < r.1)
        .collect();
    let parts: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = ranges
            .iter()
            .map(|&(r0, r1)| {
                let xq = &xq;
                s.spawn(move || {
                    let mut part = vec![0f32; n * (r1 - r0)];
                    mul_rows(ty, w, nb, (r0, r1), xq, n, &mut part);
                    part
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("worker panicked"))
            .collect()
    });
    for (&(r0, r1), part) in ranges.iter().zip(&parts) {
        let len = r1 - r0;
        for j in 0..n {
            out[j * rows + r0..j * rows + r1].copy_from_slice(&part[j * len..(j + 1) * len]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Q8_0 test weights (any valid blocks will do).
    fn make_q8_0(x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len() / QK * Q8_0_BYTES];
        quantize_row_q8_0(x, &mut out);
        out
    }

    fn make_q5_0(x: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in x.chunks_exact(QK) {
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in b {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            let d = max / -16.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            out.extend_from_slice(&fp32_to_fp16(d).to_le_bytes());
            let mut qh = 0u32;
            let mut qs = [0u8; 16];
            for j in 0..16 {
                let x0 = ((b[j] * id + 16.5) as i32).min(31) as u32;
                let x1 = ((b[j + 16] * id + 16.5) as i32).min(31) as u32;
                qs[j] = (x0 & 0xF) as u8 | (((x1 & 0xF) as u8) << 4);
                qh |= ((x0 >> 4) & 1) << j;
                qh |= ((x1 >> 4) & 1) << (j + 16);
            }
            out.extend_from_slice(&qh.to_le_bytes());
            out.extend_from_slice(&qs);
        }
        out
    }

    fn dequant(ty: GgmlType, w: &[u8]) -> Vec<f32> {
        let (bytes, load): (usize, fn(&[u8]) -> Block) = match ty {
            GgmlType::Q8_0 => (Q8_0_BYTES, load_q8_0),
            _ => (Q5_0_BYTES, load_q5_0),
        };
        w.chunks_exact(bytes)
            .flat_map(|b| {
                let b = load(b);
                b.q.map(|q| q as f32 * b.d)
            })
            .collect()
    }

    #[test]
    fn fp16_matches_rne() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100_000 {
            let f = f32::from_bits(rng.gen::<u32>());
            if f.is_nan() {
                assert_eq!(fp32_to_fp16(f) & 0x7FFF, 0x7E00);
            } else {
                assert_eq!(fp32_to_fp16(f), half::f16::from_f32(f).to_bits(), "{f:e}");
            }
        }
    }

    #[test]
    fn quantizer_basics() {
        let mut x = [0f32; 32];
        for (i, v) in x.iter_mut().enumerate() {
            *v = i as f32 - 15.5;
        }
        x[3] = 127.0;
        let q = make_q8_0(&x);
        assert_eq!(u16::from_le_bytes([q[0], q[1]]), 0x3C00); // d = 1.0
        assert_eq!(q[2 + 3] as i8, 127);
        assert_eq!(q[2] as i8, -16); // -15.5 rounds to even
        assert_eq!(q[2 + 1] as i8, -14); // -14.5 -> -14
        let z = make_q8_0(&[0.0; 32]);
        assert!(z.iter().all(|&b| b == 0));
    }

    #[test]
    fn close_to_f64_and_batch_consistent() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let (rows, cols, n) = (37, 256, 5);
        let wf: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let x: Vec<f32> = (0..n * cols).map(|_| rng.gen_range(-2.0..2.0)).collect();
        for ty in [GgmlType::Q8_0, GgmlType::Q5_0] {
            let w = if ty == GgmlType::Q8_0 {
                make_q8_0(&wf)
            } else {
                make_q5_0(&wf)
            };
            let wd = dequant(ty, &w);
            let mut out = vec![0f32; n * rows];
            mul_mat_legacy(ty, &w, rows, cols, &x, n, &mut out);
            for j in 0..n {
                // exact reference on the quantized activations
                let mut xq = vec![0u8; cols / QK * Q8_0_BYTES];
                quantize_row_q8_0(&x[j * cols..(j + 1) * cols], &mut xq);
                let xd = dequant(GgmlType::Q8_0, &xq);
                let mut one = vec![0f32; rows];
                mul_mat_legacy(
                    ty,
                    &w,
                    rows,
                    cols,
                    &x[j * cols..(j + 1) * cols],
                    1,
                    &mut one,
                );
                for i in 0..rows {
                    let r: f64 = (0..cols)
                        .map(|c| wd[i * cols + c] as f64 * xd[c] as f64)
                        .sum();
                    let got = out[j * rows + i];
                    assert!(
                        (got as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
                        "{got} vs {r}"
                    );
                    // unquantized product, within the quantization error bound
                    let (mut r0, mut bound) = (0f64, 1e-4);
                    for c in 0..cols {
                        let (a, b) = (wf[i * cols + c] as f64, x[j * cols + c] as f64);
                        let (da, db) = (wd[i * cols + c] as f64 - a, xd[c] as f64 - b);
                        r0 += a * b;
                        bound += (da * b).abs() + (a * db).abs() + (da * db).abs();
                    }
                    assert!(
                        (got as f64 - r0).abs() <= bound,
                        "{got} vs {r0} (bound {bound})"
                    );
                    assert_eq!(got.to_bits(), one[i].to_bits());
                }
            }
        }
    }

    #[test]
    fn min_byte_follows_vpsignb() {
        // an infinite input quantizes to NaN*0 -> cvtps2dq -> i32::MIN -> -128
        let mut x = [1.0f32; 32];
        x[0] = f32::INFINITY;
        let q = make_q8_0(&x);
        assert_eq!(q[2] as i8, -128);
        let mut wq = [3i8; 32];
        wq[0] = -1;
        wq[1] = -2;
        wq[2] = 2;
        let w = WBlock::new(&Block { d: 1.0, q: wq });
        let mut xq = [5i8; 32];
        xq[0] = -128;
        xq[1] = -128;
        let xb = XBlock::new(&Block { d: 1.0, q: xq });
        // vpsignb(-128, w<0) wraps to -128, so |w| * -128 where w * x = +128 * |w|
        let s = lane_sums(&w, &xb);
        assert_eq!(s[0], -128 - 2 * 128 + 2 * 5 + 3 * 5);
        assert_eq!(s[1], 4 * 15);
    }
}
