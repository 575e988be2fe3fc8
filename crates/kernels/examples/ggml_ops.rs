//! Checks `ggml::ops` against llama.cpp tensor dumps: RMS_NORM(+MUL), ROPE,
//! SOFT_MAX and GEGLU must be bitwise equal. usage: ggml_ops MODEL DUMP_DIR...
//!
//! Needs llama.cpp tensor dumps (not in the repository, so not run in CI); what
//! can be checked without them runs as `tests/ggml_replicas.rs`.
#[path = "ggml_dump.rs"]
mod ggml_dump;
use ggml_dump::{compare, Dump};
use hangar_kernels::ggml::ops;

fn weight(g: &hangar_formats::GgufFile, name: &str) -> Vec<f32> {
    let t = g.tensor(name).expect("tensor");
    g.tensor_data(t)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let g = hangar_formats::GgufFile::open(&a[1]).expect("gguf");
    for dir in &a[2..] {
        let d = Dump::open(dir);
        let mut stats = std::collections::BTreeMap::<String, (usize, usize, f32)>::new();
        let mut note = |k: &str, r: (usize, f32)| {
            let e = stats.entry(k.to_string()).or_default();
            e.0 += 1;
            e.1 += r.0;
            e.2 = e.2.max(r.1);
        };
        for (i, e) in d.entries.iter().enumerate() {
            match e.op.as_str() {
                "RMS_NORM" => {
                    // The following MUL by a norm weight, when there is one.
                    let x = d.read(&e.srcs[0].0);
                    let next = &d.entries[i + 1];
                    let w = (next.op == "MUL").then(|| weight(&g, &next.srcs[1].0));
                    let want = if w.is_some() {
                        d.read(&next.file)
                    } else {
                        d.read(&e.file)
                    };
                    let mut got = vec![0.0; x.len()];
                    for (xr, o) in x.chunks(e.ne[0]).zip(got.chunks_mut(e.ne[0])) {
                        ops::rms_norm_mul(xr, w.as_deref(), 1e-6, o);
                    }
                    note("rms_norm(+mul)", compare(&got, &want));
                }
                "ROPE" => {
                    let mut x = d.read(&e.srcs[0].0);
                    let want = d.read(&e.file);
                    let layer: usize = e.file.rsplit('-').next().unwrap().parse().unwrap();
                    let base = if (layer + 1).is_multiple_of(6) {
                        1_000_000.0
                    } else {
                        10_000.0
                    };
                    let (hd, heads, toks) = (e.ne[0], e.ne[1], e.ne[2]);
                    let pos0: i64 = std::env::var("POS0")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut cache = Vec::new();
                    for t in 0..toks {
                        ops::rope_cache(pos0 + t as i64, hd, base, 1.0, None, &mut cache);
                        for h in 0..heads {
                            let o = (t * heads + h) * hd;
                            ops::rope_apply(&mut x[o..o + hd], hd, &cache, false);
                        }
                    }
                    note("rope", compare(&x, &want));
                }
                "SOFT_MAX" => {
                    let kq = d.read(&e.srcs[0].0);
                    let want = d.read(&e.file);
                    // Mask from the dumped result: a zero probability where masked.
                    let mut got = kq.clone();
                    for (r, w) in got.chunks_mut(e.ne[0]).zip(want.chunks(e.ne[0])) {
                        // causal: the allowed keys are a prefix; find its length
                        let n = w.iter().rposition(|&p| p != 0.0).map_or(0, |p| p + 1);
                        r[n..].iter_mut().for_each(|v| *v = f32::NEG_INFINITY);
                        ops::soft_max(r);
                    }
                    note("soft_max", compare(&got, &want));
                }
                "GEGLU" => {
                    let (x, up) = (d.read(&e.srcs[0].0), d.read(&e.srcs[1].0));
                    let mut got = vec![0.0; x.len()];
                    ops::geglu(&x, &up, &mut got);
                    note("geglu", compare(&got, &d.read(&e.file)));
                }
                _ => {}
            }
        }
        for (k, (n, diff, worst)) in stats {
            println!("{dir} {k}: {n} tensors, {diff} elements differ (worst rel {worst:.2e})");
        }
    }
}
