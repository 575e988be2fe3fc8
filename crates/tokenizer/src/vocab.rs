//! Token texts, scores and attributes, with a text → id index.
//!
//! All texts live in one buffer; the index is an open-addressing table of ids, so
//! building it for a 262k-token vocabulary allocates nothing per token.

use crate::unicode::FxHasher;
use std::hash::Hasher;

/// Token attribute bits, as llama.cpp's `llama_token_attr`.
pub(crate) mod attr {
    pub const UNDEFINED: u16 = 0;
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
    pub const LSTRIP: u16 = 1 << 7;
    pub const RSTRIP: u16 = 1 << 8;
}

pub(crate) struct Vocab {
    data: String,
    offsets: Vec<u32>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u16>,
    /// `id + 1` per slot, 0 = empty; capacity is a power of two.
    slots: Vec<u32>,
    mask: usize,
    byte_tokens: [Option<u32>; 256],
}

fn hash_str(s: &str) -> u64 {
    let mut h = FxHasher::default();
    h.write(s.as_bytes());
    // Mix the high bits down; the table indexes with the low ones.
    let x = h.finish();
    x ^ (x >> 29) ^ (x >> 47)
}

impl Vocab {
    /// Fails with the two ids of the first duplicated text.
    pub fn new(texts: &[String], scores: Vec<f32>, attrs: Vec<u16>) -> Result<Vocab, (u32, u32)> {
        let total: usize = texts.iter().map(|t| t.len()).sum();
        let mut data = String::with_capacity(total);
        let mut offsets = Vec::with_capacity(texts.len() + 1);
        offsets.push(0u32);
        for t in texts {
            data.push_str(t);
            offsets.push(data.len() as u32);
        }
        let cap = (texts.len() * 2).next_power_of_two().max(16);
        let mut v = Vocab {
            data,
            offsets,
            scores,
            attrs,
            slots: vec![0; cap],
            mask: cap - 1,
            byte_tokens: [None; 256],
        };
        for id in 0..texts.len() as u32 {
            let mut i = hash_str(v.text(id)) as usize & v.mask;
            loop {
                let slot = v.slots[i];
                if slot == 0 {
                    v.slots[i] = id + 1;
                    break;
                }
                if v.text(slot - 1) == v.text(id) {
                    return Err((slot - 1, id));
                }
                i = (i + 1) & v.mask;
            }
        }
        for b in 0..=255u8 {
            let hex = format!("<0x{b:02X}>");
            let mut buf = [0u8; 4];
            v.byte_tokens[b as usize] = v.lookup(&hex).or_else(|| {
                if b.is_ascii() {
                    v.lookup((b as char).encode_utf8(&mut buf))
                } else {
                    None
                }
            });
        }
        Ok(v)
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    #[inline]
    pub fn text(&self, id: u32) -> &str {
        let a = self.offsets[id as usize] as usize;
        let b = self.offsets[id as usize + 1] as usize;
        &self.data[a..b]
    }

    #[inline]
    pub fn lookup(&self, s: &str) -> Option<u32> {
        let mut i = hash_str(s) as usize & self.mask;
        loop {
            let slot = self.slots[i];
            if slot == 0 {
                return None;
            }
            if self.text(slot - 1) == s {
                return Some(slot - 1);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// SentencePiece byte fallback: `<0xXX>`, else the byte itself as a token.
    #[inline]
    pub fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[b as usize]
    }
}
