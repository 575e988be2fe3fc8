//! Decode attention of one KV head (Gemma 3 270M: 4 query heads, head_dim 256) over
//! a paged f16 cache, ns per call at several context lengths.
//!
//! `cargo run -p hangar-kernels --release --example attn_bench`

use hangar_kernels::{attend, KvFormat, PagedKv};
use std::time::Instant;

fn main() {
    let (hd, group, bs, blocks) = (256usize, 4usize, 16usize, 64usize);
    let mut seed = 7u64;
    let mut rnd = || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let k: Vec<u16> = (0..blocks * bs * hd)
        .map(|_| half::f16::from_f32(rnd()).to_bits())
        .collect();
    let v: Vec<u16> = (0..blocks * bs * hd)
        .map(|_| half::f16::from_f32(rnd()).to_bits())
        .collect();
    let table: Vec<u32> = (0..blocks as u32).rev().collect();
    let q: Vec<f32> = (0..group * hd).map(|_| rnd()).collect();
    let kv = PagedKv {
        k: &k,
        v: &v,
        table: &table,
        block_size: bs,
        row_stride: hd,
        head_offset: 0,
        format: KvFormat::F16,
    };
    for n in [8usize, 32, 100, 500] {
        let mut scores = vec![0f32; group * n];
        let mut out = vec![0f32; group * hd];
        let reps = 200_000 / n;
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let s = Instant::now();
            for _ in 0..reps {
                attend(&kv, &q, group, hd, 0, n, 0.0625, &mut scores, &mut out);
                std::hint::black_box(&out);
            }
            best = best.min(s.elapsed().as_secs_f64() / reps as f64);
        }
        println!("n={n:4}  {:8.0} ns/call", best * 1e9);
    }
}
