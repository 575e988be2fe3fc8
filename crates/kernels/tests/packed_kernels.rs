//! Row-interleaved (packed) Q4_0 / Q5_0 / Q8_0 matrices: the layout round-trips, the
//! AVX-512 kernel equals its scalar twin bit for bit, and both agree with the
//! row-major scalar dot product, at edge shapes (row tails, 1..=33 tokens).

use hangar_kernels::packed::{matmul_packed, matmul_packed_scalar, PackedMatrix};
use hangar_kernels::quants;
use hangar_kernels::{quantize_activations, GgmlType, QMatrix, ThreadPool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0];

fn random_matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut StdRng) -> Vec<u8> {
    let rb = quants::row_bytes(ty, cols);
    let mut data = vec![0u8; rows * rb];
    for r in 0..rows {
        // Rows of different magnitudes, some with outliers.
        let scale = rng.gen_range(0.01f32..2.0);
        let x: Vec<f32> = (0..cols)
            .map(|i| {
                let v = rng.gen_range(-1.0f32..1.0) * scale;
                if i % 97 == 5 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect();
        quants::quantize_row(ty, &x, &mut data[r * rb..(r + 1) * rb]).unwrap();
    }
    data
}

#[test]
fn packed_rows_dequantize_to_the_original() {
    let pool = ThreadPool::new(2);
    let mut rng = StdRng::seed_from_u64(7);
    for ty in TYPES {
        for (rows, cols) in [(1, 32), (17, 64), (40, 160)] {
            let data = random_matrix(ty, rows, cols, &mut rng);
            let m = QMatrix::new(ty, rows, cols, &data).unwrap();
            let p = PackedMatrix::pack(&pool, &m).unwrap();
            for r in 0..rows {
                let mut want = vec![0f32; cols];
                quants::dequantize_row(ty, m.row(r), &mut want).unwrap();
                let mut got = vec![0f32; cols];
                p.dequantize_row(r, &mut got);
                assert_eq!(got, want, "{ty} {rows}x{cols} row {r}");
            }
        }
    }
}

#[test]
fn packed_matmul_matches_scalar_twin_and_row_major_dot() {
    let pool = ThreadPool::new(2);
    let mut rng = StdRng::seed_from_u64(11);
    for ty in TYPES {
        for (rows, cols) in [(16, 32), (5, 64), (33, 640), (48, 96)] {
            let data = random_matrix(ty, rows, cols, &mut rng);
            let m = QMatrix::new(ty, rows, cols, &data).unwrap();
            let p = PackedMatrix::pack(&pool, &m).unwrap();
            for t in [1usize, 2, 4, 7, 16, 17, 33] {
                let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
                let mut act = Vec::new();
                quantize_activations(&pool, ty, &x, t, cols, &mut act);
                let mut fast = vec![f32::NAN; t * rows];
                matmul_packed(&pool, &p, &act, t, &mut fast);
                let mut slow = vec![f32::NAN; t * rows];
                matmul_packed_scalar(&p, &act, t, &mut slow);
                let arb = act.len() / t;
                for c in 0..t {
                    for r in 0..rows {
                        let (f, s) = (fast[c * rows + r], slow[c * rows + r]);
                        assert_eq!(
                            f.to_bits(),
                            s.to_bits(),
                            "{ty} {rows}x{cols} t={t} ({c},{r})"
                        );
                        let want = quants::vec_dot_scalar(
                            ty,
                            cols,
                            m.row(r),
                            &act[c * arb..(c + 1) * arb],
                        );
                        let tol = 1e-5 * (1.0 + want.abs());
                        assert!((s - want).abs() <= tol, "{ty} ({c},{r}): {s} vs {want}");
                    }
                }
            }
        }
    }
}

#[test]
fn packed_matmul_is_batch_invariant() {
    let pool = ThreadPool::new(2);
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols, t) = (64, 640, 20);
    for ty in TYPES {
        let data = random_matrix(ty, rows, cols, &mut rng);
        let m = QMatrix::new(ty, rows, cols, &data).unwrap();
        let p = PackedMatrix::pack(&pool, &m).unwrap();
        let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let mut act = Vec::new();
        quantize_activations(&pool, ty, &x, t, cols, &mut act);
        let mut all = vec![0f32; t * rows];
        matmul_packed(&pool, &p, &act, t, &mut all);
        let arb = act.len() / t;
        for c in 0..t {
            let mut one = vec![0f32; rows];
            matmul_packed(&pool, &p, &act[c * arb..(c + 1) * arb], 1, &mut one);
            assert_eq!(one, all[c * rows..(c + 1) * rows], "{ty} token {c}");
        }
    }
}

#[test]
fn packing_refuses_other_types() {
    let pool = ThreadPool::new(1);
    let data = vec![0u8; 144];
    let m = QMatrix::new(GgmlType::Q4K, 1, 256, &data).unwrap();
    assert!(PackedMatrix::pack(&pool, &m).is_err());
}

mod kquants {
    use super::*;
    use hangar_kernels::packed::Packed;
    use hangar_kernels::packed::{matmul_packed_k, matmul_packed_k_scalar};

    const KTYPES: [GgmlType; 2] = [GgmlType::Q4K, GgmlType::Q6K];

    fn packed_k(pool: &ThreadPool, m: &QMatrix) -> hangar_kernels::packed::PackedK {
        match Packed::pack_with(pool, m, |_, _| {}).unwrap() {
            Packed::K(p) => p,
            Packed::Legacy(_) => panic!("K-quant packed as legacy"),
        }
    }

    #[test]
    fn packed_k_rows_dequantize_to_the_original() {
        let pool = ThreadPool::new(2);
        let mut rng = StdRng::seed_from_u64(17);
        for ty in KTYPES {
            for (rows, cols) in [(1, 256), (17, 512), (40, 256)] {
                let data = random_matrix(ty, rows, cols, &mut rng);
                let m = QMatrix::new(ty, rows, cols, &data).unwrap();
                let p = packed_k(&pool, &m);
                for r in 0..rows {
                    let mut want = vec![0f32; cols];
                    quants::dequantize_row(ty, m.row(r), &mut want).unwrap();
                    let mut got = vec![0f32; cols];
                    p.dequantize_row(r, &mut got);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 1e-6 * (1.0 + w.abs()),
                            "{ty} row {r} [{i}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packed_k_matmul_matches_scalar_twin_and_row_major_dot() {
        let pool = ThreadPool::new(2);
        let mut rng = StdRng::seed_from_u64(19);
        for ty in KTYPES {
            for (rows, cols) in [(16, 256), (5, 512), (33, 768)] {
                let data = random_matrix(ty, rows, cols, &mut rng);
                let m = QMatrix::new(ty, rows, cols, &data).unwrap();
                let p = packed_k(&pool, &m);
                for t in [1usize, 3, 4, 8, 9, 16, 17, 21, 32] {
                    let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
                    let mut act = Vec::new();
                    quantize_activations(&pool, ty, &x, t, cols, &mut act);
                    let mut fast = vec![f32::NAN; t * rows];
                    matmul_packed_k(&pool, &p, &act, t, &mut fast);
                    let mut slow = vec![f32::NAN; t * rows];
                    matmul_packed_k_scalar(&p, &act, t, &mut slow);
                    let arb = act.len() / t;
                    for c in 0..t {
                        for r in 0..rows {
                            let (f, s) = (fast[c * rows + r], slow[c * rows + r]);
                            assert_eq!(
                                f.to_bits(),
                                s.to_bits(),
                                "{ty} {rows}x{cols} t={t} ({c},{r})"
                            );
                            let want = quants::vec_dot_scalar(
                                ty,
                                cols,
                                m.row(r),
                                &act[c * arb..(c + 1) * arb],
                            );
                            let tol = 1e-4 * (1.0 + want.abs());
                            assert!((s - want).abs() <= tol, "{ty} ({c},{r}): {s} vs {want}");
                        }
                    }
                    // Batch invariance: each token alone gives the same bits.
                    for c in 0..t {
                        let mut one = vec![0f32; rows];
                        matmul_packed_k(&pool, &p, &act[c * arb..(c + 1) * arb], 1, &mut one);
                        assert_eq!(one, fast[c * rows..(c + 1) * rows], "{ty} token {c}");
                    }
                }
            }
        }
    }
}

#[test]
fn one_dispatch_for_several_matrices_equals_separate_calls() {
    use hangar_kernels::packed::matmul_packed_many;
    let pool = ThreadPool::new(2);
    let mut rng = StdRng::seed_from_u64(23);
    let cols = 640;
    let shapes = [
        (GgmlType::Q5_0, 48),
        (GgmlType::Q8_0, 17),
        (GgmlType::Q4_0, 100),
    ];
    let data: Vec<Vec<u8>> = shapes
        .iter()
        .map(|&(ty, rows)| random_matrix(ty, rows, cols, &mut rng))
        .collect();
    let packed: Vec<PackedMatrix> = shapes
        .iter()
        .zip(&data)
        .map(|(&(ty, rows), d)| {
            PackedMatrix::pack(&pool, &QMatrix::new(ty, rows, cols, d).unwrap()).unwrap()
        })
        .collect();
    for t in [1usize, 5, 16, 40] {
        let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let mut act = Vec::new();
        quantize_activations(&pool, GgmlType::Q8_0, &x, t, cols, &mut act);
        let mut together: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(_, rows)| vec![f32::NAN; t * rows])
            .collect();
        {
            let mut outs: Vec<&mut [f32]> = together.iter_mut().map(|v| v.as_mut_slice()).collect();
            let mats: Vec<&PackedMatrix> = packed.iter().collect();
            matmul_packed_many(&pool, &mats, &act, t, &mut outs);
        }
        for (i, p) in packed.iter().enumerate() {
            let mut alone = vec![0f32; t * p.rows()];
            matmul_packed(&pool, p, &act, t, &mut alone);
            assert_eq!(alone, together[i], "matrix {i}, t = {t}");
        }
    }
}

/// The reference for the greedy head: the full product, then a left-to-right scan
/// over the rows not skipped (NaN never wins, ties keep the first).
fn greedy_reference(out: &[f32], rows: usize, skip: &[u32]) -> (u32, f32, Vec<f32>) {
    let (mut id, mut value) = (0u32, f32::NEG_INFINITY);
    for (r, &v) in out.iter().enumerate() {
        if v > value && !skip.contains(&(r as u32)) {
            (id, value) = (r as u32, v);
        }
    }
    let skipped = skip
        .iter()
        .map(|&s| {
            if (s as usize) < rows {
                out[s as usize]
            } else {
                f32::NAN
            }
        })
        .collect();
    (id, value, skipped)
}

#[test]
fn greedy_head_picks_the_argmax_of_the_full_product_without_writing_it() {
    use hangar_kernels::packed::matmul_packed_greedy;
    let pool = ThreadPool::new(2);
    let mut rng = StdRng::seed_from_u64(29);
    let cols = 128;
    for ty in TYPES {
        for rows in [1000usize, 16, 7] {
            // Rows repeat every 37: equal outputs everywhere, so ties must go to the
            // lowest row as in a scan.
            let base = random_matrix(ty, 37.min(rows), cols, &mut rng);
            let rb = quants::row_bytes(ty, cols);
            let data: Vec<u8> = (0..rows)
                .flat_map(|r| base[(r % 37) * rb..(r % 37 + 1) * rb].to_vec())
                .collect();
            let m = QMatrix::new(ty, rows, cols, &data).unwrap();
            let p = PackedMatrix::pack(&pool, &m).unwrap();
            for t in [1usize, 3, 16, 21] {
                let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
                let mut act = Vec::new();
                quantize_activations(&pool, ty, &x, t, cols, &mut act);
                let mut full = vec![f32::NAN; t * rows];
                matmul_packed(&pool, &p, &act, t, &mut full);
                // Skip lists: none, the argmax itself (the pick moves to the next
                // best), duplicates, ids past the matrix, several rows of one group.
                let skips: Vec<Vec<u32>> = (0..t)
                    .map(|c| {
                        let row = &full[c * rows..(c + 1) * rows];
                        let (top, _, _) = greedy_reference(row, rows, &[]);
                        match c % 4 {
                            0 => Vec::new(),
                            1 => vec![top],
                            2 => vec![top, top, rows as u32 + 5, 1],
                            _ => (0..20).map(|i| (i * 3) as u32 % rows as u32).collect(),
                        }
                    })
                    .collect();
                let refs: Vec<&[u32]> = skips.iter().map(Vec::as_slice).collect();
                let picks = matmul_packed_greedy(&pool, &p, &act, t, &refs);
                assert_eq!(picks.len(), t);
                for (c, pick) in picks.iter().enumerate() {
                    let row = &full[c * rows..(c + 1) * rows];
                    let (id, value, skipped) = greedy_reference(row, rows, &skips[c]);
                    assert_eq!(
                        (pick.id, pick.value.to_bits()),
                        (id, value.to_bits()),
                        "{ty} rows {rows} t {t} token {c}"
                    );
                    assert_eq!(pick.skipped.len(), skipped.len());
                    for (a, b) in pick.skipped.iter().zip(&skipped) {
                        assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
                    }
                }
            }
        }
    }
}
