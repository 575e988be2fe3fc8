//! Token counts per input, and the same sentence in five languages, to show how a
//! token limit buys different amounts of text by language. Counting is done by a
//! tokenizer the caller passes in; this module only tabulates.

use crate::table::Table;
use serde::Serialize;

/// "The quick brown fox jumps over the lazy dog" in English, French, Spanish,
/// Japanese and Simplified Chinese.
pub const COMPARE: [(&str, &str); 5] = [
    ("English", "The quick brown fox jumps over the lazy dog"),
    (
        "French",
        "Le rapide renard brun saute par-dessus le chien paresseux",
    ),
    (
        "Spanish",
        "El rápido zorro marrón salta sobre el perro perezoso",
    ),
    ("Japanese", "素早い茶色の狐がのろまな犬を飛び越える"),
    ("Chinese (Simplified)", "敏捷的棕色狐狸跳过了懒狗"),
];

/// Counts for one input.
#[derive(Debug, Clone, Serialize)]
pub struct TokenRow {
    pub label: String,
    pub text: String,
    pub chars: usize,
    pub bytes: usize,
    pub tokens: usize,
}

impl TokenRow {
    /// Counts characters and UTF-8 bytes of `text`; `tokens` from the tokenizer.
    pub fn new(label: &str, text: &str, tokens: usize) -> Self {
        TokenRow {
            label: label.to_string(),
            text: text.to_string(),
            chars: text.chars().count(),
            bytes: text.len(),
            tokens,
        }
    }
}

/// Counts every input with `count` (a tokenizer's encode, length of the result).
pub fn count_rows<E>(
    inputs: &[(String, String)],
    mut count: impl FnMut(&str) -> Result<usize, E>,
) -> Result<Vec<TokenRow>, E> {
    inputs
        .iter()
        .map(|(label, text)| Ok(TokenRow::new(label, text, count(text)?)))
        .collect()
}

/// The comparison rows for [`COMPARE`].
pub fn compare_rows<E>(count: impl FnMut(&str) -> Result<usize, E>) -> Result<Vec<TokenRow>, E> {
    let inputs: Vec<(String, String)> = COMPARE
        .iter()
        .map(|(l, t)| (l.to_string(), t.to_string()))
        .collect();
    count_rows(&inputs, count)
}

/// A table of counts; `show_text` adds the text (for the comparison).
pub fn render_rows(rows: &[TokenRow], show_text: bool) -> String {
    let mut head = vec!["input", "chars", "bytes", "tokens", "chars/token"];
    if show_text {
        head.push("text");
    }
    let mut t = Table::new(head);
    for r in rows {
        let per = if r.tokens == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", r.chars as f64 / r.tokens as f64)
        };
        let mut cells = vec![
            r.label.clone(),
            r.chars.to_string(),
            r.bytes.to_string(),
            r.tokens.to_string(),
            per,
        ];
        if show_text {
            cells.push(r.text.clone());
        }
        t.row(cells);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_chars_and_bytes_separately() {
        let rows = compare_rows(|t| Ok::<_, ()>(t.split_whitespace().count())).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0].chars, 43);
        assert_eq!(rows[0].bytes, 43);
        assert_eq!(rows[0].tokens, 9);
        // Chinese: 12 characters of 3 UTF-8 bytes each.
        assert_eq!(rows[4].chars, 12);
        assert_eq!(rows[4].bytes, 36);
        assert!(render_rows(&rows, true).contains("敏捷"));
    }
}
