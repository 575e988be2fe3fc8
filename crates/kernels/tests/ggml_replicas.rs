//! The ggml replicas checked without llama.cpp dumps, on deterministic random data:
//! the dispatcher (`ggml::mul_mat`, AVX-512 pool twins where the CPU has them) equals
//! the scalar replicas bit for bit; the attention's f32-held f16 dots equal the F16
//! MUL_MAT replica, also over the shortened (zero-padded) rows the forward uses; and
//! each replica depends on the batch size exactly where ggml's kernel choice does.
//! The dump comparisons themselves stay examples (`examples/ggml_*.rs`).

use hangar_kernels::ggml::{self, f16, kquant_pool, legacy, legacy_pool, q4k, q6k};
use hangar_kernels::{quants, GgmlType, ThreadPool};

/// A deterministic generator (no seed files, the same data on every machine).
struct Lcg(u64);
impl Lcg {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    /// `n` values with magnitudes spread over a few orders and a few exact zeros.
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = self.f() * [0.05, 1.0, 4.0][i % 3];
                if i % 97 == 0 {
                    0.0
                } else {
                    v
                }
            })
            .collect()
    }
}

/// `rows` random rows of `cols`, quantized to `ty` as a GGUF file holds them.
fn weights(rng: &mut Lcg, ty: GgmlType, rows: usize, cols: usize) -> Vec<u8> {
    let rb = quants::row_bytes(ty, cols);
    let mut out = vec![0u8; rows * rb];
    for row in out.chunks_exact_mut(rb) {
        quants::quantize_row(ty, &rng.vec(cols), row).unwrap();
    }
    out
}

/// The scalar replica of `ty`'s MUL_MAT.
fn scalar(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n * rows];
    match ty {
        GgmlType::Q5_0 | GgmlType::Q8_0 => {
            legacy::mul_mat_legacy(ty, w, rows, cols, x, n, &mut out)
        }
        GgmlType::Q4K => q4k::mul_mat_q4k(w, rows, cols, x, n, &mut out),
        GgmlType::Q6K => q6k::mul_mat_q6k(w, rows, cols, x, n, &mut out),
        other => panic!("no scalar replica for {other:?}"),
    }
    out
}

fn assert_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.to_bits(), w.to_bits(), "{what}: element {k}: {g} vs {w}");
    }
}

const TYPES: [GgmlType; 4] = [GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K];
/// Batch sizes on both sides of every kernel switch: legacy n = 1 | 2, Q4_K's
/// gemm/gemv split at n % 4 (n > 3), Q6_K's tiled kernel from n = 8.
const BATCHES: [usize; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17];

#[test]
fn mul_mat_dispatch_equals_the_scalar_replicas_bit_for_bit() {
    let mut rng = Lcg(20);
    let pools = [ThreadPool::new(1), ThreadPool::new(2), ThreadPool::new(3)];
    for ty in TYPES {
        for (rows, cols) in [(32, 512), (40, 256), (20, 768)] {
            let w = weights(&mut rng, ty, rows, cols);
            for (i, n) in BATCHES.into_iter().enumerate() {
                let x = rng.vec(n * cols);
                let want = scalar(ty, &w, rows, cols, &x, n);
                let mut got = vec![f32::NAN; n * rows];
                assert!(ggml::mul_mat(
                    &pools[i % 3],
                    ty,
                    &w,
                    rows,
                    cols,
                    &x,
                    n,
                    &mut got
                ));
                assert_bits(&got, &want, &format!("{ty:?} {rows}x{cols} n={n}"));
            }
        }
    }
}

#[test]
fn pool_twins_equal_the_scalar_replicas_for_each_type() {
    // The twins called directly, as `examples/ggml_*.rs --pool` check them on dumps.
    let mut rng = Lcg(21);
    let pool = ThreadPool::new(2);
    let (rows, cols) = (48, 512);
    for n in [1, 4, 6, 8, 13] {
        let x = rng.vec(n * cols);
        for ty in TYPES {
            let w = weights(&mut rng, ty, rows, cols);
            let want = scalar(ty, &w, rows, cols, &x, n);
            let mut got = vec![f32::NAN; n * rows];
            match ty {
                GgmlType::Q4K => {
                    kquant_pool::mul_mat_q4k_pool(&pool, &w, rows, cols, &x, n, &mut got)
                }
                GgmlType::Q6K => {
                    kquant_pool::mul_mat_q6k_pool(&pool, &w, rows, cols, &x, n, &mut got)
                }
                _ => legacy_pool::mul_mat_legacy_pool(&pool, ty, &w, rows, cols, &x, n, &mut got),
            }
            assert_bits(&got, &want, &format!("{ty:?} pool twin n={n}"));
        }
    }
}

#[test]
fn f16_weights_are_read_in_place_or_copied_with_the_same_result() {
    let mut rng = Lcg(25);
    let pool = ThreadPool::new(2);
    let (rows, cols, n) = (12, 64, 3);
    let w: Vec<u16> = rng
        .vec(rows * cols)
        .into_iter()
        .map(f16::f32_to_f16)
        .collect();
    let x = rng.vec(n * cols);
    let mut want = vec![0f32; n * rows];
    f16::mul_mat_f16(&w, rows, cols, &x, n, &mut want);
    // GGUF bytes at an even address (read in place) and at an odd one (copied).
    let mut bytes = vec![0u8; 1 + 2 * w.len()];
    for start in [0, 1] {
        let dst = &mut bytes[start..start + 2 * w.len()];
        for (d, v) in dst.chunks_exact_mut(2).zip(&w) {
            d.copy_from_slice(&v.to_le_bytes());
        }
        let mut got = vec![f32::NAN; n * rows];
        assert!(ggml::mul_mat(
            &pool,
            GgmlType::F16,
            dst,
            rows,
            cols,
            &x,
            n,
            &mut got
        ));
        assert_bits(&got, &want, &format!("F16 weights at byte offset {start}"));
    }
}

#[test]
fn types_without_a_replica_are_refused() {
    let pool = ThreadPool::new(1);
    let mut out = vec![7.0f32; 4];
    let w = vec![0u8; 4 * 32 * 4];
    assert!(!ggml::mul_mat(
        &pool,
        GgmlType::F32,
        &w,
        4,
        32,
        &[0.0; 32],
        1,
        &mut out
    ));
    assert_eq!(
        out,
        vec![7.0; 4],
        "a refused product leaves the output alone"
    );
}

/// Rows of `len` random values that are exactly representable in f16 (as the f16 KV
/// cache and the rounded queries hold them).
fn f16_rows(rng: &mut Lcg, n: usize, len: usize) -> Vec<f32> {
    rng.vec(n * len)
        .into_iter()
        .map(|v| f16::f16_to_f32(f16::f32_to_f16(v)))
        .collect()
}

#[test]
fn attention_dots_equal_the_f16_mul_mat_replica() {
    let mut rng = Lcg(22);
    let hd = 256;
    for (cells, ts) in [(256, 1), (256, 6), (512, 1), (512, 3)] {
        let k = f16_rows(&mut rng, cells, hd);
        let q = f16_rows(&mut rng, ts, hd);
        let kh: Vec<u16> = k.iter().map(|&v| f16::f32_to_f16(v)).collect();
        // KQ: src0 = K (cells x hd), src1 = the ts query rows.
        let mut want = vec![0f32; ts * cells];
        f16::mul_mat_f16(&kh, cells, hd, &q, ts, &mut want);
        let tiny = f16::uses_tinyblas(cells, hd, ts);
        for j in 0..ts {
            let qj = &q[j * hd..(j + 1) * hd];
            let krow = |c: usize| &k[c * hd..(c + 1) * hd];
            for c in (0..cells).step_by(4) {
                let four = f16::dot4_f16_values(
                    [krow(c), krow(c + 1), krow(c + 2), krow(c + 3)],
                    qj,
                    tiny,
                );
                for (i, v) in four.iter().enumerate() {
                    let one = f16::dot_f16_values(krow(c + i), qj, tiny);
                    let w = want[j * cells + c + i];
                    assert_eq!(
                        one.to_bits(),
                        w.to_bits(),
                        "kq cells {cells} ts {ts} ({j}, {})",
                        c + i
                    );
                    assert_eq!(v.to_bits(), w.to_bits(), "kq dot4 cells {cells} ts {ts}");
                }
            }
        }
    }
}

#[test]
fn kqv_dots_over_the_used_cells_equal_the_padded_product() {
    // The forward stops each KQV dot at the next multiple of 64 past the token's last
    // cell; llama.cpp multiplies over all padded cells, whose probabilities are 0.
    let mut rng = Lcg(23);
    let (hd, cells) = (64, 512);
    for (used, ts) in [(70, 1), (70, 4), (200, 2), (129, 1)] {
        let vt = f16_rows(&mut rng, hd, cells); // values, transposed: hd rows of cells
        let mut p = f16_rows(&mut rng, ts, cells);
        for row in p.chunks_exact_mut(cells) {
            row[used..].fill(0.0);
            row.iter_mut().for_each(|v| *v = v.abs());
        }
        let vh: Vec<u16> = vt.iter().map(|&v| f16::f32_to_f16(v)).collect();
        let mut want = vec![0f32; ts * hd];
        f16::mul_mat_f16(&vh, hd, cells, &p, ts, &mut want);
        let tiny = f16::uses_tinyblas(hd, cells, ts);
        let vl = used.div_ceil(64) * 64;
        for j in 0..ts {
            let pj = &p[j * cells..j * cells + vl];
            for e in 0..hd {
                let got = f16::dot_f16_values(&vt[e * cells..e * cells + vl], pj, tiny);
                let w = want[j * hd + e];
                assert_eq!(
                    got.to_bits(),
                    w.to_bits(),
                    "kqv used {used} ts {ts} ({j}, {e})"
                );
            }
        }
    }
}

/// Row `j` of an `n`-row product, recomputed alone (n = 1).
fn alone(ty: GgmlType, w: &[u8], rows: usize, cols: usize, x: &[f32], j: usize) -> Vec<f32> {
    scalar(ty, w, rows, cols, &x[j * cols..(j + 1) * cols], 1)
}

#[test]
fn batch_size_changes_results_only_where_ggml_switches_kernels() {
    let mut rng = Lcg(24);
    let (rows, cols) = (32, 512);
    for ty in TYPES {
        let w = weights(&mut rng, ty, rows, cols);
        for n in BATCHES {
            let x = rng.vec(n * cols);
            let all = scalar(ty, &w, rows, cols, &x, n);
            for j in 0..n {
                // Rows that ggml computes with the same kernel as a lone row.
                let like_alone = match ty {
                    // vec_dot (n = 1) and tinyBLAS (n >= 2) agree element by element.
                    GgmlType::Q5_0 | GgmlType::Q8_0 => true,
                    // Q4_K: gemv for the last n % 4 rows, or all rows when n <= 3.
                    GgmlType::Q4K => n <= 3 || j >= n - n % 4,
                    // Q6_K: vec_dot below 8 rows, the tiled kernel from 8.
                    _ => n < q6k::TILED_MIN_BATCH,
                };
                if like_alone {
                    let want = alone(ty, &w, rows, cols, &x, j);
                    assert_bits(
                        &all[j * rows..(j + 1) * rows],
                        &want,
                        &format!("{ty:?} n={n} row {j}"),
                    );
                }
            }
        }
        // And the switch is real: somewhere the other kernel rounds differently.
        if matches!(ty, GgmlType::Q4K | GgmlType::Q6K) {
            let n = 8;
            let x = rng.vec(n * cols);
            let all = scalar(ty, &w, rows, cols, &x, n);
            let differs = (0..n).any(|j| {
                let a = alone(ty, &w, rows, cols, &x, j);
                a.iter()
                    .zip(&all[j * rows..(j + 1) * rows])
                    .any(|(p, q)| p.to_bits() != q.to_bits())
            });
            assert!(
                differs,
                "{ty:?}: the n = 8 kernel never rounds differently from n = 1"
            );
        }
    }
}
