//! Sampler and StopMatcher through the public API, with a tokenizer's streaming
//! decoder in front of the stop matcher (as the generation loop uses them).

use hangar_engine::sampler::{Sampler, SamplingParams, StopMatcher};
use hangar_tokenizer::{TokenType, Tokenizer, TokenizerSpec};

/// A small SentencePiece vocabulary: byte fallback for everything, a few words.
fn tokenizer() -> Tokenizer {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![TokenType::Unknown, TokenType::Control, TokenType::Control];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TokenType::Byte);
    }
    for w in ["▁Hello", "▁world", "▁STOP", "ST", "OP", "▁"] {
        tokens.push(w.into());
        types.push(TokenType::Normal);
    }
    let scores = vec![0.0; tokens.len()];
    let mut spec = TokenizerSpec::spm(tokens, scores, types);
    spec.add_space_prefix = Some(false);
    Tokenizer::from_spec(&spec).expect("tokenizer")
}

fn run(tok: &Tokenizer, text: &str, stops: &[&str]) -> (String, bool) {
    let ids = tok.encode(text, false, false);
    let mut dec = tok.incremental_decoder(true);
    let mut stop = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
    let mut out = String::new();
    for &id in &ids {
        let piece = dec.push(id);
        let (emit, hit) = stop.push(&piece);
        out += &emit;
        for s in stops {
            assert!(!out.contains(s), "{out:?} shows stop string {s:?}");
        }
        if hit {
            return (out, true);
        }
    }
    out += &stop.finish(&dec.flush());
    (out, false)
}

#[test]
fn stop_strings_over_token_stream() {
    let tok = tokenizer();
    assert_eq!(
        run(&tok, "Hello world STOP more", &["STOP"]),
        ("Hello world ".into(), true)
    );
    assert_eq!(
        run(&tok, "Hello wor", &["world"]),
        ("Hello wor".into(), false)
    );
    // Emoji spelled with byte tokens, stop string made of emoji.
    assert_eq!(
        run(&tok, "Hello 🚀🔥 world", &["🔥"]),
        ("Hello 🚀".into(), true)
    );
    assert_eq!(
        run(&tok, "Hello 🚀 world", &["🔥"]),
        ("Hello 🚀 world".into(), false)
    );
}

#[test]
fn seeded_sampling_is_reproducible() {
    let logits: Vec<f32> = (0..32_000)
        .map(|i| ((i * 37) % 101) as f32 / 10.0)
        .collect();
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 0,
        top_p: 0.9,
        seed: Some(1234),
        n_logprobs: 3,
        ..SamplingParams::default()
    };
    let draw = || {
        let mut s = Sampler::new(params.clone()).expect("valid params");
        (0..30)
            .map(|_| s.sample(&mut logits.clone(), &[]).id)
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(), draw());
    let mut s = Sampler::new(params.clone()).expect("valid params");
    let t = s.sample(&mut logits.clone(), &[]);
    assert_eq!(t.top_logprobs.len(), 3);
    assert!(t.top_logprobs.windows(2).all(|w| w[0].1 >= w[1].1));
    assert!(t.logprob <= 0.0);
    let bad = SamplingParams {
        top_p: 2.0,
        ..params
    };
    let e = Sampler::new(bad).expect_err("top_p 2 is invalid");
    assert!(e.to_string().contains("top_p"), "{e}");
}
