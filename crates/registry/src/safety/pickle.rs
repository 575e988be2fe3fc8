//! Recognises Python pickle streams of every protocol (0 to 5) by their content: a
//! stack-checked walk over the opcodes, streamed from any reader.
//!
//! Only decides "would `pickle.load` run code or rebuild a real object from this?";
//! it never builds objects, and it must not depend on a file's name or extension.
//!
//! Protocols 0 and 1 have no header: a protocol-0 pickle is printable text
//! (`cposix\nsystem\n(Vecho\ntR.`), so it passes every check a text companion gets.
//! The walk accepts exactly what CPython's unpickler accepts, opcode by opcode, and
//! calls the stream a pickle when it reaches an opcode that calls or builds an object
//! (`R`, `i`, `o`, `b`, NEWOBJ, NEWOBJ_EX), or a STOP after three or more opcodes.
//! Ordinary text fails the walk within a few bytes (an unknown opcode, a malformed
//! argument line or an empty stack); `N.` ("N.B." in a README) is a two-opcode
//! pickle of `None`, harmless, and is not refused.

use std::io::{self, BufRead};

/// What the walk concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not a pickle `pickle.load` would act on.
    NotPickle,
    /// A pickle stream; the deciding opcode (with its arguments) ends before `end`.
    Pickle { end: u64, opcode: u8 },
}

/// Reads at most this many bytes of an argument line into memory (the rest is checked
/// byte by byte and dropped), so a giant line costs no memory.
const LINE_KEEP: usize = 256;

/// Opcodes that call a Python callable or `__setstate__` when loaded.
const CALLS: &[u8] = b"Rio\x81\x92b";

/// Walks the pickle opcodes of `r` (which holds `len` bytes) until it can decide.
pub(crate) fn scan(r: &mut impl BufRead, len: u64) -> io::Result<Verdict> {
    let mut w = Walker {
        r,
        pos: 0,
        len,
        depth: 0,
        marks: Vec::new(),
    };
    let mut ops = 0u64;
    loop {
        let Some(op) = w.byte()? else {
            return Ok(Verdict::NotPickle);
        };
        ops += 1;
        let step = w.step(op)?;
        let end = w.pos;
        match step {
            Step::Invalid => return Ok(Verdict::NotPickle),
            Step::Stop if ops >= 3 => return Ok(Verdict::Pickle { end, opcode: op }),
            Step::Stop => return Ok(Verdict::NotPickle),
            Step::Ok if CALLS.contains(&op) => return Ok(Verdict::Pickle { end, opcode: op }),
            Step::Ok => {}
        }
    }
}

enum Step {
    Ok,
    Stop,
    Invalid,
}

/// What an argument line must look like (what CPython's unpickler would accept there).
#[derive(Clone, Copy, PartialEq)]
enum Line {
    /// `INT`, `LONG` (an optional trailing `L`), `GET`, `PUT`: Python's `int()`.
    Int { long: bool },
    /// `FLOAT`: Python's `float()`.
    Float,
    /// `STRING`: quoted with `'` or `"` at both ends.
    Quoted,
    /// `GLOBAL`/`INST` module and name: a dotted identifier.
    Name,
    /// `PERSID`: ASCII.
    Ascii,
    /// `UNICODE`: anything up to the newline.
    Any,
}

/// Python refuses integers of more than 4300 digits; a number line longer than this
/// cannot load.
const NUMBER_MAX: usize = 8192;

/// `int(s, 0)` / `float(s)` syntax, after Python strips surrounding whitespace.
fn number_ok(s: &[u8], float: bool) -> bool {
    let s = s.trim_ascii();
    let s = s.strip_prefix(b"-").or(s.strip_prefix(b"+")).unwrap_or(s);
    let digits = |s: &[u8], ok: fn(&u8) -> bool| {
        !s.is_empty()
            && s.iter().all(|b| ok(b) || *b == b'_')
            && !s.starts_with(b"_")
            && !s.ends_with(b"_")
    };
    if float {
        let lower = s.to_ascii_lowercase();
        if [&b"inf"[..], b"infinity", b"nan"].contains(&lower.as_slice()) {
            return true;
        }
        let (mant, exp) = match lower.iter().position(|&b| b == b'e') {
            Some(i) => (&lower[..i], Some(&lower[i + 1..])),
            None => (&lower[..], None),
        };
        let (int, frac) = match mant.iter().position(|&b| b == b'.') {
            Some(i) => (&mant[..i], &mant[i + 1..]),
            None => (mant, &b""[..]),
        };
        let part = |p: &[u8]| p.is_empty() || digits(p, u8::is_ascii_digit);
        let exp_ok = exp.is_none_or(|e| {
            let e = e.strip_prefix(b"-").or(e.strip_prefix(b"+")).unwrap_or(e);
            digits(e, u8::is_ascii_digit)
        });
        return part(int) && part(frac) && !(int.is_empty() && frac.is_empty()) && exp_ok;
    }
    let lower = s.to_ascii_lowercase();
    match lower.get(..2) {
        Some(b"0x") => digits(&lower[2..], u8::is_ascii_hexdigit),
        Some(b"0o") => digits(&lower[2..], |b| (b'0'..=b'7').contains(b)),
        Some(b"0b") => digits(&lower[2..], |b| *b == b'0' || *b == b'1'),
        _ => digits(&lower, u8::is_ascii_digit),
    }
}

struct Walker<'a, R> {
    r: &'a mut R,
    pos: u64,
    len: u64,
    /// Items on the stack (above the bottom).
    depth: u64,
    /// Stack depth at each open MARK.
    marks: Vec<u64>,
}

impl<R: BufRead> Walker<'_, R> {
    fn byte(&mut self) -> io::Result<Option<u8>> {
        let b = match self.r.fill_buf()?.first() {
            Some(&b) => b,
            None => return Ok(None),
        };
        self.r.consume(1);
        self.pos += 1;
        Ok(Some(b))
    }

    /// Reads an `n`-byte little-endian unsigned argument.
    fn uint(&mut self, n: usize) -> io::Result<Option<u64>> {
        let mut v = 0u64;
        for i in 0..n {
            match self.byte()? {
                Some(b) => v |= (b as u64) << (8 * i),
                None => return Ok(None),
            }
        }
        Ok(Some(v))
    }

    /// Skips `n` bytes of data; `false` when the stream is shorter.
    fn skip(&mut self, n: u64) -> io::Result<bool> {
        if n > self.len.saturating_sub(self.pos) {
            return Ok(false);
        }
        let mut left = n;
        while left > 0 {
            let avail = self.r.fill_buf()?.len() as u64;
            if avail == 0 {
                return Ok(false);
            }
            let k = avail.min(left);
            self.r.consume(k as usize);
            self.pos += k;
            left -= k;
        }
        Ok(true)
    }

    /// A `len`-prefixed data argument (`width` bytes of length; `signed` lengths must
    /// not be negative).
    fn data(&mut self, width: usize, signed: bool) -> io::Result<bool> {
        let Some(n) = self.uint(width)? else {
            return Ok(false);
        };
        if signed && width == 4 && n & 0x8000_0000 != 0 {
            return Ok(false);
        }
        self.skip(n)
    }

    /// Reads one newline-terminated argument line and checks it against `kind`.
    fn line(&mut self, kind: Line) -> io::Result<bool> {
        let keep = match kind {
            Line::Int { .. } | Line::Float => NUMBER_MAX,
            _ => LINE_KEEP,
        };
        let mut kept = Vec::new();
        let mut n = 0usize;
        let mut ascii = true;
        loop {
            let Some(b) = self.byte()? else {
                return Ok(false);
            };
            if b == b'\n' {
                break;
            }
            ascii &= b.is_ascii();
            if kept.len() < keep {
                kept.push(b);
            }
            n += 1;
        }
        let whole = n == kept.len();
        Ok(match kind {
            Line::Int { long } => {
                let body = if long {
                    kept.strip_suffix(b"L").unwrap_or(&kept)
                } else {
                    &kept
                };
                whole && number_ok(body, false)
            }
            Line::Float => whole && number_ok(&kept, true),
            Line::Quoted => {
                let (first, last) = (kept.first(), kept.last());
                n >= 2 && matches!(first, Some(b'\'' | b'"')) && first == last
            }
            Line::Name => {
                whole
                    && !kept.is_empty()
                    && !kept[0].is_ascii_digit()
                    && kept
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.".contains(b))
            }
            Line::Ascii => ascii,
            Line::Any => true,
        })
    }

    fn base(&self) -> u64 {
        self.marks.last().copied().unwrap_or(0)
    }

    /// Takes `k` items (they must be above the innermost MARK), then pushes `push`.
    fn pops(&mut self, k: u64, push: u64) -> Step {
        if self.depth - self.base() < k {
            return Step::Invalid;
        }
        self.depth = self.depth - k + push;
        Step::Ok
    }

    /// Closes the innermost MARK; the items above it become `push` items, and `below`
    /// items under the mark must exist (the container SETITEMS and friends fill).
    fn close_mark(&mut self, below: u64, push: u64) -> Step {
        let Some(m) = self.marks.pop() else {
            return Step::Invalid;
        };
        if m - self.base() < below {
            return Step::Invalid;
        }
        self.depth = m + push;
        Step::Ok
    }

    fn push_if(&mut self, ok: bool) -> Step {
        if ok {
            self.depth += 1;
            Step::Ok
        } else {
            Step::Invalid
        }
    }

    fn keep_if(ok: bool) -> Step {
        if ok {
            Step::Ok
        } else {
            Step::Invalid
        }
    }

    fn step(&mut self, op: u8) -> io::Result<Step> {
        Ok(match op {
            b'(' => {
                self.marks.push(self.depth);
                Step::Ok
            }
            b'.' => {
                if self.depth > self.base() {
                    Step::Stop
                } else {
                    Step::Invalid
                }
            }
            b'0' => {
                if self.depth > self.base() {
                    self.depth -= 1;
                    Step::Ok
                } else if let Some(m) = self.marks.pop() {
                    self.depth = m;
                    Step::Ok
                } else {
                    Step::Invalid
                }
            }
            b'1' => self.close_mark(0, 0),
            b'2' => self.pops(1, 2),
            b'F' => {
                let ok = self.line(Line::Float)?;
                self.push_if(ok)
            }
            b'I' => {
                let ok = self.line(Line::Int { long: false })?;
                self.push_if(ok)
            }
            b'L' => {
                let ok = self.line(Line::Int { long: true })?;
                self.push_if(ok)
            }
            b'S' => {
                let ok = self.line(Line::Quoted)?;
                self.push_if(ok)
            }
            b'V' => {
                let ok = self.line(Line::Any)?;
                self.push_if(ok)
            }
            b'P' => {
                let ok = self.line(Line::Ascii)?;
                self.push_if(ok)
            }
            b'g' => {
                let ok = self.line(Line::Int { long: false })?;
                self.push_if(ok)
            }
            b'p' => {
                let ok = self.line(Line::Int { long: false })? && self.depth > self.base();
                Self::keep_if(ok)
            }
            b'c' => {
                let ok = self.line(Line::Name)? && self.line(Line::Name)?;
                self.push_if(ok)
            }
            b'i' => {
                let ok = self.line(Line::Name)? && self.line(Line::Name)?;
                if ok {
                    self.close_mark(0, 1)
                } else {
                    Step::Invalid
                }
            }
            b'J' => {
                let ok = self.uint(4)?.is_some();
                self.push_if(ok)
            }
            b'K' => {
                let ok = self.uint(1)?.is_some();
                self.push_if(ok)
            }
            b'M' => {
                let ok = self.uint(2)?.is_some();
                self.push_if(ok)
            }
            b'G' => {
                let ok = self.uint(8)?.is_some();
                self.push_if(ok)
            }
            b'U' | b'C' | b'\x8a' | b'\x8c' => {
                let ok = self.data(1, false)?;
                self.push_if(ok)
            }
            b'T' | b'\x8b' => {
                let ok = self.data(4, true)?;
                self.push_if(ok)
            }
            b'X' | b'B' => {
                let ok = self.data(4, false)?;
                self.push_if(ok)
            }
            b'\x8d' | b'\x8e' | b'\x96' => {
                let ok = self.data(8, false)?;
                self.push_if(ok)
            }
            b'N' | b'}' | b']' | b')' | b'\x88' | b'\x89' | b'\x8f' | b'\x97' => self.push_if(true),
            b'h' => {
                let ok = self.uint(1)?.is_some();
                self.push_if(ok)
            }
            b'j' => {
                let ok = self.uint(4)?.is_some();
                self.push_if(ok)
            }
            b'q' => {
                let ok = self.uint(1)?.is_some() && self.depth > self.base();
                Self::keep_if(ok)
            }
            b'r' => {
                let ok = self.uint(4)?.is_some() && self.depth > self.base();
                Self::keep_if(ok)
            }
            b'\x94' | b'\x98' => Self::keep_if(self.depth > self.base()),
            b'\x82' => {
                let ok = self.uint(1)?.is_some();
                self.push_if(ok)
            }
            b'\x83' => {
                let ok = self.uint(2)?.is_some();
                self.push_if(ok)
            }
            b'\x84' => {
                let ok = self.uint(4)?.is_some();
                self.push_if(ok)
            }
            b'\x80' => Self::keep_if(self.uint(1)?.is_some_and(|v| v <= 5)),
            b'\x95' => Self::keep_if(self.uint(8)?.is_some()),
            b'Q' => self.pops(1, 1),
            b'R' | b'\x81' | b'\x93' => self.pops(2, 1),
            b'\x92' => self.pops(3, 1),
            b'a' | b'b' => self.pops(2, 1),
            b's' => self.pops(3, 1),
            b'\x85' => self.pops(1, 1),
            b'\x86' => self.pops(2, 1),
            b'\x87' => self.pops(3, 1),
            b't' | b'l' | b'd' | b'\x91' => self.close_mark(0, 1),
            b'e' | b'u' | b'\x90' => self.close_mark(1, 0),
            b'o' => {
                // OBJ: MARK, class, args... -> one object; the class must be there.
                match self.marks.last() {
                    Some(&m) if self.depth > m => self.close_mark(0, 1),
                    _ => Step::Invalid,
                }
            }
            _ => Step::Invalid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(b: &[u8]) -> Verdict {
        scan(&mut &b[..], b.len() as u64).unwrap()
    }

    fn is_pickle(b: &[u8]) -> bool {
        matches!(verdict(b), Verdict::Pickle { .. })
    }

    // Produced by CPython 3 `pickle.dumps(obj, protocol=p)`.
    const DICT_P0: &[u8] = b"(dp0\nVa\np1\nI1\ns.";
    const DICT_P1: &[u8] = b"}q\x00X\x01\x00\x00\x00aq\x01K\x01s.";
    const LIST_P0: &[u8] = b"(lp0\nF1.5\naVx\np1\naNaI01\na(I1\nI2\ntp2\na.";
    /// `os.system('echo pwned')` through `__reduce__`, protocols 0 to 5.
    const REDUCE: [&[u8]; 6] = [
        b"cposix\nsystem\np0\n(Vecho pwned\np1\ntp2\nRp3\n.",
        b"cposix\nsystem\nq\x00(X\n\x00\x00\x00echo pwnedq\x01tq\x02Rq\x03.",
        b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.",
        b"\x80\x03cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.",
        b"\x80\x04\x95%\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\necho pwned\x94\x85\x94R\x94.",
        b"\x80\x05\x95%\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\necho pwned\x94\x85\x94R\x94.",
    ];

    #[test]
    fn every_protocol_is_recognised() {
        for (p, b) in REDUCE.iter().enumerate() {
            let v = verdict(b);
            assert!(
                matches!(v, Verdict::Pickle { opcode: b'R', .. }),
                "protocol {p}: {v:?}"
            );
        }
        for b in [DICT_P0, DICT_P1, LIST_P0] {
            assert!(is_pickle(b), "{b:?}");
        }
    }

    #[test]
    fn a_call_is_recognised_even_when_garbage_follows() {
        // pickle.load runs REDUCE before it reaches the garbage.
        let mut b = REDUCE[0][..REDUCE[0].len() - 1].to_vec();
        b.extend_from_slice(b"\xff\xfe not pickle any more");
        assert!(is_pickle(&b));
    }

    #[test]
    fn text_and_binary_formats_are_not_pickles() {
        for b in [
            &b"{\"hidden_size\": 640}"[..],
            b"# Model card\n\nGemma 3 270M.",
            b"N.B. this README starts like a pickle of None.",
            b"cat\ndog\nfish\n",
            b"I1\nI2\n",
            b"hello world",
            b"",
            b"GGUF\x03\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00",
            b"\x0a\x05\x0a\x03<s>",
            b"{{ bos_token }}{% for m in messages %}",
            b"(((((((((",
            b"].",
            b"S'unterminated\n.",
            b"\x80\x09N.",
        ] {
            assert_eq!(
                verdict(b),
                Verdict::NotPickle,
                "{:?}",
                String::from_utf8_lossy(b)
            );
        }
    }

    #[test]
    fn truncated_and_oversized_arguments_are_not_pickles() {
        // A BINUNICODE claiming more bytes than the stream holds.
        assert!(!is_pickle(b"X\xff\xff\xff\x7fabc"));
        // BINSTRING with a negative length.
        assert!(!is_pickle(b"T\xff\xff\xff\xffN."));
        // Each prefix of a pickle either is one or is not: never an error or a panic.
        for b in REDUCE {
            for n in 0..b.len() {
                let _ = verdict(&b[..n]);
            }
        }
    }
}
