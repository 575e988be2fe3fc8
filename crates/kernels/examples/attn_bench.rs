//! Decode attention of one KV head (Gemma 3 270M: 4 query heads, head_dim 256) over
//! a paged f16 cache, ns per call at several context lengths: "hot" repeats one
//! sequence (its K/V stay in L2), "cold" cycles over 256 sequences in 64 MB of cache
//! blocks, as a serving step over many sequences and layers does.
//!
//! `cargo run -p hangar-kernels --release --example attn_bench`

use hangar_kernels::{attend, KvFormat, PagedKv};
use std::time::Instant;

fn main() {
    let (hd, group, bs) = (256usize, 4usize, 16usize);
    let blocks = 4096usize;
    let mut seed = 7u64;
    let mut rnd = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        seed >> 16
    };
    let f16 = |r: u64| half::f16::from_f32((r % 1000) as f32 / 1000.0 - 0.5).to_bits();
    let k: Vec<u16> = (0..blocks * bs * hd).map(|_| f16(rnd())).collect();
    let v: Vec<u16> = (0..blocks * bs * hd).map(|_| f16(rnd())).collect();
    // 256 sequences of 32 blocks each, their blocks scattered over the cache.
    let mut ids: Vec<u32> = (0..blocks as u32).collect();
    for i in (1..ids.len()).rev() {
        ids.swap(i, rnd() as usize % (i + 1));
    }
    let tables: Vec<Vec<u32>> = (0..256)
        .map(|s| (0..32).map(|b| ids[(s * 16 + b) % blocks]).collect())
        .collect();
    let q: Vec<f32> = (0..group * hd)
        .map(|_| (rnd() % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    for n in [8usize, 32, 100, 500] {
        let mut scores = vec![0f32; group * n];
        let mut out = vec![0f32; group * hd];
        let reps = 256 * (1 + 1000 / n);
        let mut line = format!("n={n:4}");
        for cold in [false, true] {
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let s = Instant::now();
                for r in 0..reps {
                    let table = &tables[if cold { r % tables.len() } else { 0 }];
                    let kv = PagedKv {
                        k: &k,
                        v: &v,
                        table,
                        block_size: bs,
                        row_stride: hd,
                        head_offset: 0,
                        format: KvFormat::F16,
                    };
                    attend(&kv, &q, group, hd, 0, n, 0.0625, &mut scores, &mut out);
                    std::hint::black_box(&out);
                }
                best = best.min(s.elapsed().as_secs_f64() / reps as f64);
            }
            let label = if cold { "cold" } else { "hot " };
            line += &format!("  {label}: {:7.0} ns/call", best * 1e9);
        }
        println!("{line}");
    }
}
