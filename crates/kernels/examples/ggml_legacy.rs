//! Checks `hangar_kernels::ggml::legacy` against llama.cpp dumps: recomputes every
//! MUL_MAT whose weight is Q5_0 or Q8_0 from the dumped f32 input and counts the
//! bitwise-different elements.
//!
//! Usage: ggml_legacy [--pool] DUMP_DIR... (`--pool`: check
//! `ggml::legacy_pool::mul_mat_legacy_pool` on a 2-thread pool instead; model:
//! $HANGAR_GGUF or the gemma-3-270m Q4_K_M file in ~/.cache/hangar/models).
//!
//! Needs llama.cpp tensor dumps (not in the repository, so not run in CI); what
//! can be checked without them runs as `tests/ggml_replicas.rs`.
#[path = "ggml_dump.rs"]
mod ggml_dump;

use hangar_formats::GgufFile;
use hangar_kernels::ggml::legacy::mul_mat_legacy;
use hangar_kernels::ggml::legacy_pool::mul_mat_legacy_pool;
use hangar_kernels::{GgmlType, ThreadPool};
use std::time::Instant;

fn main() {
    let model = std::env::var("HANGAR_GGUF")
        .unwrap_or_else(|_| "/root/.cache/hangar/models/gemma-3-270m-q4_k_m.gguf".to_string());
    let gguf = GgufFile::open(&model).expect("open gguf");
    let mut dirs: Vec<String> = std::env::args().skip(1).collect();
    let pooled = dirs.first().is_some_and(|a| a == "--pool");
    if pooled {
        dirs.remove(0);
    }
    let pool = ThreadPool::new(2);
    if dirs.is_empty() {
        eprintln!("usage: ggml_legacy [--pool] DUMP_DIR...");
        std::process::exit(2);
    }
    let mut grand = 0usize;
    for d in &dirs {
        let dump = ggml_dump::Dump::open(d);
        let (mut checked, mut elems, mut diffs) = (0usize, 0usize, 0usize);
        let mut secs = 0f64;
        for e in dump.by_op("MUL_MAT") {
            // sources with spaces in their names (views of the KV cache) do not parse
            let Some((wname, wty)) = e.srcs.first() else {
                continue;
            };
            if wty != "q5_0" && wty != "q8_0" {
                continue;
            }
            let info = gguf
                .tensor(wname)
                .unwrap_or_else(|| panic!("no tensor {wname}"));
            assert!(
                matches!(info.ty, GgmlType::Q5_0 | GgmlType::Q8_0),
                "{wname}: {:?}",
                info.ty
            );
            let (cols, rows) = (info.dims[0] as usize, info.dims[1] as usize);
            let n = e.ne[1] * e.ne[2] * e.ne[3];
            assert_eq!(e.ne[0], rows, "{}", e.file);
            let x = dump.read(&e.srcs[1].0);
            assert_eq!(x.len(), n * cols, "{}: src1 size", e.file);
            let want = dump.read(&e.file);
            let mut got = vec![0f32; n * rows];
            let t = Instant::now();
            let wdata = gguf.tensor_data(info);
            if pooled {
                mul_mat_legacy_pool(&pool, info.ty, wdata, rows, cols, &x, n, &mut got);
            } else {
                mul_mat_legacy(info.ty, wdata, rows, cols, &x, n, &mut got);
            }
            let dt = t.elapsed();
            secs += dt.as_secs_f64();
            let (diff, worst) = ggml_dump::compare(&got, &want);
            if diff > 0 || rows * cols > 1 << 24 {
                println!(
                    "  {} ({wname} {wty} {rows}x{cols}, n={n}): {diff} differ (worst rel {worst:.3e}), {:.3}s",
                    e.file,
                    dt.as_secs_f64()
                );
            }
            checked += 1;
            elems += got.len();
            diffs += diff;
        }
        println!(
            "{d}: {checked} Q5_0/Q8_0 matmuls, {elems} elements, {diffs} bitwise differences, \
             {:.1} ms in {}",
            secs * 1e3,
            if pooled {
                "mul_mat_legacy_pool"
            } else {
                "mul_mat_legacy"
            }
        );
        grand += diffs;
    }
    println!("total differences: {grand}");
    if grand != 0 {
        std::process::exit(1);
    }
}
