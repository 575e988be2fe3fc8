//! Byte-level BPE with ranked merges (`tokenizer.ggml.model = "gpt2"`).
//!
//! Each pre-tokenized word is mapped byte by byte to GPT-2's printable characters,
//! then split into one symbol per character. The adjacent pair with the lowest merge
//! rank (ties: leftmost) is merged repeatedly. Final symbols that are not tokens are
//! emitted byte by byte where a single-character token exists, as llama.cpp does.

use crate::unicode::FxHashMap;
use crate::Vocab;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// Merge rules, with their parts interned to small ids.
#[derive(Default)]
pub(crate) struct Merges {
    parts: FxHashMap<Box<str>, u32>,
    ranks: FxHashMap<(u32, u32), u32>,
}

impl Merges {
    /// Builds the table from `"left right"` rules; the first occurrence of a pair
    /// keeps its rank. Returns the index of the first rule without a separator.
    pub fn new(rules: &[String]) -> Result<Merges, usize> {
        let mut m = Merges::default();
        for (rank, rule) in rules.iter().enumerate() {
            // The separator is searched from the second byte, so a rule may
            // start with a space.
            let pos = rule
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == ' ')
                .map(|(i, _)| i)
                .ok_or(rank)?;
            let (a, b) = (&rule[..pos], &rule[pos + 1..]);
            let a = m.intern(a);
            let b = m.intern(b);
            m.ranks.entry((a, b)).or_insert(rank as u32);
        }
        Ok(m)
    }
    fn intern(&mut self, s: &str) -> u32 {
        let n = self.parts.len() as u32;
        *self.parts.entry(s.into()).or_insert(n)
    }
    pub fn len(&self) -> usize {
        self.ranks.len()
    }
    fn rank(&self, a: &str, b: &str) -> Option<u32> {
        let a = *self.parts.get(a)?;
        let b = *self.parts.get(b)?;
        self.ranks.get(&(a, b)).copied()
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    rank: u32,
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
    /// The max-heap pops the lowest rank, then the lowest left index.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .rank
            .cmp(&self.rank)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Appends the tokens of one (already byte-encoded) word to `out`.
pub(crate) fn tokenize_word(
    vocab: &Vocab,
    merges: &Merges,
    ignore_merges: bool,
    word: &str,
    out: &mut Vec<u32>,
) {
    if word.is_empty() {
        return;
    }
    if ignore_merges {
        if let Some(id) = vocab.lookup(word) {
            out.push(id);
            return;
        }
    }
    let mut symbols: Vec<Symbol> = Vec::with_capacity(word.len());
    let mut iter = word.char_indices().peekable();
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
    let text = |s: &Symbol| &word[s.start as usize..(s.start + s.len) as usize];
    let mut queue = BinaryHeap::new();
    let add = |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: i32, right: i32| {
        if left < 0 || right < 0 {
            return;
        }
        let l = &symbols[left as usize];
        let r = &symbols[right as usize];
        if let Some(rank) = merges.rank(text(l), text(r)) {
            queue.push(Bigram {
                rank,
                left,
                right,
                size: l.len + r.len,
            });
        }
    };
    for i in 1..symbols.len() as i32 {
        add(&mut queue, &symbols, i - 1, i);
    }
    while let Some(b) = queue.pop() {
        let l = symbols[b.left as usize];
        let r = symbols[b.right as usize];
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size || l.next != b.right {
            continue;
        }
        symbols[b.left as usize].len += r.len;
        symbols[b.left as usize].next = r.next;
        symbols[b.right as usize].len = 0;
        if r.next >= 0 {
            symbols[r.next as usize].prev = b.left;
        }
        let (prev, next) = (l.prev, r.next);
        add(&mut queue, &symbols, prev, b.left);
        add(&mut queue, &symbols, b.left, next);
    }
    let mut i = 0i32;
    while i != -1 {
        let sym = symbols[i as usize];
        let piece = text(&sym);
        match vocab.lookup(piece) {
            Some(id) => out.push(id),
            None => {
                // llama.cpp looks each byte up as a one-byte string: only ASCII
                // bytes can match; the others are dropped.
                for &b in piece.as_bytes() {
                    if b.is_ascii() {
                        let mut buf = [0u8; 4];
                        if let Some(id) = vocab.lookup((b as char).encode_utf8(&mut buf)) {
                            out.push(id);
                        }
                    }
                }
            }
        }
        i = sym.next;
    }
}
