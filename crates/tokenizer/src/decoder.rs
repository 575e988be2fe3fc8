//! Streaming detokenization: ids in one at a time, only whole UTF-8 characters out.
//! Holds the bytes of an unfinished character; never decides what a token means.

use crate::Tokenizer;

/// Turns a stream of token ids into text without ever splitting a UTF-8 character.
///
/// Each [`push`](Self::push) returns the newly completed text; bytes of a character
/// that is not complete yet are held back until the next token (or
/// [`flush`](Self::flush)). Bytes that can never form a valid character become
/// U+FFFD, exactly as in [`Tokenizer::decode`].
///
/// Concatenating every `push` and the final `flush` gives the same text as
/// `decode(ids, skip_special)`, except for two things `decode` can only do knowing
/// the whole sequence: dropping a trailing EOS that the model adds
/// (`add_eos_token`; EOS is normally a control token and renders as nothing
/// anyway), and the byte-level BPE space clean-up (`" ,"` → `","`), which
/// llama.cpp's streaming output does not apply either.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder<'a> {
    tok: &'a Tokenizer,
    skip_special: bool,
    first: bool,
    remove_space: bool,
    pending: Vec<u8>,
}

impl<'a> IncrementalDecoder<'a> {
    pub(crate) fn new(tok: &'a Tokenizer, skip_special: bool) -> Self {
        IncrementalDecoder {
            tok,
            skip_special,
            first: true,
            remove_space: tok.add_space_prefix(),
            pending: Vec::new(),
        }
    }

    /// Adds one token; returns the text completed by it (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        if self.first {
            self.first = false;
            if self.skip_special && self.tok.add_bos() && Some(id) == self.tok.bos_id() {
                self.remove_space = false;
                return String::new();
            }
        }
        let mut piece = self.tok.stream_piece(id, self.skip_special);
        if self.remove_space && piece.first() == Some(&b' ') {
            piece = &piece[1..];
        }
        self.remove_space = false;
        self.pending.extend_from_slice(piece);
        self.drain(false)
    }

    /// Adds several tokens; returns the text they complete.
    pub fn push_all(&mut self, ids: &[u32]) -> String {
        let mut s = String::new();
        for &id in ids {
            s += &self.push(id);
        }
        s
    }

    /// Ends the stream: whatever is held back is returned (an incomplete character
    /// as U+FFFD). The decoder can then start a new stream.
    pub fn flush(&mut self) -> String {
        let s = self.drain(true);
        self.first = true;
        self.remove_space = self.tok.add_space_prefix();
        s
    }

    /// Bytes held back because they do not yet form a complete character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix was just validated.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""),
                    );
                    match e.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            start += valid + bad;
                        }
                        None => {
                            start += valid;
                            if at_end {
                                out.push('\u{FFFD}');
                                start = self.pending.len();
                            }
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
