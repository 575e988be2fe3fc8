//! Token ids to text, whole sequences at once (llama.cpp's `llama_detokenize`), and
//! the entry to streaming decoding. Never fails; invalid UTF-8 becomes U+FFFD.

use crate::{IncrementalDecoder, Tokenizer};

impl Tokenizer {
    /// Text of `ids`, as llama.cpp's `llama_detokenize(remove_special = skip_special,
    /// unparse_special = !skip_special)`:
    ///
    /// * `skip_special`: drop a leading BOS / trailing EOS the model adds, and render
    ///   control tokens as nothing; otherwise control tokens render as their text.
    /// * The first piece loses one leading space when `add_space_prefix` is set
    ///   (unless a BOS was dropped first, as llama.cpp does).
    /// * Byte-level vocabularies with clean-up enabled (gpt-2, llama3, …) get
    ///   llama.cpp's space clean-up (`" ,"` → `","`, `" 's"` → `"'s"`, …).
    ///
    /// Invalid UTF-8 (a partial multi-byte sequence) becomes U+FFFD. Ids outside the
    /// vocabulary render as nothing.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let bytes = self.decode_bytes(ids, skip_special);
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }

    /// Like [`decode`](Self::decode), without the final UTF-8 conversion.
    pub fn decode_bytes(&self, ids: &[u32], skip_special: bool) -> Vec<u8> {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if skip_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.ids.bos) {
                if first == bos {
                    remove_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if skip_special && self.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), self.ids.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let mut p = self.piece(id, !skip_special);
            if remove_space && p.first() == Some(&b' ') {
                p = &p[1..];
            }
            remove_space = false;
            out.extend_from_slice(p);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut out);
        }
        out
    }

    /// A streaming decoder: feed ids one at a time, get only complete characters.
    pub fn incremental_decoder(&self, skip_special: bool) -> IncrementalDecoder<'_> {
        IncrementalDecoder::new(self, skip_special)
    }

    pub(crate) fn stream_piece(&self, id: u32, skip_special: bool) -> &[u8] {
        self.piece(id, !skip_special)
    }
}

/// llama.cpp's detokenizer clean-up for byte-level BPE vocabularies.
fn clean_up_spaces(t: &mut Vec<u8>) {
    // Pass 1: " ?", " !", " .", " ," lose the space.
    let n = t.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    // Pass 2: " ' " loses both spaces.
    let n = total;
    total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    // Pass 3: " 's", " 'm", " 're", " 've" lose the space.
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if x1 == b't' || x1 == b'd' {
                // kept
            } else if x1 == b's' || x1 == b'm' {
                total -= 1;
            } else if i + 2 < n {
                let x2 = t[i + 2];
                if matches!((x1, x2), (b'r', b'e') | (b'v', b'e')) {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up() {
        let mut v = b"Hello , world ! it 's a ' b ' c".to_vec();
        clean_up_spaces(&mut v);
        assert_eq!(String::from_utf8(v).unwrap(), "Hello, world! it's a'b'c");
        let mut v = Vec::new();
        clean_up_spaces(&mut v);
        assert!(v.is_empty());
    }
}
