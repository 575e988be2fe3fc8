//! What can go wrong building a tokenizer from metadata. Encoding and decoding never
//! fail, so nothing here concerns them.

use crate::SUPPORTED_PRE;
use hangar_formats::GgufError;

/// What went wrong building a tokenizer. Encoding and decoding never fail.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("tokenizer metadata: {0}")]
    Metadata(#[from] GgufError),
    #[error(
        "unsupported tokenizer model {0:?} (tokenizer.ggml.model): this build reads \"llama\" \
         (SentencePiece BPE) and \"gpt2\" (byte-level BPE) vocabularies"
    )]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer {0:?} (tokenizer.ggml.pre) for a byte-level BPE vocabulary; supported: {SUPPORTED_PRE}")]
    UnsupportedPre(String),
    #[error("the vocabulary (tokenizer.ggml.tokens) is empty")]
    EmptyVocab,
    #[error("the vocabulary has {0} tokens, more than 32-bit token ids can address")]
    VocabTooLarge(usize),
    #[error("{key} has {got} entries but the vocabulary (tokenizer.ggml.tokens) has {expected}")]
    LengthMismatch {
        key: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("duplicate token {text:?} in the vocabulary (ids {first} and {second})")]
    DuplicateToken {
        text: String,
        first: u32,
        second: u32,
    },
    #[error("byte-level BPE vocabulary without merge rules (tokenizer.ggml.merges is missing)")]
    MissingMerges,
    #[error(
        "merge rule #{index} {rule:?} (tokenizer.ggml.merges) has no space between its two parts"
    )]
    BadMerge { index: usize, rule: String },
    #[error("{flag} is true but the vocabulary has no valid {what} token id")]
    MissingSpecialToken {
        flag: &'static str,
        what: &'static str,
    },
    #[error("tokenizer.json: {0}")]
    Json(String),
}
