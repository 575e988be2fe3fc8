//! Unicode helpers shared by the pre-tokenizers and the byte-level (GPT-2) codec.
//!
//! Character classes follow llama.cpp's `unicode_cpt_flags`: one general-category
//! class per code point plus a separate White_Space bit. Positions outside the
//! current segment have no flags at all (`Flags::NONE`), which the splitters use as
//! their end-of-segment test.

use unicode_general_category::{get_general_category, GeneralCategory as G};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Flags(u16);

impl Flags {
    pub const NONE: Flags = Flags(0);
    const UNDEFINED: u16 = 0x0001;
    const NUMBER: u16 = 0x0002;
    const LETTER: u16 = 0x0004;
    const SEPARATOR: u16 = 0x0008;
    const MARK: u16 = 0x0010;
    const PUNCTUATION: u16 = 0x0020;
    const SYMBOL: u16 = 0x0040;
    const CONTROL: u16 = 0x0080;
    const WHITESPACE: u16 = 0x0100;

    pub fn of(c: char) -> Flags {
        let cat = match get_general_category(c) {
            G::UppercaseLetter
            | G::LowercaseLetter
            | G::TitlecaseLetter
            | G::ModifierLetter
            | G::OtherLetter => Self::LETTER,
            G::DecimalNumber | G::LetterNumber | G::OtherNumber => Self::NUMBER,
            G::SpaceSeparator | G::LineSeparator | G::ParagraphSeparator => Self::SEPARATOR,
            G::NonspacingMark | G::SpacingMark | G::EnclosingMark => Self::MARK,
            G::ConnectorPunctuation
            | G::DashPunctuation
            | G::OpenPunctuation
            | G::ClosePunctuation
            | G::InitialPunctuation
            | G::FinalPunctuation
            | G::OtherPunctuation => Self::PUNCTUATION,
            G::MathSymbol | G::CurrencySymbol | G::ModifierSymbol | G::OtherSymbol => Self::SYMBOL,
            G::Control | G::Format | G::Surrogate | G::PrivateUse => Self::CONTROL,
            _ => Self::UNDEFINED,
        };
        let ws = if c.is_whitespace() {
            Self::WHITESPACE
        } else {
            0
        };
        Flags(cat | ws)
    }
    /// True for any code point inside the segment (llama.cpp's `as_uint() != 0`).
    #[inline]
    pub fn present(self) -> bool {
        self.0 != 0
    }
    #[inline]
    pub fn letter(self) -> bool {
        self.0 & Self::LETTER != 0
    }
    #[inline]
    pub fn number(self) -> bool {
        self.0 & Self::NUMBER != 0
    }
    #[inline]
    pub fn whitespace(self) -> bool {
        self.0 & Self::WHITESPACE != 0
    }
    #[inline]
    pub fn punctuation(self) -> bool {
        self.0 & Self::PUNCTUATION != 0
    }
}

/// GPT-2's reversible byte → printable character table.
fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut assigned = [false; 256];
    for b in (0x21u32..=0x7E).chain(0xA1..=0xAC).chain(0xAE..=0xFF) {
        table[b as usize] = char::from_u32(b).unwrap_or('\0');
        assigned[b as usize] = true;
    }
    let mut n = 0u32;
    for b in 0..256usize {
        if !assigned[b] {
            table[b] = char::from_u32(256 + n).unwrap_or('\0');
            n += 1;
        }
    }
    table
}

pub(crate) struct ByteCodec {
    to_char: [char; 256],
    /// Indexed by code point (all mapped code points are below 324).
    to_byte: Vec<Option<u8>>,
}

impl ByteCodec {
    fn new() -> Self {
        let to_char = byte_to_char_table();
        let mut to_byte = vec![None; 324];
        for (b, &c) in to_char.iter().enumerate() {
            to_byte[c as usize] = Some(b as u8);
        }
        ByteCodec { to_char, to_byte }
    }
    pub fn get() -> &'static ByteCodec {
        static CODEC: std::sync::OnceLock<ByteCodec> = std::sync::OnceLock::new();
        CODEC.get_or_init(ByteCodec::new)
    }
    /// Maps every byte of `s` to its printable stand-in.
    pub fn encode_into(&self, s: &str, out: &mut String) {
        for &b in s.as_bytes() {
            out.push(self.to_char[b as usize]);
        }
    }
    pub fn byte_of(&self, c: char) -> Option<u8> {
        self.to_byte.get(c as usize).copied().flatten()
    }
    /// Reverses the mapping for a token's text. A character outside the table is
    /// written as llama.cpp does: `[UNK_BYTE_0x<hex of its UTF-8>` + text + `]`.
    pub fn decode_text(&self, text: &str, out: &mut Vec<u8>) {
        for c in text.chars() {
            match self.byte_of(c) {
                Some(b) => out.push(b),
                None => {
                    out.extend_from_slice(b"[UNK_BYTE_0x");
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).as_bytes() {
                        out.extend_from_slice(format!("{b:02x}").as_bytes());
                    }
                    out.extend_from_slice(text.as_bytes());
                    out.push(b']');
                }
            }
        }
    }
}

/// A fast, non-cryptographic hasher (FxHash) for the vocabulary maps.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl std::hash::Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

pub(crate) type FxBuild = std::hash::BuildHasherDefault<FxHasher>;
pub(crate) type FxHashMap<K, V> = std::collections::HashMap<K, V, FxBuild>;
