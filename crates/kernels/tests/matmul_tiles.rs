//! The matmul driver (row tiles of 16, token tiles of 8, dynamic chunks) equals per-pair
//! scalar dot products for every supported weight type and batch size.

use hangar_kernels::quants::{self, act_type, row_bytes, vec_dot_scalar};
use hangar_kernels::{matmul, GgmlType, QMatrix, ThreadPool};

fn rnd(seed: &mut u64) -> f32 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
}

#[test]
fn matmul_equals_scalar_dots_for_all_types_and_batches() {
    let pool = ThreadPool::new(2);
    let mut seed = 3u64;
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        let cols = if ty.block_size() == 256 { 512 } else { 640 };
        for rows in [1usize, 15, 16, 17, 67] {
            let wf: Vec<f32> = (0..rows * cols).map(|_| rnd(&mut seed)).collect();
            let rb = row_bytes(ty, cols);
            let mut w = vec![0u8; rows * rb];
            for r in 0..rows {
                quants::quantize_row(
                    ty,
                    &wf[r * cols..(r + 1) * cols],
                    &mut w[r * rb..(r + 1) * rb],
                )
                .unwrap();
            }
            let m = QMatrix::new(ty, rows, cols, &w).unwrap();
            for t in [1usize, 3, 8, 9, 20] {
                let x: Vec<f32> = (0..t * cols).map(|_| rnd(&mut seed) * 3.0).collect();
                let mut out = vec![0f32; t * rows];
                let mut buf = Vec::new();
                matmul(&pool, &m, &x, t, &mut out, &mut buf);
                let at = act_type(ty).unwrap();
                let arb = row_bytes(at, cols);
                let mut a = vec![0u8; arb];
                for i in 0..t {
                    quants::quantize_row(at, &x[i * cols..(i + 1) * cols], &mut a).unwrap();
                    for r in 0..rows {
                        let want = vec_dot_scalar(ty, cols, &w[r * rb..(r + 1) * rb], &a);
                        let got = out[i * rows + r];
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{ty} rows {rows} t {t}: [{i},{r}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_tokens_result_does_not_depend_on_its_batch() {
    // Batch invariance: chunked prefill and continuous batching must not change results.
    let pool = ThreadPool::new(2);
    let mut seed = 5u64;
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        let cols = if ty.block_size() == 256 { 512 } else { 640 };
        let rows = 37;
        let wf: Vec<f32> = (0..rows * cols).map(|_| rnd(&mut seed)).collect();
        let rb = row_bytes(ty, cols);
        let mut w = vec![0u8; rows * rb];
        for r in 0..rows {
            quants::quantize_row(
                ty,
                &wf[r * cols..(r + 1) * cols],
                &mut w[r * rb..(r + 1) * rb],
            )
            .unwrap();
        }
        let m = QMatrix::new(ty, rows, cols, &w).unwrap();
        let t = 13;
        let x: Vec<f32> = (0..t * cols).map(|_| rnd(&mut seed) * 3.0).collect();
        let mut all = vec![0f32; t * rows];
        let mut buf = Vec::new();
        matmul(&pool, &m, &x, t, &mut all, &mut buf);
        for i in [0usize, 5, 12] {
            for len in [1usize, 2, 3] {
                let end = (i + len).min(t);
                let mut part = vec![0f32; (end - i) * rows];
                matmul(
                    &pool,
                    &m,
                    &x[i * cols..end * cols],
                    end - i,
                    &mut part,
                    &mut buf,
                );
                assert_eq!(
                    &part[..rows],
                    &all[i * rows..(i + 1) * rows],
                    "{ty}: token {i} alone/with {len} differs from the batch of {t}"
                );
            }
        }
    }
}
