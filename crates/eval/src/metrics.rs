//! Metrics, as lm-evaluation-harness and the ROUGE paper define them: accuracy by
//! log-likelihood (raw and normalised by the choice's length in characters), exact
//! match, ROUGE-1/2/L F1, perplexities and bits per byte, and bootstrap intervals.
//!
//! Pure functions over numbers and strings; nothing here runs a model.

use std::collections::HashMap;

/// The index of the largest value (the first one on ties); `None` when empty.
pub fn argmax(values: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in values.iter().enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// The choice picked by raw log-likelihood (`acc`) and by log-likelihood per
/// character of the choice (`acc_norm`).
pub fn mc_predictions(logliks: &[f64], choices: &[String]) -> (Option<usize>, Option<usize>) {
    let norm: Vec<f64> = logliks
        .iter()
        .zip(choices)
        .map(|(&ll, c)| ll / c.chars().count().max(1) as f64)
        .collect();
    (argmax(logliks), argmax(&norm))
}

/// Exact match after trimming surrounding whitespace: 1.0 if the prediction equals
/// any reference.
pub fn exact_match(prediction: &str, references: &[String]) -> f64 {
    let p = prediction.trim();
    f64::from(u8::from(references.iter().any(|r| r.trim() == p)))
}

/// ROUGE's tokens: lower case, runs of ASCII letters and digits (everything else
/// separates), as the reference `rouge-score` package does without stemming.
pub fn rouge_tokens(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// Precision, recall and F1.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

fn prf(overlap: usize, predicted: usize, reference: usize) -> Prf {
    let p = if predicted == 0 {
        0.0
    } else {
        overlap as f64 / predicted as f64
    };
    let r = if reference == 0 {
        0.0
    } else {
        overlap as f64 / reference as f64
    };
    let f1 = if p + r == 0.0 {
        0.0
    } else {
        2.0 * p * r / (p + r)
    };
    Prf {
        precision: p,
        recall: r,
        f1,
    }
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if n == 0 || tokens.len() < n {
        return m;
    }
    for w in tokens.windows(n) {
        *m.entry(w).or_insert(0) += 1;
    }
    m
}

/// ROUGE-N of one prediction against one reference (clipped n-gram counts).
pub fn rouge_n(prediction: &str, reference: &str, n: usize) -> Prf {
    let (p, r) = (rouge_tokens(prediction), rouge_tokens(reference));
    let (pg, rg) = (ngrams(&p, n), ngrams(&r, n));
    let overlap: usize = pg
        .iter()
        .map(|(g, &c)| c.min(rg.get(g).copied().unwrap_or(0)))
        .sum();
    prf(overlap, pg.values().sum(), rg.values().sum())
}

/// ROUGE-L (longest common subsequence of tokens) of one prediction against one reference.
pub fn rouge_l(prediction: &str, reference: &str) -> Prf {
    let (p, r) = (rouge_tokens(prediction), rouge_tokens(reference));
    let mut prev = vec![0usize; r.len() + 1];
    let mut cur = vec![0usize; r.len() + 1];
    for a in &p {
        for (j, b) in r.iter().enumerate() {
            cur[j + 1] = if a == b {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prf(prev[r.len()], p.len(), r.len())
}

/// ROUGE-1, -2 and -L F1 of a prediction: the best over its references.
pub fn rouge_f1(prediction: &str, references: &[String]) -> (f64, f64, f64) {
    let best = |f: &dyn Fn(&str) -> f64| references.iter().map(|r| f(r)).fold(0.0, f64::max);
    (
        best(&|r| rouge_n(prediction, r, 1).f1),
        best(&|r| rouge_n(prediction, r, 2).f1),
        best(&|r| rouge_l(prediction, r).f1),
    )
}

/// Words as lm-evaluation-harness counts them for word perplexity: pieces between
/// runs of whitespace.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Corpus-level perplexities from the summed log-likelihood (nats) of documents with
/// `words` words and `bytes` UTF-8 bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Perplexities {
    pub word_perplexity: f64,
    pub byte_perplexity: f64,
    pub bits_per_byte: f64,
}

pub fn perplexities(loglik: f64, words: usize, bytes: usize) -> Perplexities {
    let (w, b) = (words.max(1) as f64, bytes.max(1) as f64);
    Perplexities {
        word_perplexity: (-loglik / w).exp(),
        byte_perplexity: (-loglik / b).exp(),
        bits_per_byte: -loglik / (b * std::f64::consts::LN_2),
    }
}

/// The mean of `values` (0 when empty).
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// A small deterministic generator (SplitMix64) so intervals are reproducible.
pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// The 95% percentile-bootstrap interval of the mean of `values` (`resamples`
/// resamples with replacement, fixed seed). `(mean, mean)` for fewer than two values.
pub fn bootstrap_ci(values: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    let m = mean(values);
    if values.len() < 2 || resamples == 0 {
        return (m, m);
    }
    let mut rng = SplitMix::new(seed);
    let n = values.len();
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| values[rng.below(n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    (at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rouge_on_hand_checked_pairs() {
        // 5 of 6 unigrams shared; bigrams "the cat", "on the", "the mat" of 5; LCS 5.
        let (p, r) = ("The cat lay on the mat.", "the cat sat on the mat");
        assert!(close(rouge_n(p, r, 1).f1, 5.0 / 6.0));
        assert!(close(rouge_n(p, r, 2).f1, 3.0 / 5.0));
        assert!(close(rouge_l(p, r).f1, 5.0 / 6.0));
        // Same words, other order: ROUGE-1 is 1, bigrams 2 of 3, LCS 2 of 4.
        let (p, r) = ("the gunman police killed", "police killed the gunman");
        assert!(close(rouge_n(p, r, 1).f1, 1.0));
        assert!(close(rouge_n(p, r, 2).f1, 2.0 / 3.0));
        assert!(close(rouge_l(p, r).f1, 0.5));
        // A short prediction: precision 1, recall 1/2 -> F1 2/3; bigrams 1 of 3 -> 1/2.
        let (p, r) = ("a b", "a b c d");
        let r1 = rouge_n(p, r, 1);
        assert!(close(r1.precision, 1.0) && close(r1.recall, 0.5) && close(r1.f1, 2.0 / 3.0));
        assert!(close(rouge_n(p, r, 2).f1, 0.5));
        assert!(close(rouge_l(p, r).f1, 2.0 / 3.0));
        // Clipped counts: "the the the" vs "the cat": overlap 1, P 1/3, R 1/2 -> F1 0.4.
        assert!(close(rouge_n("the the the", "the cat", 1).f1, 0.4));
        // Nothing in common, or nothing at all.
        assert_eq!(rouge_n("x", "y", 1).f1, 0.0);
        assert_eq!(rouge_l("", "y").f1, 0.0);
        // The best reference counts.
        let refs = vec!["zzz".to_string(), "the cat sat on the mat".to_string()];
        assert!(close(rouge_f1("the cat sat on the mat", &refs).2, 1.0));
    }

    #[test]
    fn exact_match_trims_but_keeps_case() {
        let refs = vec!["Paris".to_string(), "paris, France".to_string()];
        assert_eq!(exact_match("  Paris\n", &refs), 1.0);
        assert_eq!(exact_match("paris", &refs), 0.0);
        assert_eq!(exact_match("paris, France", &refs), 1.0);
    }

    #[test]
    fn acc_norm_divides_by_characters() {
        let choices = vec![" a".to_string(), " bbbb".to_string()];
        // Raw: -1.0 > -1.5 picks 0; per character: -0.5 < -0.3 picks 1.
        assert_eq!(mc_predictions(&[-1.0, -1.5], &choices), (Some(0), Some(1)));
        assert_eq!(argmax(&[1.0, 1.0]), Some(0));
        assert_eq!(argmax(&[]), None);
    }

    #[test]
    fn bits_per_byte_and_perplexities_by_hand() {
        // 8 bytes at one bit each: ln-likelihood -8 ln 2.
        let p = perplexities(-8.0 * std::f64::consts::LN_2, 2, 8);
        assert!(close(p.bits_per_byte, 1.0));
        assert!(close(p.byte_perplexity, 2.0));
        // 2 words share 8 bits: 2^4 = 16 per word.
        assert!(close(p.word_perplexity, 16.0));
        assert_eq!(word_count("  two\twords \n"), 2);
    }

    #[test]
    fn bootstrap_interval_brackets_the_mean_and_is_reproducible() {
        let v: Vec<f64> = (0..40).map(|i| f64::from(u8::from(i % 4 != 0))).collect();
        let (lo, hi) = bootstrap_ci(&v, 2000, 7);
        assert!(lo < 0.75 && 0.75 < hi, "{lo} {hi}");
        assert!(lo > 0.5 && hi < 0.95, "{lo} {hi}");
        assert_eq!(bootstrap_ci(&v, 2000, 7), (lo, hi));
        assert_eq!(bootstrap_ci(&[0.3], 100, 1), (0.3, 0.3));
    }
}
