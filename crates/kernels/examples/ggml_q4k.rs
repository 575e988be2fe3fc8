//! Checks `hangar_kernels::ggml::q4k::mul_mat_q4k` against llama.cpp dumps: every
//! MUL_MAT whose src0 is a Q4_K weight is recomputed from the dumped src1 and compared
//! bitwise with the dumped result.
//!
//! cargo run --release -p hangar-kernels --example ggml_q4k -- /work/dumps/p6 /work/dumps/p12 /work/dumps/d1
//!
//! With `--pool`, checks `ggml::kquant_pool::mul_mat_q4k_pool` (2-thread pool) instead.
//!
//! Needs llama.cpp tensor dumps (not in the repository, so not run in CI); what
//! can be checked without them runs as `tests/ggml_replicas.rs`.

#[path = "ggml_dump.rs"]
mod ggml_dump;

use hangar_formats::GgufFile;
use hangar_kernels::ggml::kquant_pool::mul_mat_q4k_pool;
use hangar_kernels::ggml::q4k::mul_mat_q4k;
use hangar_kernels::ThreadPool;

const MODEL: &str = "/root/.cache/hangar/models/gemma-3-270m-q4_k_m.gguf";

fn main() {
    let model = std::env::var("HANGAR_EXACT_MODEL").unwrap_or_else(|_| MODEL.to_string());
    let gguf = GgufFile::open(&model).expect("open GGUF");
    let pooled = std::env::args().any(|a| a == "--pool");
    let pool = ThreadPool::new(2);
    let mut total_bad = 0;
    for dir in std::env::args().skip(1).filter(|a| !a.starts_with("--")) {
        let dump = ggml_dump::Dump::open(&dir);
        let (mut mats, mut elems, mut bad, mut worst) = (0, 0, 0, 0f32);
        for e in dump
            .by_op("MUL_MAT")
            .filter(|e| e.srcs.first().is_some_and(|s| s.1 == "q4_K"))
        {
            let info = gguf.tensor(&e.srcs[0].0).expect("weight in GGUF");
            let (cols, rows, n) = (info.row_len(), info.n_rows(), e.ne[1]);
            assert_eq!(rows, e.ne[0], "{}", e.file);
            let x = dump.read(&e.srcs[1].0);
            let want = dump.read(&e.file);
            let mut got = vec![0f32; rows * n];
            if pooled {
                mul_mat_q4k_pool(&pool, gguf.tensor_data(info), rows, cols, &x, n, &mut got);
            } else {
                mul_mat_q4k(gguf.tensor_data(info), rows, cols, &x, n, &mut got);
            }
            let (d, w) = ggml_dump::compare(&got, &want);
            if d > 0 {
                println!(
                    "  {} ({}, n={n}): {d} of {} differ, worst rel {w:.3e}",
                    e.file,
                    e.srcs[0].0,
                    got.len()
                );
            }
            mats += 1;
            elems += got.len();
            bad += d;
            worst = worst.max(w);
        }
        println!("{dir}: {mats} Q4_K matmuls, {elems} elements, {bad} bitwise different (worst rel {worst:.3e})");
        total_bad += bad;
    }
    if total_bad > 0 {
        std::process::exit(1);
    }
}
