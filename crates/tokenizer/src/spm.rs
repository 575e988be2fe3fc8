//! SentencePiece-style BPE over scores (`tokenizer.ggml.model = "llama"`).
//!
//! The text (spaces already escaped to U+2581) starts as one symbol per UTF-8
//! character. Every adjacent pair whose concatenation is a vocabulary entry is a
//! candidate; the best-scoring candidate (ties: leftmost) is merged, and new pairs
//! with its neighbours are queued, until nothing merges. Symbols that are not
//! tokens fall back to `<0xXX>` byte tokens.

use crate::Vocab;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: i32,
    right: i32,
    size: u32,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Higher score first; equal scores (as floats compare, so -0 == 0): lower left.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .partial_cmp(&other.score)
            .unwrap_or(Ordering::Equal)
            .then_with(|| other.left.cmp(&self.left))
    }
}

struct Session<'a> {
    vocab: &'a Vocab,
    text: &'a str,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl Session<'_> {
    fn try_add(&mut self, left: i32, right: i32) {
        if left < 0 || right < 0 {
            return;
        }
        let l = self.symbols[left as usize];
        let r = self.symbols[right as usize];
        let start = l.start as usize;
        let end = (r.start + r.len) as usize;
        let Some(id) = self.vocab.lookup(&self.text[start..end]) else {
            return;
        };
        self.queue.push(Bigram {
            score: self.vocab.scores[id as usize],
            left,
            right,
            size: l.len + r.len,
        });
    }
}

/// Appends the tokens of `text` (already whitespace-escaped) to `out`.
/// A byte with no byte token becomes `unk` (llama.cpp would abort there).
pub(crate) fn tokenize(vocab: &Vocab, unk: Option<u32>, text: &str, out: &mut Vec<u32>) {
    if text.is_empty() {
        return;
    }
    let mut symbols = Vec::with_capacity(text.len());
    let mut iter = text.char_indices().peekable();
    let mut index = 0i32;
    while let Some((i, c)) = iter.next() {
        let last = iter.peek().is_none();
        symbols.push(Symbol {
            start: i as u32,
            len: c.len_utf8() as u32,
            prev: index - 1,
            next: if last { -1 } else { index + 1 },
        });
        index += 1;
    }
    let mut s = Session {
        vocab,
        text,
        symbols,
        queue: BinaryHeap::new(),
    };
    for i in 1..s.symbols.len() as i32 {
        s.try_add(i - 1, i);
    }
    while let Some(b) = s.queue.pop() {
        let l = s.symbols[b.left as usize];
        let r = s.symbols[b.right as usize];
        // Stale: one side was merged away or grew since this pair was queued.
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        let left = &mut s.symbols[b.left as usize];
        left.len += r.len;
        left.next = r.next;
        let prev = left.prev;
        let next = left.next;
        s.symbols[b.right as usize].len = 0;
        if r.next >= 0 {
            s.symbols[r.next as usize].prev = b.left;
        }
        s.try_add(prev, b.left);
        s.try_add(b.left, next);
    }
    let mut i = 0i32;
    while i != -1 {
        let sym = s.symbols[i as usize];
        let piece = &text[sym.start as usize..(sym.start + sym.len) as usize];
        match vocab.lookup(piece) {
            Some(id) => out.push(id),
            None => {
                for &byte in piece.as_bytes() {
                    if let Some(id) = vocab.byte_token(byte).or(unk) {
                        out.push(id);
                    }
                }
            }
        }
        i = sym.next;
    }
}
