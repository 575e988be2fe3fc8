//! Recomputes every attention `kq-L` / `kqv-L` MUL_MAT (F16 KV cache × F32) of the
//! llama.cpp dumps with `hangar_kernels::ggml::f16` and counts bitwise differences.
//!
//! The KV cache is rebuilt from the dumps: cell `c` of layer `L` holds
//! f16(`Kcur-L`) / f16(`Vcur-L`) of the token at position `c`, the remaining cells
//! (up to the dumped `n_kv`) hold 0. The decode dump `d1` takes positions 0..5 from
//! `p6` and position 6 from itself. `kqv` uses the dumped `kq_soft_max-L` as src1,
//! so each product is checked on its own.
//!
//! Usage: `ggml_f16 [DUMPS_DIR]` (default /work/dumps).
//!
//! Needs llama.cpp tensor dumps (not in the repository, so not run in CI); what
//! can be checked without them runs as `tests/ggml_replicas.rs`.
#[path = "ggml_dump.rs"]
mod ggml_dump;

use ggml_dump::{compare, Dump, Entry};
use hangar_kernels::ggml::f16::{f32_to_f16, mul_mat_f16, uses_tinyblas};

/// Name part of a dump file (`NNN_name` → `name`).
fn name(e: &Entry) -> &str {
    e.file.split_once('_').map(|(_, n)| n).unwrap_or(&e.file)
}

fn find<'a>(d: &'a Dump, n: &str, op: &str) -> (usize, &'a Entry) {
    d.entries
        .iter()
        .enumerate()
        .find(|(_, e)| name(e) == n && e.op == op)
        .unwrap_or_else(|| panic!("{}: no {op} {n}", d.dir.display()))
}

/// Per-token K and V rows (f32) of layer `l` in dump `d`: (K, V, n_tokens, head dim).
fn kv_rows(d: &Dump, l: usize) -> (Vec<f32>, Vec<f32>, usize, usize) {
    let (_, k) = find(d, &format!("Kcur-{l}"), "ROPE");
    let (_, v) = find(d, &format!("Vcur-{l}"), "MUL_MAT");
    let dh = k.ne[0];
    let t = k.ne[1] * k.ne[2];
    assert_eq!(k.ne[1], 1, "one KV head expected");
    assert_eq!((v.ne[0], v.ne[1]), (dh, t));
    (d.read(&k.file), d.read(&v.file), t, dh)
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "/work/dumps".into());
    let open = |n: &str| Dump::open(format!("{root}/{n}"));
    let (p6, p12, d1) = (open("p6"), open("p12"), open("d1"));
    // (dump checked, dumps whose tokens fill the cache in order)
    let cases: [(&str, &Dump, Vec<&Dump>); 3] = [
        ("p6", &p6, vec![&p6]),
        ("p12", &p12, vec![&p12]),
        ("d1", &d1, vec![&p6, &d1]),
    ];

    let mut total_bad = 0usize;
    for (label, dump, hist) in cases.iter() {
        let n_layer = dump
            .entries
            .iter()
            .filter(|e| e.op == "MUL_MAT" && name(e).starts_with("kq-"))
            .count();
        for l in 0..n_layer {
            let (ikq, kq) = find(dump, &format!("kq-{l}"), "MUL_MAT");
            let (_, kqv) = find(dump, &format!("kqv-{l}"), "MUL_MAT");
            let (_, sm) = find(dump, &format!("kq_soft_max-{l}"), "SOFT_MAX");
            let n_kv = kq.ne[0];
            let t = kq.ne[1];
            let n_head = kq.ne[2];
            // scaled Q: the last SCALE before kq-L (ne dh x n_head x T)
            let q = dump.entries[..ikq]
                .iter()
                .rev()
                .find(|e| e.op == "SCALE")
                .expect("SCALE");
            let dh = q.ne[0];
            assert_eq!((q.ne[1], q.ne[2]), (n_head, t), "{label} {}", q.file);
            assert_eq!((kqv.ne[0], kqv.ne[1], kqv.ne[2]), (dh, t, n_head));

            // KV cache: K rows per cell (n_kv x dh), V transposed (dh x n_kv)
            let mut kc = vec![0u16; n_kv * dh];
            let mut vt = vec![0u16; dh * n_kv];
            let mut cell = 0;
            for h in hist {
                let (k, v, nt, d) = kv_rows(h, l);
                assert_eq!(d, dh);
                // the dump checked contributes all its tokens; earlier dumps theirs
                for s in 0..nt {
                    for e in 0..dh {
                        kc[cell * dh + e] = f32_to_f16(k[s * dh + e]);
                        vt[e * n_kv + cell] = f32_to_f16(v[s * dh + e]);
                    }
                    cell += 1;
                }
            }

            let qv = dump.read(&q.file);
            let smv = dump.read(&sm.file);
            let want_kq = dump.read(&kq.file);
            let want_kqv = dump.read(&kqv.file);
            let mut got_kq = vec![0f32; n_kv * t * n_head];
            let mut got_kqv = vec![0f32; dh * t * n_head];
            for h in 0..n_head {
                // src1 of kq is Q permuted to (dh, T, head): row j of head h = Q[j][h]
                let x: Vec<f32> = (0..t)
                    .flat_map(|j| qv[(j * n_head + h) * dh..][..dh].iter().copied())
                    .collect();
                mul_mat_f16(
                    &kc,
                    n_kv,
                    dh,
                    &x,
                    t,
                    &mut got_kq[h * t * n_kv..][..t * n_kv],
                );
                let p = &smv[h * t * n_kv..][..t * n_kv];
                mul_mat_f16(&vt, dh, n_kv, p, t, &mut got_kqv[h * t * dh..][..t * dh]);
            }
            let (b1, w1) = compare(&got_kq, &want_kq);
            let (b2, w2) = compare(&got_kqv, &want_kqv);
            total_bad += b1 + b2;
            let path = |r, c| {
                if uses_tinyblas(r, c, t) {
                    "tinyBLAS"
                } else {
                    "vec_dot"
                }
            };
            println!(
                "{label} L{l:2} cells {cell:2}/{n_kv}  kq [{}] diff {b1:5}/{} (rel {w1:.2e})  kqv [{}] diff {b2:5}/{} (rel {w2:.2e})",
                path(n_kv, dh),
                want_kq.len(),
                path(dh, n_kv),
                want_kqv.len()
            );
        }
    }
    println!("total bitwise-different elements: {total_bad}");
}
