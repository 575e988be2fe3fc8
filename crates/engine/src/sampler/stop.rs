//! Stop strings over a stream of generated text: what may be shown and when the
//! stream ends. Works on text only; knows nothing about tokens or the model.

/// Streams generated text while watching for stop strings.
///
/// Feed text with [`push`](Self::push); it returns the text that is safe to show and
/// whether a stop string matched. On a match the output ends right before the stop
/// string (which is never shown), and everything after is dropped. Text that could
/// be the beginning of a stop string is held back until it either completes one or
/// cannot any more. At the end of the stream, [`flush`](Self::flush) returns what was
/// held back.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    matched: Option<usize>,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            matched: None,
        }
    }

    /// Adds generated text; returns `(text to emit, a stop string matched)`.
    /// After a match, further text is ignored.
    pub fn push(&mut self, text: &str) -> (String, bool) {
        if self.matched.is_some() {
            return (String::new(), true);
        }
        if self.stops.is_empty() {
            return (text.to_string(), false);
        }
        self.held.push_str(text);
        // The earliest stop string in the buffer wins (ties: the one listed first).
        let mut hit: Option<(usize, usize)> = None;
        for (i, s) in self.stops.iter().enumerate() {
            if let Some(pos) = self.held.find(s.as_str()) {
                if hit.is_none_or(|(p, _)| pos < p) {
                    hit = Some((pos, i));
                }
            }
        }
        if let Some((pos, i)) = hit {
            let out = self.held[..pos].to_string();
            self.held.clear();
            self.matched = Some(i);
            return (out, true);
        }
        // Hold back the longest suffix that begins some stop string.
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// Length in bytes of the longest suffix of `held` that is a proper prefix of a
    /// stop string (always at a character boundary).
    fn partial_suffix_len(&self) -> usize {
        let h = self.held.as_str();
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let from = h.len().saturating_sub(longest.saturating_sub(1));
        for (start, _) in h.char_indices() {
            if start < from {
                continue;
            }
            let suffix = &h[start..];
            if self
                .stops
                .iter()
                .any(|s| s.len() > suffix.len() && s.starts_with(suffix))
            {
                return h.len() - start;
            }
        }
        0
    }

    /// Ends the stream: returns the held-back text (nothing after a match).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Pushes the last piece of text and flushes.
    pub fn finish(&mut self, text: &str) -> String {
        let (mut out, hit) = self.push(text);
        if !hit {
            out.push_str(&self.flush());
        }
        out
    }

    /// Whether a stop string matched.
    pub fn matched(&self) -> bool {
        self.matched.is_some()
    }

    /// The stop string that matched, if any.
    pub fn matched_stop(&self) -> Option<&str> {
        self.matched.map(|i| self.stops[i].as_str())
    }

    /// Text held back so far (a possible start of a stop string).
    pub fn pending(&self) -> &str {
        &self.held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = m.push(p);
            out += &t;
            // Never emits any part of a stop string.
            for s in stops {
                assert!(!out.contains(s));
            }
            if hit {
                return (out, true);
            }
        }
        out += &m.flush();
        (out, false)
    }

    #[test]
    fn stop_strings_split_across_pieces() {
        assert_eq!(
            stream(&["END"], &["Hello E", "N", "D world"]),
            ("Hello ".into(), true)
        );
        assert_eq!(
            stream(&["END"], &["Hello EN", "tire"]),
            ("Hello ENtire".into(), false)
        );
        assert_eq!(stream(&["END"], &["Hello E"]), ("Hello E".into(), false));
        assert_eq!(
            stream(&["\n\n", "###"], &["a\n", "b##", "#c"]),
            ("a\nb".into(), true)
        );
        // The earliest match wins.
        assert_eq!(stream(&["bc", "ab"], &["xabc"]), ("x".into(), true));
        // Multi-byte characters are never split.
        assert_eq!(stream(&["ü!"], &["grü", "ße"]), ("grüße".into(), false));
        assert_eq!(
            stream(&["🚀🔥"], &["go 🚀", "🔥 now"]),
            ("go ".into(), true)
        );
        // No stop strings: everything passes through at once.
        let mut m = StopMatcher::new(vec![String::new()]);
        assert_eq!(m.push("abc"), ("abc".to_string(), false));
    }

    #[test]
    fn stop_matcher_holds_and_flushes() {
        let mut m = StopMatcher::new(vec!["</s>".into()]);
        assert_eq!(m.push("text </"), ("text ".to_string(), false));
        assert_eq!(m.pending(), "</");
        assert_eq!(m.finish("x"), "</x");
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("aSTOPb"), ("a".to_string(), true));
        assert!(m.matched());
        assert_eq!(m.matched_stop(), Some("STOP"));
        assert_eq!(m.push("more"), (String::new(), true));
        assert_eq!(m.flush(), "");
        // Overlapping candidates: "aab" against "aab" after "a".
        let mut m = StopMatcher::new(vec!["aab".into()]);
        assert_eq!(m.push("a"), (String::new(), false));
        assert_eq!(m.push("a"), (String::new(), false));
        assert_eq!(m.push("a"), ("a".to_string(), false));
        assert_eq!(m.push("b"), (String::new(), true));
    }
}
