//! Prompt-lookup drafting: find the sequence's last n tokens earlier in the same
//! sequence and propose what followed. Pure function over token ids; no model.

/// Fills `out` with up to `k` tokens that followed the most recent earlier
/// occurrence of the last `n` tokens of `history`, trying `n = n_max` down to
/// `n_min`; empty when nothing matches.
pub fn propose(history: &[u32], k: usize, n_max: usize, n_min: usize, out: &mut Vec<u32>) {
    out.clear();
    let len = history.len();
    if k == 0 {
        return;
    }
    for n in (n_min.max(1)..=n_max).rev() {
        if len <= n {
            continue;
        }
        let pattern = &history[len - n..];
        // Most recent first: nearby text predicts best (and edits copy forward).
        for i in (0..len - n).rev() {
            if &history[i..i + n] == pattern {
                let start = i + n;
                let end = (start + k).min(len);
                out.extend_from_slice(&history[start..end]);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_what_followed_the_longest_match() {
        // "a b c d e ... a b c" -> "d e"
        let h = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        let mut out = Vec::new();
        propose(&h, 2, 3, 1, &mut out);
        assert_eq!(out, [4, 5]);
        // Longer k stops at the end of the history.
        propose(&h, 20, 3, 1, &mut out);
        assert_eq!(out, [4, 5, 9, 9, 1, 2, 3]);
    }

    #[test]
    fn prefers_longer_ngram_then_most_recent() {
        // Last token 3: the 2-gram (2, 3) occurs once (followed by 7); the 1-gram 3
        // occurs more recently (followed by 8). The longer match wins.
        let h = [2, 3, 7, 3, 8, 2, 3];
        let mut out = Vec::new();
        propose(&h, 1, 3, 1, &mut out);
        assert_eq!(out, [7]);
        // With only 1-grams, the most recent occurrence wins.
        propose(&h, 1, 1, 1, &mut out);
        assert_eq!(out, [8]);
    }

    #[test]
    fn empty_without_match_or_budget() {
        let mut out = vec![42];
        propose(&[1, 2, 3, 4], 4, 3, 1, &mut out);
        assert!(out.is_empty());
        propose(&[1, 1], 0, 3, 1, &mut out);
        assert!(out.is_empty());
        propose(&[], 4, 3, 1, &mut out);
        assert!(out.is_empty());
        propose(&[5], 4, 3, 1, &mut out);
        assert!(out.is_empty());
    }
}
