//! WordPiece, as BERT-family encoders use it, read from a Hugging Face `tokenizer.json`:
//! BertNormalizer, BertPreTokenizer, greedy longest-match WordPiece with a continuing
//! prefix (`##`), special added tokens and the `[CLS] … [SEP]` post-processor. Token ids
//! match the `tokenizers` library. Knows nothing about models or the engine.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;
use unicode_general_category::{get_general_category, GeneralCategory as G};
use unicode_normalization::UnicodeNormalization;

use crate::TokenizerError;

/// A WordPiece tokenizer (BERT, MiniLM, bge, e5 …). Immutable and `Send + Sync`.
#[derive(Debug, Clone)]
pub struct WordPieceTokenizer {
    vocab: HashMap<String, u32>,
    tokens: Vec<String>,
    unk: u32,
    prefix: String,
    max_chars_per_word: usize,
    normalizer: BertNormalizer,
    /// Special added tokens matched whole in the raw text, longest first.
    added: Vec<(String, u32)>,
    /// The post-processor's single-sequence template: ids before and after the text.
    before: Vec<u32>,
    after: Vec<u32>,
    pad: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
struct BertNormalizer {
    clean_text: bool,
    chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

fn bad(why: impl Into<String>) -> TokenizerError {
    TokenizerError::Json(why.into())
}

impl WordPieceTokenizer {
    /// Reads `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let bytes =
            std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        Self::from_json(&bytes)
    }

    /// Parses the contents of a `tokenizer.json` whose model is WordPiece.
    pub fn from_json(bytes: &[u8]) -> Result<Self, TokenizerError> {
        let j: Value = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("tokenizer.json is not valid JSON: {e}")))?;
        let model = &j["model"];
        if model["type"].as_str() != Some("WordPiece") {
            return Err(bad(format!(
                "model.type is {}, not \"WordPiece\": this reader serves BERT-family encoders",
                model["type"]
            )));
        }
        let vmap = model["vocab"]
            .as_object()
            .ok_or_else(|| bad("model.vocab is not an object of token -> id"))?;
        let mut vocab = HashMap::with_capacity(vmap.len());
        let mut tokens = vec![String::new(); vmap.len()];
        for (t, id) in vmap {
            let id = id
                .as_u64()
                .filter(|&i| (i as usize) < vmap.len())
                .ok_or_else(|| {
                    bad(format!(
                        "model.vocab[{t:?}] is not an id below the vocabulary size"
                    ))
                })? as u32;
            tokens[id as usize] = t.clone();
            vocab.insert(t.clone(), id);
        }
        let lookup = |t: &str, what: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| bad(format!("{what} {t:?} is not in the vocabulary")))
        };
        let unk_text = model["unk_token"].as_str().unwrap_or("[UNK]");
        let unk = lookup(unk_text, "model.unk_token")?;
        let prefix = model["continuing_subword_prefix"]
            .as_str()
            .unwrap_or("##")
            .to_string();
        let max_chars_per_word = model["max_input_chars_per_word"].as_u64().unwrap_or(100) as usize;

        let normalizer = match &j["normalizer"] {
            Value::Null => BertNormalizer::default(),
            n if n["type"].as_str() == Some("BertNormalizer") => {
                let flag = |k: &str, d: bool| n[k].as_bool().unwrap_or(d);
                let lowercase = flag("lowercase", true);
                BertNormalizer {
                    clean_text: flag("clean_text", true),
                    chinese_chars: flag("handle_chinese_chars", true),
                    strip_accents: n["strip_accents"].as_bool().unwrap_or(lowercase),
                    lowercase,
                }
            }
            n => {
                return Err(bad(format!(
                    "normalizer {} is not supported (BertNormalizer or none)",
                    n["type"]
                )))
            }
        };
        match j["pre_tokenizer"]["type"].as_str() {
            Some("BertPreTokenizer") | None => {}
            Some(o) => {
                return Err(bad(format!(
                    "pre_tokenizer {o:?} is not supported (BertPreTokenizer)"
                )))
            }
        }

        let mut added = Vec::new();
        for t in j["added_tokens"].as_array().into_iter().flatten() {
            if let (Some(c), Some(id)) = (t["content"].as_str(), t["id"].as_u64()) {
                if !c.is_empty() && t["special"].as_bool().unwrap_or(false) {
                    added.push((c.to_string(), id as u32));
                }
            }
        }
        added.sort_by_key(|a| std::cmp::Reverse(a.0.len()));

        let (before, after) = post_processor(&j["post_processor"], &lookup)?;
        let pad = j["padding"]["pad_id"]
            .as_u64()
            .map(|p| p as u32)
            .or_else(|| vocab.get("[PAD]").copied());
        Ok(Self {
            vocab,
            tokens,
            unk,
            prefix,
            max_chars_per_word,
            normalizer,
            added,
            before,
            after,
            pad,
        })
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The padding id (`[PAD]`), if the vocabulary has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// How many ids `encode(.., true)` adds around the text (`[CLS]` and `[SEP]`: 2).
    pub fn num_special_tokens(&self) -> usize {
        self.before.len() + self.after.len()
    }

    /// The vocabulary text of a token.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of a vocabulary entry.
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.vocab.get(text).copied()
    }

    /// Text to ids; `add_special` wraps them as the post-processor says (`[CLS] … [SEP]`).
    /// Never fails: unknown words become `[UNK]`.
    pub fn encode(&self, text: &str, add_special: bool) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 4);
        if add_special {
            ids.extend_from_slice(&self.before);
        }
        let mut rest = text;
        while !rest.is_empty() {
            match self.find_added(rest) {
                Some((at, len, id)) => {
                    self.encode_plain(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    break;
                }
            }
        }
        if add_special {
            ids.extend_from_slice(&self.after);
        }
        ids
    }

    /// `encode` cut to at most `max_len` ids, keeping the special tokens at both ends
    /// (the `tokenizers` library's truncation of a single sequence).
    pub fn encode_truncated(&self, text: &str, max_len: usize) -> Vec<u32> {
        let mut ids = self.encode(text, true);
        if ids.len() > max_len {
            let keep = max_len.saturating_sub(self.after.len());
            ids.truncate(keep.max(self.before.len().min(max_len)));
            let room = max_len - ids.len();
            ids.extend_from_slice(&self.after[..room.min(self.after.len())]);
        }
        ids
    }

    /// The first special added token in `s`: (byte offset, byte length, id), longest
    /// first at the leftmost position.
    fn find_added(&self, s: &str) -> Option<(usize, usize, u32)> {
        if self.added.is_empty() {
            return None;
        }
        for (at, _) in s.char_indices() {
            let tail = &s[at..];
            if let Some((t, id)) = self
                .added
                .iter()
                .find(|(t, _)| tail.starts_with(t.as_str()))
            {
                return Some((at, t.len(), *id));
            }
        }
        None
    }

    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let norm = self.normalizer.normalize(text);
        let mut word_start: Option<usize> = None;
        for (i, c) in norm.char_indices() {
            if c.is_whitespace() || is_bert_punctuation(c) {
                if let Some(s) = word_start.take() {
                    self.word(&norm[s..i], ids);
                }
                if !c.is_whitespace() {
                    self.word(&norm[i..i + c.len_utf8()], ids);
                }
            } else if word_start.is_none() {
                word_start = Some(i);
            }
        }
        if let Some(s) = word_start {
            self.word(&norm[s..], ids);
        }
    }

    /// Greedy longest-match WordPiece of one pre-token.
    fn word(&self, w: &str, ids: &mut Vec<u32>) {
        if w.chars().count() > self.max_chars_per_word {
            ids.push(self.unk);
            return;
        }
        let mark = ids.len();
        let mut start = 0;
        let mut piece = String::with_capacity(w.len() + self.prefix.len());
        while start < w.len() {
            let mut end = w.len();
            let mut found = None;
            while start < end {
                piece.clear();
                if start > 0 {
                    piece.push_str(&self.prefix);
                }
                piece.push_str(&w[start..end]);
                if let Some(&id) = self.vocab.get(piece.as_str()) {
                    found = Some(id);
                    break;
                }
                end = w[..end].char_indices().next_back().map_or(0, |(i, _)| i);
            }
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(mark);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }
}

type Lookup<'a> = dyn Fn(&str, &str) -> Result<u32, TokenizerError> + 'a;

/// The ids the post-processor puts before and after a single sequence.
fn post_processor(p: &Value, lookup: &Lookup) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
    match p["type"].as_str() {
        None => Ok((vec![], vec![])),
        Some("BertProcessing") => {
            let id = |k: &str| {
                p[k][1]
                    .as_u64()
                    .map(|i| i as u32)
                    .ok_or_else(|| bad(format!("post_processor.{k} is not [token, id]")))
            };
            Ok((vec![id("cls")?], vec![id("sep")?]))
        }
        Some("TemplateProcessing") => {
            let (mut before, mut after, mut seen) = (vec![], vec![], false);
            for piece in p["single"].as_array().into_iter().flatten() {
                if piece.get("Sequence").is_some() {
                    seen = true;
                } else if let Some(name) = piece["SpecialToken"]["id"].as_str() {
                    let ids: Vec<u32> = match p["special_tokens"][name]["ids"].as_array() {
                        Some(a) => a
                            .iter()
                            .filter_map(|v| v.as_u64().map(|i| i as u32))
                            .collect(),
                        None => vec![lookup(name, "post_processor special token")?],
                    };
                    if seen { &mut after } else { &mut before }.extend(ids);
                }
            }
            Ok((before, after))
        }
        Some(o) => Err(bad(format!(
            "post_processor {o:?} is not supported (TemplateProcessing, BertProcessing)"
        ))),
    }
}

impl BertNormalizer {
    fn normalize(&self, s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 8);
        for c in s.chars() {
            if self.clean_text {
                if c == '\0' || c == '\u{fffd}' || is_control(c) {
                    continue;
                }
                if matches!(c, '\t' | '\n' | '\r') || c.is_whitespace() {
                    out.push(' ');
                    continue;
                }
            }
            if self.chinese_chars && is_chinese_char(c) {
                out.push(' ');
                out.push(c);
                out.push(' ');
            } else {
                out.push(c);
            }
        }
        if self.strip_accents {
            out = out
                .nfd()
                .filter(|&c| get_general_category(c) != G::NonspacingMark)
                .collect();
        }
        if self.lowercase {
            // Per character, as the `tokenizers` library does (no final-sigma rule).
            out = out.chars().flat_map(char::to_lowercase).collect();
        }
        out
    }
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r')
        && matches!(
            get_general_category(c),
            G::Control | G::Format | G::PrivateUse | G::Surrogate
        )
}

fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(
            get_general_category(c),
            G::ConnectorPunctuation
                | G::DashPunctuation
                | G::OpenPunctuation
                | G::ClosePunctuation
                | G::InitialPunctuation
                | G::FinalPunctuation
                | G::OtherPunctuation
        )
}

/// The CJK Unified Ideograph blocks BERT pads with spaces.
fn is_chinese_char(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B920..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> WordPieceTokenizer {
        let j = serde_json::json!({
            "added_tokens": [{"id": 1, "content": "[CLS]", "special": true},
                              {"id": 2, "content": "[SEP]", "special": true}],
            "normalizer": {"type": "BertNormalizer", "lowercase": true, "strip_accents": null},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "cls": ["[CLS]", 1], "sep": ["[SEP]", 2]},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "max_input_chars_per_word": 10,
                      "vocab": {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "un": 3, "##aff": 4,
                                "##able": 5, "cafe": 6, "!": 7, "中": 8}}
        });
        WordPieceTokenizer::from_json(j.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn greedy_longest_match_with_prefix_and_unk() {
        let t = tiny();
        assert_eq!(t.encode("unaffable", true), vec![1, 3, 4, 5, 2]);
        assert_eq!(t.encode("Café! unx", false), vec![6, 7, 0]);
        assert_eq!(t.encode("中中", false), vec![8, 8]);
        assert_eq!(t.encode("unaffableun", false), vec![0], "11 chars > max 10");
        assert_eq!(t.encode("un[SEP]un", false), vec![3, 2, 3]);
        assert_eq!(t.encode("", true), vec![1, 2]);
    }

    #[test]
    fn truncation_keeps_the_special_tokens() {
        let t = tiny();
        assert_eq!(t.encode_truncated("un un un un", 4), vec![1, 3, 3, 2]);
        assert_eq!(t.encode_truncated("un", 10), vec![1, 3, 2]);
    }

    #[test]
    fn refuses_other_models_with_a_reason() {
        let e = WordPieceTokenizer::from_json(br#"{"model":{"type":"BPE"}}"#).unwrap_err();
        assert!(e.to_string().contains("WordPiece"), "{e}");
        assert!(WordPieceTokenizer::from_json(b"{nope").is_err());
    }
}
