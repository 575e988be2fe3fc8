//! Sharded matrix products with Hangar's own kernels, the ranks on threads talking
//! through the in-process group: column-parallel shards reproduce the whole
//! product's outputs bit for bit; row-parallel shards with one all-reduce reproduce
//! it to float rounding (the same per-block integer dots, summed in two parts), and
//! every rank holds the same bits afterwards.

use hangar_kernels::{matmul, quants, GgmlType, QMatrix, ThreadPool};
use hangar_parallel::shard::{column_shard, row_shard, Span};
use hangar_parallel::{Communicator, LocalGroup};
use rand::{Rng, SeedableRng};
use std::time::Duration;

struct Case {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Case {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rb = quants::row_bytes(ty, cols);
    let mut data = vec![0u8; rows * rb];
    let mut row = vec![0f32; cols];
    for r in 0..rows {
        row.iter_mut().for_each(|v| *v = rng.gen_range(-1.0..1.0));
        quants::quantize_row(ty, &row, &mut data[r * rb..(r + 1) * rb]).unwrap();
    }
    Case {
        ty,
        rows,
        cols,
        data,
    }
}

fn product(
    pool: &ThreadPool,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: &[u8],
    x: &[f32],
    t: usize,
) -> Vec<f32> {
    let m = QMatrix::new(ty, rows, cols, data).unwrap();
    let mut out = vec![0f32; t * rows];
    matmul(pool, &m, x, t, &mut out, &mut Vec::new());
    out
}

const TYPES: [GgmlType; 4] = [GgmlType::Q4K, GgmlType::Q6K, GgmlType::Q8_0, GgmlType::Q4_0];

#[test]
fn column_parallel_shards_give_the_same_bits() {
    let pool = ThreadPool::new(2);
    let t = 3;
    for (i, ty) in TYPES.into_iter().enumerate() {
        let c = random_matrix(ty, 640, 1024, i as u64);
        let x: Vec<f32> = (0..t * c.cols)
            .map(|j| ((j * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let whole = product(&pool, ty, c.rows, c.cols, &c.data, &x, t);
        for world in [2, 4] {
            let part = c.rows / world;
            for rank in 0..world {
                let span = Span {
                    start: rank * part,
                    len: part,
                };
                let shard = row_shard(ty, c.rows, c.cols, &c.data, span).unwrap();
                let got = product(&pool, ty, part, c.cols, shard, &x, t);
                for tok in 0..t {
                    let want = &whole[tok * c.rows + span.start..tok * c.rows + span.end()];
                    let mine = &got[tok * part..(tok + 1) * part];
                    assert!(
                        want.iter()
                            .zip(mine)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{ty:?} tp {world} rank {rank} token {tok}"
                    );
                }
            }
        }
    }
}

#[test]
fn row_parallel_shards_with_one_all_reduce_match_to_rounding() {
    let t = 2;
    for (i, ty) in TYPES.into_iter().enumerate() {
        let c = std::sync::Arc::new(random_matrix(ty, 256, 2048, 10 + i as u64));
        let x: std::sync::Arc<Vec<f32>> = std::sync::Arc::new(
            (0..t * c.cols)
                .map(|j| ((j * 53 % 97) as f32 - 48.0) / 24.0)
                .collect(),
        );
        let whole = product(&ThreadPool::new(1), ty, c.rows, c.cols, &c.data, &x, t);
        for world in [2, 4, 8] {
            let handles: Vec<_> = LocalGroup::ranks(world, Duration::from_secs(30))
                .into_iter()
                .map(|comm| {
                    let (c, x) = (c.clone(), x.clone());
                    std::thread::spawn(move || {
                        let pool = ThreadPool::new(1);
                        let width = c.cols / comm.world();
                        let span = Span {
                            start: comm.rank() * width,
                            len: width,
                        };
                        let shard = column_shard(c.ty, c.rows, c.cols, &c.data, span).unwrap();
                        let xs: Vec<f32> = (0..t)
                            .flat_map(|tok| {
                                x[tok * c.cols + span.start..tok * c.cols + span.end()].to_vec()
                            })
                            .collect();
                        let mut y = product(&pool, c.ty, c.rows, width, &shard, &xs, t);
                        comm.all_reduce_sum(&mut y).unwrap();
                        y
                    })
                })
                .collect();
            let results: Vec<Vec<f32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let scale = whole.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (rank, y) in results.iter().enumerate() {
                assert_eq!(
                    y.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    results[0].iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{ty:?} tp {world}: rank {rank} differs from rank 0"
                );
                for (a, b) in y.iter().zip(&whole) {
                    assert!(
                        (a - b).abs() <= 2e-6 * scale,
                        "{ty:?} tp {world}: {a} vs {b} (scale {scale})"
                    );
                }
            }
        }
    }
}

#[test]
fn shards_refuse_splits_inside_a_block() {
    let c = random_matrix(GgmlType::Q4K, 4, 512, 1);
    let e = column_shard(
        c.ty,
        c.rows,
        c.cols,
        &c.data,
        Span {
            start: 128,
            len: 256,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("256-value blocks"), "{e}");
    assert!(row_shard(c.ty, c.rows, c.cols, &c.data, Span { start: 2, len: 3 }).is_err());
    assert!(column_shard(
        c.ty,
        c.rows,
        c.cols,
        &c.data[1..],
        Span { start: 0, len: 256 }
    )
    .is_err());
}
