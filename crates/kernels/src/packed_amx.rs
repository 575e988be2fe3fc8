//! The packed legacy kernel ([`super::x86::tile`]) on AMX-INT8 tiles, for batched steps.
//!
//! Why: with 16 tokens the VNNI kernel is compute-bound (the 262k x 640 output matrix of
//! Gemma 3 costs more than half of a 16-stream decode step), and one `tdpbsud` does the
//! 16 x 16 x 32 multiply-adds of a (16-row group, 32-column block, 16 tokens) tile that
//! take the VNNI kernel 128 `vpdpbusd`. The packed layout is already AMX's B operand:
//! per block, 8 lane groups of 16 rows x 4 bytes are 8 rows of 64 bytes, "K/4 x N*4"
//! (Q4_0 / Q5_0 are unpacked to that layout in a 512-byte buffer first). A is the
//! tokens' 32 quantized values per block, copied once per product into contiguous
//! 16 x 32-byte tiles (`ActPrep::tiles`: strided 34-byte rows load three times slower).
//!
//! Results are bitwise those of the VNNI kernel: the tile yields each (token, row) block
//! dot as an exact int32, which gets the same offset seed, conversion, scale and FMA in
//! the same block order.

use super::x86::{fetch8, tbytes, Q8};
use super::{ActPrep, Out, PackedMatrix, GROUP, QK, TOK_TILE};
use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Tokens (A rows) per call from which the AMX kernel beats the VNNI one on a matrix
/// streamed from DRAM ([`super::use_amx`]).
pub(super) const AMX_MIN_TOKENS: usize = 2;

/// Blocks per software-pipeline step (one C tile each).
const QUAD: usize = 4;

/// How far ahead (in quads) the Q8_0 weight stream is prefetched.
const PREFETCH_QUADS: usize = 1;

thread_local! {
    /// The token count the tile registers of this thread are configured for (0: none).
    static CONFIGURED: Cell<usize> = const { Cell::new(0) };
    /// A Q4_0 / Q5_0 row group unpacked to B operands for all its blocks, keyed by the
    /// product ([`ActPrep::id`]) and the group's packed bytes, so products of more than
    /// one token tile (prefill) unpack each group once instead of once per tile.
    static UNPACKED: std::cell::RefCell<((u64, usize), Vec<Aligned<512>>)> =
        const { std::cell::RefCell::new(((0, 0), Vec::new())) };
}

/// The 64-byte tile configuration (palette 1): tmm0/tmm1 = A (`nc` rows x 32 bytes),
/// tmm2/tmm3 = B (8 rows x 64 bytes), tmm4..tmm7 = C (`nc` rows x 16 int32).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn new(nc: usize) -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        let mut set = |t: usize, rows: usize, colsb: u16| {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&colsb.to_le_bytes());
            c[48 + t] = rows as u8;
        };
        set(0, nc, 32);
        set(1, nc, 32);
        set(2, 8, 64);
        set(3, 8, 64);
        for t in 4..8 {
            set(t, nc, 64);
        }
        TileConfig(c)
    }
}

/// Loads the tile configuration for `nc` tokens unless this thread already has it.
/// Tile state stays configured between calls (Linux saves it across context switches).
#[target_feature(enable = "avx512f")]
unsafe fn configure(nc: usize) {
    if CONFIGURED.with(Cell::get) == nc {
        return;
    }
    let cfg = TileConfig::new(nc);
    // SAFETY: AMX was detected and permitted (`crate::cpu::amx`); the config is valid.
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    CONFIGURED.with(|c| c.set(nc));
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Aligned<const N: usize>([u8; N]);

/// One packed (group `g`, tokens `c0 .. c0 + NC`) tile on AMX; see the module docs.
///
/// # Safety
/// [`crate::cpu::amx`] is true; `1 <= NC <= 16`; the pointers and ranges are those the
/// VNNI kernel takes.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn tile<const T: u8, const NC: usize>(
    p: &PackedMatrix,
    g: usize,
    ap: &ActPrep,
    c0: usize,
    out: Out,
) {
    configure(NC);
    debug_assert!(c0.is_multiple_of(TOK_TILE) && !ap.tiles.is_empty());
    let (nb, tb) = (p.nb, tbytes(T));
    let qbase = p.quants.as_ptr().add(g * nb * tb);
    if T != Q8 && ap.d.len() > TOK_TILE * nb {
        // More than one token tile: the group's B operands, unpacked once.
        return UNPACKED.with(|u| {
            let Ok(mut u) = u.try_borrow_mut() else {
                return tile_from::<T, NC>(p, g, ap, c0, out, None);
            };
            let (key, buf) = &mut *u;
            if *key != (ap.id, qbase as usize) {
                buf.resize(nb, Aligned([0; 512]));
                for (b, dst) in buf.iter_mut().enumerate() {
                    for (k, w) in fetch8::<T>(qbase.add(b * tb)).iter().enumerate() {
                        _mm512_store_si512(dst.0.as_mut_ptr().add(k * 64) as *mut _, *w);
                    }
                }
                *key = (ap.id, qbase as usize);
            }
            tile_from::<T, NC>(p, g, ap, c0, out, Some(buf.as_ptr() as *const u8))
        });
    }
    tile_from::<T, NC>(p, g, ap, c0, out, None)
}

/// [`tile`] with the B operands of Q4_0 / Q5_0 blocks unpacked here per block, or
/// read from `unpacked` (512 bytes per block, the whole group).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_from<const T: u8, const NC: usize>(
    p: &PackedMatrix,
    g: usize,
    ap: &ActPrep,
    c0: usize,
    out: Out,
    unpacked: Option<*const u8>,
) {
    let nb = p.nb;
    let tb = tbytes(T);
    let qbase = p.quants.as_ptr().add(g * nb * tb);
    let sbase = p.scales.as_ptr().add(g * nb * GROUP);
    let abase = ap.tiles.as_ptr().add(c0 / TOK_TILE * nb * TOK_TILE * QK);
    let dbase = ap.d.as_ptr().add(c0 * nb);
    let seedbase = ap.seed.as_ptr().add(c0 * nb);
    // Software pipeline over quads of blocks. Tiles are not renamed, so the 4 blocks of
    // a quad use different C tiles (A and B alternate), and a tile is only reused a
    // quad later. Quad i's tiles are multiplied and stored while quad i - 1's stored
    // products are scaled on the vector units, and (Q4_0 / Q5_0) quad i + 1's weights
    // are unpacked: a load never waits on a store of the same quad (AMX stores do not
    // forward to loads, the reader would wait for them to retire).
    // Uninitialised: every byte is stored (tile store / unpack) before it is loaded, and
    // zeroing 12 KiB per call would cost as much as the multiplies of a small matrix.
    let mut cbuf = std::mem::MaybeUninit::<Aligned<{ 2 * QUAD * 1024 }>>::uninit();
    let mut wbuf = std::mem::MaybeUninit::<Aligned<{ 2 * QUAD * 512 }>>::uninit();
    let (cp, wp) = (cbuf.as_mut_ptr() as *mut u8, wbuf.as_mut_ptr() as *mut u8);
    let c_slot = |b: usize| cp.add(((b / QUAD) % 2) * QUAD * 1024 + (b % QUAD) * 1024);
    // Block b's B operand: in the packed matrix (Q8_0) or unpacked to its slot.
    let b_ptr = |b: usize| -> *mut u8 {
        if T == Q8 {
            qbase.add(b * tb) as *mut u8
        } else if let Some(u) = unpacked {
            u.add(b * 512) as *mut u8
        } else {
            wp.add(((b / QUAD) % 2) * QUAD * 512 + (b % QUAD) * 512)
        }
    };
    let unpack = |b: usize| {
        if T != Q8 && unpacked.is_none() && b < nb {
            for (k, w) in fetch8::<T>(qbase.add(b * tb)).iter().enumerate() {
                _mm512_store_si512(b_ptr(b).add(k * 64) as *mut _, *w);
            }
        }
    };
    let mut acc = [_mm512_setzero_ps(); NC];
    let mut scale = |bb: usize| {
        if bb >= nb {
            return;
        }
        let dw = _mm512_cvtph_ps(_mm256_loadu_si256(sbase.add(bb * GROUP) as *const __m256i));
        let cs = c_slot(bb) as *const __m512i;
        for (c, acc) in acc.iter_mut().enumerate() {
            let dot = _mm512_add_epi32(
                _mm512_set1_epi32(*seedbase.add(c * nb + bb)),
                _mm512_load_si512(cs.add(c)),
            );
            let s = _mm512_mul_ps(dw, _mm512_set1_ps(*dbase.add(c * nb + bb)));
            *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, *acc);
        }
    };
    // One pipeline step per block of a quad: block b's product goes to the tile unit,
    // then the vector units unpack block b + QUAD (Q4_0 / Q5_0) and scale block
    // b - QUAD's stored product. Interleaving per block, not per quad, is what lets the
    // two kinds of work overlap (a quad of tile work, then a quad of vector work, runs
    // them one after the other: 52 vs 39 cycles per product in a micro-benchmark).
    macro_rules! step {
        ($b:expr, $ta:literal, $tb:literal, $tc:literal) => {
            let b = $b;
            if b < nb {
                if T == Q8 {
                    // The weight stream ahead (the big output matrices come from DRAM;
                    // tile loads do not run ahead as far as vector loads).
                    let next = qbase.wrapping_add((b + PREFETCH_QUADS * QUAD) * tb);
                    for l in 0..tb / 64 {
                        _mm_prefetch::<_MM_HINT_T0>(next.wrapping_add(l * 64) as *const i8);
                    }
                }
                asm!(
                    concat!("tileloadd ", $ta, ", [{a} + {sa}*1]"),
                    concat!("tileloadd ", $tb, ", [{w} + {sw}*1]"),
                    concat!("tilezero ", $tc),
                    concat!("tdpbsud ", $tc, ", ", $ta, ", ", $tb),
                    concat!("tilestored [{c} + {sc}*1], ", $tc),
                    a = in(reg) abase.add(b * TOK_TILE * QK),
                    sa = in(reg) QK,
                    w = in(reg) b_ptr(b),
                    sw = in(reg) 64usize,
                    c = in(reg) c_slot(b),
                    sc = in(reg) 64usize,
                    options(nostack, preserves_flags)
                );
            }
            unpack(b + QUAD);
            if b >= QUAD {
                scale(b - QUAD);
            }
        };
    }
    let nquads = nb.div_ceil(QUAD);
    for b in 0..QUAD {
        unpack(b);
    }
    for i in 0..=nquads {
        let b = QUAD * i;
        step!(b, "tmm0", "tmm2", "tmm4");
        step!(b + 1, "tmm1", "tmm3", "tmm5");
        step!(b + 2, "tmm0", "tmm2", "tmm6");
        step!(b + 3, "tmm1", "tmm3", "tmm7");
    }
    super::x86::store_group(p.rows, g, c0, out, &acc);
}
