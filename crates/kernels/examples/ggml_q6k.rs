//! Checks `hangar_kernels::ggml::q6k` against llama.cpp tensor dumps: recomputes every
//! MUL_MAT whose src0 is a Q6_K weight from the dumped src1 input and prints how many
//! output elements differ bitwise from llama.cpp's.
//!
//! `cargo run --release -p hangar-kernels --example ggml_q6k -- /work/dumps/p6 /work/dumps/p12 /work/dumps/d1`
//! (model path overridable with HANGAR_EXACT_MODEL). With `--pool`, checks
//! `ggml::kquant_pool::mul_mat_q6k_pool` (2-thread pool) instead.
//!
//! Needs llama.cpp tensor dumps (not in the repository, so not run in CI); what
//! can be checked without them runs as `tests/ggml_replicas.rs`.

#[path = "ggml_dump.rs"]
mod ggml_dump;

use hangar_formats::{GgmlType, GgufFile};
use hangar_kernels::ggml::{kquant_pool, q6k};
use hangar_kernels::ThreadPool;

fn main() {
    let model = std::env::var("HANGAR_EXACT_MODEL")
        .unwrap_or_else(|_| "/root/.cache/hangar/models/gemma-3-270m-q4_k_m.gguf".to_string());
    let gguf = GgufFile::open(&model).expect("open gguf");
    let pooled = std::env::args().any(|a| a == "--pool");
    let pool = ThreadPool::new(2);
    let mut total_diff = 0usize;
    for dir in std::env::args().skip(1).filter(|a| !a.starts_with("--")) {
        let dump = ggml_dump::Dump::open(&dir);
        let (mut n_ops, mut dir_diff) = (0usize, 0usize);
        for e in dump.by_op("MUL_MAT") {
            let (Some((wname, wty)), Some((xname, _))) = (e.srcs.first(), e.srcs.get(1)) else {
                continue;
            };
            if wty != "q6_K" {
                continue;
            }
            let info = gguf.tensor(wname).expect("weight in gguf");
            assert_eq!(info.ty, GgmlType::Q6K, "{wname}");
            let (rows, n) = (e.ne[0], e.ne[1] * e.ne[2] * e.ne[3]);
            let cols = info.dims[0] as usize;
            assert_eq!(info.n_rows(), rows, "{wname}");
            let x = dump.read(xname);
            assert_eq!(x.len(), n * cols, "{xname}");
            let want = dump.read(&e.file);
            let mut got = vec![0f32; rows * n];
            if pooled {
                kquant_pool::mul_mat_q6k_pool(
                    &pool,
                    gguf.tensor_data(info),
                    rows,
                    cols,
                    &x,
                    n,
                    &mut got,
                );
            } else {
                q6k::mul_mat_q6k(gguf.tensor_data(info), rows, cols, &x, n, &mut got);
            }
            let (diff, worst) = ggml_dump::compare(&got, &want);
            println!(
                "{dir} {} ({wname}, {rows}x{cols}, n={n}, {}): {diff} of {} differ, worst rel {worst:.3e}",
                e.file,
                if n >= q6k::TILED_MIN_BATCH { "tiled" } else { "vec_dot" },
                want.len()
            );
            n_ops += 1;
            dir_diff += diff;
        }
        println!("{dir}: {n_ops} Q6_K matmuls, {dir_diff} elements differ");
        total_diff += dir_diff;
    }
    println!("total: {total_diff} elements differ");
    if total_diff != 0 {
        std::process::exit(1);
    }
}
