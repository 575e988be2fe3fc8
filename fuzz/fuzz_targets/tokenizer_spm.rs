//! Arbitrary text -> a small SentencePiece vocabulary (byte fallback, control and
//! user-defined tokens) -> encode with every flag combination -> decode, full and
//! streamed.
//!
//! Checked beyond "no panic": the streamed decode equals the full one; without
//! special-token parsing, text decodes back to itself unless it holds a `▁` (which
//! decodes to a space) or a user-defined token (after which llama.cpp prefixes the
//! next text with a space again).
#![no_main]

use hangar_tokenizer::{TokenType, Tokenizer, TokenizerSpec};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let mut tokens: Vec<String> = Vec::new();
        let mut types = Vec::new();
        let mut add = |t: &str, ty: TokenType| {
            tokens.push(t.to_string());
            types.push(ty);
        };
        add("<unk>", TokenType::Unknown);
        add("<s>", TokenType::Control);
        add("</s>", TokenType::Control);
        add("<start_of_turn>", TokenType::Control);
        add("<end_of_turn>", TokenType::Control);
        add("<tool>", TokenType::UserDefined);
        for b in 0..=255u8 {
            add(&format!("<0x{b:02X}>"), TokenType::Byte);
        }
        for p in [
            "▁", "▁t", "▁th", "▁the", "t", "h", "e", "he", "l", "ll", "o", "llo", "▁he", "▁hello",
            "w", "r", "d", "or", "▁w", "▁wor", "▁world", "a", "n", "an", "▁an", "é", "日", "本",
            "日本", "▁▁", "\n", "1", "2", "12",
        ] {
            add(p, TokenType::Normal);
        }
        let n = tokens.len();
        let scores = (0..n).map(|i| -(i as f32) / 8.0).collect();
        let mut spec = TokenizerSpec::spm(tokens, scores, types);
        spec.bos_id = Some(1);
        spec.eos_id = Some(2);
        spec.unk_id = Some(0);
        Tokenizer::from_spec(&spec).expect("the fuzz vocabulary builds")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let t = tokenizer();
    for (add_special, parse_special) in [(false, false), (true, false), (true, true)] {
        let ids = t.encode(text, add_special, parse_special);
        for skip in [false, true] {
            let full = t.decode_bytes(&ids, skip);
            let mut d = t.incremental_decoder(skip);
            let mut streamed = String::new();
            for &id in &ids {
                streamed += &d.push(id);
            }
            streamed += &d.flush();
            assert_eq!(
                streamed,
                String::from_utf8_lossy(&full),
                "streamed decode differs from the full decode"
            );
        }
        if !add_special && !parse_special && !text.contains('\u{2581}') && !text.contains("<tool>")
        {
            assert_eq!(
                String::from_utf8_lossy(&t.decode_bytes(&ids, false)),
                text,
                "ids {ids:?}"
            );
        }
    }
});
