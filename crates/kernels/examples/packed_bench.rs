//! Packed-kernel throughput, AVX-512 VNNI vs AMX tiles, in one process (A/B pairs).
//!
//! `cargo run -p hangar-kernels --release --example packed_bench [threads]`
//!
//! Shapes of Gemma 3 270M: the 262144 x 640 Q8_0 output matrix, a 2048 x 640 Q5_0
//! projection and the 640 x 2048 Q4_K / Q6_K FFN down projections, at 1..16 tokens;
//! GMAC/s and ms per call, best of several runs.

use hangar_kernels::packed::{matmul_packed_greedy, Packed};
use hangar_kernels::{amx, quantize_activations, quants, set_amx, GgmlType, QMatrix, ThreadPool};
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let pool = ThreadPool::new(threads);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let tiles = set_amx(true);
    println!("threads {threads}, AMX available: {tiles}");
    for (ty, rows, cols) in [
        (GgmlType::Q8_0, 262_144usize, 640usize),
        (GgmlType::Q5_0, 2048, 640),
        (GgmlType::Q4_0, 2048, 640),
        (GgmlType::Q4K, 640, 2048),
        (GgmlType::Q6K, 640, 2048),
    ] {
        let rb = quants::row_bytes(ty, cols);
        let mut data = vec![0u8; rows * rb];
        let x: Vec<f32> = (0..cols).map(|_| next()).collect();
        for (r, dst) in data.chunks_mut(rb).enumerate() {
            let xr: Vec<f32> = x.iter().map(|v| v * (1.0 + (r % 7) as f32 * 0.1)).collect();
            quants::quantize_row(ty, &xr, dst).expect("row quantizes");
        }
        let m = QMatrix::new(ty, rows, cols, &data).expect("matrix shape");
        let p = Packed::pack_with(&pool, &m, |_, _| {}).expect("packable");
        let reps = if rows > 100_000 { 5 } else { 400 };
        for t in [1usize, 2, 3, 4, 8, 16] {
            let xa: Vec<f32> = (0..t * cols).map(|_| next()).collect();
            let mut act = Vec::new();
            quantize_activations(&pool, ty, &xa, t, cols, &mut act);
            let mut out = vec![0f32; t * rows];
            let mut line = format!("{ty:?} {rows}x{cols} t={t:2}");
            for on in [false, true] {
                if on && !tiles {
                    continue;
                }
                set_amx(on);
                assert_eq!(amx(), on);
                p.matmul(&pool, &act, t, &mut out);
                let mut best = f64::INFINITY;
                for _ in 0..reps {
                    let s = Instant::now();
                    p.matmul(&pool, &act, t, &mut out);
                    best = best.min(s.elapsed().as_secs_f64());
                }
                let gmac = (rows * cols * t) as f64 / best / 1e9;
                line += &format!(
                    "  {}: {:8.3} ms {:7.1} GMAC/s",
                    if on { "amx " } else { "vnni" },
                    best * 1e3,
                    gmac
                );
            }
            if let (Packed::Legacy(pm), true) = (&p, rows > 100_000) {
                // Greedy decoding's head: the argmax without writing the outputs.
                let skip: Vec<&[u32]> = vec![&[1u32, 106][..]; t];
                let mut best = f64::INFINITY;
                for _ in 0..reps {
                    let s = Instant::now();
                    std::hint::black_box(matmul_packed_greedy(&pool, pm, &act, t, &skip));
                    best = best.min(s.elapsed().as_secs_f64());
                }
                line += &format!("  greedy: {:8.3} ms", best * 1e3);
            }
            println!("{line}");
        }
    }
}
