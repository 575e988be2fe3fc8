//! SentencePiece's `tokenizer.model` (a `ModelProto` protobuf): the vocabulary file of
//! Llama-2-style and Gemma checkpoints, which GGUF's `tokenizer.ggml.model = "llama"`
//! keys are converted from (llama.cpp's converter reads it the same way).
//!
//! Owns the few fields that matter — pieces with scores and types, the model type, the
//! special ids, byte fallback and the dummy-prefix/whitespace switches — read from and
//! written to the protobuf wire format by hand (no protobuf dependency). Input is
//! treated as hostile: every length is checked, errors are returned.
//!
//! ```text
//! message ModelProto     { repeated SentencePiece pieces = 1; TrainerSpec trainer_spec = 2;
//!                          NormalizerSpec normalizer_spec = 3; }
//! message SentencePiece  { string piece = 1; float score = 2; Type type = 3; }
//! message TrainerSpec    { ModelType model_type = 3; int32 vocab_size = 4;
//!                          bool byte_fallback = 35; int32 unk_id = 40; bos_id = 41;
//!                          eos_id = 42; pad_id = 43; }
//! message NormalizerSpec { string name = 1; bool add_dummy_prefix = 3;
//!                          bool remove_extra_whitespaces = 4; bool escape_whitespaces = 5; }
//! ```

/// Piece types, numbered as SentencePiece and GGUF's `tokenizer.ggml.token_type` both do.
pub mod piece_type {
    pub const NORMAL: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const CONTROL: i32 = 3;
    pub const USER_DEFINED: i32 = 4;
    pub const UNUSED: i32 = 5;
    pub const BYTE: i32 = 6;
}

/// `TrainerSpec.ModelType`.
pub const MODEL_UNIGRAM: i32 = 1;
pub const MODEL_BPE: i32 = 2;

/// The fields of a `tokenizer.model` that a GGUF vocabulary needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmModel {
    /// (piece, score, type) in id order.
    pub pieces: Vec<(String, f32, i32)>,
    pub model_type: i32,
    pub byte_fallback: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    /// -1: none.
    pub pad_id: i32,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for SpmModel {
    /// proto2 defaults of the fields.
    fn default() -> Self {
        SpmModel {
            pieces: Vec::new(),
            model_type: MODEL_UNIGRAM,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

// ---- writing ----

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, ((field as u64) << 3) | wire as u64);
}

/// int32 and enums: negative values take ten bytes (two's complement of 64 bits).
fn put_int(out: &mut Vec<u8>, field: u32, v: i64) {
    put_key(out, field, 0);
    put_varint(out, v as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_f32(out: &mut Vec<u8>, field: u32, v: f32) {
    put_key(out, field, 5);
    out.extend_from_slice(&v.to_le_bytes());
}

impl SpmModel {
    /// The serialized `ModelProto`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pieces.len() * 24 + 64);
        let mut p = Vec::new();
        for (piece, score, ty) in &self.pieces {
            p.clear();
            put_bytes(&mut p, 1, piece.as_bytes());
            put_f32(&mut p, 2, *score);
            if *ty != piece_type::NORMAL {
                put_int(&mut p, 3, *ty as i64);
            }
            put_bytes(&mut out, 1, &p);
        }
        let mut t = Vec::new();
        put_int(&mut t, 3, self.model_type as i64);
        put_int(&mut t, 4, self.pieces.len() as i64);
        put_int(&mut t, 35, self.byte_fallback as i64);
        put_int(&mut t, 40, self.unk_id as i64);
        put_int(&mut t, 41, self.bos_id as i64);
        put_int(&mut t, 42, self.eos_id as i64);
        put_int(&mut t, 43, self.pad_id as i64);
        put_bytes(&mut out, 2, &t);
        let mut n = Vec::new();
        put_bytes(&mut n, 1, b"identity");
        put_int(&mut n, 3, self.add_dummy_prefix as i64);
        put_int(&mut n, 4, self.remove_extra_whitespaces as i64);
        put_int(&mut n, 5, self.escape_whitespaces as i64);
        put_bytes(&mut out, 3, &n);
        out
    }

    /// Parses a serialized `ModelProto`; unknown fields are skipped.
    pub fn decode(bytes: &[u8]) -> Result<SpmModel, String> {
        let mut m = SpmModel::default();
        let mut r = Reader { b: bytes, pos: 0 };
        while !r.done() {
            match r.field()? {
                (1, Value::Bytes(b)) => m.pieces.push(decode_piece(b)?),
                (2, Value::Bytes(b)) => {
                    let mut t = Reader { b, pos: 0 };
                    while !t.done() {
                        match t.field()? {
                            (3, Value::Int(v)) => m.model_type = v as i32,
                            (35, Value::Int(v)) => m.byte_fallback = v != 0,
                            (40, Value::Int(v)) => m.unk_id = v as i32,
                            (41, Value::Int(v)) => m.bos_id = v as i32,
                            (42, Value::Int(v)) => m.eos_id = v as i32,
                            (43, Value::Int(v)) => m.pad_id = v as i32,
                            _ => {}
                        }
                    }
                }
                (3, Value::Bytes(b)) => {
                    let mut n = Reader { b, pos: 0 };
                    while !n.done() {
                        match n.field()? {
                            (3, Value::Int(v)) => m.add_dummy_prefix = v != 0,
                            (4, Value::Int(v)) => m.remove_extra_whitespaces = v != 0,
                            (5, Value::Int(v)) => m.escape_whitespaces = v != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if m.pieces.is_empty() {
            return Err("no pieces: not a SentencePiece model".into());
        }
        Ok(m)
    }
}

fn decode_piece(b: &[u8]) -> Result<(String, f32, i32), String> {
    let mut r = Reader { b, pos: 0 };
    let (mut piece, mut score, mut ty) = (String::new(), 0f32, piece_type::NORMAL);
    while !r.done() {
        match r.field()? {
            (1, Value::Bytes(s)) => {
                piece = String::from_utf8(s.to_vec())
                    .map_err(|_| "a piece is not valid UTF-8".to_string())?
            }
            (2, Value::Fixed32(v)) => score = f32::from_bits(v),
            (3, Value::Int(v)) => ty = v as i32,
            _ => {}
        }
    }
    Ok((piece, score, ty))
}

// ---- reading ----

enum Value<'a> {
    Int(i64),
    Fixed32(u32),
    Bytes(&'a [u8]),
    Other,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let byte = *self
                .b
                .get(self.pos)
                .ok_or("truncated varint in tokenizer.model")?;
            self.pos += 1;
            if shift == 63 && byte > 1 {
                return Err("varint too long in tokenizer.model".into());
            }
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint too long in tokenizer.model".into())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("a field runs past the end of tokenizer.model")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn field(&mut self) -> Result<(u32, Value<'a>), String> {
        let key = self.varint()?;
        let field = u32::try_from(key >> 3).map_err(|_| "bad field number".to_string())?;
        let v = match key & 7 {
            0 => Value::Int(self.varint()? as i64),
            1 => {
                self.take(8)?;
                Value::Other
            }
            2 => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| "bad length in tokenizer.model".to_string())?;
                Value::Bytes(self.take(n)?)
            }
            5 => {
                let s = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
            }
            w => return Err(format!("unsupported wire type {w} in tokenizer.model")),
        };
        Ok((field, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_keeps_negative_ids() {
        let m = SpmModel {
            pieces: vec![
                ("<pad>".into(), -1000.0, piece_type::CONTROL),
                ("<0x41>".into(), 0.0, piece_type::BYTE),
                ("▁the".into(), -3.25, piece_type::NORMAL),
                ("[x]".into(), 0.0, piece_type::USER_DEFINED),
            ],
            model_type: MODEL_BPE,
            byte_fallback: true,
            unk_id: 3,
            bos_id: 2,
            eos_id: 1,
            pad_id: -1,
            add_dummy_prefix: false,
            remove_extra_whitespaces: false,
            escape_whitespaces: true,
        };
        assert_eq!(SpmModel::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let good = SpmModel {
            pieces: vec![("a".into(), 1.0, 1)],
            ..Default::default()
        }
        .encode();
        for cut in 0..good.len() {
            let _ = SpmModel::decode(&good[..cut]);
        }
        assert!(SpmModel::decode(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(SpmModel::decode(&[0xff; 12]).is_err());
        assert!(SpmModel::decode(&[]).is_err());
        // Group wire types are refused.
        assert!(SpmModel::decode(&[0x0b]).is_err());
    }
}
