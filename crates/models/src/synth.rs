//! Synthetic models: random weights in the exact shape of a real model, a working
//! (small, SentencePiece-style) tokenizer, written as GGUF by Hangar's own writer.
//! They let speed and GPU-vs-CPU agreement be measured where real weights cannot be
//! downloaded. The weights are deterministic for a given seed.

use hangar_formats::{GgmlType, GgufFileWriter, GgufHeader, GgufWriteError, MetaValue};
use hangar_kernels::quants;
use std::path::Path;

/// The architectures `synth` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthArch {
    Llama,
    Qwen2,
    Gemma3,
}

impl std::str::FromStr for SynthArch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "llama" => Ok(SynthArch::Llama),
            "qwen2" => Ok(SynthArch::Qwen2),
            "gemma3" => Ok(SynthArch::Gemma3),
            _ => Err(format!("{s:?}: expected llama, qwen2 or gemma3")),
        }
    }
}

/// Weight formats: a llama.cpp-style mix or one type for every matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynthType {
    /// Q4_K, with Q6_K for attn_v / ffn_down in some layers and for the output.
    Q4KM,
    Q8_0,
    F16,
}

impl std::str::FromStr for SynthType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "Q4_K_M" => Ok(SynthType::Q4KM),
            "Q8_0" => Ok(SynthType::Q8_0),
            "F16" => Ok(SynthType::F16),
            _ => Err(format!("{s:?}: expected Q4_K_M, Q8_0 or F16")),
        }
    }
}

/// A model shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    pub ctx: usize,
    pub rope_base: f32,
    pub eps: f32,
    /// Gemma 3's sliding window.
    pub window: usize,
    /// Output projection shares the embedding.
    pub tied: bool,
}

/// The presets of an architecture: (name, shape).
pub fn presets(arch: SynthArch) -> Vec<(&'static str, Shape)> {
    let s = |layers,
             d_model,
             heads,
             kv_heads,
             head_dim,
             ffn,
             vocab,
             ctx,
             rope_base,
             eps,
             window,
             tied| Shape {
        layers,
        d_model,
        heads,
        kv_heads,
        head_dim,
        ffn,
        vocab,
        ctx,
        rope_base,
        eps,
        window,
        tied,
    };
    match arch {
        SynthArch::Llama => vec![
            (
                "tiny",
                s(4, 256, 8, 2, 32, 768, 4096, 2048, 500_000.0, 1e-5, 0, false),
            ),
            (
                "llama-3.2-1b",
                s(
                    16, 2048, 32, 8, 64, 8192, 128_256, 8192, 500_000.0, 1e-5, 0, true,
                ),
            ),
            (
                "llama-3-8b",
                s(
                    32, 4096, 32, 8, 128, 14_336, 128_256, 8192, 500_000.0, 1e-5, 0, false,
                ),
            ),
            (
                "llama-3-70b",
                s(
                    80, 8192, 64, 8, 128, 28_672, 128_256, 8192, 500_000.0, 1e-5, 0, false,
                ),
            ),
        ],
        SynthArch::Qwen2 => vec![
            (
                "tiny",
                s(4, 256, 4, 2, 64, 512, 4096, 2048, 1e6, 1e-6, 0, true),
            ),
            (
                "qwen2.5-0.5b",
                s(
                    24, 896, 14, 2, 64, 4864, 151_936, 32_768, 1e6, 1e-6, 0, true,
                ),
            ),
            (
                "qwen2.5-7b",
                s(
                    28, 3584, 28, 4, 128, 18_944, 152_064, 32_768, 1e6, 1e-6, 0, false,
                ),
            ),
        ],
        SynthArch::Gemma3 => vec![
            (
                "tiny",
                s(6, 256, 4, 1, 64, 512, 4096, 2048, 1e6, 1e-6, 16, true),
            ),
            (
                "gemma-3-270m",
                s(
                    18, 640, 4, 1, 256, 2048, 262_144, 32_768, 1e6, 1e-6, 512, true,
                ),
            ),
            (
                "gemma-3-1b",
                s(
                    26, 1152, 4, 1, 256, 6912, 262_144, 32_768, 1e6, 1e-6, 512, true,
                ),
            ),
        ],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("no preset {preset:?} for {arch:?}; presets: {known}")]
    UnknownPreset {
        arch: SynthArch,
        preset: String,
        known: String,
    },
    #[error(transparent)]
    Write(#[from] GgufWriteError),
    #[error("quantizing {0}: {1}")]
    Quantize(String, String),
}

/// Looks up a preset by name.
pub fn preset(arch: SynthArch, name: &str) -> Result<Shape, SynthError> {
    let all = presets(arch);
    all.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| SynthError::UnknownPreset {
            arch,
            preset: name.to_string(),
            known: all.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        })
}

/// The type a matrix gets (falling back, as llama.cpp does, when its width is not a
/// multiple of the k-quant block of 256).
fn matrix_type(
    ty: SynthType,
    name: &str,
    layer: Option<usize>,
    n_layers: usize,
    cols: usize,
) -> GgmlType {
    let want = match ty {
        SynthType::F16 => return GgmlType::F16,
        SynthType::Q8_0 => return GgmlType::Q8_0,
        SynthType::Q4KM => {
            let more_bits =
                |i: usize| i < n_layers / 8 || i >= 7 * n_layers / 8 || (i - n_layers / 8) % 3 == 2;
            match (name, layer) {
                ("output", _) => GgmlType::Q6K,
                ("attn_v" | "ffn_down", Some(i)) if more_bits(i) => GgmlType::Q6K,
                _ => GgmlType::Q4K,
            }
        }
    };
    if cols.is_multiple_of(256) {
        want
    } else if want == GgmlType::Q6K {
        GgmlType::Q8_0
    } else {
        GgmlType::Q5_0
    }
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "it", "was", "for", "on", "are", "as", "with",
    "be", "at", "this", "have", "from", "or", "one", "had", "by", "word", "but", "not", "what",
    "all", "were", "we", "when", "your", "can", "said", "there", "use", "an", "each", "which",
    "she", "do", "how", "their", "if", "will", "up", "other", "about", "out", "many", "then",
    "them", "these", "so", "some", "her", "would", "make", "like", "him", "into", "time", "has",
    "look", "two", "more", "write", "go", "see", "number", "no", "way", "could", "people", "my",
    "than", "first", "water", "been", "call", "who", "its", "now", "find", "long", "down", "day",
    "did", "get", "come", "made", "may", "part", "Paris", "France", "capital", "model", "Hello",
];

/// The tokenizer: `<unk>`, `<s>`, `</s>`, the 256 byte tokens, single characters and
/// common words (SentencePiece style, `▁` for a space), then control tokens up to `vocab`.
fn tokenizer(h: &mut GgufHeader, vocab: usize) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types: Vec<i32> = vec![2, 3, 3];
    let mut scores: Vec<f32> = vec![0.0; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let mut normal: Vec<String> = vec!["▁".into()];
    for c in (b'a'..=b'z').chain(b'A'..=b'Z').chain(b'0'..=b'9') {
        normal.push((c as char).to_string());
        normal.push(format!("▁{}", c as char));
    }
    for p in ".,!?;:'\"()-".chars() {
        normal.push(p.to_string());
    }
    for w in WORDS {
        normal.push(format!("▁{w}"));
    }
    let n_normal = normal.len();
    for (i, t) in normal.into_iter().enumerate() {
        // Longer pieces score higher, so words win over their letters.
        scores.push(t.chars().count() as f32 * 10.0 - i as f32 / n_normal as f32);
        tokens.push(t);
        types.push(1);
    }
    // The rest are plain pieces with visible text, so that what a random-weight model
    // generates streams as text (control tokens render as nothing, which would hide
    // every token from a client timing its first one).
    let mut i = 0;
    while tokens.len() < vocab {
        tokens.push(format!("▁t{i}"));
        types.push(1);
        scores.push(-1.0 - i as f32 / vocab as f32);
        i += 1;
    }
    tokens.truncate(vocab);
    types.truncate(vocab);
    scores.truncate(vocab);
    h.set_spm_vocab(tokens, scores, types);
    h.set("tokenizer.ggml.bos_token_id", MetaValue::U32(1));
    h.set("tokenizer.ggml.eos_token_id", MetaValue::U32(2));
    h.set("tokenizer.ggml.unknown_token_id", MetaValue::U32(0));
    h.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
}

/// A tensor to write: name, (cols, rows), type, and the scale of its uniform values
/// (0 = a norm vector of ones).
struct Spec {
    name: String,
    cols: usize,
    rows: usize,
    ty: GgmlType,
    scale: f32,
}

/// Writes a synthetic model to `path`; `threads` quantize rows in parallel.
/// Calls `progress(done, total)` after each tensor.
pub fn write(
    arch: SynthArch,
    shape: &Shape,
    ty: SynthType,
    seed: u64,
    path: &Path,
    threads: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<u64, SynthError> {
    let a = match arch {
        SynthArch::Llama => "llama",
        SynthArch::Qwen2 => "qwen2",
        SynthArch::Gemma3 => "gemma3",
    };
    let sh = shape;
    let mut h = GgufHeader::new();
    h.set("general.architecture", MetaValue::String(a.into()));
    h.set(
        "general.name",
        MetaValue::String(format!("hangar synth {a}")),
    );
    let k = |s: &str| format!("{a}.{s}");
    for (key, v) in [
        ("block_count", sh.layers),
        ("embedding_length", sh.d_model),
        ("feed_forward_length", sh.ffn),
        ("attention.head_count", sh.heads),
        ("attention.head_count_kv", sh.kv_heads),
        ("context_length", sh.ctx),
        ("attention.key_length", sh.head_dim),
        ("attention.value_length", sh.head_dim),
        ("rope.dimension_count", sh.head_dim),
    ] {
        h.set(&k(key), MetaValue::U32(v as u32));
    }
    h.set(&k("rope.freq_base"), MetaValue::F32(sh.rope_base));
    h.set(
        &k("attention.layer_norm_rms_epsilon"),
        MetaValue::F32(sh.eps),
    );
    if arch == SynthArch::Gemma3 && sh.window > 0 {
        h.set(
            &k("attention.sliding_window"),
            MetaValue::U32(sh.window as u32),
        );
    }
    tokenizer(&mut h, sh.vocab);

    let (d, q, kv, ff) = (
        sh.d_model,
        sh.heads * sh.head_dim,
        sh.kv_heads * sh.head_dim,
        sh.ffn,
    );
    let n = sh.layers;
    let mut specs = Vec::new();
    let w = |name: String, cols: usize, rows: usize, layer: Option<usize>, short: &str| Spec {
        ty: matrix_type(ty, short, layer, n, cols),
        scale: (3.0 / cols as f32).sqrt(),
        name,
        cols,
        rows,
    };
    let norm = |name: String, len: usize| Spec {
        name,
        cols: len,
        rows: 1,
        ty: GgmlType::F32,
        scale: 0.0,
    };
    let emb_short = if sh.tied { "output" } else { "token_embd" };
    let mut emb = w("token_embd.weight".into(), d, sh.vocab, None, emb_short);
    // Unit-variance embedding rows (Gemma multiplies by sqrt(d) itself).
    emb.scale = if arch == SynthArch::Gemma3 {
        (3.0 / d as f32).sqrt()
    } else {
        3f32.sqrt() * 0.05
    };
    specs.push(emb);
    specs.push(norm("output_norm.weight".into(), d));
    if !sh.tied {
        let mut out = w("output.weight".into(), d, sh.vocab, None, "output");
        // Logits with a spread of a few units, so greedy choices are not near-ties.
        out.scale *= 4.0;
        specs.push(out);
    }
    for i in 0..n {
        let b = |s: &str| format!("blk.{i}.{s}");
        specs.push(norm(b("attn_norm.weight"), d));
        specs.push(w(b("attn_q.weight"), d, q, Some(i), "attn_q"));
        specs.push(w(b("attn_k.weight"), d, kv, Some(i), "attn_k"));
        specs.push(w(b("attn_v.weight"), d, kv, Some(i), "attn_v"));
        specs.push(w(b("attn_output.weight"), q, d, Some(i), "attn_output"));
        if arch == SynthArch::Qwen2 {
            for (s, len) in [("attn_q.bias", q), ("attn_k.bias", kv), ("attn_v.bias", kv)] {
                specs.push(Spec {
                    name: b(s),
                    cols: len,
                    rows: 1,
                    ty: GgmlType::F32,
                    scale: 0.1,
                });
            }
        }
        if arch == SynthArch::Gemma3 {
            specs.push(norm(b("attn_q_norm.weight"), sh.head_dim));
            specs.push(norm(b("attn_k_norm.weight"), sh.head_dim));
            specs.push(norm(b("post_attention_norm.weight"), d));
            specs.push(norm(b("post_ffw_norm.weight"), d));
        }
        specs.push(norm(b("ffn_norm.weight"), d));
        specs.push(w(b("ffn_gate.weight"), d, ff, Some(i), "ffn_gate"));
        specs.push(w(b("ffn_up.weight"), d, ff, Some(i), "ffn_up"));
        specs.push(w(b("ffn_down.weight"), ff, d, Some(i), "ffn_down"));
    }
    for s in &specs {
        let dims = if s.rows == 1 && s.scale == 0.0 || s.name.ends_with(".bias") {
            vec![s.cols as u64]
        } else {
            vec![s.cols as u64, s.rows as u64]
        };
        h.add_tensor(&s.name, dims, s.ty)?;
    }
    let mut out = GgufFileWriter::create(path, &h)?;
    let total = specs.len();
    let mut bytes_written = 0u64;
    for (ti, s) in specs.iter().enumerate() {
        let data = tensor_bytes(s, seed.wrapping_add(ti as u64 * 0x9E37_79B9), threads)?;
        bytes_written += data.len() as u64;
        out.write_tensor(&data)?;
        progress(ti + 1, total);
    }
    out.finish()?;
    Ok(bytes_written)
}

/// xorshift64*: cheap, deterministic per row.
fn rng(mut s: u64) -> impl FnMut() -> f32 {
    s = s.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn tensor_bytes(s: &Spec, seed: u64, threads: usize) -> Result<Vec<u8>, SynthError> {
    if s.scale == 0.0 {
        return Ok((0..s.cols).flat_map(|_| 1f32.to_le_bytes()).collect());
    }
    let rb = quants::row_bytes(s.ty, s.cols);
    let mut data = vec![0u8; rb * s.rows];
    let threads = threads.max(1).min(s.rows);
    let per = s.rows.div_ceil(threads);
    let err = std::sync::Mutex::new(None);
    std::thread::scope(|sc| {
        for (ci, chunk) in data.chunks_mut(per * rb).enumerate() {
            let err = &err;
            sc.spawn(move || {
                let mut row = vec![0f32; s.cols];
                for (ri, dst) in chunk.chunks_mut(rb).enumerate() {
                    let r = ci * per + ri;
                    let mut g = rng(seed ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
                    row.iter_mut().for_each(|v| *v = g() * s.scale);
                    if let Err(e) = quants::quantize_row(s.ty, &row, dst) {
                        if let Ok(mut slot) = err.lock() {
                            *slot = Some(e.to_string());
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().ok().flatten() {
        return Err(SynthError::Quantize(s.name.clone(), e));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Model;

    #[test]
    fn tiny_presets_of_every_arch_and_type_load() {
        for arch in [SynthArch::Llama, SynthArch::Qwen2, SynthArch::Gemma3] {
            for ty in [SynthType::Q4KM, SynthType::Q8_0, SynthType::F16] {
                let shape = preset(arch, "tiny").unwrap();
                let path = std::env::temp_dir().join(format!(
                    "hangar-synth-{arch:?}-{ty:?}-{}.gguf",
                    std::process::id()
                ));
                write(arch, &shape, ty, 1, &path, 2, |_, _| {}).unwrap();
                let m = Model::load(&path).unwrap();
                assert_eq!(m.cfg.n_layers, shape.layers);
                assert_eq!(m.cfg.vocab_size, shape.vocab);
                let tk = hangar_tokenizer_free_check(&path);
                assert!(tk, "{arch:?} tokenizer metadata");
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// The tokenizer keys are present and consistent (the tokenizer crate itself is a
    /// layer above this one; the CLI test loads it for real).
    fn hangar_tokenizer_free_check(path: &Path) -> bool {
        let f = hangar_formats::GgufFile::open(path).unwrap();
        let n = f.get_str_array("tokenizer.ggml.tokens").unwrap().len();
        n == f.tensor("token_embd.weight").unwrap().n_rows()
    }

    #[test]
    fn q4_k_m_falls_back_on_widths_that_are_not_multiples_of_256() {
        assert_eq!(
            matrix_type(SynthType::Q4KM, "attn_q", Some(0), 18, 640),
            GgmlType::Q5_0
        );
        assert_eq!(
            matrix_type(SynthType::Q4KM, "output", None, 18, 640),
            GgmlType::Q8_0
        );
        assert_eq!(
            matrix_type(SynthType::Q4KM, "ffn_down", Some(0), 18, 2048),
            GgmlType::Q6K
        );
        assert_eq!(
            matrix_type(SynthType::Q4KM, "ffn_up", Some(5), 32, 4096),
            GgmlType::Q4K
        );
    }

    /// Rows are seeded by their index, so the file is the same bytes on any number of
    /// threads (the GPU runs compare device-check figures across sessions and hosts).
    #[test]
    fn the_weights_do_not_depend_on_the_thread_count() {
        let s = Spec {
            name: "blk.0.ffn_up.weight".into(),
            cols: 512,
            rows: 37,
            ty: GgmlType::Q4K,
            scale: 0.05,
        };
        let one = tensor_bytes(&s, 7, 1).unwrap();
        for threads in [2, 3, 14, 64] {
            assert!(
                tensor_bytes(&s, 7, threads).unwrap() == one,
                "{threads} threads"
            );
        }
        assert!(tensor_bytes(&s, 8, 3).unwrap() != one, "the seed matters");
    }

    #[test]
    fn unknown_presets_list_the_known_ones() {
        let e = preset(SynthArch::Llama, "llama-9").unwrap_err().to_string();
        assert!(e.contains("llama-3-8b"), "{e}");
    }
}
