//! The chunker: splits a document's extracted text into passages of at most
//! `chunk_tokens` tokens of the embedding model's tokenizer, consecutive passages
//! sharing about `overlap` tokens, cut preferably at paragraph, then sentence, then line
//! ends; every chunk keeps the byte range of the source it came from. Pure functions;
//! no embedding, no storage.

use crate::extract::{extract, DocFormat};
use hangar_tokenizer::WordPieceTokenizer;

/// Counts tokens of a piece of text (no special tokens).
pub trait TokenCounter {
    fn count(&self, text: &str) -> usize;
}

impl TokenCounter for WordPieceTokenizer {
    fn count(&self, text: &str) -> usize {
        self.encode(text, false).len()
    }
}

/// How documents are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkOptions {
    /// Most tokens in one chunk (the embedder adds its special tokens and prompt).
    pub chunk_tokens: usize,
    /// Tokens consecutive chunks share.
    pub overlap: usize,
}

impl Default for ChunkOptions {
    /// 128 tokens with 32 shared: the sequence length all-MiniLM-L6-v2 was trained on
    /// (its limit is 256), a paragraph or two per chunk; on the RAG evaluation
    /// (docs/EVALUATION.md) it retrieves better than 200-token chunks.
    fn default() -> Self {
        ChunkOptions {
            chunk_tokens: 128,
            overlap: 32,
        }
    }
}

impl ChunkOptions {
    /// Checks the options against the room the embedding model leaves.
    pub fn validate(&self, room: usize) -> Result<(), String> {
        if self.chunk_tokens == 0 {
            return Err("--chunk-tokens must be at least 1".into());
        }
        if self.chunk_tokens > room {
            return Err(format!(
                "--chunk-tokens {} is more than the embedding model takes ({room} tokens \
                 besides its special tokens and prompt); use at most {room}",
                self.chunk_tokens
            ));
        }
        if self.overlap >= self.chunk_tokens {
            return Err(format!(
                "--overlap {} must be smaller than --chunk-tokens {}",
                self.overlap, self.chunk_tokens
            ));
        }
        Ok(())
    }
}

/// One passage of a document.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Chunk {
    /// Position in the document, from 0.
    pub index: usize,
    /// The passage (extracted text: for HTML without markup).
    pub text: String,
    /// Byte range of the passage in the source document.
    pub start: usize,
    pub end: usize,
    /// Tokens of `text` (no special tokens).
    pub tokens: usize,
}

/// A word of the extracted text: its byte range, tokens, and how good a place to cut
/// the space after it is.
struct Word {
    start: usize,
    end: usize,
    tokens: usize,
    cut: u8,
}

fn words(text: &str, counter: &dyn TokenCounter) -> Vec<Word> {
    let mut out: Vec<Word> = Vec::new();
    let mut start = None;
    let push = |s: usize, e: usize, out: &mut Vec<Word>| {
        out.push(Word {
            start: s,
            end: e,
            tokens: counter.count(&text[s..e]),
            cut: 0,
        })
    };
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            if let Some(s) = start.take() {
                push(s, i, &mut out);
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        push(s, text.len(), &mut out);
    }
    // Score the gap after each word: blank line 4, sentence end at a line end 3,
    // sentence end 2, line end 1.
    for i in 0..out.len().saturating_sub(1) {
        let gap = &text[out[i].end..out[i + 1].start];
        let newlines = gap.matches('\n').count();
        let next_heading = newlines > 0 && text[out[i + 1].start..].starts_with('#');
        let sentence = text[out[i].start..out[i].end].ends_with(['.', '!', '?', ':', ';']);
        out[i].cut = match (newlines, sentence) {
            (n, _) if n >= 2 || next_heading => 4,
            (1, true) => 3,
            (0, true) => 2,
            (1, false) => 1,
            _ => 0,
        };
    }
    out
}

/// Splits extracted text into chunks (offsets into `text`).
fn chunk_words(text: &str, counter: &dyn TokenCounter, opts: ChunkOptions) -> Vec<Chunk> {
    let ws = words(text, counter);
    let max = opts.chunk_tokens.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < ws.len() {
        let mut end = start;
        let mut tokens = 0;
        while end < ws.len() && (end == start || tokens + ws[end].tokens <= max) {
            tokens += ws[end].tokens;
            end += 1;
        }
        if end < ws.len() {
            // Cut at the best gap (the latest of equals): a paragraph end past the
            // chunk's first quarter, anything else past its first half.
            let mut acc = 0;
            let mut best: Option<(u8, usize)> = None;
            for (j, w) in ws.iter().enumerate().take(end).skip(start) {
                acc += w.tokens;
                let far_enough = if w.cut >= 4 {
                    acc * 4 >= tokens
                } else {
                    acc * 2 >= tokens
                };
                if far_enough && w.cut > 0 && best.is_none_or(|(c, _)| w.cut >= c) {
                    best = Some((w.cut, j + 1));
                }
            }
            if let Some((_, j)) = best {
                end = j;
                tokens = ws[start..end].iter().map(|w| w.tokens).sum();
            }
        }
        let (s, e) = (ws[start].start, ws[end - 1].end);
        out.push(Chunk {
            index: out.len(),
            text: text[s..e].to_string(),
            start: s,
            end: e,
            tokens,
        });
        if end == ws.len() {
            break;
        }
        // The next chunk starts `overlap` tokens back, always after this one's start.
        let mut next = end;
        let mut shared = 0;
        while next > start + 1 && shared + ws[next - 1].tokens <= opts.overlap {
            next -= 1;
            shared += ws[next].tokens;
        }
        start = next;
    }
    out
}

/// Chunks a document: extracts its text (HTML stripped), splits it, and maps each
/// chunk's range back to byte offsets in `src`.
pub fn chunk_document(
    src: &str,
    format: DocFormat,
    counter: &dyn TokenCounter,
    opts: ChunkOptions,
) -> Vec<Chunk> {
    let ex = extract(src, format);
    let mut chunks = chunk_words(&ex.text, counter, opts);
    for c in &mut chunks {
        let (s, e) = ex.source_range(c.start, c.end);
        c.start = s;
        c.end = e;
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per whitespace-separated word.
    struct Words;
    impl TokenCounter for Words {
        fn count(&self, text: &str) -> usize {
            text.split_whitespace().count()
        }
    }

    fn opts(chunk_tokens: usize, overlap: usize) -> ChunkOptions {
        ChunkOptions {
            chunk_tokens,
            overlap,
        }
    }

    #[test]
    fn chunks_respect_the_budget_overlap_and_offsets() {
        let text: String = (0..100).map(|i| format!("w{i} ")).collect();
        let cs = chunk_document(&text, DocFormat::Text, &Words, opts(10, 3));
        assert!(cs.len() > 10);
        for c in &cs {
            assert!(c.tokens <= 10, "{c:?}");
            assert_eq!(&text[c.start..c.end], c.text);
        }
        for pair in cs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(b.start > a.start);
            let bw: Vec<&str> = b.text.split(' ').collect();
            let shared = a.text.split(' ').filter(|w| bw.contains(w)).count();
            assert_eq!(shared, 3, "{a:?} {b:?}");
        }
        assert!(cs.last().unwrap().text.ends_with("w99"));
        assert!(cs[0].text.starts_with("w0 "));
    }

    #[test]
    fn cuts_prefer_paragraph_then_sentence_ends() {
        let text = "a b c d e f. g h\n\ni j k l m n o p";
        let cs = chunk_document(text, DocFormat::Markdown, &Words, opts(10, 0));
        assert_eq!(cs[0].text, "a b c d e f. g h");
        assert_eq!(cs[1].text, "i j k l m n o p");
        let text = "a b c d e f. g h i j k l m n o p";
        let cs = chunk_document(text, DocFormat::Text, &Words, opts(10, 0));
        assert_eq!(cs[0].text, "a b c d e f.");
    }

    #[test]
    fn html_chunks_point_into_the_source() {
        let src = "<html><body><h1>Title</h1><p>alpha &amp; beta</p>\
                   <script>ignored()</script><p>gamma delta</p></body></html>";
        let cs = chunk_document(src, DocFormat::Html, &Words, opts(3, 0));
        let texts: Vec<&str> = cs.iter().map(|c| c.text.as_str()).collect();
        assert_eq!(texts, ["Title", "alpha & beta", "gamma delta"]);
        assert_eq!(&src[cs[1].start..cs[1].end], "alpha &amp; beta");
        assert_eq!(&src[cs[2].start..cs[2].end], "gamma delta");
    }

    #[test]
    fn empty_and_oversized_words_still_make_progress() {
        assert!(chunk_document("  \n ", DocFormat::Text, &Words, opts(5, 2)).is_empty());
        struct Heavy;
        impl TokenCounter for Heavy {
            fn count(&self, t: &str) -> usize {
                t.len()
            }
        }
        let cs = chunk_document("aaaaaaaa bb cc", DocFormat::Text, &Heavy, opts(4, 3));
        assert_eq!(cs[0].text, "aaaaaaaa");
        assert_eq!(cs.last().unwrap().text, "bb cc");
    }

    #[test]
    fn random_markup_never_panics_and_ranges_stay_in_the_source() {
        let pieces = [
            "<p>",
            "</p>",
            "<script>",
            "</script>",
            "<!--",
            "-->",
            "&amp;",
            "&#x",
            ";",
            "&",
            "<",
            ">",
            "é",
            "☺",
            " ",
            "\n",
            "\n\n",
            "word",
            ".",
            "<br>",
            "</",
            "#",
            "&#233;",
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut src = String::new();
            for _ in 0..(x % 40) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                src.push_str(pieces[(x % pieces.len() as u64) as usize]);
            }
            for format in [DocFormat::Html, DocFormat::Markdown] {
                for c in chunk_document(&src, format, &Words, opts(3, 1)) {
                    assert!(c.start < c.end && c.end <= src.len(), "{src:?} {c:?}");
                    assert!(src.is_char_boundary(c.start) && src.is_char_boundary(c.end));
                }
            }
        }
    }

    #[test]
    fn options_are_checked_against_the_model() {
        assert!(opts(200, 40).validate(254).is_ok());
        assert!(opts(300, 40)
            .validate(254)
            .unwrap_err()
            .contains("at most 254"));
        assert!(opts(10, 10).validate(254).is_err());
        assert!(opts(0, 0).validate(254).is_err());
    }
}
