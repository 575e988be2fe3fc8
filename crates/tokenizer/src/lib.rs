//! hangar-tokenizer: text ⇄ token ids for GGUF models, matching llama.cpp exactly.
//!
//! Two vocabulary kinds are supported, chosen by `tokenizer.ggml.model`:
//!
//! * `"llama"`: SentencePiece BPE with scores and `<0xXX>` byte fallback (Llama 2,
//!   Gemma 3, …). Spaces become `▁` (U+2581); adjacent symbols merge best score first.
//! * `"gpt2"`: byte-level BPE with ranked merges (Llama 3, Qwen2, GPT-2, …), after a
//!   regex pre-tokenizer chosen by `tokenizer.ggml.pre` (see [`SUPPORTED_PRE`]).
//!
//! Before either algorithm runs, control/unknown tokens (only when `parse_special`)
//! and user-defined tokens (always) are matched as whole tokens in the raw text,
//! longest first, as llama.cpp's special-token partitioning does.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let gguf = hangar_formats::GgufFile::open("model.gguf")?;
//! let tok = hangar_tokenizer::Tokenizer::from_gguf(&gguf)?;
//! let ids = tok.encode("<start_of_turn>user\nHi", true, true);
//! let text = tok.decode(&ids, true);
//! let mut stream = tok.incremental_decoder(true);
//! let mut out = String::new();
//! for &id in &ids {
//!     out += &stream.push(id); // only complete UTF-8 characters
//! }
//! out += &stream.flush();
//! # let _ = text; Ok(()) }
//! ```
//!
//! Construction reads everything once into flat tables (one text buffer, an
//! open-addressing text → id index, a decoded-piece buffer); a 262k-token
//! vocabulary builds in a few tens of milliseconds. A [`Tokenizer`] is immutable and
//! `Send + Sync`: share it behind an `Arc`.
//!
//! BERT-family encoders use [`WordPieceTokenizer`] instead, read from a Hugging Face
//! `tokenizer.json` and matching the `tokenizers` library's ids.
//!
//! Where things live: [`TokenizerSpec`] (`spec`) is a vocabulary as plain data; `load`
//! turns it into a [`Tokenizer`] with llama.cpp's defaults and fix-ups; `encode` and
//! `decode` are the two directions; `special`, `spm`, `bpe` and `pretok` are the
//! algorithms behind `encode`; [`IncrementalDecoder`] streams `decode`.

mod bpe;
mod decode;
mod decoder;
mod encode;
mod error;
mod load;
mod named_tokens;
mod pretok;
mod spec;
mod special;
mod spm;
mod unicode;
mod vocab;
mod wordpiece;

pub use decoder::IncrementalDecoder;
pub use error::TokenizerError;
pub use load::SUPPORTED_PRE;
pub use spec::{ModelKind, SpecialIds, TokenType, TokenizerSpec};
pub use wordpiece::WordPieceTokenizer;

use bpe::Merges;
use pretok::Stage;
use special::SpecialIndex;
use vocab::attr;
pub(crate) use vocab::Vocab;

/// A tokenizer built from GGUF metadata (or a [`TokenizerSpec`]).
pub struct Tokenizer {
    kind: ModelKind,
    pre: Option<String>,
    vocab: Vocab,
    merges: Merges,
    stages: Vec<Stage>,
    ignore_merges: bool,
    clean_spaces: bool,
    add_space_prefix: bool,
    add_bos: bool,
    add_eos: bool,
    ids: SpecialIds,
    /// Sorted.
    eog: Vec<u32>,
    special: SpecialIndex,
    /// Decoded bytes of every token (as rendered with special tokens shown).
    pieces: Vec<u8>,
    piece_offsets: Vec<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("pre", &self.pre)
            .field("vocab_size", &self.vocab.len())
            .field("merges", &self.merges.len())
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("ids", &self.ids)
            .field("eog", &self.eog)
            .finish()
    }
}

impl Tokenizer {
    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }
    /// Which algorithm this vocabulary uses.
    pub fn kind(&self) -> ModelKind {
        self.kind
    }
    /// `tokenizer.ggml.pre`, if set.
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }
    /// All special ids in force.
    pub fn special_ids(&self) -> SpecialIds {
        self.ids
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.ids.bos
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.ids.eos
    }
    pub fn eot_id(&self) -> Option<u32> {
        self.ids.eot
    }
    pub fn unk_id(&self) -> Option<u32> {
        self.ids.unk
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.ids.pad
    }
    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }
    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos
    }
    /// Whether SentencePiece encoding prefixes text with a space.
    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }
    /// True for tokens that end generation: EOS, EOT (`<end_of_turn>`, `<|eot_id|>`,
    /// `<|im_end|>`…), EOM, FIM pad/repo/sep, found by id or by text as llama.cpp does.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }
    /// The end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }
    /// The id of the token whose vocabulary text is exactly `text` (raw, e.g. `"▁the"`).
    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.vocab.lookup(text)
    }
    /// The raw vocabulary text of a token.
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        ((id as usize) < self.vocab.len()).then(|| self.vocab.text(id))
    }
    /// The token's GGUF type as llama.cpp sees it after its fix-ups (a token may also
    /// carry other flags; this reports the most specific one).
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        let a = *self.vocab.attrs.get(id as usize)?;
        Some(if a & attr::USER_DEFINED != 0 {
            TokenType::UserDefined
        } else if a & attr::UNUSED != 0 {
            TokenType::Unused
        } else if a & attr::CONTROL != 0 {
            TokenType::Control
        } else if a & attr::UNKNOWN != 0 {
            TokenType::Unknown
        } else if a & attr::BYTE != 0 {
            TokenType::Byte
        } else if a & attr::NORMAL != 0 {
            TokenType::Normal
        } else {
            TokenType::Undefined
        })
    }
    /// True for control and unknown tokens: the ones `decode(.., skip_special = true)`
    /// leaves out and `encode` matches only when `parse_special` is set.
    pub fn is_special(&self, id: u32) -> bool {
        self.vocab
            .attrs
            .get(id as usize)
            .is_some_and(|a| a & (attr::CONTROL | attr::UNKNOWN) != 0)
    }
    /// The token's score (`tokenizer.ggml.scores`, 0 where absent).
    pub fn score(&self, id: u32) -> Option<f32> {
        self.vocab.scores.get(id as usize).copied()
    }

    /// The bytes a token stands for: `<0xXX>` byte tokens give their byte, `▁` is a
    /// space (SentencePiece), GPT-2's byte alphabet is mapped back to bytes, control
    /// and user-defined tokens give their text. Unused/undefined tokens and ids
    /// outside the vocabulary give nothing.
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        let i = id as usize;
        if i >= self.vocab.len() {
            return &[];
        }
        &self.pieces[self.piece_offsets[i] as usize..self.piece_offsets[i + 1] as usize]
    }

    /// A token's bytes as `decode` renders it: with `special == false`, control and
    /// unknown tokens render as nothing.
    fn piece(&self, id: u32, special: bool) -> &[u8] {
        if !special && self.is_special(id) {
            return &[];
        }
        self.token_bytes(id)
    }
}
