//! CPU twins of the kernels' arithmetic: the same block layouts and index math as
//! `deq8` in `kernels/common.cuh` (8 consecutive weights at a time, from the row's
//! bytes), so the tests can check them against the CPU kernels' dequantization. A
//! layout or index bug in a kernel shows up here, in CI, without a GPU.

use half::f16;
use hangar_formats::GgmlType;

pub mod stream;

fn h2f(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

fn scale_min_k4(j: usize, q: &[u8]) -> (i32, i32) {
    if j < 4 {
        ((q[j] & 63) as i32, (q[j + 4] & 63) as i32)
    } else {
        (
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as i32,
            ((q[j + 4] >> 4) | ((q[j] >> 6) << 4)) as i32,
        )
    }
}

/// The GPU kernels' `deq8`: weights `e..e + 8` (`e` a multiple of 8) of a row of type
/// `ty`. `None` for a type the kernels do not handle.
pub fn deq8(ty: GgmlType, row: &[u8], e: usize) -> Option<[f32; 8]> {
    let mut w = [0f32; 8];
    match ty {
        GgmlType::F32 => {
            for (i, v) in w.iter_mut().enumerate() {
                let at = 4 * (e + i);
                *v = f32::from_le_bytes([row[at], row[at + 1], row[at + 2], row[at + 3]]);
            }
        }
        GgmlType::F16 => {
            for (i, v) in w.iter_mut().enumerate() {
                *v = h2f(row, 2 * (e + i));
            }
        }
        GgmlType::BF16 => {
            for (i, v) in w.iter_mut().enumerate() {
                let at = 2 * (e + i);
                *v = f32::from_bits((u16::from_le_bytes([row[at], row[at + 1]]) as u32) << 16);
            }
        }
        GgmlType::Q8_0 => {
            let b = &row[(e >> 5) * 34..];
            let o = e & 31;
            let d = h2f(b, 0);
            for (i, v) in w.iter_mut().enumerate() {
                *v = d * (b[2 + o + i] as i8) as f32;
            }
        }
        GgmlType::Q4_0 => {
            let b = &row[(e >> 5) * 18..];
            let o = e & 31;
            let d = h2f(b, 0);
            let qs = &b[2..];
            for (i, v) in w.iter_mut().enumerate() {
                let q = if o < 16 {
                    qs[o + i] & 0xF
                } else {
                    qs[o - 16 + i] >> 4
                } as i32;
                *v = d * (q - 8) as f32;
            }
        }
        GgmlType::Q5_0 => {
            let b = &row[(e >> 5) * 22..];
            let o = e & 31;
            let d = h2f(b, 0);
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..];
            for (i, v) in w.iter_mut().enumerate() {
                let q = if o < 16 {
                    let j = o + i;
                    (qs[j] & 0xF) as u32 | (((qh >> j) & 1) << 4)
                } else {
                    let j = o - 16 + i;
                    (qs[j] >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4)
                } as i32;
                *v = d * (q - 16) as f32;
            }
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let q4 = ty == GgmlType::Q4K;
            let b = &row[(e >> 8) * if q4 { 144 } else { 176 }..];
            let (o, hi) = (e & 255, usize::from((e & 63) >= 32));
            let (c, l0) = (o >> 6, o & 31);
            let (d, dmin) = (h2f(b, 0), h2f(b, 2));
            let (sc, m) = scale_min_k4(2 * c + hi, &b[4..16]);
            let (d1, m1) = (d * sc as f32, dmin * m as f32);
            let qs = &b[if q4 { 16 } else { 48 }..];
            for (i, v) in w.iter_mut().enumerate() {
                let l = l0 + i;
                let mut q = if hi == 1 {
                    qs[32 * c + l] >> 4
                } else {
                    qs[32 * c + l] & 0xF
                } as i32;
                if !q4 {
                    q |= (((b[16 + l] >> (2 * c + hi)) & 1) as i32) << 4;
                }
                *v = d1 * q as f32 - m1;
            }
        }
        GgmlType::Q6K => {
            let b = &row[(e >> 8) * 210..];
            let o = e & 255;
            let (h, k, l0) = (o >> 7, (o & 127) >> 5, o & 31);
            let d = h2f(b, 208);
            let ds = d * (b[192 + (o >> 4)] as i8) as f32;
            let ql = &b[64 * h + 32 * (k & 1)..];
            let qh = &b[128 + 32 * h..];
            for (i, v) in w.iter_mut().enumerate() {
                let l = l0 + i;
                let lo = if k < 2 { ql[l] & 0xF } else { ql[l] >> 4 } as i32;
                let hb = ((qh[l] >> (2 * k)) & 3) as i32;
                *v = ds * ((lo | (hb << 4)) - 32) as f32;
            }
        }
        _ => return None,
    }
    Some(w)
}

/// A whole row through [`deq8`], as the GPU's GEMV and embedding kernels see it.
pub fn dequantize_row(ty: GgmlType, row: &[u8], cols: usize) -> Option<Vec<f32>> {
    let mut out = Vec::with_capacity(cols);
    for e in (0..cols).step_by(8) {
        out.extend_from_slice(&deq8(ty, row, e)?);
    }
    Some(out)
}

/// The GEMV kernel's arithmetic for one row and one token: each of 32 lanes sums its
/// 8-weight groups (stride 256) in order, then the lanes are combined by the warp's
/// butterfly (xor 16, 8, 4, 2, 1).
pub fn gemv_row(ty: GgmlType, row: &[u8], x: &[f32]) -> Option<f32> {
    let cols = x.len();
    let mut lanes = [0f32; 32];
    for (lane, acc) in lanes.iter_mut().enumerate() {
        let mut e = lane * 8;
        while e < cols {
            let w = deq8(ty, row, e)?;
            let a = &x[e..e + 8];
            *acc += w[0] * a[0]
                + w[1] * a[1]
                + w[2] * a[2]
                + w[3] * a[3]
                + w[4] * a[4]
                + w[5] * a[5]
                + w[6] * a[6]
                + w[7] * a[7];
            e += 256;
        }
    }
    let mut o = 16;
    while o > 0 {
        let prev = lanes;
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = prev[l] + prev[l ^ o];
        }
        o >>= 1;
    }
    Some(lanes[0])
}

/// The `gemv1_q4_k_wide` kernel's arithmetic for one Q4_K row: lane `l` takes the
/// 16-byte quant slice `l % 8` of blocks `l / 8`, `l / 8 + 4`, ...; per sub-block
/// `d sc sum(q x) - dmin m sum(x)`; lanes combined by the warp butterfly.
pub fn gemv_q4k_wide(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / 256;
    let mut lanes = [0f32; 32];
    for (lane, acc) in lanes.iter_mut().enumerate() {
        let (k, mut b) = (lane & 7, lane >> 3);
        let (c, l0) = (k >> 1, (k & 1) * 16);
        while b < nb {
            let blk = &row[b * 144..];
            let (d, dmin) = (h2f(blk, 0), h2f(blk, 2));
            let (sc1, m1) = scale_min_k4(2 * c, &blk[4..16]);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &blk[4..16]);
            let q = &blk[16 + 32 * c + l0..16 + 32 * c + l0 + 16];
            let xa = &x[b * 256 + 64 * c + l0..][..16];
            let xb = &x[b * 256 + 64 * c + 32 + l0..][..16];
            let (mut s_lo, mut s_hi, mut x_lo, mut x_hi) = (0f32, 0f32, 0f32, 0f32);
            for i in 0..4 {
                let (mut a, mut bb, mut sa, mut sb) = (0f32, 0f32, 0f32, 0f32);
                for j in 0..4 {
                    let v = q[4 * i + j];
                    a += (v & 0xF) as f32 * xa[4 * i + j];
                    bb += (v >> 4) as f32 * xb[4 * i + j];
                    sa += xa[4 * i + j];
                    sb += xb[4 * i + j];
                }
                s_lo += a;
                s_hi += bb;
                x_lo += sa;
                x_hi += sb;
            }
            *acc += d * sc1 as f32 * s_lo - dmin * m1 as f32 * x_lo + d * sc2 as f32 * s_hi
                - dmin * m2 as f32 * x_hi;
            b += 4;
        }
    }
    let mut o = 16;
    while o > 0 {
        let prev = lanes;
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = prev[l] + prev[l ^ o];
        }
        o >>= 1;
    }
    lanes[0]
}

/// The `gemv1_q6_k_wide` kernel's arithmetic for one Q6_K row (see the kernel).
pub fn gemv_q6k_wide(row: &[u8], x: &[f32]) -> f32 {
    let nb = x.len() / 256;
    let mut lanes = [0f32; 32];
    for (lane, acc) in lanes.iter_mut().enumerate() {
        let (k, mut b) = (lane & 7, lane >> 3);
        let (h, kp, ls) = (k >> 2, (k >> 1) & 1, k & 1);
        while b < nb {
            let blk = &row[b * 210..];
            let ql = &blk[64 * h + 32 * kp + 16 * ls..][..16];
            let qh = &blk[128 + 32 * h + 16 * ls..][..16];
            let d = h2f(blk, 208);
            let sa = (blk[192 + 8 * h + 2 * kp + ls] as i8) as f32;
            let sb = (blk[192 + 8 * h + 2 * (kp + 2) + ls] as i8) as f32;
            let xa = &x[b * 256 + 128 * h + 32 * kp + 16 * ls..][..16];
            let xb = &x[b * 256 + 128 * h + 32 * (kp + 2) + 16 * ls..][..16];
            let (mut s_a, mut s_b, mut x_a, mut x_b) = (0f32, 0f32, 0f32, 0f32);
            for j in 0..16 {
                let (q, hb) = (ql[j] as i32, qh[j] as i32);
                let va = (q & 0xF) | (((hb >> (2 * kp)) & 3) << 4);
                let vb = (q >> 4) | (((hb >> (2 * (kp + 2))) & 3) << 4);
                s_a += va as f32 * xa[j];
                s_b += vb as f32 * xb[j];
                x_a += xa[j];
                x_b += xb[j];
            }
            *acc += d * (sa * (s_a - 32.0 * x_a) + sb * (s_b - 32.0 * x_b));
            b += 4;
        }
    }
    let mut o = 16;
    while o > 0 {
        let prev = lanes;
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = prev[l] + prev[l ^ o];
        }
        o >>= 1;
    }
    lanes[0]
}

/// The `add_norm_q8c` kernel on one row split over a cluster of `cl` CTAs of `threads`
/// (kernels/mmvq.cu): `x += rmsnorm(o) * pw` (Gemma's post-norm; `x += o` without
/// `pw`), then `h = rmsnorm(x) * w`. Each CTA holds `n / cl` values, its thread `i`
/// values `i, i + threads, ..`; a sum of squares is each thread's f64 sum, the warps'
/// butterflies, the CTA's warps in order, then the CTAs in rank order. Returns the new
/// `x` and `h` (the kernel then quantizes `h` as `quantize_q8_1`).
pub fn add_norm_cluster(
    x: &[f32],
    o: Option<&[f32]>,
    pw: Option<&[f32]>,
    w: &[f32],
    eps: f32,
    cl: usize,
    threads: usize,
) -> (Vec<f32>, Vec<f32>) {
    let n = x.len();
    let m = n / cl;
    let sum_sq = |v: &[f32]| -> f64 {
        let mut total = 0f64;
        for cta in v.chunks(m) {
            let mut block = 0f64;
            for warp in 0..threads / 32 {
                let mut lanes = [0f64; 32];
                for (l, lane) in lanes.iter_mut().enumerate() {
                    let mut i = warp * 32 + l;
                    while i < m {
                        *lane += (cta[i] * cta[i]) as f64;
                        i += threads;
                    }
                }
                // The butterfly of warp_sum_d: lane 0's sum.
                let mut off = 16;
                while off > 0 {
                    let prev = lanes;
                    for (l, lane) in lanes.iter_mut().enumerate() {
                        *lane = prev[l] + prev[l ^ off];
                    }
                    off >>= 1;
                }
                block += lanes[0];
            }
            total += block;
        }
        total
    };
    let scale = |s: f64| 1.0 / ((s / n as f64) as f32 + eps).sqrt();
    let mut xs = x.to_vec();
    if let Some(o) = o {
        match pw {
            Some(pw) => {
                let sc = scale(sum_sq(o));
                for ((xv, &ov), &p) in xs.iter_mut().zip(o).zip(pw) {
                    *xv += ov * sc * p;
                }
            }
            None => xs.iter_mut().zip(o).for_each(|(xv, &ov)| *xv += ov),
        }
    }
    let sc = scale(sum_sq(&xs));
    let h = xs.iter().zip(w).map(|(&xv, &wv)| xv * sc * wv).collect();
    (xs, h)
}

/// The `quantize_q8_1` kernel: 32-wide blocks of `x` to int8 with `d = amax / 127`,
/// `q = round-half-even(x / d)`, and per block `[d, d * sum q]`.
pub fn quantize_q8_1(x: &[f32]) -> (Vec<i8>, Vec<[f32; 2]>) {
    let mut q = Vec::with_capacity(x.len());
    let mut ds = Vec::with_capacity(x.len() / 32);
    for blk in x.chunks(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let mut s = 0i32;
        for &v in blk {
            let qi = if amax == 0.0 {
                0
            } else {
                (v / d).round_ties_even() as i32
            };
            s += qi;
            q.push(qi as i8);
        }
        ds.push([d, d * s as f32]);
    }
    (q, ds)
}

/// The `quantize_cpu` kernel: `x` rounded as the CPU's fast path rounds a matrix input
/// (blk 32: ggml's q8_0 with its f16 scale; blk 256: ggml's q8_K), in the q8_1 layout
/// (per 32: `[d, d * sum q]`). `x.len()` is a multiple of `blk`.
pub fn quantize_cpu(x: &[f32], blk: usize) -> (Vec<i8>, Vec<[f32; 2]>) {
    let mut q = Vec::with_capacity(x.len());
    let mut ds = Vec::with_capacity(x.len() / 32);
    for b in x.chunks(blk) {
        let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (d, block): (f32, Vec<i32>) = if amax == 0.0 {
            (0.0, vec![0; b.len()])
        } else if blk == 256 {
            let first = b.iter().position(|v| v.abs() == amax).unwrap_or(0);
            let iscale = -127.0 / b[first];
            let qs = b
                .iter()
                .map(|&v| ((iscale * v).round_ties_even() as i32).min(127))
                .collect();
            (1.0 / iscale, qs)
        } else {
            let id = 127.0 / amax;
            let d = f16::from_f32(amax / 127.0).to_f32();
            let qs = b
                .iter()
                .map(|&v| ((v * id).round_ties_even() as i32).clamp(-128, 127))
                .collect();
            (d, qs)
        };
        for sub in block.chunks(32) {
            let s: i32 = sub.iter().sum();
            ds.push([d, d * s as f32]);
            q.extend(sub.iter().map(|&v| v as i8));
        }
    }
    (q, ds)
}

/// Partial sums of squares a lane preloads (`SSK` in kernels/mmvq.cu).
pub const SSK: usize = 4;

/// The `add_q8s` kernel (kernels/mmvq.cu, the deferred norm) on one row `x` of the
/// residual stream (after its add): `x * w` quantized as [`quantize_q8_1`] does, and
/// each 32-block's sum of squares of `x` (the warp's butterfly).
pub fn deferred_norm_q8(x: &[f32], w: &[f32]) -> (Vec<i8>, Vec<[f32; 2]>, Vec<f32>) {
    let xw: Vec<f32> = x.iter().zip(w).map(|(&a, &b)| a * b).collect();
    let (q, ds) = quantize_q8_1(&xw);
    let ss = x
        .chunks(32)
        .map(|blk| {
            let mut lanes = [0f32; 32];
            for (l, &v) in lanes.iter_mut().zip(blk) {
                *l = v * v;
            }
            butterfly(lanes)
        })
        .collect();
    (q, ds, ss)
}

/// The scale a GEMV reading a deferred-norm input applies to its sums (`ss_scale`):
/// `1 / sqrt(sum(ss) / n + eps)`, lane `l` adding `ss[l]`, `ss[l + 32]`, ... in order
/// (its first [`SSK`] preloaded, zeros past the end), then the warp's butterfly.
pub fn deferred_scale(ss: &[f32], n: usize, eps: f32) -> f32 {
    let mut lanes = [0f32; 32];
    for (l, lane) in lanes.iter_mut().enumerate() {
        let mut s = 0f32;
        for k in 0..SSK {
            s += ss.get(l + 32 * k).copied().unwrap_or(0.0);
        }
        let mut i = l + 32 * SSK;
        while i < ss.len() {
            s += ss[i];
            i += 32;
        }
        *lane = s;
    }
    1.0 / (butterfly(lanes) / n as f32 + eps).sqrt()
}

fn dot_i8(w: &[i32], x: &[i8]) -> i32 {
    w.iter().zip(x).map(|(&a, &b)| a * b as i32).sum()
}

/// A warp's xor butterfly (`warp_sum`, `warp_sum_d`): lane 0's total.
pub(crate) fn butterfly<T: Copy + std::ops::Add<Output = T>>(mut lanes: [T; 32]) -> T {
    let mut o = 16;
    while o > 0 {
        let prev = lanes;
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = prev[l] + prev[l ^ o];
        }
        o >>= 1;
    }
    lanes[0]
}

/// The `gemvq*` kernels' arithmetic (kernels/mmvq.cu) for one row and one token of
/// int8 activations from [`quantize_q8_1`]: the same lane split, integer dot products
/// per lane slice, the per-block float combination and the warp butterfly. `None` for
/// a type without an int8 kernel.
pub fn gemvq_row(ty: GgmlType, row: &[u8], xq: &[i8], xd: &[[f32; 2]]) -> Option<f32> {
    gemvq_row_split(ty, row, xq, xd, 1)
}

/// As [`gemvq_row`] with the row's weight blocks split over `parts` warps, as the
/// `mvs`/`mvp` kernels split them over four: warp `part` starts `part` lane-steps in,
/// each warp's lanes are summed by the butterfly, then the warps' sums in order.
pub fn gemvq_row_split(
    ty: GgmlType,
    row: &[u8],
    xq: &[i8],
    xd: &[[f32; 2]],
    parts: usize,
) -> Option<f32> {
    let mut total = 0f32;
    for part in 0..parts {
        total += gemvq_warp(ty, row, xq, xd, part, parts)?;
    }
    Some(total)
}

/// Lane `lane`'s share of K-quant block `b` of a row (`blk`: the block's bytes) in the
/// int8 GEMVs (`dot_k4`, `dot_q6k`, `StepQ4K::use`, `StepQ6K::use`): eight lanes a
/// block, each 32 of its weights.
pub(crate) fn kquant_lane(
    ty: GgmlType,
    blk: &[u8],
    b: usize,
    lane: usize,
    xq: &[i8],
    xd: &[[f32; 2]],
) -> f32 {
    let k = lane & 7;
    if ty == GgmlType::Q6K {
        let (h, kp, ls) = (k >> 2, (k >> 1) & 1, k & 1);
        let ql = &blk[64 * h + 32 * kp + 16 * ls..][..16];
        let qh = &blk[128 + 32 * h + 16 * ls..][..16];
        let (mut va, mut vb) = ([0i32; 16], [0i32; 16]);
        for (j, (&q, &hb)) in ql.iter().zip(qh).enumerate() {
            let (q, hb) = (q as i32, hb as i32);
            va[j] = ((q & 0xF) | (((hb >> (2 * kp)) & 3) << 4)) - 32;
            vb[j] = ((q >> 4) | (((hb >> (2 * kp + 4)) & 3) << 4)) - 32;
        }
        let d = h2f(blk, 208);
        let sa = (blk[192 + 8 * h + 2 * kp + ls] as i8) as f32;
        let sb = (blk[192 + 8 * h + 2 * (kp + 2) + ls] as i8) as f32;
        let qa = b * 8 + 4 * h + kp;
        let ia = dot_i8(&va, &xq[32 * qa + 16 * ls..][..16]);
        let ib = dot_i8(&vb, &xq[32 * (qa + 2) + 16 * ls..][..16]);
        return d * (sa * xd[qa][0] * ia as f32 + sb * xd[qa + 2][0] * ib as f32);
    }
    let q5 = ty == GgmlType::Q5K;
    let qs = if q5 { 48 } else { 16 };
    let (c, l0) = (k >> 1, (k & 1) * 16);
    let (d, dmin) = (h2f(blk, 0), h2f(blk, 2));
    let (sc1, m1) = scale_min_k4(2 * c, &blk[4..16]);
    let (sc2, m2) = scale_min_k4(2 * c + 1, &blk[4..16]);
    let q = &blk[qs + 32 * c + l0..][..16];
    let qh = &blk[16 + l0..][..16];
    let (mut lo, mut hi) = ([0i32; 16], [0i32; 16]);
    for (j, (&v, &h)) in q.iter().zip(qh).enumerate() {
        let h = if q5 { h as i32 } else { 0 };
        lo[j] = (v & 0xF) as i32 | (((h >> (2 * c)) & 1) << 4);
        hi[j] = (v >> 4) as i32 | (((h >> (2 * c + 1)) & 1) << 4);
    }
    let qa = b * 8 + 2 * c;
    let sa = dot_i8(&lo, &xq[32 * qa + l0..][..16]);
    let sb = dot_i8(&hi, &xq[32 * qa + 32 + l0..][..16]);
    let (da, db) = (xd[qa], xd[qa + 1]);
    let mut v = d * (sc1 as f32 * da[0] * sa as f32 + sc2 as f32 * db[0] * sb as f32);
    if l0 == 0 {
        v -= dmin * (m1 as f32 * da[1] + m2 as f32 * db[1]);
    }
    v
}

fn gemvq_warp(
    ty: GgmlType,
    row: &[u8],
    xq: &[i8],
    xd: &[[f32; 2]],
    part: usize,
    parts: usize,
) -> Option<f32> {
    let cols = xq.len();
    let mut lanes = [0f32; 32];
    match ty {
        GgmlType::Q4K | GgmlType::Q5K => {
            let bb = if ty == GgmlType::Q5K { 176 } else { 144 };
            for (lane, acc) in lanes.iter_mut().enumerate() {
                let mut b = (lane >> 3) + 4 * part;
                while b < cols / 256 {
                    *acc += kquant_lane(ty, &row[b * bb..], b, lane, xq, xd);
                    b += 4 * parts;
                }
            }
        }
        GgmlType::Q6K => {
            for (lane, acc) in lanes.iter_mut().enumerate() {
                let mut b = (lane >> 3) + 4 * part;
                while b < cols / 256 {
                    *acc += kquant_lane(ty, &row[b * 210..], b, lane, xq, xd);
                    b += 4 * parts;
                }
            }
        }
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => {
            let q4 = ty == GgmlType::Q4_0;
            let bb = match ty {
                GgmlType::Q4_0 => 18,
                GgmlType::Q5_0 => 22,
                _ => 34,
            };
            for (lane, acc) in lanes.iter_mut().enumerate() {
                let (p, mut b) = (lane & 3, (lane >> 2) + 8 * part);
                while b < cols / 32 {
                    let blk = &row[b * bb..];
                    let d = h2f(blk, 0);
                    let x = &xq[32 * b..][..32];
                    let s = if ty == GgmlType::Q5_0 {
                        let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                        let q = &blk[6 + 4 * p..][..4];
                        let bit = |j: usize| (((qh >> j) & 1) << 4) as i32;
                        let lo: Vec<i32> = (0..4)
                            .map(|i| ((q[i] & 0xF) as i32 | bit(4 * p + i)) - 16)
                            .collect();
                        let hi: Vec<i32> = (0..4)
                            .map(|i| ((q[i] >> 4) as i32 | bit(16 + 4 * p + i)) - 16)
                            .collect();
                        dot_i8(&lo, &x[4 * p..][..4]) + dot_i8(&hi, &x[16 + 4 * p..][..4])
                    } else if q4 {
                        let q = &blk[2 + 4 * p..][..4];
                        let lo: Vec<i32> = q.iter().map(|&v| (v & 0xF) as i32 - 8).collect();
                        let hi: Vec<i32> = q.iter().map(|&v| (v >> 4) as i32 - 8).collect();
                        dot_i8(&lo, &x[4 * p..][..4]) + dot_i8(&hi, &x[16 + 4 * p..][..4])
                    } else {
                        let w: Vec<i32> = blk[2 + 8 * p..][..8]
                            .iter()
                            .map(|&v| v as i8 as i32)
                            .collect();
                        dot_i8(&w, &x[8 * p..][..8])
                    };
                    *acc += d * xd[b][0] * s as f32;
                    b += 8 * parts;
                }
            }
        }
        _ => return None,
    }
    Some(butterfly(lanes))
}

/// One head through `qk_rope`'s steps as `qk_rope` and `attention_rope`
/// (kernels/layer.cu, kernels/attention.cu) compute them: RMSNorm with `nw` when given
/// (squares summed in f64 by 128 threads, thread i taking i, i + 128, ..., then the
/// warp and block butterflies of `block_sum_d`), the rotation of pair i by the f64
/// angle `pos * base^(-2i / n_rot) / ff[i]` (NEOX pairs (i, i + n_rot / 2), else
/// (2i, 2i + 1)), every value rounded to f16. `x` is the head as the QKV GEMV wrote it.
#[allow(clippy::too_many_arguments)]
pub fn rope_head(
    x: &[f32],
    nw: Option<&[f32]>,
    eps: f32,
    pos: usize,
    base: f64,
    n_rot: usize,
    ff: Option<&[f32]>,
    neox: bool,
) -> Vec<f32> {
    let hd = x.len();
    let mut xr = x.to_vec();
    if let Some(w) = nw {
        let mut warps = [0f64; 32];
        for (wi, warp) in warps.iter_mut().take(4).enumerate() {
            let mut lanes = [0f64; 32];
            for (l, lane) in lanes.iter_mut().enumerate() {
                let mut i = wi * 32 + l;
                while i < hd {
                    *lane += (xr[i] * xr[i]) as f64;
                    i += 128;
                }
            }
            *warp = butterfly(lanes);
        }
        let sq = butterfly(warps);
        let mean = (sq / hd as f64) as f32;
        let scale = 1.0 / (mean + eps).sqrt();
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
    let half = n_rot / 2;
    for i in 0..half {
        let mut f = base.powf(-2.0 * i as f64 / n_rot as f64);
        if let Some(ff) = ff {
            f /= ff[i] as f64;
        }
        let th = pos as f64 * f;
        let (c, s) = (th.cos() as f32, th.sin() as f32);
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (xr[a], xr[b]);
        xr[a] = x0 * c - x1 * s;
        xr[b] = x0 * s + x1 * c;
    }
    xr.iter()
        .map(|&v| half::f16::from_f32(v).to_f32())
        .collect()
}

/// Warps per block of the attention kernel (`ATT_WARPS` in kernels/attention.cu).
pub const ATT_WARPS: usize = 8;

/// The attention kernel's arithmetic for one query head of one token: the KV head it
/// reads (`h / (heads / kv_heads)`), the window, the paged addressing
/// (`table[p / bs]`, row `p % bs`, `kv_dim` values a row), [`ATT_WARPS`] warps taking
/// every ATT_WARPS-th position, lanes summing pairs of dimensions, probabilities
/// rounded to f16, and the warps' partial output sums added in order. `kc`/`vc` hold f16 values.
#[allow(clippy::too_many_arguments)]
pub fn attention_head(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    table: &[u32],
    bs: usize,
    shape: (usize, usize, usize),
    h: usize,
    pos: usize,
    window: usize,
    scale: f32,
) -> Vec<f32> {
    attention_head_split(
        q,
        kc,
        vc,
        table,
        bs,
        shape,
        h,
        pos,
        window,
        scale,
        usize::MAX,
    )
}

/// The first position query head `h` at `pos` sees (`lo`, past a window) and where a
/// position's row of its KV head starts in the paged cache (`table[p / bs]`, row
/// `p % bs`, `kv_heads * hd` values a row), as every attention kernel addresses them.
fn head_rows(
    table: &[u32],
    bs: usize,
    (heads, kv_heads, hd): (usize, usize, usize),
    h: usize,
    pos: usize,
    window: usize,
) -> (usize, impl Fn(usize) -> usize + '_) {
    let kh = h / (heads / kv_heads);
    let kvd = kv_heads * hd;
    let lo = if window > 0 {
        (pos + 1).saturating_sub(window)
    } else {
        0
    };
    (lo, move |p: usize| {
        (table[p / bs] as usize * bs + p % bs) * kvd + kh * hd
    })
}

/// [`attention_head`] as the split kernels compute it (`att_split_*`): positions in
/// chunks of `chunk`, each with its own max `m_s` and sum `l_s` of `exp(score - m_s)`;
/// the total `sum_s l_s exp(m_s - M)` normalises the f16-rounded probabilities; each
/// chunk's warps take every ATT_WARPS-th of its positions; chunk outputs added in order.
/// One chunk is the unsplit kernel.
#[allow(clippy::too_many_arguments)]
pub fn attention_head_split(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    table: &[u32],
    bs: usize,
    (heads, kv_heads, hd): (usize, usize, usize),
    h: usize,
    pos: usize,
    window: usize,
    scale: f32,
    chunk: usize,
) -> Vec<f32> {
    const WARPS: usize = ATT_WARPS;
    let (lo, off) = head_rows(table, bs, (heads, kv_heads, hd), h, pos, window);
    let n = pos + 1 - lo;
    let mut sc = vec![0f32; n];
    for (j, s) in sc.iter_mut().enumerate() {
        let o = off(lo + j);
        let mut lanes = [0f32; 32];
        for (lane, acc) in lanes.iter_mut().enumerate() {
            let mut d2 = lane;
            while d2 < hd / 2 {
                *acc += q[2 * d2] * kc[o + 2 * d2] + q[2 * d2 + 1] * kc[o + 2 * d2 + 1];
                d2 += 32;
            }
        }
        *s = lanes.iter().sum::<f32>() * scale;
    }
    let chunk = chunk.min(n).max(1);
    let ml: Vec<(f32, f32)> = sc
        .chunks(chunk)
        .map(|c| {
            let m = c.iter().copied().fold(f32::MIN, f32::max);
            (m, c.iter().map(|&s| (s - m).exp()).sum())
        })
        .collect();
    let big = ml.iter().map(|&(m, _)| m).fold(f32::MIN, f32::max);
    let sum: f32 = ml.iter().map(|&(m, l)| l * (m - big).exp()).sum();
    let inv = 1.0 / sum;
    let mut out = vec![0f32; hd];
    for (c, scs) in sc.chunks(chunk).enumerate() {
        let mut part = vec![vec![0f32; hd]; WARPS];
        for (i, &s) in scs.iter().enumerate() {
            let p = f16::from_f32((s - big).exp() * inv).to_f32();
            let o = off(lo + c * chunk + i);
            for (d, acc) in part[i % WARPS].iter_mut().enumerate() {
                *acc += p * vc[o + d];
            }
        }
        for (d, o) in out.iter_mut().enumerate() {
            *o += (0..WARPS).map(|w| part[w][d]).sum::<f32>();
        }
    }
    out
}

/// The tiled prefill kernel's arithmetic (`attention_tiled`) for one query head of one
/// token: scores as dot products in dimension order, the max and sum folded online in
/// position order (the sum rescaled when the max grows), probabilities
/// `f16(exp(s - max) * (1 / sum))`, and the output adding positions in order.
#[allow(clippy::too_many_arguments)]
pub fn attention_head_tiled(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    table: &[u32],
    bs: usize,
    (heads, kv_heads, hd): (usize, usize, usize),
    h: usize,
    pos: usize,
    window: usize,
    scale: f32,
) -> Vec<f32> {
    let (lo, off) = head_rows(table, bs, (heads, kv_heads, hd), h, pos, window);
    let scores: Vec<f32> = (lo..=pos)
        .map(|p| {
            let o = off(p);
            let mut a = 0f32;
            for d in 0..hd {
                a += q[d] * kc[o + d];
            }
            a * scale
        })
        .collect();
    let (mut m, mut l) = (-3.0e38f32, 0f32);
    for &s in &scores {
        if s > m {
            l *= (m - s).exp();
            m = s;
        }
        l += (s - m).exp();
    }
    let inv = 1.0 / l;
    let mut out = vec![0f32; hd];
    for (j, &s) in scores.iter().enumerate() {
        let p = f16::from_f32((s - m).exp() * inv).to_f32();
        let o = off(lo + j);
        for (d, acc) in out.iter_mut().enumerate() {
            *acc += p * vc[o + d];
        }
    }
    out
}

/// `sample_head`'s candidates (kernels/sample.cu) over an adjusted row: the k-th
/// largest order-preserving key found 8 bits a pass from the top (a histogram of the
/// keys that share the digits so far), then every key above it in any order (the
/// kernel's atomic slots) and the lowest ids of the keys equal to it (ranked in id
/// order over the threads' contiguous slices). Returns them unordered, as the kernel
/// writes them; `hangar_engine::sampler::head::reference` sorts the same set.
pub fn head_candidates(row: &[f32], threads: usize) -> Vec<(f32, u32)> {
    use hangar_engine::sampler::head::HEAD_CANDIDATES;
    let n = row.len();
    let k = HEAD_CANDIDATES.min(n);
    let val = |i: usize| {
        let l = row[i];
        if l.is_nan() {
            f32::NEG_INFINITY
        } else if l == 0.0 {
            0.0
        } else {
            l
        }
    };
    let key = |v: f32| {
        let b = v.to_bits();
        if b & 0x8000_0000 != 0 {
            !b
        } else {
            b | 0x8000_0000
        }
    };
    let (mut prefix, mut mask, mut remaining) = (0u32, 0u32, k);
    for shift in [24u32, 16, 8, 0] {
        let mut hist = [0usize; 256];
        for i in 0..n {
            let kk = key(val(i));
            if kk & mask == prefix {
                hist[((kk >> shift) & 255) as usize] += 1;
            }
        }
        let (mut cum, mut d) = (0usize, 255usize);
        while d > 0 && cum + hist[d] < remaining {
            cum += hist[d];
            d -= 1;
        }
        remaining -= cum;
        prefix |= (d as u32) << shift;
        mask |= 255 << shift;
    }
    let per = n.div_ceil(threads);
    let mut above = Vec::new();
    let mut equal = Vec::new();
    for t in 0..threads {
        for i in (t * per).min(n)..((t + 1) * per).min(n) {
            let v = val(i);
            match key(v).cmp(&prefix) {
                std::cmp::Ordering::Greater => above.push((v, i as u32)),
                std::cmp::Ordering::Equal => equal.push((v, i as u32)),
                std::cmp::Ordering::Less => {}
            }
        }
    }
    assert_eq!(above.len() + remaining, k, "the k-th key splits the row");
    above.reverse(); // any order: the kernel's slots are atomic
    above.extend(equal.into_iter().take(remaining));
    above
}

/// `greedy_pick` (kernels/layer.cu) for one row with `threads` threads: each thread's
/// strided scan (strict `>`, skipped ids out), then the reduction's order (larger
/// value, on a tie the lower index). Returns (id, value, the skipped ids' values).
pub fn greedy_pick(row: &[f32], skip: &[u32], threads: usize) -> (u32, f32, Vec<f32>) {
    let skipped = skip
        .iter()
        .map(|&s| row.get(s as usize).copied().unwrap_or(f32::NAN))
        .collect();
    let mut best = (f32::NEG_INFINITY, 0u32);
    for t in 0..threads.max(1) {
        let mut mine = (f32::NEG_INFINITY, 0u32);
        for i in (t..row.len()).step_by(threads.max(1)) {
            if row[i] > mine.0 && !skip.contains(&(i as u32)) {
                mine = (row[i], i as u32);
            }
        }
        if mine.0 > best.0 || (mine.0 == best.0 && mine.1 < best.1) {
            best = mine;
        }
    }
    (best.1, best.0, skipped)
}

/// The `mmq_q4_k` kernel (kernels/mmq.cu) for one Q4_K row and one token of int8
/// activations from [`quantize_q8_1`]: per 32-wide sub-block, the exact integer dot of
/// the 4-bit values with the int8 values (the tensor cores' s32 result), then
/// `acc = (acc + (d sc * dx) * dot) - (dmin m) * sx`, every step rounded, blocks and
/// sub-blocks in order.
pub fn mmq_q4k(row: &[u8], xq: &[i8], xd: &[[f32; 2]]) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(144).enumerate() {
        let (d, dmin) = (h2f(blk, 0), h2f(blk, 2));
        for j in 0..8 {
            let (sc, m) = scale_min_k4(j, &blk[4..16]);
            let (f, g) = (d * sc as f32, dmin * m as f32);
            let q = &blk[16 + 32 * (j / 2)..][..32];
            let xb = b * 8 + j;
            let x = &xq[32 * xb..][..32];
            let dot: i32 = q
                .iter()
                .zip(x)
                .map(|(&w, &v)| ((w >> (4 * (j & 1))) & 15) as i32 * v as i32)
                .sum();
            let [dx, sx] = xd[xb];
            acc = (acc + (f * dx) * dot as f32) - g * sx;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_kernels::quants;
    use rand::{Rng, SeedableRng};

    const TYPES: [GgmlType; 9] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    fn random_row(ty: GgmlType, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let src: Vec<f32> = (0..cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let mut bytes = vec![0u8; quants::row_bytes(ty, cols)];
        quants::quantize_row(ty, &src, &mut bytes).expect("quantize");
        let mut reference = vec![0f32; cols];
        quants::dequantize_row(ty, &bytes, &mut reference).expect("dequantize");
        (bytes, reference)
    }

    #[test]
    fn deq8_matches_the_cpu_dequantization_for_every_type() {
        for ty in TYPES {
            // 768 = three k-quant blocks; odd block counts catch stride mistakes.
            let cols = 768;
            for seed in 0..4 {
                let (bytes, reference) = random_row(ty, cols, seed);
                let got = dequantize_row(ty, &bytes, cols).expect("supported");
                for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
                    assert!(
                        a.to_bits() == b.to_bits() || (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                        "{ty:?} element {i}: twin {a} cpu {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn legacy_types_work_at_widths_that_are_not_multiples_of_256() {
        // Gemma 3 270M has width 640: its 32-wide blocks cross the 256 steps.
        for ty in [
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::F16,
        ] {
            let (bytes, reference) = random_row(ty, 640, 7);
            let got = dequantize_row(ty, &bytes, 640).expect("supported");
            assert_eq!(got, reference, "{ty:?}");
        }
    }

    #[test]
    fn gemv_lane_order_matches_an_exact_dot_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        for ty in TYPES {
            let cols = 1280;
            let (bytes, w) = random_row(ty, cols, 3);
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let got = gemv_row(ty, &bytes, &x).expect("supported") as f64;
            let norm: f64 = w
                .iter()
                .zip(&x)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            assert!(
                (got - exact).abs() <= 1e-5 * norm,
                "{ty:?}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn attention_twin_matches_the_cpu_attention_over_a_scattered_block_table() {
        use hangar_kernels::{attend, PagedKv};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (heads, kv_heads, hd, bs) = (8, 2, 64, 4);
        let kvd = kv_heads * hd;
        let n_blocks = 12;
        let f16r = |v: f32| f16::from_f32(v).to_f32();
        let kc: Vec<f32> = (0..n_blocks * bs * kvd)
            .map(|_| f16r(rng.gen_range(-1.0..1.0)))
            .collect();
        let vc: Vec<f32> = (0..n_blocks * bs * kvd)
            .map(|_| f16r(rng.gen_range(-1.0..1.0)))
            .collect();
        // Blocks out of order, as a block manager hands them out.
        let table: Vec<u32> = vec![7, 2, 11, 0, 5, 9, 1, 3];
        for (pos, window) in [(0, 0), (5, 0), (29, 0), (29, 8), (17, 3)] {
            for h in [0, 3, 4, 7] {
                let q: Vec<f32> = (0..hd).map(|_| f16r(rng.gen_range(-1.0..1.0))).collect();
                let scale = 1.0 / (hd as f32).sqrt();
                let got = attention_head(
                    &q,
                    &kc,
                    &vc,
                    &table,
                    bs,
                    (heads, kv_heads, hd),
                    h,
                    pos,
                    window,
                    scale,
                );
                let kh = h / (heads / kv_heads);
                let bits = |x: &[f32]| -> Vec<u16> {
                    x.iter().map(|&v| f16::from_f32(v).to_bits()).collect()
                };
                let (k16, v16) = (bits(&kc), bits(&vc));
                let paged = PagedKv {
                    k: &k16,
                    v: &v16,
                    table: &table,
                    block_size: bs,
                    row_stride: kvd,
                    head_offset: kh * hd,
                    format: hangar_kernels::KvFormat::F16,
                };
                let lo = if window > 0 {
                    (pos + 1).saturating_sub(window)
                } else {
                    0
                };
                let mut scores = vec![0f32; pos + 1 - lo];
                let mut want = vec![0f32; hd];
                attend(
                    &paged,
                    &q,
                    1,
                    hd,
                    lo,
                    pos + 1,
                    scale,
                    &mut scores,
                    &mut want,
                );
                let shape = (heads, kv_heads, hd);
                let tiled =
                    attention_head_tiled(&q, &kc, &vc, &table, bs, shape, h, pos, window, scale);
                // The split kernels' arithmetic, chunks of 8 and 16 positions.
                let split = |chunk| {
                    attention_head_split(
                        &q, &kc, &vc, &table, bs, shape, h, pos, window, scale, chunk,
                    )
                };
                for (kernel, got) in [
                    ("one-launch", got),
                    ("tiled", tiled),
                    ("split 8", split(8)),
                    ("split 16", split(16)),
                ] {
                    for (a, b) in got.iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 2e-5,
                            "{kernel}: pos {pos} window {window} head {h}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_wide_q4_k_gemv_matches_an_exact_dot_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for cols in [256, 1280, 4096] {
            let (bytes, w) = random_row(GgmlType::Q4K, cols, cols as u64);
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let norm: f64 = w
                .iter()
                .zip(&x)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let got = gemv_q4k_wide(&bytes, &x) as f64;
            assert!(
                (got - exact).abs() <= 2e-5 * norm,
                "{cols}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn the_wide_q6_k_gemv_matches_an_exact_dot_product() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for cols in [256, 1280, 4096] {
            let (bytes, w) = random_row(GgmlType::Q6K, cols, cols as u64 + 1);
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
            let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
            let norm: f64 = w
                .iter()
                .zip(&x)
                .map(|(&a, &b)| (a as f64 * b as f64).abs())
                .sum();
            let got = gemv_q6k_wide(&bytes, &x) as f64;
            assert!(
                (got - exact).abs() <= 2e-5 * norm,
                "{cols}: {got} vs {exact}"
            );
        }
    }

    /// Dequantized int8 activations, as the exact reference sees them.
    fn deq_q8_1(q: &[i8], ds: &[[f32; 2]]) -> Vec<f32> {
        q.iter()
            .enumerate()
            .map(|(i, &v)| ds[i / 32][0] * v as f32)
            .collect()
    }

    #[test]
    fn the_rope_twin_matches_the_cpu_forward_for_every_layout() {
        use hangar_kernels::ops::{rms_norm_inplace, RopeStyle, RopeTable};
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        // (head size, rotated dims, NEOX, head norm, frequency factors): Llama 3
        // (adjacent pairs, factors), Qwen 2 (NEOX), Gemma 3 (NEOX, 256-wide heads with
        // q/k norms), a partial rotary head.
        for (hd, n_rot, neox, norm, ff) in [
            (128, 128, false, false, true),
            (128, 128, true, false, false),
            (256, 256, true, true, false),
            (64, 32, true, true, false),
        ] {
            let ffv: Vec<f32> = (0..n_rot / 2).map(|_| rng.gen_range(1.0..8.0)).collect();
            let ffo = ff.then_some(ffv.as_slice());
            let w: Vec<f32> = (0..hd).map(|_| rng.gen_range(0.5..1.5)).collect();
            let nw = norm.then_some(w.as_slice());
            for pos in [0usize, 1, 37, 4095] {
                let x: Vec<f32> = (0..hd).map(|_| rng.gen_range(-3.0..3.0)).collect();
                let got = rope_head(&x, nw, 1e-6, pos, 10000.0, n_rot, ffo, neox);
                let mut cpu = x.clone();
                if let Some(w) = nw {
                    rms_norm_inplace(&mut cpu, w, 1e-6);
                }
                let mut table = RopeTable::default();
                table.fill(&[pos], 10000.0, n_rot, ffo);
                let style = if neox {
                    RopeStyle::Neox
                } else {
                    RopeStyle::Norm
                };
                table.apply(&mut cpu, 0, style);
                for (i, (&g, &c)) in got.iter().zip(&cpu).enumerate() {
                    // The twin rounds to f16; the CPU value before its own rounding may
                    // sit on the other side of a tie: at most one f16 step apart.
                    let step = half::f16::from_f32(c).to_f32().abs().max(6.1e-5) / 1024.0;
                    assert!(
                        (g - c).abs() <= step * 1.01,
                        "hd {hd} n_rot {n_rot} neox {neox} pos {pos} dim {i}: twin {g} cpu {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_cluster_norm_twin_matches_the_cpu_norm() {
        use hangar_kernels::ops::rms_norm;
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        // Widths and cluster sizes the runner picks (runner/norm.rs cluster_for).
        for (n, cl) in [
            (640, 4),
            (1152, 4),
            (2048, 8),
            (4096, 8),
            (5376, 8),
            (8192, 8),
        ] {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-4.0..4.0)).collect();
            let o: Vec<f32> = (0..n).map(|_| rng.gen_range(-2.0..2.0)).collect();
            let pw: Vec<f32> = (0..n).map(|_| rng.gen_range(0.5..1.5)).collect();
            let w: Vec<f32> = (0..n).map(|_| rng.gen_range(0.5..1.5)).collect();
            let eps = 1e-6;
            // The CPU: x += rms_norm(o) * pw, then h = rms_norm(x) * w.
            let mut post = vec![0f32; n];
            rms_norm(&o, &pw, eps, &mut post);
            let xs: Vec<f32> = x.iter().zip(&post).map(|(a, b)| a + b).collect();
            let mut h = vec![0f32; n];
            rms_norm(&xs, &w, eps, &mut h);
            let (tx, th) = add_norm_cluster(&x, Some(&o), Some(&pw), &w, eps, cl, 256);
            let close = |a: &[f32], b: &[f32]| {
                a.iter()
                    .zip(b)
                    .all(|(&a, &b)| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()) + 1e-7)
            };
            assert!(close(&tx, &xs) && close(&th, &h), "n {n}, cluster {cl}");
            // The one-block split (one CTA of 1024 threads) agrees as closely.
            let (bx, bh) = add_norm_cluster(&x, Some(&o), Some(&pw), &w, eps, 1, 1024);
            assert!(close(&bx, &tx) && close(&bh, &th), "n {n}: one block");
            // A plain residual add and a norm alone.
            let plus: Vec<f32> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
            rms_norm(&plus, &w, eps, &mut h);
            let (px, ph) = add_norm_cluster(&x, Some(&o), None, &w, eps, cl, 256);
            assert!(px == plus && close(&ph, &h), "n {n}: residual");
            rms_norm(&x, &w, eps, &mut h);
            let (nx, nh) = add_norm_cluster(&x, None, None, &w, eps, cl, 256);
            assert!(nx == x && close(&nh, &h), "n {n}: norm alone");
        }
    }

    #[test]
    fn q8_1_quantization_rounds_each_block_to_within_half_a_step() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut x: Vec<f32> = (0..640).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        x[32..64].iter_mut().for_each(|v| *v = 0.0); // an all-zero block
        let (q, ds) = quantize_q8_1(&x);
        assert_eq!((q.len(), ds.len()), (640, 20));
        assert_eq!(ds[1], [0.0, 0.0]);
        for (b, blk) in x.chunks(32).enumerate() {
            let d = ds[b][0];
            let s: i32 = q[32 * b..32 * b + 32].iter().map(|&v| v as i32).sum();
            assert_eq!(ds[b][1], d * s as f32);
            for (i, &v) in blk.iter().enumerate() {
                assert!((v - d * q[32 * b + i] as f32).abs() <= 0.5 * d + 1e-6);
            }
            if d > 0.0 {
                assert_eq!(
                    q[32 * b..32 * b + 32].iter().map(|v| v.abs()).max(),
                    Some(127)
                );
            }
        }
    }

    /// The GPU rounds matrix inputs as the CPU does: the same int8 values and scales
    /// as the CPU kernels' q8_0 and q8_K quantization, bit for bit.
    #[test]
    fn cpu_rounding_of_activations_equals_the_cpu_kernels() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        for blk in [32usize, 256] {
            let mut x: Vec<f32> = (0..1024).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
            x[256..512].iter_mut().for_each(|v| *v = 0.0); // all-zero blocks
            x[600] = -7.5; // ties in magnitude, of both signs: the first one sets the sign
            x[700] = 7.5;
            x[40] = 1e-30; // tiny values next to large ones
            let (q, ds) = quantize_cpu(&x, blk);
            let (ty, bytes) = if blk == 32 {
                (GgmlType::Q8_0, 34)
            } else {
                (GgmlType::Q8K, 292)
            };
            let mut cpu = vec![0u8; x.len() / blk * bytes];
            quants::quantize_row(ty, &x, &mut cpu).unwrap();
            for (b, blkb) in cpu.chunks(bytes).enumerate() {
                let (d, qs) = if blk == 32 {
                    (
                        f16::from_bits(u16::from_le_bytes([blkb[0], blkb[1]])).to_f32(),
                        &blkb[2..34],
                    )
                } else {
                    (
                        f32::from_le_bytes([blkb[0], blkb[1], blkb[2], blkb[3]]),
                        &blkb[4..260],
                    )
                };
                for (i, &c) in qs.iter().enumerate() {
                    assert_eq!(q[b * blk + i], c as i8, "blk {blk}, block {b}, value {i}");
                }
                for sub in 0..blk / 32 {
                    let k = b * blk / 32 + sub;
                    assert_eq!(ds[k][0].to_bits(), d.to_bits(), "blk {blk} block {b}");
                    let s: i32 = q[32 * k..32 * k + 32].iter().map(|&v| v as i32).sum();
                    assert_eq!(ds[k][1], d * s as f32);
                }
            }
        }
    }

    #[test]
    fn int8_gemv_matches_the_cpu_weights_times_the_quantized_activations() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        for ty in [
            GgmlType::Q4K,
            GgmlType::Q5K,
            GgmlType::Q6K,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q5_0,
        ] {
            // 256: one block; 1280 and 4352: odd block counts for every lane split.
            for cols in [256, 1280, 4352] {
                let (bytes, w) = random_row(ty, cols, cols as u64 + ty as u64);
                let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let (q, ds) = quantize_q8_1(&x);
                let xdq = deq_q8_1(&q, &ds);
                let exact: f64 = w.iter().zip(&xdq).map(|(&a, &b)| a as f64 * b as f64).sum();
                let norm: f64 = w
                    .iter()
                    .zip(&xdq)
                    .map(|(&a, &b)| (a as f64 * b as f64).abs())
                    .sum();
                let got = gemvq_row(ty, &bytes, &q, &ds).expect("int8 kernel") as f64;
                assert!(
                    (got - exact).abs() <= 2e-5 * norm,
                    "{ty:?} {cols}: {got} vs {exact}"
                );
                // The four-warp split of the mvs/mvp kernels: same sum, other order.
                let split = gemvq_row_split(ty, &bytes, &q, &ds, 4).expect("int8 kernel") as f64;
                assert!(
                    (split - exact).abs() <= 2e-5 * norm,
                    "{ty:?} {cols} split: {split} vs {exact}"
                );
                // And against the f32 activations: int8 rounding only.
                let full: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                assert!(
                    (got - full).abs() <= 1e-2 * norm,
                    "{ty:?} {cols}: {got} vs f32 {full}"
                );
            }
        }
        assert!(gemvq_row(GgmlType::F16, &[0; 64], &[0; 32], &[[0.0; 2]]).is_none());
    }

    /// The deferred norm (the residual GEMV quantizes x * w, the next GEMV scales its
    /// sums by 1 / rms(x)) against the CPU's rms_norm, then quantization, then the
    /// GEMV: the same outputs within the int8 rounding, for widths whose sums of
    /// squares fit the preloaded lanes and for wider ones.
    #[test]
    fn deferred_norm_matches_the_norm_then_the_gemv() {
        use hangar_kernels::ops::rms_norm;
        let mut rng = rand::rngs::StdRng::seed_from_u64(29);
        for cols in [640, 1152, 4096, 8192] {
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-6.0f32..6.0)).collect();
            let w: Vec<f32> = (0..cols).map(|_| rng.gen_range(0.2f32..1.8)).collect();
            let eps = 1e-5;
            let mut h = vec![0f32; cols];
            rms_norm(&x, &w, eps, &mut h);
            let (hq, hd) = quantize_q8_1(&h);
            let (q, ds, ss) = deferred_norm_q8(&x, &w);
            assert_eq!(ss.len(), cols / 32);
            // The scale: the row's rms, however the lanes split the groups.
            let sum_sq: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
            let want = 1.0 / ((sum_sq / cols as f64) as f32 + eps).sqrt();
            let sc = deferred_scale(&ss, cols, eps);
            assert!((sc - want).abs() <= 1e-5 * want, "{cols}: {sc} vs {want}");
            // The int8 values are those of the normed row but for ties at rounding.
            let off = q.iter().zip(&hq).filter(|(a, b)| a != b).count();
            assert!(q
                .iter()
                .zip(&hq)
                .all(|(&a, &b)| (a as i32 - b as i32).abs() <= 1));
            assert!(off * 100 <= cols, "{cols}: {off} int8 values moved");
            // (K-quant rows are whole 256-blocks.)
            for ty in [GgmlType::Q4K, GgmlType::Q6K]
                .into_iter()
                .filter(|_| cols % 256 == 0)
            {
                let (bytes, wr) = random_row(ty, cols, cols as u64);
                let classic = gemvq_row(ty, &bytes, &hq, &hd).expect("int8 kernel");
                let deferred = gemvq_row(ty, &bytes, &q, &ds).expect("int8 kernel") * sc;
                let norm: f32 = wr.iter().zip(&h).map(|(a, b)| (a * b).abs()).sum();
                assert!(
                    (classic - deferred).abs() <= 1e-2 * norm,
                    "{ty:?} {cols}: {deferred} vs {classic}"
                );
            }
        }
        // A row of zeros: scale 1 / sqrt(eps), every value 0.
        let (q, ds, ss) = deferred_norm_q8(&[0.0; 64], &[1.0; 64]);
        assert!(q.iter().all(|&v| v == 0) && ds.iter().all(|d| d[0] == 0.0));
        assert_eq!(deferred_scale(&ss, 64, 1e-6), 1.0 / 1e-6f32.sqrt());
    }

    #[test]
    fn types_without_a_kernel_are_refused() {
        assert!(deq8(GgmlType::Q2K, &[0; 84], 0).is_none());
    }

    #[test]
    fn head_candidates_twin_is_the_references_top_256() {
        use hangar_engine::sampler::head::reference;
        use hangar_engine::sampler::HeadRequest;
        let req = HeadRequest {
            inv_t: 1.0,
            u: 0.5,
            candidates: true,
            skips: Vec::new(),
        };
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for n in [1usize, 100, 255, 256, 257, 1000, 5000, 40_000] {
            for kind in 0..5 {
                let row: Vec<f32> = (0..n)
                    .map(|i| match kind {
                        0 => (next() >> 40) as f32 / 1e6 - 8.0,
                        1 => (next() % 3) as f32 - 1.0,
                        2 => 1.5,
                        3 => match next() % 4 {
                            0 => f32::NEG_INFINITY,
                            1 => f32::NAN,
                            2 => -0.0,
                            _ => (next() % 9) as f32 * -0.25,
                        },
                        _ => -((i % 300) as f32),
                    })
                    .collect();
                let mut got = head_candidates(&row, 1024);
                got.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                assert_eq!(got, reference(&row, &req).cands, "n {n}, kind {kind}");
            }
        }
    }

    #[test]
    fn greedy_pick_twin_is_the_serial_greedy_pick() {
        use hangar_kernels::packed::greedy_pick_row;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for case in 0..300 {
            let n = rng.gen_range(1..5000);
            // Few distinct values: ties everywhere; some NaN and infinities.
            let mut row: Vec<f32> = (0..n).map(|_| rng.gen_range(-4..4) as f32).collect();
            for _ in 0..rng.gen_range(0..5) {
                let i = rng.gen_range(0..n);
                row[i] = [f32::NAN, f32::NEG_INFINITY, f32::INFINITY][rng.gen_range(0..3)];
            }
            if case % 50 == 0 {
                row.iter_mut().for_each(|v| *v = f32::NAN);
            }
            if case % 50 == 1 {
                row.iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
            }
            let skip: Vec<u32> = (0..rng.gen_range(0..6))
                .map(|_| rng.gen_range(0..n as u32 + 3))
                .collect();
            let want = greedy_pick_row(&row, &skip);
            for threads in [1, 32, 1024] {
                let (id, value, skipped) = greedy_pick(&row, &skip, threads);
                assert_eq!(id, want.id, "case {case}, {threads} threads");
                assert_eq!(value.to_bits(), want.value.to_bits(), "case {case}");
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&skipped), bits(&want.skipped), "case {case}");
            }
        }
    }

    /// The tensor-core prefill's arithmetic gives the product of the row with the
    /// quantized activations: within float rounding of an exact (f64) sum over the
    /// dequantized weights and activations, and close to the int8 GEMV's.
    #[test]
    fn mmq_q4k_matches_the_exact_product_and_the_gemv() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(45);
        for cols in [256usize, 4096, 3584] {
            let rb = quants::row_bytes(GgmlType::Q4K, cols);
            for _ in 0..8 {
                let w: Vec<f32> = (0..cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                let mut row = vec![0u8; rb];
                quants::quantize_row(GgmlType::Q4K, &w, &mut row).expect("quantize");
                let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
                let (xq, xd) = quantize_q8_1(&x);
                let got = mmq_q4k(&row, &xq, &xd);
                let wd = dequantize_row(GgmlType::Q4K, &row, cols).expect("dequantize");
                let exact: f64 = wd
                    .iter()
                    .enumerate()
                    .map(|(i, &wv)| wv as f64 * xq[i] as f64 * xd[i / 32][0] as f64)
                    .sum();
                let scale: f64 = wd.iter().map(|v| v.abs() as f64).sum::<f64>() / 64.0;
                assert!(
                    (got as f64 - exact).abs() <= 1e-4 * scale.max(1.0),
                    "{cols}: {got} against {exact}"
                );
                let gemv = gemvq_row(GgmlType::Q4K, &row, &xq, &xd).expect("gemv");
                assert!(
                    (got - gemv).abs() <= 1e-4 * scale.max(1.0) as f32,
                    "{cols}: {got} against the GEMV's {gemv}"
                );
            }
        }
    }
}
