//! The Llama-family forward (llama, qwen2, qwen3 layouts) equals a naive f32 reference
//! written independently here, on small random F32 models stored as GGUF files.

use hangar_formats::GgufFile;
use hangar_kernels::ThreadPool;
use hangar_models::{KvCache, LoadOptions, LogitsWanted, Model, Numerics, SeqInput, Workspace};
use std::sync::Arc;

const D: usize = 64;
const FF: usize = 96;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HD: usize = D / HEADS;
const VOCAB: usize = 50;
const LAYERS: usize = 2;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

/// name -> (dims (innermost first), data)
type Tensors = Vec<(String, Vec<u64>, Vec<f32>)>;

fn gguf(arch: &str, tensors: &Tensors) -> Vec<u8> {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    let kv_u32 = |b: &mut Vec<u8>, k: &str, v: u32| {
        s(b, k);
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    };
    let kv_f32 = |b: &mut Vec<u8>, k: &str, v: f32| {
        s(b, k);
        b.extend_from_slice(&6u32.to_le_bytes());
        b.extend_from_slice(&v.to_le_bytes());
    };
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    b.extend_from_slice(&9u64.to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    s(&mut b, arch);
    kv_u32(&mut b, &format!("{arch}.block_count"), LAYERS as u32);
    kv_u32(&mut b, &format!("{arch}.embedding_length"), D as u32);
    kv_u32(&mut b, &format!("{arch}.feed_forward_length"), FF as u32);
    kv_u32(
        &mut b,
        &format!("{arch}.attention.head_count"),
        HEADS as u32,
    );
    kv_u32(
        &mut b,
        &format!("{arch}.attention.head_count_kv"),
        KV_HEADS as u32,
    );
    kv_u32(&mut b, &format!("{arch}.context_length"), 64);
    kv_f32(&mut b, &format!("{arch}.rope.freq_base"), 10000.0);
    kv_f32(
        &mut b,
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        1e-5,
    );
    let mut offset = 0u64;
    for (name, dims, data) in tensors {
        s(&mut b, name);
        b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend_from_slice(&d.to_le_bytes());
        }
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&offset.to_le_bytes());
        offset += (data.len() * 4).div_ceil(32) as u64 * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for (_, _, data) in tensors {
        for v in data {
            b.extend_from_slice(&v.to_le_bytes());
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
    }
    b
}

fn get<'a>(t: &'a Tensors, name: &str) -> Option<&'a [f32]> {
    t.iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, _, d)| d.as_slice())
}

/// y = W x for W with `rows` rows of `cols`.
fn mv(w: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..rows)
        .map(|r| {
            (0..cols)
                .map(|c| w[r * cols + c] as f64 * x[c] as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

fn rms(x: &[f32], w: &[f32]) -> Vec<f32> {
    let ms = x.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + 1e-5).sqrt();
    x.iter()
        .zip(w)
        .map(|(v, g)| (*v as f64 * s) as f32 * g)
        .collect()
}

/// The engine keeps K/V (and the Q and probabilities that meet them) at f16 precision.
fn f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

fn rope(x: &mut [f32], pos: usize, neox: bool) {
    let half = HD / 2;
    for i in 0..half {
        let th = pos as f64 * 10000f64.powf(-2.0 * i as f64 / HD as f64);
        let (c, s) = (th.cos() as f32, th.sin() as f32);
        let (a, b) = if neox {
            (i, i + half)
        } else {
            (2 * i, 2 * i + 1)
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

/// Naive forward over a whole prompt; returns the logits of every position.
fn reference(t: &Tensors, toks: &[u32], neox: bool) -> Vec<Vec<f32>> {
    let emb = get(t, "token_embd.weight").unwrap();
    let mut xs: Vec<Vec<f32>> = toks
        .iter()
        .map(|&id| emb[id as usize * D..(id as usize + 1) * D].to_vec())
        .collect();
    for l in 0..LAYERS {
        let w = |n: &str| get(t, &format!("blk.{l}.{n}"));
        let (mut qs, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
        for (p, x) in xs.iter().enumerate() {
            let h = rms(x, w("attn_norm.weight").unwrap());
            let mut q = mv(w("attn_q.weight").unwrap(), &h, D, D);
            let mut k = mv(w("attn_k.weight").unwrap(), &h, KV_HEADS * HD, D);
            let mut v = mv(w("attn_v.weight").unwrap(), &h, KV_HEADS * HD, D);
            for (vec, bias) in [
                (&mut q, "attn_q.bias"),
                (&mut k, "attn_k.bias"),
                (&mut v, "attn_v.bias"),
            ] {
                if let Some(b) = w(bias) {
                    vec.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                }
            }
            for head in q.chunks_mut(HD) {
                if let Some(g) = w("attn_q_norm.weight") {
                    let n = rms(head, g);
                    head.copy_from_slice(&n);
                }
                rope(head, p, neox);
            }
            for head in k.chunks_mut(HD) {
                if let Some(g) = w("attn_k_norm.weight") {
                    let n = rms(head, g);
                    head.copy_from_slice(&n);
                }
                rope(head, p, neox);
            }
            qs.push(q.iter().map(|&x| f16(x)).collect::<Vec<_>>());
            ks.push(k.iter().map(|&x| f16(x)).collect::<Vec<_>>());
            vs.push(v.iter().map(|&x| f16(x)).collect::<Vec<_>>());
        }
        for p in 0..xs.len() {
            let mut att = vec![0f32; D];
            for h in 0..HEADS {
                let g = h / (HEADS / KV_HEADS);
                let q = &qs[p][h * HD..(h + 1) * HD];
                let sc: Vec<f64> = (0..=p)
                    .map(|j| {
                        q.iter()
                            .zip(&ks[j][g * HD..(g + 1) * HD])
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (HD as f64).sqrt()
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for i in 0..HD {
                        att[h * HD + i] += f16((ej / z) as f32) * vs[j][g * HD + i];
                    }
                }
            }
            let o = mv(w("attn_output.weight").unwrap(), &att, D, D);
            xs[p].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms(&xs[p], w("ffn_norm.weight").unwrap());
            let gate = mv(w("ffn_gate.weight").unwrap(), &h, FF, D);
            let up = mv(w("ffn_up.weight").unwrap(), &h, FF, D);
            let act: Vec<f32> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let down = mv(w("ffn_down.weight").unwrap(), &act, D, FF);
            xs[p].iter_mut().zip(&down).for_each(|(a, b)| *a += b);
        }
    }
    let out = get(t, "output.weight").unwrap_or_else(|| get(t, "token_embd.weight").unwrap());
    xs.iter()
        .map(|x| {
            mv(
                out,
                &rms(x, get(t, "output_norm.weight").unwrap()),
                VOCAB,
                D,
            )
        })
        .collect()
}

fn random_model(arch: &str, seed: u64) -> Tensors {
    let mut r = Rng(seed);
    let mut t: Tensors = vec![
        (
            "token_embd.weight".into(),
            vec![D as u64, VOCAB as u64],
            r.vec(D * VOCAB, 1.0),
        ),
        (
            "output_norm.weight".into(),
            vec![D as u64],
            r.vec(D, 0.5).iter().map(|v| v + 1.0).collect(),
        ),
    ];
    if arch != "qwen2" {
        t.push((
            "output.weight".into(),
            vec![D as u64, VOCAB as u64],
            r.vec(D * VOCAB, 0.5),
        ));
    }
    for l in 0..LAYERS {
        let mut add = |n: &str, dims: Vec<u64>, scale: f32, offset: f32| {
            let n_el = dims.iter().product::<u64>() as usize;
            t.push((
                format!("blk.{l}.{n}"),
                dims,
                r.vec(n_el, scale).iter().map(|v| v + offset).collect(),
            ));
        };
        let kvd = (KV_HEADS * HD) as u64;
        add("attn_norm.weight", vec![D as u64], 0.5, 1.0);
        add("attn_q.weight", vec![D as u64, D as u64], 0.4, 0.0);
        add("attn_k.weight", vec![D as u64, kvd], 0.4, 0.0);
        add("attn_v.weight", vec![D as u64, kvd], 0.4, 0.0);
        add("attn_output.weight", vec![D as u64, D as u64], 0.3, 0.0);
        add("ffn_norm.weight", vec![D as u64], 0.5, 1.0);
        add("ffn_gate.weight", vec![D as u64, FF as u64], 0.3, 0.0);
        add("ffn_up.weight", vec![D as u64, FF as u64], 0.3, 0.0);
        add("ffn_down.weight", vec![FF as u64, D as u64], 0.3, 0.0);
        if arch == "qwen2" {
            add("attn_q.bias", vec![D as u64], 0.2, 0.0);
            add("attn_k.bias", vec![kvd], 0.2, 0.0);
            add("attn_v.bias", vec![kvd], 0.2, 0.0);
        }
        if arch == "qwen3" {
            add("attn_q_norm.weight", vec![HD as u64], 0.5, 1.0);
            add("attn_k_norm.weight", vec![HD as u64], 0.5, 1.0);
        }
    }
    t
}

fn check(arch: &str, neox: bool) {
    let tensors = random_model(arch, 11);
    let model = Model::from_gguf(Arc::new(
        GgufFile::from_bytes(gguf(arch, &tensors)).unwrap(),
    ))
    .unwrap();
    let toks: Vec<u32> = vec![1, 7, 42, 3, 19, 25, 8, 49, 0, 11];
    let want = reference(&tensors, &toks, neox);
    // Prefill the first 6 tokens in one call, then decode the rest one by one.
    let pool = ThreadPool::new(2);
    let mut kv = KvCache::for_single_sequence(&model.cfg, 4, 16);
    let table: Vec<u32> = vec![2, 0, 3, 1];
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let seq = SeqInput {
        tokens: &toks[..6],
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::All,
    };
    model
        .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
        .unwrap();
    let mut got: Vec<Vec<f32>> = logits.chunks(VOCAB).map(|c| c.to_vec()).collect();
    for p in 6..toks.len() {
        let seq = SeqInput {
            tokens: &toks[p..p + 1],
            start_pos: p,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        model
            .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
            .unwrap();
        got.push(logits.clone());
    }
    for (p, (g, w)) in got.iter().zip(&want).enumerate() {
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() < 2e-3 * (1.0 + b.abs()),
                "{arch} position {p}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn llama_layout_matches_reference() {
    check("llama", false);
}

#[test]
fn qwen2_layout_with_biases_and_tied_output_matches_reference() {
    check("qwen2", true);
}

#[test]
fn qwen3_layout_with_qk_norm_matches_reference() {
    check("qwen3", true);
}

/// Prefills `toks` (every row's logits), then decodes two more tokens, in a fresh KV
/// cache with the given workspace; returns all logits in order.
fn prefill_and_decode(
    model: &Model,
    pool: &ThreadPool,
    ws: &mut Workspace,
    toks: &[u32],
) -> Vec<f32> {
    let mut kv = KvCache::for_single_sequence(&model.cfg, 4, 32);
    let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).rev().collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut logits = Vec::new();
    let mut all = Vec::new();
    let seq = SeqInput {
        tokens: toks,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::All,
    };
    model
        .forward(pool, &[seq], &mut kv, ws, &mut logits)
        .unwrap();
    all.extend_from_slice(&logits);
    for (i, t) in [5u32, 17].into_iter().enumerate() {
        let seq = SeqInput {
            tokens: &[t],
            start_pos: toks.len() + i,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        model
            .forward(pool, &[seq], &mut kv, ws, &mut logits)
            .unwrap();
        all.extend_from_slice(&logits);
    }
    all
}

/// The ggml numerics keep their scratch in the workspace: one that already ran a
/// longer batch (larger buffers still holding its values) gives the same logits, bit
/// for bit, as a fresh one; and they stay close to the f32 reference.
#[test]
fn ggml_forward_reuses_the_workspace_bit_for_bit() {
    let tensors = random_model("qwen3", 5);
    let opts = LoadOptions {
        numerics: Numerics::Ggml,
        ..LoadOptions::default()
    };
    let model = Model::from_gguf_with(
        Arc::new(GgufFile::from_bytes(gguf("qwen3", &tensors)).unwrap()),
        opts,
    )
    .unwrap();
    assert_eq!(model.numerics(), Numerics::Ggml);
    let pool = ThreadPool::new(2);
    let short: Vec<u32> = vec![3, 14, 15, 9];
    let long: Vec<u32> = (0..20).map(|i| (i * 7 + 2) % VOCAB as u32).collect();
    let fresh = prefill_and_decode(&model, &pool, &mut Workspace::default(), &short);
    let mut ws = Workspace::default();
    prefill_and_decode(&model, &pool, &mut ws, &long);
    let reused = prefill_and_decode(&model, &pool, &mut ws, &short);
    assert_eq!(fresh.len(), (short.len() + 2) * VOCAB);
    for (i, (a, b)) in reused.iter().zip(&fresh).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "logit {i}: {a} vs {b}");
    }
    let want = reference(&tensors, &[short.clone(), vec![5, 17]].concat(), true);
    for (p, (g, w)) in fresh.chunks(VOCAB).zip(&want).enumerate() {
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() < 1e-2 * (1.0 + b.abs()),
                "ggml numerics, position {p}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn unsupported_architecture_is_a_clear_error() {
    let tensors = random_model("llama", 1);
    let err = Model::from_gguf(Arc::new(
        GgufFile::from_bytes(gguf("mamba", &tensors)).unwrap(),
    ))
    .err()
    .unwrap();
    assert!(err.to_string().contains("not supported"), "{err}");
}
