//! Bad or inconsistent GGUF metadata gives clear errors, never a panic.

use hangar_formats::GgufFile;
use hangar_tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};

/// A minimal GGUF v3 writer for metadata-only files.
enum V {
    Str(&'static str),
    U32(u32),
    I32(i32),
    Bool(bool),
    F32(f32),
    Strs(Vec<String>),
    F32s(Vec<f32>),
    I32s(Vec<i32>),
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn gguf(kvs: &[(&str, V)]) -> GgufFile {
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend(0u64.to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut out, k);
        match v {
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                put_str(&mut out, s);
            }
            V::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::I32(x) => {
                out.extend(5u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::Bool(b) => {
                out.extend(7u32.to_le_bytes());
                out.push(*b as u8);
            }
            V::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            V::Strs(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for s in a {
                    put_str(&mut out, s);
                }
            }
            V::F32s(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(6u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for x in a {
                    out.extend(x.to_le_bytes());
                }
            }
            V::I32s(a) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                for x in a {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    GgufFile::from_bytes(out).expect("valid GGUF container")
}

fn toks(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("t{i}")).collect()
}

fn err(kvs: &[(&str, V)]) -> String {
    match Tokenizer::from_gguf(&gguf(kvs)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn valid_minimal_file() {
    let t = Tokenizer::from_gguf(&gguf(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(toks(4))),
        ("tokenizer.ggml.scores", V::F32s(vec![0.0; 4])),
        ("tokenizer.ggml.token_type", V::I32s(vec![2, 3, 3, 1])),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
        ("tokenizer.ggml.padding_token_id", V::I32(-1)),
        ("tokenizer.ggml.add_bos_token", V::Bool(true)),
        ("tokenizer.ggml.add_space_prefix", V::Bool(false)),
        ("general.name", V::Str("tiny")),
        ("some.float", V::F32(1.0)),
    ]))
    .unwrap();
    assert_eq!(t.vocab_size(), 4);
    assert_eq!(t.pad_id(), None);
    // "t3" is a token; "t" and "3" are not: no byte tokens exist, so unk (id 0).
    assert_eq!(t.encode("t3", true, false), vec![1, 3]);
    assert_eq!(t.encode("x", false, false), vec![0]);
}

#[test]
fn missing_keys() {
    let e = err(&[("tokenizer.ggml.tokens", V::Strs(toks(3)))]);
    assert!(
        e.contains("tokenizer.ggml.model") && e.contains("missing"),
        "{e}"
    );
    let e = err(&[("tokenizer.ggml.model", V::Str("llama"))]);
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("missing"),
        "{e}"
    );
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
    ]);
    assert!(e.contains("merges"), "{e}");
}

#[test]
fn wrong_types() {
    let e = err(&[
        ("tokenizer.ggml.model", V::U32(1)),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
    ]);
    assert!(
        e.contains("tokenizer.ggml.model") && e.contains("string"),
        "{e}"
    );
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::F32s(vec![1.0])),
    ]);
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
        ("tokenizer.ggml.token_type", V::Strs(toks(3))),
    ]);
    assert!(e.contains("tokenizer.ggml.token_type"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
        ("tokenizer.ggml.bos_token_id", V::Str("one")),
    ]);
    assert!(e.contains("bos_token_id"), "{e}");
}

#[test]
fn inconsistent_metadata() {
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(toks(4))),
        ("tokenizer.ggml.scores", V::F32s(vec![0.0; 3])),
    ]);
    assert!(
        e.contains("scores") && e.contains('3') && e.contains('4'),
        "{e}"
    );
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(toks(4))),
        ("tokenizer.ggml.token_type", V::I32s(vec![1; 2])),
    ]);
    assert!(e.contains("token_type"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        (
            "tokenizer.ggml.tokens",
            V::Strs(vec!["a".into(), "b".into(), "a".into()]),
        ),
    ]);
    assert!(e.contains("duplicate") && e.contains("\"a\""), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("llama")),
        ("tokenizer.ggml.tokens", V::Strs(vec![])),
    ]);
    assert!(e.contains("empty"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
        (
            "tokenizer.ggml.merges",
            V::Strs(vec!["t 0".into(), "nospace".into()]),
        ),
    ]);
    assert!(e.contains("#1") && e.contains("nospace"), "{e}");
    // add_bos with no usable BOS id.
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str("gpt-2")),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
        ("tokenizer.ggml.merges", V::Strs(vec![])),
        ("tokenizer.ggml.add_bos_token", V::Bool(true)),
        ("tokenizer.ggml.bos_token_id", V::U32(99)),
    ]);
    assert!(e.contains("add_bos_token") && e.contains("BOS"), "{e}");
}

#[test]
fn unsupported_models() {
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("t5")),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
    ]);
    assert!(e.contains("\"t5\"") && e.contains("llama"), "{e}");
    let e = err(&[
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.pre", V::Str("tekken")),
        ("tokenizer.ggml.tokens", V::Strs(toks(3))),
        ("tokenizer.ggml.merges", V::Strs(vec![])),
    ]);
    assert!(e.contains("\"tekken\"") && e.contains("pre"), "{e}");
}

#[test]
fn out_of_range_ids_never_panic() {
    let t = Tokenizer::from_spec(&TokenizerSpec {
        model: "llama".into(),
        tokens: toks(5),
        eos_id: Some(1000),
        ..Default::default()
    })
    .unwrap();
    // An id given out of range keeps llama.cpp's default (2).
    assert_eq!(t.eos_id(), Some(2));
    assert_eq!(t.decode(&[7, 1_000_000, u32::MAX], false), "");
    assert_eq!(t.token_bytes(99), b"");
    assert_eq!(t.id_to_token(99), None);
    assert_eq!(t.token_type(99), None);
    assert!(!t.is_eog(99));
    let mut d = t.incremental_decoder(true);
    assert_eq!(d.push(u32::MAX), "");
    assert!(matches!(
        Tokenizer::from_spec(&TokenizerSpec::default()),
        Err(TokenizerError::UnsupportedModel(_))
    ));
}
