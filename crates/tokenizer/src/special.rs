//! Special-token partitioning (llama.cpp's `tokenizer_st_partition`).
//!
//! Before the model's own algorithm runs, every occurrence of a control, unknown or
//! user-defined token's text is cut out of the input and replaced by that token.
//! Tokens are taken longest first; for each one, every raw fragment is scanned
//! left to right. A trie over all special texts finds, in one pass, which of them
//! occur in the input at all, so only those are scanned for.
//!
//! Plain ranges (chat message content) are spans where control and unknown tokens
//! are not recognised, as with `parse_special = false`; they do not split the text,
//! so plain text on both sides of a range boundary stays one fragment.

use crate::unicode::FxHashMap;
use std::ops::Range;

/// A piece of the input after partitioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// Bytes `start..end` of the input, still to be tokenized.
    Text(usize, usize),
    /// A special token matched as a whole.
    Token(u32),
}

pub(crate) struct SpecialEntry {
    pub id: u32,
    pub text: Box<str>,
    /// Control or unknown: matched only when parsing special tokens.
    pub needs_parse_special: bool,
    pub lstrip: bool,
    pub rstrip: bool,
}

pub(crate) struct SpecialIndex {
    /// In matching priority order (longest text first).
    entries: Vec<SpecialEntry>,
    /// Trie edges: (node, byte) -> node. Node 0 is the root.
    edges: FxHashMap<(u32, u8), u32>,
    /// Per trie node: the entry index whose text ends there, if any.
    terminal: Vec<Option<u32>>,
    first_byte: [bool; 256],
}

impl SpecialIndex {
    /// `entries` must already be in priority order.
    pub fn new(entries: Vec<SpecialEntry>) -> Self {
        let mut edges = FxHashMap::default();
        let mut terminal = vec![None];
        let mut first_byte = [false; 256];
        for (i, e) in entries.iter().enumerate() {
            let bytes = e.text.as_bytes();
            if bytes.is_empty() {
                continue;
            }
            first_byte[bytes[0] as usize] = true;
            let mut node = 0u32;
            for &b in bytes {
                let next = terminal.len() as u32;
                node = *edges.entry((node, b)).or_insert_with(|| {
                    terminal.push(None);
                    next
                });
            }
            // Equal texts cannot occur (the vocabulary has no duplicates).
            if terminal[node as usize].is_none() {
                terminal[node as usize] = Some(i as u32);
            }
        }
        SpecialIndex {
            entries,
            edges,
            terminal,
            first_byte,
        }
    }

    /// Entry indices (in priority order) of the special texts occurring in `text`.
    fn occurring(&self, text: &[u8], parse_special: bool) -> Vec<usize> {
        let mut seen = vec![false; self.entries.len()];
        let mut any = false;
        for start in 0..text.len() {
            if !self.first_byte[text[start] as usize] {
                continue;
            }
            let mut node = 0u32;
            for &b in &text[start..] {
                match self.edges.get(&(node, b)) {
                    Some(&n) => node = n,
                    None => break,
                }
                if let Some(i) = self.terminal[node as usize] {
                    let i = i as usize;
                    if parse_special || !self.entries[i].needs_parse_special {
                        seen[i] = true;
                        any = true;
                    }
                }
            }
        }
        if !any {
            return Vec::new();
        }
        seen.iter()
            .enumerate()
            .filter_map(|(i, &s)| s.then_some(i))
            .collect()
    }

    /// Whether `text` holds the text of a control or unknown token (one that is
    /// matched only when parsing special tokens). Conservative: an occurrence that a
    /// longer token would swallow still counts.
    pub fn contains_parse_special_text(&self, text: &str) -> bool {
        let text = text.as_bytes();
        for start in 0..text.len() {
            if !self.first_byte[text[start] as usize] {
                continue;
            }
            let mut node = 0u32;
            for &b in &text[start..] {
                match self.edges.get(&(node, b)) {
                    Some(&n) => node = n,
                    None => break,
                }
                if let Some(i) = self.terminal[node as usize] {
                    if self.entries[i as usize].needs_parse_special {
                        return true;
                    }
                }
            }
        }
        false
    }

    /// Splits `text` into raw fragments and special tokens.
    pub fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        self.partition_with_plain(text, parse_special, &[])
    }

    /// [`partition`](Self::partition), except that control and unknown tokens
    /// overlapping a `plain` range are left as text. `plain` must be sorted by start
    /// and not overlap.
    pub fn partition_with_plain(
        &self,
        text: &str,
        parse_special: bool,
        plain: &[Range<usize>],
    ) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(0, text.len())];
        let bytes = text.as_bytes();
        for i in self.occurring(bytes, parse_special) {
            let e = &self.entries[i];
            let needle = &*e.text;
            let mut next = Vec::with_capacity(frags.len() + 2);
            for &f in &frags {
                let Fragment::Text(mut base, end) = f else {
                    next.push(f);
                    continue;
                };
                // Scan [base, end) for the token, left to right; `from` skips
                // occurrences refused inside plain ranges.
                let mut from = base;
                loop {
                    let Some(rel) = text[from..end].find(needle) else {
                        next.push(Fragment::Text(base, end));
                        break;
                    };
                    let m = from + rel;
                    if e.needs_parse_special && overlaps(plain, m, m + needle.len()) {
                        from = m + needle.chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    let mut left_end = m;
                    if e.lstrip {
                        while left_end > base && is_c_space(bytes[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > base {
                        next.push(Fragment::Text(base, left_end));
                    }
                    next.push(Fragment::Token(e.id));
                    let mut right = m + needle.len();
                    if right >= end {
                        break;
                    }
                    if e.rstrip {
                        while right < end && is_c_space(bytes[right]) {
                            right += 1;
                        }
                    }
                    base = right;
                    from = base;
                    if base >= end {
                        break;
                    }
                }
            }
            frags = next;
        }
        // An empty raw fragment can only come from an empty scan window; drop them.
        frags.retain(|f| !matches!(f, Fragment::Text(a, b) if a >= b));
        frags
    }
}

/// Whether `start..end` overlaps one of the sorted, disjoint `ranges`.
fn overlaps(ranges: &[Range<usize>], start: usize, end: usize) -> bool {
    let i = ranges.partition_point(|r| r.end <= start);
    ranges.get(i).is_some_and(|r| r.start < end)
}

/// C `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, text: &str, control: bool) -> SpecialEntry {
        SpecialEntry {
            id,
            text: text.into(),
            needs_parse_special: control,
            lstrip: false,
            rstrip: false,
        }
    }

    #[test]
    fn longest_first_and_modes() {
        let idx = SpecialIndex::new(vec![
            entry(10, "<start>", true),
            entry(11, "\n\n", false),
            entry(12, "\n", false),
        ]);
        let t = "a\n\n\n<start>b";
        let f = idx.partition(t, true);
        assert_eq!(
            f,
            vec![
                Fragment::Text(0, 1),
                Fragment::Token(11),
                Fragment::Token(12),
                Fragment::Token(10),
                Fragment::Text(11, 12)
            ]
        );
        let f = idx.partition(t, false);
        assert_eq!(
            f,
            vec![
                Fragment::Text(0, 1),
                Fragment::Token(11),
                Fragment::Token(12),
                Fragment::Text(4, 12)
            ]
        );
    }

    #[test]
    fn plain_ranges_refuse_control_tokens_but_keep_user_defined_ones() {
        let idx = SpecialIndex::new(vec![entry(10, "<t>", true), entry(11, "\n", false)]);
        let t = "<t>a<t>\nb<t>";
        // The middle "<t>" (3..6) lies in a plain range: it stays text, and the text
        // around it is one fragment; "\n" is user-defined and still matched there.
        let f = idx.partition_with_plain(t, true, std::slice::from_ref(&(3..8)));
        assert_eq!(
            f,
            vec![
                Fragment::Token(10),
                Fragment::Text(3, 7),
                Fragment::Token(11),
                Fragment::Text(8, 9),
                Fragment::Token(10)
            ]
        );
        // A token straddling a range boundary is refused too.
        let f = idx.partition_with_plain("ab<t>", true, std::slice::from_ref(&(0..3)));
        assert_eq!(f, vec![Fragment::Text(0, 5)]);
        // Without plain ranges nothing changes.
        assert_eq!(
            idx.partition_with_plain(t, true, &[]),
            idx.partition(t, true)
        );
        assert!(idx.contains_parse_special_text("x<t>"));
        assert!(!idx.contains_parse_special_text("x\n<"));
    }

    #[test]
    fn strip_flags() {
        let mut e = entry(5, "<m>", true);
        e.lstrip = true;
        e.rstrip = true;
        let idx = SpecialIndex::new(vec![e]);
        let f = idx.partition("a  <m>  b", true);
        assert_eq!(
            f,
            vec![
                Fragment::Text(0, 1),
                Fragment::Token(5),
                Fragment::Text(8, 9)
            ]
        );
    }
}
