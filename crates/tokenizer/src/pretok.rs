//! Pre-tokenizers for byte-level BPE vocabularies: split text into words before the
//! merges run, the way llama.cpp's `unicode_regex_split` does for each
//! `tokenizer.ggml.pre` type.
//!
//! Each stage refines the current list of segments (lengths in code points); a
//! regex stage turns every segment into its matches and the gaps between them. The
//! GPT-2 and Llama-3 patterns are hand-written scanners equivalent to the regexes
//! (llama.cpp uses such scanners too); the simple character-class patterns are runs.

use crate::unicode::Flags;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}|
    ///  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+` (Llama 3: max 3; Qwen2: 1)
    Llama3 { max_digits: usize },
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctRuns,
    /// `\p{N}+`
    NumberRuns,
    /// `\p{N}`
    EachNumber,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
}

struct Text<'a> {
    cps: &'a [char],
    flags: &'a [Flags],
}

/// Splits `text` into words; returns their byte ranges in order, covering all of it.
pub(crate) fn split(text: &str, stages: &[Stage]) -> Vec<std::ops::Range<usize>> {
    let mut starts = Vec::with_capacity(text.len() + 1);
    let mut cps = Vec::with_capacity(text.len());
    for (i, c) in text.char_indices() {
        starts.push(i);
        cps.push(c);
    }
    starts.push(text.len());
    if cps.is_empty() {
        return Vec::new();
    }
    let flags: Vec<Flags> = cps.iter().map(|&c| Flags::of(c)).collect();
    let t = Text {
        cps: &cps,
        flags: &flags,
    };
    let mut segs = vec![cps.len()];
    for stage in stages {
        let mut out = Vec::with_capacity(segs.len() * 2);
        let mut start = 0;
        for &len in &segs {
            let end = start + len;
            match *stage {
                Stage::Gpt2 => gpt2(&t, start, end, &mut out),
                Stage::Llama3 { max_digits } => llama3(&t, start, end, max_digits, &mut out),
                Stage::PunctRuns => runs(&t, start, end, &mut out, is_default_punct),
                Stage::NumberRuns => runs(&t, start, end, &mut out, is_number_collapsed),
                Stage::EachNumber => each(&t, start, end, &mut out, is_number_collapsed),
                Stage::AsciiDigitTriples => triples(&t, start, end, &mut out),
            }
            start = end;
        }
        segs = out;
    }
    let mut ranges = Vec::with_capacity(segs.len());
    let mut start = 0;
    for len in segs {
        ranges.push(starts[start]..starts[start + len]);
        start += len;
    }
    ranges
}

/// Records segments for one scanner pass over `[ini, end)`.
struct Emitter<'o> {
    prev: usize,
    out: &'o mut Vec<usize>,
}

impl Emitter<'_> {
    #[inline]
    fn cut(&mut self, end: usize) {
        if end > self.prev {
            self.out.push(end - self.prev);
        }
        self.prev = end;
    }
}

fn gpt2(t: &Text, ini: usize, end: usize, out: &mut Vec<usize>) {
    let flag = |p: usize| if p < end { t.flags[p] } else { Flags::NONE };
    let mut em = Emitter { prev: ini, out };
    let mut pos = ini;
    while pos < end {
        let c = t.cps[pos];
        let f = t.flags[pos];
        if c == '\'' && pos + 1 < end {
            let n = t.cps[pos + 1];
            if matches!(n, 's' | 't' | 'm' | 'd') {
                pos += 2;
                em.cut(pos);
                continue;
            }
            if pos + 2 < end {
                let nn = t.cps[pos + 2];
                if matches!((n, nn), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    em.cut(pos);
                    continue;
                }
            }
        }
        let f2 = if c == ' ' { flag(pos + 1) } else { f };
        let lead = usize::from(c == ' ');
        if f2.letter() {
            pos += lead;
            while flag(pos).letter() {
                pos += 1;
            }
            em.cut(pos);
            continue;
        }
        if f2.number() {
            pos += lead;
            while flag(pos).number() {
                pos += 1;
            }
            em.cut(pos);
            continue;
        }
        let other = |g: Flags| !(g.whitespace() || g.letter() || g.number()) && g.present();
        if other(f2) {
            pos += lead;
            while other(flag(pos)) {
                pos += 1;
            }
            em.cut(pos);
            continue;
        }
        let mut n_ws = 0;
        while flag(pos + n_ws).whitespace() {
            n_ws += 1;
        }
        if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
            em.cut(pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            em.cut(pos);
            continue;
        }
        pos += 1;
        em.cut(pos);
    }
}

fn llama3(t: &Text, ini: usize, end: usize, max_digits: usize, out: &mut Vec<usize>) {
    let flag = |p: usize| if p < end { t.flags[p] } else { Flags::NONE };
    let cp = |p: usize| if p < end { Some(t.cps[p]) } else { None };
    let mut em = Emitter { prev: ini, out };
    let mut pos = ini;
    while pos < end {
        let c = t.cps[pos];
        let f = t.flags[pos];
        if c == '\'' && pos + 1 < end {
            let n = t.cps[pos + 1].to_ascii_lowercase();
            if matches!(n, 's' | 't' | 'm' | 'd') {
                pos += 2;
                em.cut(pos);
                continue;
            }
            if pos + 2 < end {
                let nn = t.cps[pos + 2].to_ascii_lowercase();
                if matches!((n, nn), ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += 3;
                    em.cut(pos);
                    continue;
                }
            }
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(c == '\r' || c == '\n' || f.number()) && (f.letter() || flag(pos + 1).letter()) {
            pos += 1;
            while flag(pos).letter() {
                pos += 1;
            }
            em.cut(pos);
            continue;
        }
        // \p{N}{1,max}
        if f.number() {
            let mut run = pos;
            while flag(pos).number() {
                pos += 1;
                if pos - run >= max_digits {
                    em.cut(pos);
                    run = pos;
                }
            }
            em.cut(pos);
            continue;
        }
        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        let f2 = if c == ' ' { flag(pos + 1) } else { f };
        let other = |g: Flags| !(g.whitespace() || g.letter() || g.number()) && g.present();
        if other(f2) {
            pos += usize::from(c == ' ');
            while other(flag(pos)) {
                pos += 1;
            }
            while matches!(cp(pos), Some('\r' | '\n')) {
                pos += 1;
            }
            em.cut(pos);
            continue;
        }
        let mut n_ws = 0;
        let mut last_nl_end = 0;
        while flag(pos + n_ws).whitespace() {
            if matches!(t.cps[pos + n_ws], '\r' | '\n') {
                last_nl_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if last_nl_end > 0 {
            pos = last_nl_end;
            em.cut(pos);
            continue;
        }
        // \s+(?!\S)
        if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
            em.cut(pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            em.cut(pos);
            continue;
        }
        pos += 1;
        em.cut(pos);
    }
}

/// `[\p{P}\$\+<=>\^~\|]` as llama.cpp evaluates it: ASCII by its explicit list
/// (every ASCII punctuation or symbol except the backtick), other code points by
/// the Unicode punctuation category (whitespace excluded).
fn is_default_punct(c: char, f: Flags) -> bool {
    if c.is_ascii() {
        c.is_ascii_punctuation() && c != '`'
    } else {
        !f.whitespace() && f.punctuation()
    }
}

/// `\p{N}` as llama.cpp evaluates it (ASCII digits, other non-space numbers).
fn is_number_collapsed(c: char, f: Flags) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        !f.whitespace() && f.number()
    }
}

/// Maximal runs of matching characters become segments, and so do the gaps.
fn runs(t: &Text, ini: usize, end: usize, out: &mut Vec<usize>, pred: fn(char, Flags) -> bool) {
    let mut em = Emitter { prev: ini, out };
    let mut pos = ini;
    while pos < end {
        if pred(t.cps[pos], t.flags[pos]) {
            em.cut(pos);
            while pos < end && pred(t.cps[pos], t.flags[pos]) {
                pos += 1;
            }
            em.cut(pos);
        } else {
            pos += 1;
        }
    }
    em.cut(end);
}

/// Every matching character is its own segment; the gaps are segments too.
fn each(t: &Text, ini: usize, end: usize, out: &mut Vec<usize>, pred: fn(char, Flags) -> bool) {
    let mut em = Emitter { prev: ini, out };
    for pos in ini..end {
        if pred(t.cps[pos], t.flags[pos]) {
            em.cut(pos);
            em.cut(pos + 1);
        }
    }
    em.cut(end);
}

/// Leftmost non-overlapping runs of exactly three ASCII digits.
fn triples(t: &Text, ini: usize, end: usize, out: &mut Vec<usize>) {
    let mut em = Emitter { prev: ini, out };
    let mut pos = ini;
    while pos + 3 <= end {
        if t.cps[pos..pos + 3].iter().all(|c| c.is_ascii_digit()) {
            em.cut(pos);
            em.cut(pos + 3);
            pos += 3;
        } else {
            pos += 1;
        }
    }
    em.cut(end);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, stages: &[Stage]) -> Vec<String> {
        split(text, stages)
            .into_iter()
            .map(|r| text[r].to_string())
            .collect()
    }

    #[test]
    fn gpt2_pattern() {
        let w = words("Hello world's  end 123!!  ", &[Stage::Gpt2]);
        assert_eq!(
            w,
            ["Hello", " world", "'s", " ", " end", " 123", "!!", "  "]
        );
    }

    #[test]
    fn llama3_pattern() {
        let w = words(
            "I'M 12345 ok\n\n  x ...\n",
            &[Stage::Llama3 { max_digits: 3 }],
        );
        assert_eq!(
            w,
            ["I", "'M", " ", "123", "45", " ok", "\n\n", " ", " x", " ...\n"]
        );
        let w = words("ab 12", &[Stage::Llama3 { max_digits: 1 }]);
        assert_eq!(w, ["ab", " ", "1", "2"]);
    }

    #[test]
    fn default_stages() {
        let stages = [
            Stage::PunctRuns,
            Stage::Gpt2,
            Stage::NumberRuns,
            Stage::AsciiDigitTriples,
        ];
        let w = words("a+b 1234567", &stages);
        assert_eq!(w, ["a", "+", "b", " ", "123", "456", "7"]);
    }

    #[test]
    fn covers_everything() {
        let s = "x\u{0}y \u{10FFFF}\u{300} é\t\r\n😀";
        for stages in [
            vec![Stage::Gpt2],
            vec![Stage::Llama3 { max_digits: 3 }],
            vec![Stage::EachNumber, Stage::Gpt2],
        ] {
            assert_eq!(words(s, &stages).concat(), s);
        }
    }
}
