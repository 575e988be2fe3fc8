//! Micro-benchmark of the legacy-quant kernels at every SIMD level this CPU supports.
//!
//! `cargo run -p hangar-kernels --release --example legacy_bench [decode_rows [rows_per_tile]]`
//!
//! - decode: `vec_dot` over a Q8_0 262144 x 640 matrix (DRAM-bound), GB/s of weights;
//! - prefill: `dot_tile` (4 weight rows per call, as the matmul does) on 640-wide
//!   Q5_0/Q8_0/Q4_0 rows at nc = 1, 4, 8, GFLOP/s, against `vec_dot` per pair;
//! - Q8_0 activation quantization, GB/s of f32 input.

use hangar_kernels::quants::legacy;
use hangar_kernels::{cpu, GgmlType, SimdLevel};
use std::hint::black_box;
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Random quant bits with sane f16 scales.
fn rand_row_data(rng: &mut Rng, t: GgmlType, rows: usize, n: usize) -> Vec<u8> {
    let bs = t.type_size();
    let mut v = vec![0u8; rows * n / 32 * bs];
    rng.fill(&mut v);
    for blk in v.chunks_exact_mut(bs) {
        let d = half::f16::from_f32(0.001 + (blk[2] as f32) * 1e-5).to_le_bytes();
        blk[..2].copy_from_slice(&d);
    }
    v
}

fn acts(rng: &mut Rng, nc: usize, n: usize) -> Vec<u8> {
    let x: Vec<f32> = (0..nc * n).map(|_| rng.f32()).collect();
    let mut a = vec![0u8; nc * n / 32 * 34];
    legacy::quantize_row(GgmlType::Q8_0, &x, &mut a);
    a
}

/// Best of `reps` timings of `f`, in seconds.
fn best<F: FnMut()>(reps: usize, mut f: F) -> f64 {
    let mut b = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64());
    }
    b
}

fn main() {
    let dec_rows: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(262144);
    let best_level = cpu::detect();
    let levels: Vec<SimdLevel> = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni]
        .into_iter()
        .filter(|l| *l <= best_level)
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let n = 640;

    // ---- decode: vec_dot over a big Q8_0 matrix ----
    let t = GgmlType::Q8_0;
    let rb = n / 32 * t.type_size();
    let w = rand_row_data(&mut rng, t, dec_rows, n);
    let a = acts(&mut rng, 1, n);
    println!(
        "decode: Q8_0 vec_dot over {dec_rows} x {n} ({:.0} MB)",
        w.len() as f64 / 1e6
    );
    for &level in &levels {
        let reps = if level == SimdLevel::Scalar { 1 } else { 3 };
        let mut sink = 0.0f32;
        let s = best(reps, || {
            for r in w.chunks_exact(rb) {
                sink += legacy::vec_dot_with(level, t, n, r, &a);
            }
        });
        black_box(sink);
        println!(
            "  {level:?}: {:.2} GB/s ({:.1} ms)",
            w.len() as f64 / s / 1e9,
            s * 1e3
        );
    }
    drop(w);

    // ---- prefill: dot_tile on L2-resident rows ----
    // The variants are timed interleaved, best of many short runs, so that a busy
    // machine disturbs them alike.
    let rows = 256;
    let ncs = [1usize, 4, 8];
    // Weight rows per dot_tile call (the matmul uses 4).
    let rpc: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    for t in [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_0] {
        let rb = n / 32 * t.type_size();
        let ab = n / 32 * 34;
        let w = rand_row_data(&mut rng, t, rows, n);
        let acts: Vec<Vec<u8>> = ncs.iter().map(|&nc| acts(&mut rng, nc, n)).collect();
        println!("prefill: {t}, {rows} rows x {n}; dot_tile with {rpc} rows per call");
        for &level in &levels {
            let reps = if level == SimdLevel::Scalar { 3 } else { 200 };
            let mut tile_s = [f64::INFINITY; 3];
            let mut vd_s = f64::INFINITY;
            let mut out = vec![0.0f32; rows * 8];
            let mut sink = 0.0f32;
            for _ in 0..reps {
                for (k, &nc) in ncs.iter().enumerate() {
                    let a = &acts[k];
                    let s = best(1, || {
                        for r0 in (0..rows).step_by(rpc) {
                            let wr = &w[r0 * rb..(r0 + rpc) * rb];
                            legacy::dot_tile_with(level, t, n, wr, rb, rpc, a, ab, nc, &mut out, 8);
                            black_box(&out);
                        }
                    });
                    tile_s[k] = tile_s[k].min(s);
                }
                let s = best(1, || {
                    for r in w.chunks_exact(rb) {
                        sink += legacy::vec_dot_with(level, t, n, r, &acts[0]);
                    }
                });
                vd_s = vd_s.min(s);
            }
            black_box(sink);
            let vd_pair = vd_s / rows as f64 * 1e9;
            let mut line = format!(
                "  {level:?}: vec_dot {:.1} GFLOP/s ({vd_pair:.1} ns/pair)",
                2.0 * (n * rows) as f64 / vd_s / 1e9
            );
            for (k, &nc) in ncs.iter().enumerate() {
                let s = tile_s[k];
                let pair = s / (rows * nc) as f64 * 1e9;
                line += &format!(
                    " | nc={nc}: {:.1} GFLOP/s ({pair:.1} ns/pair, {:.2}x)",
                    2.0 * (n * rows * nc) as f64 / s / 1e9,
                    vd_pair / pair
                );
            }
            println!("{line}");
        }
    }

    // ---- activation quantization ----
    let m = 64 * 1024;
    let x: Vec<f32> = (0..m).map(|_| rng.f32()).collect();
    let mut q = vec![0u8; m / 32 * 34];
    println!("quantize_row Q8_0, {m} floats");
    for &level in &levels {
        let s = best(200, || {
            legacy::quantize_row_with(level, GgmlType::Q8_0, &x, &mut q);
            black_box(&q);
        });
        println!("  {level:?}: {:.2} GB/s of f32", (m * 4) as f64 / s / 1e9);
    }
}
