//! WordPiece (BERT-family `tokenizer.json`): hostile tokenizer files must be refused or
//! loaded without a panic, and arbitrary text (any Unicode, control characters, CJK,
//! long words) must encode to ids inside the vocabulary, wrapped in `[CLS] … [SEP]`,
//! with truncation never exceeding its limit.
//!
//! The first input byte picks the mode: even = the rest is a `tokenizer.json` to load
//! (and use on a fixed text); odd = the rest is text for a small fixed vocabulary.
#![no_main]

use hangar_tokenizer::WordPieceTokenizer;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "##s", "##ing", "run", "cat", "un",
    "##known", "hello", "world", "!", ",", ".", "的", "中", "##e", "e", "é", "##é", "1", "##1",
];

fn fixed() -> &'static WordPieceTokenizer {
    static T: OnceLock<WordPieceTokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let vocab: serde_json::Map<String, serde_json::Value> = VOCAB
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), serde_json::Value::from(i)))
            .collect();
        let json = serde_json::json!({
            "added_tokens": [
                {"id": 2, "content": "[CLS]", "special": true},
                {"id": 3, "content": "[SEP]", "special": true},
                {"id": 4, "content": "[MASK]", "special": true}
            ],
            "normalizer": {"type": "BertNormalizer", "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}},
                           {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
                "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                                   "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}}},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        });
        WordPieceTokenizer::from_json(json.to_string().as_bytes()).expect("the fixed tokenizer loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(t) = WordPieceTokenizer::from_json(rest) {
            let _ = t.encode("Hello, wörld! 中文 [MASK] unknownword", true);
            let _ = t.encode_truncated("a b c d e f g", 3);
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let t = fixed();
    let n = t.vocab_size() as u32;
    let ids = t.encode(text, true);
    assert!(ids.len() >= 2, "[CLS] and [SEP] are always there");
    assert_eq!((ids[0], *ids.last().unwrap()), (2, 3), "wrapped in [CLS] … [SEP]");
    assert!(ids.iter().all(|&i| i < n), "an id outside the vocabulary");
    let plain = t.encode(text, false);
    assert_eq!(&ids[1..ids.len() - 1], plain.as_slice());
    let limit = (mode as usize / 2) % 9;
    let cut = t.encode_truncated(text, limit);
    assert!(cut.len() <= limit, "{} ids over a limit of {limit}", cut.len());
});
