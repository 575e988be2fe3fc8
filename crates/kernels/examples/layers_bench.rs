//! The layer products of one decode step, weights cold vs hot, in one process.
//!
//! `cargo run -p hangar-kernels --release --example layers_bench [threads] [tokens]`
//!
//! Gemma 3 270M's 18 layers (Q/K/V, output, gate/up and down products with the
//! default Q4_K_M file's types) at `tokens` rows: "cold" runs all 18 distinct layers,
//! as a decode step does, so each product reads its weights from L3/DRAM (60 MB a
//! step); "hot" runs layer 0 eighteen times, weights in L2. The gap is what memory
//! stalls cost the layer products in serving. Best of several steps, ms per step.

use hangar_kernels::packed::{matmul_packed_many, Packed};
use hangar_kernels::{quantize_activations, quants, GgmlType, QMatrix, ThreadPool};
use std::time::Instant;

struct Layer {
    qkv: Vec<Packed>,
    o: Packed,
    gate_up: Vec<Packed>,
    down: Packed,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(2);
    let t: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);
    let pool = ThreadPool::new(threads);
    // AMX=0: the VNNI kernels only.
    if std::env::var("AMX").is_ok_and(|v| v == "0") {
        hangar_kernels::set_amx(false);
    }
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut mat = |ty: GgmlType, rows: usize, cols: usize| {
        let rb = quants::row_bytes(ty, cols);
        let mut data = vec![0u8; rows * rb];
        for dst in data.chunks_mut(rb) {
            let xr: Vec<f32> = (0..cols).map(|_| next()).collect();
            quants::quantize_row(ty, &xr, dst).expect("row quantizes");
        }
        let m = QMatrix::new(ty, rows, cols, &data).expect("matrix shape");
        Packed::pack_with(&pool, &m, |_, _| {}).expect("packable")
    };
    let layers: Vec<Layer> = (0..18)
        .map(|i| Layer {
            qkv: vec![
                mat(GgmlType::Q5_0, 1024, 640),
                mat(GgmlType::Q5_0, 256, 640),
                mat(
                    if i % 2 == 0 {
                        GgmlType::Q8_0
                    } else {
                        GgmlType::Q5_0
                    },
                    256,
                    640,
                ),
            ],
            o: mat(GgmlType::Q4K, 640, 1024),
            gate_up: vec![
                mat(GgmlType::Q5_0, 2048, 640),
                mat(GgmlType::Q5_0, 2048, 640),
            ],
            down: mat(
                if i % 2 == 0 {
                    GgmlType::Q6K
                } else {
                    GgmlType::Q4K
                },
                640,
                2048,
            ),
        })
        .collect();
    let x640: Vec<f32> = (0..t * 640).map(|_| 0.5 * next()).collect();
    let x1024: Vec<f32> = (0..t * 1024).map(|_| 0.5 * next()).collect();
    let x2048: Vec<f32> = (0..t * 2048).map(|_| 0.5 * next()).collect();
    let (mut a640, mut a1024, mut a2048) = (Vec::new(), Vec::new(), Vec::new());
    quantize_activations(&pool, GgmlType::Q5_0, &x640, t, 640, &mut a640);
    quantize_activations(&pool, GgmlType::Q4K, &x1024, t, 1024, &mut a1024);
    quantize_activations(&pool, GgmlType::Q4K, &x2048, t, 2048, &mut a2048);
    let mut bufs: Vec<Vec<f32>> = [1024, 256, 256, 2048, 2048]
        .iter()
        .map(|&r| vec![0f32; t * r])
        .collect();
    let mut o_out = vec![0f32; t * 640];
    // ONLY=legacy or ONLY=k: just the Q4_0/Q5_0/Q8_0 or just the K-quant products.
    let only = std::env::var("ONLY").unwrap_or_default();
    let (legacy_on, k_on) = (only != "k", only != "legacy");
    let mut run_layer = |l: &Layer| {
        let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let (qkv_out, gu_out) = outs.split_at_mut(3);
        if legacy_on {
            let m: Vec<_> = l.qkv.iter().map(legacy).collect();
            matmul_packed_many(&pool, &m, &a640, t, qkv_out);
        }
        if k_on {
            l.o.matmul(&pool, &a1024, t, &mut o_out);
        }
        if legacy_on {
            let m: Vec<_> = l.gate_up.iter().map(legacy).collect();
            matmul_packed_many(&pool, &m, &a640, t, gu_out);
        }
        if k_on {
            l.down.matmul(&pool, &a2048, t, &mut o_out);
        }
    };
    // A 256 MB sweep between steps, as the output head's stream does in decoding.
    let flush = vec![1u8; 256 << 20];
    for round in 0..3 {
        let mut line = format!("t={t:2} round {round}");
        for cold in [true, false] {
            let mut best = f64::INFINITY;
            for _ in 0..8 {
                std::hint::black_box(flush.iter().step_by(64).map(|&b| b as u64).sum::<u64>());
                let s = Instant::now();
                for i in 0..18 {
                    run_layer(&layers[if cold { i } else { 0 }]);
                }
                best = best.min(s.elapsed().as_secs_f64());
            }
            line += &format!(
                "  {}: {:7.3} ms",
                if cold { "cold" } else { "hot " },
                best * 1e3
            );
        }
        println!("{line}");
    }
    let smaps = std::fs::read_to_string("/proc/self/smaps_rollup").unwrap_or_default();
    for l in smaps
        .lines()
        .filter(|l| l.contains("Huge") || l.starts_with("Rss"))
    {
        println!("{l}");
    }
}

fn legacy(p: &Packed) -> &hangar_kernels::packed::PackedMatrix {
    match p {
        Packed::Legacy(m) => m,
        Packed::K(_) => panic!("a legacy type"),
    }
}
