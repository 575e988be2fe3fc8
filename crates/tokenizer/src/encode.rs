//! Text to token ids: special-token partitioning, then SentencePiece or byte-level BPE
//! over each plain fragment. Never fails; holds no state between calls.

use crate::special::Fragment;
use crate::{bpe, pretok, spm, unicode, ModelKind, Tokenizer};
use std::ops::Range;

impl Tokenizer {
    /// Token ids of `text`.
    ///
    /// * `add_special`: add BOS / EOS where the model asks for them
    ///   (`tokenizer.ggml.add_bos_token`, `add_eos_token`).
    /// * `parse_special`: match control tokens written as text (`"<start_of_turn>"`)
    ///   as those tokens; when false they are tokenized as plain text. User-defined
    ///   tokens (type 4) are always matched whole, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let frags = self.special.partition(text, parse_special);
        self.encode_fragments(text, frags, add_special)
    }

    /// Token ids of `text` with special tokens parsed everywhere except inside the
    /// `plain` byte ranges, where control tokens written as text stay plain text (as
    /// with `parse_special = false`; user-defined tokens still match).
    ///
    /// For chat prompts: the template's own markers are special tokens, message
    /// content is not, so a user cannot forge a turn boundary. The ranges do not
    /// split the text: plain text on both sides of a range boundary is tokenized as
    /// one fragment, so text without special-token text inside the ranges gives
    /// exactly `encode(text, add_special, true)`. Ranges may come in any order,
    /// overlap, or reach past the end of `text`.
    pub fn encode_with_plain_ranges(
        &self,
        text: &str,
        add_special: bool,
        plain: &[Range<usize>],
    ) -> Vec<u32> {
        let mut ranges: Vec<Range<usize>> = plain
            .iter()
            .map(|r| r.start.min(text.len())..r.end.min(text.len()))
            .filter(|r| r.start < r.end)
            .collect();
        ranges.sort_unstable_by_key(|r| r.start);
        let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => merged.push(r),
            }
        }
        let frags = self.special.partition_with_plain(text, true, &merged);
        self.encode_fragments(text, frags, add_special)
    }

    /// Whether `text` contains the text of a control or unknown token, i.e. whether
    /// `encode(text, .., parse_special = true)` could turn part of it into a special
    /// token (conservative: an occurrence inside a longer token still counts).
    pub fn contains_special_text(&self, text: &str) -> bool {
        self.special.contains_parse_special_text(text)
    }

    /// SentencePiece or byte-level BPE over the text fragments, special tokens as
    /// they are, BOS / EOS as asked.
    fn encode_fragments(&self, text: &str, frags: Vec<Fragment>, add_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        if add_special && self.add_bos {
            out.extend(self.ids.bos);
        }
        match self.kind {
            ModelKind::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(&self.vocab, self.ids.unk, &buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            ModelKind::Bpe => {
                let codec = unicode::ByteCodec::get();
                let mut word = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            let frag = &text[a..b];
                            for r in pretok::split(frag, &self.stages) {
                                word.clear();
                                codec.encode_into(&frag[r], &mut word);
                                bpe::tokenize_word(
                                    &self.vocab,
                                    &self.merges,
                                    self.ignore_merges,
                                    &word,
                                    &mut out,
                                );
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.ids.eos);
        }
        out
    }

    /// The usual prompt encoding: BOS/EOS as the model asks, special tokens parsed.
    /// (No chat template is applied; callers format turns themselves.)
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        self.encode(text, true, true)
    }
}
