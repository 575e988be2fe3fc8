//! The AMX tile kernels (where this CPU has them) and the AVX-512 VNNI kernels give
//! bitwise the same packed products; `set_amx(false)` turns the tiles off for the
//! process (this file is its own test process, so the switch cannot leak).

use hangar_kernels::packed::{matmul_packed, matmul_packed_many, PackedMatrix};
use hangar_kernels::{amx, quantize_activations, quants, set_amx, GgmlType, QMatrix, ThreadPool};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn tiles_and_vnni_agree_bit_for_bit_and_the_switch_turns_tiles_off() {
    let pool = ThreadPool::new(2);
    let mut rng = StdRng::seed_from_u64(41);
    let cols = 640;
    let mats: Vec<(GgmlType, usize, Vec<u8>)> = [
        (GgmlType::Q8_0, 1000),
        // Over 8 MiB packed: tiles from 2 tokens, as for an output head.
        (GgmlType::Q8_0, 14_000),
        (GgmlType::Q5_0, 77),
        (GgmlType::Q4_0, 64),
    ]
    .into_iter()
    .map(|(ty, rows)| {
        let rb = quants::row_bytes(ty, cols);
        let mut data = vec![0u8; rows * rb];
        for r in 0..rows {
            let x: Vec<f32> = (0..cols).map(|_| rng.gen_range(-1.5f32..1.5)).collect();
            quants::quantize_row(ty, &x, &mut data[r * rb..(r + 1) * rb]).unwrap();
        }
        (ty, rows, data)
    })
    .collect();
    let packed: Vec<PackedMatrix> = mats
        .iter()
        .map(|(ty, rows, d)| {
            PackedMatrix::pack(&pool, &QMatrix::new(*ty, *rows, cols, d).unwrap()).unwrap()
        })
        .collect();
    let run = |t: usize, act: &[u8]| -> Vec<Vec<f32>> {
        let mut single: Vec<Vec<f32>> = packed
            .iter()
            .map(|p| {
                let mut o = vec![f32::NAN; t * p.rows()];
                matmul_packed(&pool, p, act, t, &mut o);
                o
            })
            .collect();
        let mut many: Vec<Vec<f32>> = packed
            .iter()
            .map(|p| vec![f32::NAN; t * p.rows()])
            .collect();
        let mut outs: Vec<&mut [f32]> = many.iter_mut().map(|v| v.as_mut_slice()).collect();
        let refs: Vec<&PackedMatrix> = packed.iter().collect();
        matmul_packed_many(&pool, &refs, act, t, &mut outs);
        single.extend(many);
        single
    };
    let mut cases = Vec::new();
    for t in [2usize, 3, 4, 5, 9, 16, 18, 21, 32, 48] {
        let x: Vec<f32> = (0..t * cols).map(|_| rng.gen_range(-3.0f32..3.0)).collect();
        let mut act = Vec::new();
        quantize_activations(&pool, GgmlType::Q8_0, &x, t, cols, &mut act);
        let first = run(t, &act);
        cases.push((t, act, first));
    }
    let had_tiles = amx();
    assert!(!set_amx(false), "the switch turns the tiles off");
    assert!(!amx());
    for (t, act, first) in &cases {
        assert_eq!(
            &run(*t, act),
            first,
            "t = {t} (tiles used first: {had_tiles})"
        );
    }
}
