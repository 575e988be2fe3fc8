//! Row-interleaved Q4_K and Q6_K matrices (see [`crate::packed`] for the idea): 16
//! rows per group, lane `r` of every int32 vector belongs to row `16g + r`, so one
//! `vpdpbusd` with a broadcast 4-byte activation group advances 16 rows at once and
//! the sub-block scales multiply 16 rows' integer sums with one `vpmulld`.
//!
//! Per (group `g`, super-block `sb`), bytes:
//! - Q4_K (2560): `d` f32[16] | `dmin` f32[16] | sub-block scales u8[8][16] | mins as
//!   i16 pairs [4][16][2] (`m[2p]`, `m[2p+1]` per row, for `vpmaddwd`) | nibbles
//!   [8 sub-blocks][4 lane-group pairs][64 bytes] (the packed Q4_0 layout: value
//!   `v = 4r + j` of lane group `k` is element `4k + j` of the sub-block in row `r`,
//!   in the low nibble of byte `v` for even `k`, the high nibble for odd `k`).
//! - Q6_K (4928): `d` f32[16] | scales i8[16][16] | scales as i16 pairs [8][16][2] |
//!   values `q + 32` (0..63) as bytes [16 sub-blocks][4 lane groups][64].
//!
//! Sums, per row and token: Q4_K `d_a * (d * isum - dmin * msum)` with `isum = Σ_j
//! sc_j * dot_j`, `msum = Σ_j m_j * bsum_j`; Q6_K `d * d_a * (isum - 32 * osum)` with
//! `osum = Σ_j sc_j * bsum_j`. Integer parts are exact; the float steps are the same in
//! the SIMD kernel and its scalar twin.

use crate::packed::{for_each_group_tile, pack_groups, HugeBuf, SendPtr, GROUP};
use crate::pool::ThreadPool;
use crate::quants::kquants::{BlockQ4K, BlockQ6K, BlockQ8K, QK_K};
use crate::quants::{self, KernelError};
use crate::QMatrix;
use hangar_formats::GgmlType;

pub(crate) const Q4K_GB: usize = 2560;
pub(crate) const Q6K_GB: usize = 4928;
const TOK_TILE: usize = 8;

/// A Q4_K or Q6_K matrix, row-interleaved.
pub struct PackedK {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    nsb: usize,
    data: HugeBuf,
}

impl std::fmt::Debug for PackedK {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedK")
            .field("ty", &self.ty)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

fn gb(ty: GgmlType) -> usize {
    if ty == GgmlType::Q4K {
        Q4K_GB
    } else {
        Q6K_GB
    }
}

fn read<T: Copy>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= std::mem::size_of::<T>());
    // SAFETY: length checked; the block structs are plain old data, alignment 1 reads.
    unsafe { (bytes.as_ptr() as *const T).read_unaligned() }
}

fn f16(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// Q4_K sub-block `j`'s 6-bit scale and min.
fn scale_min(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Writes row `r` (0..16) of one super-block into the group's area `dst`.
fn pack_row(ty: GgmlType, blk: &[u8], r: usize, dst: &mut [u8]) {
    let put_f32 = |dst: &mut [u8], off: usize, v: f32| {
        dst[off..off + 4].copy_from_slice(&v.to_le_bytes());
    };
    if ty == GgmlType::Q4K {
        let b: BlockQ4K = read(blk);
        put_f32(dst, 4 * r, f16(b.d));
        put_f32(dst, 64 + 4 * r, f16(b.dmin));
        for j in 0..8 {
            let (sc, m) = scale_min(j, &b.scales);
            dst[128 + j * 16 + r] = sc;
            let off = 256 + (j / 2) * 64 + r * 4 + (j % 2) * 2;
            dst[off..off + 2].copy_from_slice(&(m as i16).to_le_bytes());
        }
        for j in 0..8 {
            for e in 0..32 {
                let byte = b.qs[32 * (j / 2) + e];
                let q = if j % 2 == 0 { byte & 0x0f } else { byte >> 4 };
                let (k, jj) = (e / 4, e % 4);
                let v = 4 * r + jj;
                dst[512 + j * 256 + (k / 2) * 64 + v] |= q << (4 * (k % 2));
            }
        }
    } else {
        let b: BlockQ6K = read(blk);
        put_f32(dst, 4 * r, f16(b.d));
        for (j, &sc) in b.scales.iter().enumerate() {
            dst[64 + j * 16 + r] = sc as u8;
            let off = 320 + (j / 2) * 64 + r * 4 + (j % 2) * 2;
            dst[off..off + 2].copy_from_slice(&(sc as i16).to_le_bytes());
        }
        for e in 0..QK_K {
            let (h, rest) = (e / 128, e % 128);
            let (quarter, l) = (rest / 32, rest % 32);
            let lo = match quarter {
                0 => b.ql[64 * h + l] & 0x0f,
                1 => b.ql[64 * h + 32 + l] & 0x0f,
                2 => b.ql[64 * h + l] >> 4,
                _ => b.ql[64 * h + 32 + l] >> 4,
            };
            let hi = (b.qh[32 * h + l] >> (2 * quarter)) & 3;
            let q = lo | (hi << 4);
            let (sub, within) = (e / 16, e % 16);
            let (k, jj) = (within / 4, within % 4);
            dst[832 + sub * 256 + k * 64 + 4 * r + jj] = q;
        }
    }
}

impl PackedK {
    /// Interleaves a Q4_K or Q6_K matrix, calling `done(first_row, end_row)` as
    /// source rows are copied.
    pub fn pack_with(
        pool: &ThreadPool,
        m: &QMatrix,
        done: impl Fn(usize, usize) + Sync,
    ) -> Result<Self, KernelError> {
        if !matches!(m.ty, GgmlType::Q4K | GgmlType::Q6K) {
            return Err(KernelError::Unsupported(m.ty));
        }
        quants::check_len(m.ty, m.cols)?;
        let nsb = m.cols / QK_K;
        let g = gb(m.ty);
        let bs = if m.ty == GgmlType::Q4K { 144 } else { 210 };
        let ty = m.ty;
        let data = pack_groups(pool, m, nsb * g, 16, done, |_, r, rd, area| {
            for sb in 0..nsb {
                pack_row(
                    ty,
                    &rd[sb * bs..(sb + 1) * bs],
                    r,
                    &mut area[sb * g..(sb + 1) * g],
                );
            }
        });
        Ok(PackedK {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            nsb,
            data,
        })
    }

    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    fn area(&self, g: usize, sb: usize) -> &[u8] {
        let n = gb(self.ty);
        // SAFETY: every byte was written by `pack_with` (or zeroed by `HugeBuf::new`).
        let all = unsafe { std::slice::from_raw_parts(self.data.as_ptr(), self.data.len()) };
        &all[(g * self.nsb + sb) * n..][..n]
    }

    /// Row `r` as f32.
    pub fn dequantize_row(&self, r: usize, dst: &mut [f32]) {
        assert!(r < self.rows && dst.len() == self.cols, "packed row shape");
        let (g, rr) = (r / GROUP, r % GROUP);
        for sb in 0..self.nsb {
            let a = self.area(g, sb);
            let d: f32 = f32::from_le_bytes(read(&a[4 * rr..]));
            let out = &mut dst[sb * QK_K..(sb + 1) * QK_K];
            if self.ty == GgmlType::Q4K {
                let dmin: f32 = f32::from_le_bytes(read(&a[64 + 4 * rr..]));
                for (e, o) in out.iter_mut().enumerate() {
                    let j = e / 32;
                    let sc = a[128 + j * 16 + rr] as f32;
                    let m: i16 =
                        i16::from_le_bytes(read(&a[256 + (j / 2) * 64 + rr * 4 + (j % 2) * 2..]));
                    let q = self.value(a, e, rr) as f32;
                    *o = d * sc * q - dmin * m as f32;
                }
            } else {
                for (e, o) in out.iter_mut().enumerate() {
                    let sc = a[64 + (e / 16) * 16 + rr] as i8 as f32;
                    *o = d * sc * (self.value(a, e, rr) as f32 - 32.0);
                }
            }
        }
    }

    /// Stored value of element `e` of row `rr` in one super-block area.
    fn value(&self, a: &[u8], e: usize, rr: usize) -> u8 {
        if self.ty == GgmlType::Q4K {
            let (j, w) = (e / 32, e % 32);
            let (k, v) = (w / 4, 4 * rr + w % 4);
            (a[512 + j * 256 + (k / 2) * 64 + v] >> (4 * (k % 2))) & 0x0f
        } else {
            let (sub, w) = (e / 16, e % 16);
            a[832 + sub * 256 + (w / 4) * 64 + 4 * rr + w % 4]
        }
    }
}

/// Q4_K: per (token, super-block) the sums of each 32-element sub-block's quants, as
/// i16 pairs `(bs[2p], bs[2p+1])` (4 per super-block).
fn prep_q4k(act: &[u8], t: usize, nsb: usize) -> Vec<i32> {
    let mut out = Vec::with_capacity(t * nsb * 4);
    for blk in act
        .chunks_exact(std::mem::size_of::<BlockQ8K>())
        .take(t * nsb)
    {
        let b: BlockQ8K = read(blk);
        for p in 0..4 {
            let s0 = b.bsums[4 * p] as i32 + b.bsums[4 * p + 1] as i32;
            let s1 = b.bsums[4 * p + 2] as i32 + b.bsums[4 * p + 3] as i32;
            out.push((s0 as u16 as u32 | ((s1 as u16 as u32) << 16)) as i32);
        }
    }
    out
}

/// `out[i * rows + r] = dot(row r, activation row i)`; `act` holds `t` Q8_K rows.
pub fn matmul_packed_k(pool: &ThreadPool, p: &PackedK, act: &[u8], t: usize, out: &mut [f32]) {
    let arb = quants::row_bytes(GgmlType::Q8K, p.cols);
    assert_eq!(act.len(), t * arb, "matmul_packed_k: activation shape");
    assert_eq!(out.len(), t * p.rows, "matmul_packed_k: output shape");
    if crate::simd_level() < crate::SimdLevel::Avx512Vnni {
        return matmul_packed_k_scalar(p, act, t, out);
    }
    let bs4 = if p.ty == GgmlType::Q4K {
        prep_q4k(act, t, p.nsb)
    } else {
        Vec::new()
    };
    let op = SendPtr(out.as_mut_ptr() as *mut u8);
    for_each_group_tile(pool, p.rows, t, TOK_TILE, 4, |g, c0, nc| {
        // SAFETY: AVX-512 VNNI checked above; group g's rows belong to this call
        // alone; every pointer stays inside the checked buffers.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            x86::group_tile(p, g, act, arb, &bs4, c0, nc, op.get() as *mut f32)
        };
    });
}

/// The scalar twin of [`matmul_packed_k`] (same order, bit-identical).
pub fn matmul_packed_k_scalar(p: &PackedK, act: &[u8], t: usize, out: &mut [f32]) {
    let arb = quants::row_bytes(GgmlType::Q8K, p.cols);
    for c in 0..t {
        for r in 0..p.rows {
            let (g, rr) = (r / GROUP, r % GROUP);
            let mut acc = 0f32;
            for sb in 0..p.nsb {
                let a = p.area(g, sb);
                let b: BlockQ8K = read(&act[c * arb + sb * 292..]);
                let d: f32 = f32::from_le_bytes(read(&a[4 * rr..]));
                if p.ty == GgmlType::Q4K {
                    let dmin: f32 = f32::from_le_bytes(read(&a[64 + 4 * rr..]));
                    let (mut isum, mut msum) = (0i32, 0i32);
                    for j in 0..8 {
                        let mut dot = 0i32;
                        for w in 0..32 {
                            dot += p.value(a, 32 * j + w, rr) as i32 * b.qs[32 * j + w] as i32;
                        }
                        isum = isum.wrapping_add(dot.wrapping_mul(a[128 + j * 16 + rr] as i32));
                        let m: i16 = i16::from_le_bytes(read(
                            &a[256 + (j / 2) * 64 + rr * 4 + (j % 2) * 2..],
                        ));
                        let bsum = b.bsums[2 * j] as i32 + b.bsums[2 * j + 1] as i32;
                        msum += m as i32 * bsum;
                    }
                    let t1 = isum as f32 * d;
                    let v = (-(msum as f32)).mul_add(dmin, t1);
                    acc = v.mul_add(b.d, acc);
                } else {
                    let (mut isum, mut osum) = (0i32, 0i32);
                    for j in 0..16 {
                        let mut dot = 0i32;
                        for w in 0..16 {
                            dot += p.value(a, 16 * j + w, rr) as i32 * b.qs[16 * j + w] as i32;
                        }
                        let sc = a[64 + j * 16 + rr] as i8 as i32;
                        isum = isum.wrapping_add(dot.wrapping_mul(sc));
                        osum += sc * b.bsums[j] as i32;
                    }
                    let tot = isum.wrapping_sub(osum << 5);
                    acc = (tot as f32).mul_add(d * b.d, acc);
                }
            }
            out[c * p.rows + r] = acc;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    pub(super) unsafe fn group_tile(
        p: &PackedK,
        g: usize,
        act: &[u8],
        arb: usize,
        bs4: &[i32],
        c0: usize,
        nc: usize,
        out: *mut f32,
    ) {
        macro_rules! go {
            ($f:ident) => {
                match nc {
                    1 => $f::<1>(p, g, act, arb, bs4, c0, out),
                    2 => $f::<2>(p, g, act, arb, bs4, c0, out),
                    3 => $f::<3>(p, g, act, arb, bs4, c0, out),
                    4 => $f::<4>(p, g, act, arb, bs4, c0, out),
                    5 => $f::<5>(p, g, act, arb, bs4, c0, out),
                    6 => $f::<6>(p, g, act, arb, bs4, c0, out),
                    7 => $f::<7>(p, g, act, arb, bs4, c0, out),
                    _ => $f::<8>(p, g, act, arb, bs4, c0, out),
                }
            };
        }
        if p.ty == GgmlType::Q4K {
            go!(tile_q4k)
        } else {
            go!(tile_q6k)
        }
    }

    /// Lane groups `2i` and `2i + 1` from one 64-byte line of paired nibbles.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn nibble_pair(p: *const u8) -> (__m512i, __m512i) {
        let x = _mm512_loadu_si512(p as *const _);
        let m = _mm512_set1_epi8(0x0f);
        (
            _mm512_and_si512(x, m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(x), m),
        )
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn bcast(p: *const u8) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn store(p: &PackedK, g: usize, c0: usize, out: *mut f32, acc: &[__m512]) {
        crate::packed::x86::store_group(p.rows, g, c0, crate::packed::Out::Matrix(out), acc)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile_q4k<const NC: usize>(
        p: &PackedK,
        g: usize,
        act: &[u8],
        arb: usize,
        bs4: &[i32],
        c0: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm512_setzero_ps(); NC];
        let base = p.data.as_ptr().add(g * p.nsb * Q4K_GB);
        for sb in 0..p.nsb {
            let a = base.add(sb * Q4K_GB);
            let mut isum = [_mm512_setzero_si512(); NC];
            for j in 0..8 {
                let q = a.add(512 + j * 256);
                let (w0, w1) = nibble_pair(q);
                let (w2, w3) = nibble_pair(q.add(64));
                let (w4, w5) = nibble_pair(q.add(128));
                let (w6, w7) = nibble_pair(q.add(192));
                let w = [w0, w1, w2, w3, w4, w5, w6, w7];
                let sc =
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(a.add(128 + j * 16) as *const __m128i));
                for (c, isum) in isum.iter_mut().enumerate() {
                    // Activation quants of sub-block j of this token's super-block.
                    let x = act.as_ptr().add((c0 + c) * arb + sb * 292 + 4 + 32 * j);
                    let mut d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bcast(x));
                    let mut d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], bcast(x.add(4)));
                    d0 = _mm512_dpbusd_epi32(d0, w[2], bcast(x.add(8)));
                    d1 = _mm512_dpbusd_epi32(d1, w[3], bcast(x.add(12)));
                    d0 = _mm512_dpbusd_epi32(d0, w[4], bcast(x.add(16)));
                    d1 = _mm512_dpbusd_epi32(d1, w[5], bcast(x.add(20)));
                    d0 = _mm512_dpbusd_epi32(d0, w[6], bcast(x.add(24)));
                    d1 = _mm512_dpbusd_epi32(d1, w[7], bcast(x.add(28)));
                    let dot = _mm512_add_epi32(d0, d1);
                    *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(dot, sc));
                }
            }
            let d = _mm512_loadu_ps(a as *const f32);
            let dmin = _mm512_loadu_ps(a.add(64) as *const f32);
            for (c, acc) in acc.iter_mut().enumerate() {
                let col = c0 + c;
                let pairs = bs4.as_ptr().add((col * p.nsb + sb) * 4);
                let mut msum = _mm512_madd_epi16(
                    _mm512_loadu_si512(a.add(256) as *const _),
                    _mm512_set1_epi32(*pairs),
                );
                for pi in 1..4 {
                    msum = _mm512_add_epi32(
                        msum,
                        _mm512_madd_epi16(
                            _mm512_loadu_si512(a.add(256 + pi * 64) as *const _),
                            _mm512_set1_epi32(*pairs.add(pi)),
                        ),
                    );
                }
                let da = (act.as_ptr().add(col * arb + sb * 292) as *const f32).read_unaligned();
                let t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(isum[c]), d);
                let v = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum), dmin, t1);
                *acc = _mm512_fmadd_ps(v, _mm512_set1_ps(da), *acc);
            }
        }
        store(p, g, c0, out, &acc);
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    unsafe fn tile_q6k<const NC: usize>(
        p: &PackedK,
        g: usize,
        act: &[u8],
        arb: usize,
        _bs4: &[i32],
        c0: usize,
        out: *mut f32,
    ) {
        let mut acc = [_mm512_setzero_ps(); NC];
        let base = p.data.as_ptr().add(g * p.nsb * Q6K_GB);
        for sb in 0..p.nsb {
            let a = base.add(sb * Q6K_GB);
            let mut isum = [_mm512_setzero_si512(); NC];
            for j in 0..16 {
                let q = a.add(832 + j * 256);
                let w = [
                    _mm512_loadu_si512(q as *const _),
                    _mm512_loadu_si512(q.add(64) as *const _),
                    _mm512_loadu_si512(q.add(128) as *const _),
                    _mm512_loadu_si512(q.add(192) as *const _),
                ];
                let sc =
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(a.add(64 + j * 16) as *const __m128i));
                for (c, isum) in isum.iter_mut().enumerate() {
                    let x = act.as_ptr().add((c0 + c) * arb + sb * 292 + 4 + 16 * j);
                    let d0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[0], bcast(x));
                    let d1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], bcast(x.add(4)));
                    let d0 = _mm512_dpbusd_epi32(d0, w[2], bcast(x.add(8)));
                    let d1 = _mm512_dpbusd_epi32(d1, w[3], bcast(x.add(12)));
                    let dot = _mm512_add_epi32(d0, d1);
                    *isum = _mm512_add_epi32(*isum, _mm512_mullo_epi32(dot, sc));
                }
            }
            let d = _mm512_loadu_ps(a as *const f32);
            for (c, acc) in acc.iter_mut().enumerate() {
                let blk = act.as_ptr().add((c0 + c) * arb + sb * 292);
                let bsums = blk.add(260) as *const i32;
                let mut osum = _mm512_setzero_si512();
                for pi in 0..8 {
                    osum = _mm512_add_epi32(
                        osum,
                        _mm512_madd_epi16(
                            _mm512_loadu_si512(a.add(320 + pi * 64) as *const _),
                            _mm512_set1_epi32(bsums.add(pi).read_unaligned()),
                        ),
                    );
                }
                let tot = _mm512_sub_epi32(isum[c], _mm512_slli_epi32::<5>(osum));
                let da = (blk as *const f32).read_unaligned();
                let s = _mm512_mul_ps(d, _mm512_set1_ps(da));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(tot), s, *acc);
            }
        }
        store(p, g, c0, out, &acc);
    }
}
