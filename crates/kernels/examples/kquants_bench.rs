//! K-quant kernel throughput: `vec_dot` in GB/s of weights streamed and `dot_tile`
//! in GFLOP/s (2 flops per multiply-add) at nc = 1, 4, 8, per SIMD level.
//!
//! cargo run --release -p hangar-kernels --example kquants_bench [-- quick]

use hangar_kernels::cpu::{detect, SimdLevel};
use hangar_kernels::quants::kquants;
use hangar_kernels::GgmlType;
use std::hint::black_box;
use std::time::Instant;

const N: usize = 2048;

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn quantize(t: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / 256 * t.type_size()];
    hangar_kernels::quants::quantize_row(t, x, &mut out).unwrap();
    out
}

/// Best-of-`reps` seconds of `f`.
fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let levels: Vec<SimdLevel> = [SimdLevel::Scalar, SimdLevel::Avx2, SimdLevel::Avx512Vnni]
        .into_iter()
        .filter(|&l| l <= detect())
        .collect();
    // One row of each type quantized from random data, replicated (quantizing
    // 64 MiB with the reference search would take longer than the benchmark).
    let acts: Vec<u8> = (0..8)
        .flat_map(|_| {
            let x: Vec<f32> = (0..N).map(|_| rng.f32()).collect();
            quantize(GgmlType::Q8K, &x)
        })
        .collect();
    let arow = N / 256 * 292;
    println!("n = {N}; working sets: 'L2' = 256 rows, 'RAM' = ~64 MiB of weights");
    // Reference: plain single-thread read bandwidth over 64 MiB.
    let mem: Vec<u64> = (0..(64usize << 20) / 8).map(|i| i as u64).collect();
    let s = time(5, || {
        let mut acc = [0u64; 8];
        for c in mem.chunks_exact(8) {
            for (a, v) in acc.iter_mut().zip(c) {
                *a = a.wrapping_add(*v);
            }
        }
        black_box(acc);
    });
    println!(
        "memory read (sum of u64s)      {:7.2} GB/s",
        (mem.len() * 8) as f64 / s / 1e9
    );
    drop(mem);
    for t in [GgmlType::Q4K, GgmlType::Q6K] {
        let wrow = N / 256 * t.type_size();
        let proto: Vec<u8> = (0..16)
            .flat_map(|_| {
                let x: Vec<f32> = (0..N).map(|_| rng.f32() * 0.05).collect();
                quantize(t, &x)
            })
            .collect();
        let rows_big = if quick { 8192 } else { (64 << 20) / wrow };
        let make =
            |rows: usize| -> Vec<u8> { proto.iter().copied().cycle().take(rows * wrow).collect() };
        let sets = [("L2", make(256)), ("RAM", make(rows_big))];
        for &level in &levels {
            for (set, w) in &sets {
                let rows = w.len() / wrow;
                if level == SimdLevel::Scalar && *set == "RAM" {
                    continue;
                }
                let reps = if *set == "L2" { 50 } else { 5 };
                let s = time(reps, || {
                    let mut acc = 0f32;
                    for r in 0..rows {
                        acc += kquants::vec_dot_with(
                            level,
                            t,
                            N,
                            &w[r * wrow..][..wrow],
                            &acts[..arow],
                        );
                    }
                    black_box(acc);
                });
                let gbs = (rows * wrow) as f64 / s / 1e9;
                let gflops = 2.0 * (rows * N) as f64 / s / 1e9;
                println!(
                    "{t:5} {level:10?} {set:3} vec_dot        {gbs:7.2} GB/s  {gflops:7.2} GFLOP/s  {:6.1} ns/dot",
                    s / rows as f64 * 1e9
                );
                for nc in [1usize, 4, 8] {
                    let mut out = vec![0f32; rows * nc];
                    let s = time(reps, || {
                        // Tiles of 4 weight rows, as a matmul driver would issue them.
                        for r0 in (0..rows).step_by(4) {
                            let nr = 4.min(rows - r0);
                            kquants::dot_tile_with(
                                level,
                                t,
                                N,
                                &w[r0 * wrow..],
                                wrow,
                                nr,
                                &acts,
                                arow,
                                nc,
                                &mut out[r0 * nc..],
                                nc,
                            );
                        }
                        black_box(&out);
                    });
                    let gflops = 2.0 * (rows * N * nc) as f64 / s / 1e9;
                    let gbs = (rows * wrow) as f64 / s / 1e9;
                    println!(
                        "{t:5} {level:10?} {set:3} dot_tile nc={nc} {gbs:7.2} GB/s  {gflops:7.2} GFLOP/s  {:6.1} ns/dot",
                        s / (rows * nc) as f64 * 1e9
                    );
                }
            }
        }
    }
}
