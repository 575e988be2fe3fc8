//! Arbitrary text -> a small byte-level BPE vocabulary under several pre-tokenizers ->
//! encode -> decode, full and streamed.
//!
//! Checked beyond "no panic", for pre-tokenizers that do not clean up spaces on decode
//! (`" !"` -> `"!"`, which llama.cpp's streaming output does not do either): byte-level
//! BPE is lossless, so without special-token parsing the ids decode back to the exact
//! text, and the streamed decode equals the full one.
#![no_main]

use hangar_tokenizer::{TokenType, Tokenizer, TokenizerSpec};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Pre-tokenizers exercised, and whether decode leaves spaces as they are.
const PRES: &[(&str, bool)] = &[
    ("trillion", true),
    ("smollm", true),
    ("llama3", false),
    ("qwen2", false),
    ("gpt-2", false),
    ("default", false),
];

/// The printable character GPT-2's byte-level alphabet uses for byte `b`.
fn byte_char(b: u8) -> char {
    let direct = |x: u32| matches!(x, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    if direct(b as u32) {
        return char::from(b);
    }
    let shifted = (0..b as u32).filter(|&x| !direct(x)).count() as u32;
    char::from_u32(0x100 + shifted).expect("below the surrogates")
}

fn alphabet(s: &str) -> String {
    s.bytes().map(byte_char).collect()
}

fn tokenizers() -> &'static Vec<(Tokenizer, bool)> {
    static T: OnceLock<Vec<(Tokenizer, bool)>> = OnceLock::new();
    T.get_or_init(|| {
        let merges: Vec<String> = [
            ("t", "h"),
            ("th", "e"),
            (" ", "the"),
            ("i", "n"),
            (" ", "in"),
            ("e", "r"),
            ("o", "n"),
            ("1", "2"),
            ("12", "3"),
            ("\n", "\n"),
            (" ", " "),
        ]
        .iter()
        .map(|(a, b)| format!("{} {}", alphabet(a), alphabet(b)))
        .collect();
        let mut tokens: Vec<String> = (0..=255u8).map(|b| byte_char(b).to_string()).collect();
        for m in &merges {
            let joined = m.replace(' ', "");
            if !tokens.contains(&joined) {
                tokens.push(joined);
            }
        }
        tokens.push("<|endoftext|>".into());
        tokens.push("<tool>".into());
        let n = tokens.len();
        let mut types = vec![TokenType::Normal; n];
        types[n - 2] = TokenType::Control;
        types[n - 1] = TokenType::UserDefined;
        PRES.iter()
            .map(|&(pre, lossless)| {
                let mut spec = TokenizerSpec::gpt2(tokens.clone(), merges.clone(), pre);
                spec.token_types = Some(types.clone());
                spec.bos_id = Some(n as u32 - 2);
                spec.eos_id = Some(n as u32 - 2);
                let t = Tokenizer::from_spec(&spec).expect("the fuzz vocabulary builds");
                (t, lossless)
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for (t, lossless) in tokenizers() {
        for (add_special, parse_special) in [(false, false), (true, true)] {
            let ids = t.encode(text, add_special, parse_special);
            let full = t.decode_bytes(&ids, false);
            let mut d = t.incremental_decoder(false);
            let mut streamed = String::new();
            for &id in &ids {
                streamed += &d.push(id);
            }
            streamed += &d.flush();
            if !*lossless {
                continue;
            }
            assert_eq!(
                streamed,
                String::from_utf8_lossy(&full),
                "pre {:?}",
                t.pre()
            );
            if !add_special && !parse_special {
                assert_eq!(full, text.as_bytes(), "pre {:?}: ids {ids:?}", t.pre());
            }
        }
    }
});
