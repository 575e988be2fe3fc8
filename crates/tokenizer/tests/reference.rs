//! The tokenizer of the default model (Gemma 3 270M) against llama.cpp's own output.

use hangar_formats::GgufFile;
use hangar_tokenizer::{TokenType, Tokenizer};
use serde_json::Value;
use std::sync::OnceLock;
use std::time::Instant;

/// llama.cpp's outputs for the default model, kept in the repository.
fn reference_path() -> std::path::PathBuf {
    hangar_testkit::repo_file("tests/data/reference/reference.json")
}

struct Fixture {
    tok: Tokenizer,
    reference: Value,
    build_ms: f64,
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let model = hangar_testkit::model_path()?;
        let reference = reference_path();
        let gguf = GgufFile::open(&model).expect("open model");
        let t0 = Instant::now();
        let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer from the default model");
        let build_ms = t0.elapsed().as_secs_f64() * 1e3;
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(reference).expect("read reference"))
                .expect("parse reference.json");
        Some(Fixture {
            tok,
            reference,
            build_ms,
        })
    })
    .as_ref()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("id array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn metadata() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    eprintln!("tokenizer built in {:.1} ms: {t:?}", f.build_ms);
    assert!(f.build_ms < 1000.0, "construction took {} ms", f.build_ms);
    assert_eq!(t.vocab_size(), 262144);
    assert_eq!(t.bos_id(), Some(2));
    assert_eq!(t.eos_id(), Some(1));
    assert_eq!(t.unk_id(), Some(3));
    assert_eq!(t.pad_id(), Some(0));
    assert!(t.add_bos() && !t.add_eos() && !t.add_space_prefix());
    let eot = t.token_to_id("<end_of_turn>").unwrap();
    assert_eq!(eot, 106);
    assert_eq!(t.eot_id(), Some(106));
    assert!(t.is_eog(1) && t.is_eog(106));
    assert!(!t.is_eog(2) && !t.is_eog(105) && !t.is_eog(818));
    assert_eq!(t.token_to_id("<start_of_turn>"), Some(105));
    assert_eq!(t.id_to_token(818), Some("The"));
    assert_eq!(t.token_type(105), Some(TokenType::Control));
    assert_eq!(t.token_type(107), Some(TokenType::UserDefined));
    assert_eq!(t.token_type(248), Some(TokenType::Byte));
    assert_eq!(t.token_type(6), Some(TokenType::Unused));
    assert_eq!(t.token_bytes(248), b"\n");
    assert_eq!(t.token_bytes(532), b" and");
    assert_eq!(t.token_bytes(105), b"<start_of_turn>");
    assert_eq!(t.token_bytes(u32::MAX), b"");
}

#[test]
fn tokenize_entries_match_llama_cpp() {
    let Some(f) = fixture() else { return };
    let entries = f.reference["tokenize"]
        .as_array()
        .expect("tokenize entries");
    assert!(!entries.is_empty());
    let mut matched = 0;
    let mut failures = Vec::new();
    for e in entries {
        let text = e["text"].as_str().expect("text");
        for (key, parse) in [("ids_add_bos", false), ("ids_add_bos_parse_special", true)] {
            let want = ids(&e[key]);
            let got = f.tok.encode(text, true, parse);
            if got == want {
                matched += 1;
            } else {
                failures.push(format!(
                    "{text:?} ({key}):\n  want {want:?}\n  got  {got:?}"
                ));
            }
        }
    }
    eprintln!(
        "{matched}/{} reference tokenizations match",
        entries.len() * 2
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn greedy_prompts_and_texts_match_llama_cpp() {
    let Some(f) = fixture() else { return };
    let entries = f.reference["greedy"].as_array().expect("greedy entries");
    for e in entries {
        let prompt = e["prompt"].as_str().expect("prompt");
        assert_eq!(
            f.tok.encode(prompt, true, true),
            ids(&e["prompt_ids"]),
            "{prompt:?}"
        );
        let text = e["text"].as_str().expect("text");
        assert_eq!(
            f.tok.decode(&ids(&e["greedy_ids"]), true),
            text,
            "{prompt:?}"
        );
    }
}

#[test]
fn perplexity_text_token_count_matches() {
    let Some(f) = fixture() else { return };
    let path = reference_path();
    let text = std::fs::read_to_string(path.with_file_name("ppl_text.txt")).expect("ppl_text");
    let want = f.reference["perplexity"]["text_tokens"]
        .as_u64()
        .expect("text_tokens") as usize;
    let got = f.tok.encode(&text, false, false).len();
    let got_trim = f
        .tok
        .encode(text.trim_end_matches('\n'), false, false)
        .len();
    assert!(
        got == want || got_trim == want,
        "want {want}, got {got} ({got_trim} trimmed)"
    );
}

#[test]
fn round_trip_reference_texts() {
    let Some(f) = fixture() else { return };
    for e in f.reference["tokenize"].as_array().expect("entries") {
        let text = e["text"].as_str().expect("text");
        let plain = f.tok.encode(text, true, false);
        assert_eq!(f.tok.decode(&plain, true), text);
        let special = f.tok.encode(text, true, true);
        assert_eq!(special[0], 2);
        assert_eq!(f.tok.decode(&special[1..], false), text);
        assert_eq!(f.tok.decode(&special, false), format!("<bos>{text}"));
    }
}

/// xorshift64*: a fixed pseudo-random sequence.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_text(rng: &mut Rng, len: usize) -> String {
    let pools: &[&[(u32, u32)]] = &[
        &[(0x20, 0x7E)],
        &[(0x09, 0x0D), (0x20, 0x20)],
        &[(0xC0, 0x24F)],
        &[(0x400, 0x4FF), (0x590, 0x6FF)],
        &[(0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3)],
        &[(0x1F300, 0x1FAFF), (0x2600, 0x27BF)],
        &[(0x0, 0xD7FF), (0xE000, 0x10FFFF)],
    ];
    let mut s = String::new();
    for _ in 0..len {
        let pool = pools[rng.below(pools.len() as u64) as usize];
        let (a, b) = pool[rng.below(pool.len() as u64) as usize];
        let c = a + rng.below((b - a + 1) as u64) as u32;
        if let Some(c) = char::from_u32(c) {
            s.push(c);
        }
        if rng.below(20) == 0 {
            s.push_str(
                [
                    "<start_of_turn>",
                    "<end_of_turn>",
                    "\n\n",
                    "  ",
                    "<b>",
                    "<0x41>",
                ][rng.below(6) as usize],
            );
        }
    }
    s
}

#[test]
fn round_trip_random_unicode() {
    let Some(f) = fixture() else { return };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for i in 0..300 {
        let text = random_text(&mut rng, 1 + i % 60);
        let ids = f.tok.encode(&text, true, false);
        assert_eq!(f.tok.decode(&ids, true), text, "ids {ids:?}");
        let ids = f.tok.encode(&text, false, true);
        assert_eq!(f.tok.decode(&ids, false), text, "ids {ids:?}");
        // Streaming gives the same text.
        let mut d = f.tok.incremental_decoder(false);
        let streamed = d.push_all(&ids) + &d.flush();
        assert_eq!(streamed, text);
    }
}

/// Every prefix of the stream is a prefix of the full text, never splits a
/// character, and the whole stream equals `decode`.
fn check_stream(tok: &Tokenizer, ids: &[u32], skip_special: bool) {
    let full = tok.decode(ids, skip_special);
    let mut d = tok.incremental_decoder(skip_special);
    let mut acc = String::new();
    for &id in ids {
        acc += &d.push(id);
        assert!(
            full.starts_with(&acc),
            "{acc:?} is not a prefix of {full:?}"
        );
        assert!(!acc.contains('\u{FFFD}') || full.contains('\u{FFFD}'));
    }
    acc += &d.flush();
    assert_eq!(acc, full);
}

#[test]
fn incremental_decoder_emoji_cjk() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    let texts = [
        "Price: $100, £85, ¥12000, ₠ and 💰 emoji 🚀🔥",
        "素早い茶色のキツネが怠惰な犬を飛び越える",
        "敏捷的棕色狐狸跳过了懒狗 👩‍👩‍👧‍👦 🇫🇷 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ",
        "<start_of_turn>user\nこんにちは🙂<end_of_turn>",
    ];
    for text in texts {
        let ids = t.encode(text, true, true);
        check_stream(t, &ids, true);
        check_stream(t, &ids, false);
    }
    // A character spelled with byte-fallback tokens, split at every point.
    for text in ["🚀", "ꙮ", "𝔘", "é", "€x😀"] {
        let byte_ids: Vec<u32> = text
            .bytes()
            .map(|b| t.token_to_id(&format!("<0x{b:02X}>")).expect("byte token"))
            .collect();
        assert_eq!(t.decode(&byte_ids, true), text);
        for cut in 0..=byte_ids.len() {
            let mut d = t.incremental_decoder(true);
            let head = d.push_all(&byte_ids[..cut]);
            assert!(text.starts_with(&head));
            let tail = d.push_all(&byte_ids[cut..]) + &d.flush();
            assert_eq!(head + &tail, text);
        }
        check_stream(t, &byte_ids, true);
    }
    // A stream cut short: the incomplete character comes out as U+FFFD at flush.
    let rocket: Vec<u32> = "🚀"
        .bytes()
        .map(|b| t.token_to_id(&format!("<0x{b:02X}>")).unwrap())
        .collect();
    let mut d = t.incremental_decoder(true);
    assert_eq!(d.push_all(&rocket[..2]), "");
    assert_eq!(d.pending_bytes().len(), 2);
    assert_eq!(d.flush(), "\u{FFFD}");
    assert_eq!(t.decode(&rocket[..2], true), "\u{FFFD}");
}

#[test]
fn special_handling() {
    let Some(f) = fixture() else { return };
    let t = &f.tok;
    // User-defined tokens are always whole tokens; control tokens only when parsed.
    assert_eq!(t.encode("\n\n", false, false), vec![108]);
    assert_eq!(t.encode("<b>", false, false), vec![200]);
    assert_ne!(t.encode("<bos>", false, false), vec![2]);
    assert_eq!(t.encode("<bos>", false, true), vec![2]);
    assert_eq!(t.encode("", true, true), vec![2]);
    assert!(t.encode("", false, true).is_empty());
    // Control tokens render only when asked.
    assert_eq!(t.decode(&[105, 2364, 107], true), "user\n");
    assert_eq!(t.decode(&[105, 2364, 107], false), "<start_of_turn>user\n");
}

#[test]
fn encoding_is_fast() {
    let Some(f) = fixture() else { return };
    let path = reference_path();
    let text = std::fs::read_to_string(path.with_file_name("ppl_text.txt")).expect("ppl_text");
    let big = text.repeat(30); // ~90 KB
    let t0 = Instant::now();
    let ids = f.tok.encode(&big, true, true);
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!(
        "encoded {} bytes into {} tokens in {ms:.1} ms",
        big.len(),
        ids.len()
    );
    assert!(ms < 2000.0);
    assert_eq!(f.tok.decode(&ids, true), big);
}
