//! A vocabulary as plain data (token texts, types, scores, merges, special ids) and
//! how it is read from GGUF metadata. Builds no tables; `load` does that.

use crate::vocab::attr;
use crate::TokenizerError;
use hangar_formats::{GgufError, GgufFile, MetaValue};

/// GGUF token types (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// 0, or any value outside 1..=6.
    Undefined,
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    pub fn from_gguf(v: i64) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
    pub fn to_gguf(self) -> i32 {
        match self {
            TokenType::Undefined => 0,
            TokenType::Normal => 1,
            TokenType::Unknown => 2,
            TokenType::Control => 3,
            TokenType::UserDefined => 4,
            TokenType::Unused => 5,
            TokenType::Byte => 6,
        }
    }
    pub(crate) fn attr(self) -> u16 {
        match self {
            TokenType::Undefined => attr::UNDEFINED,
            TokenType::Normal => attr::NORMAL,
            TokenType::Unknown => attr::UNKNOWN,
            TokenType::Control => attr::CONTROL,
            TokenType::UserDefined => attr::USER_DEFINED,
            TokenType::Unused => attr::UNUSED,
            TokenType::Byte => attr::BYTE,
        }
    }
}

/// Which algorithm a vocabulary uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// `"llama"`: SentencePiece BPE over scores, byte fallback.
    Spm,
    /// `"gpt2"`: byte-level BPE over ranked merges.
    Bpe,
}

/// A vocabulary as plain data: everything [`Tokenizer::from_gguf`](crate::Tokenizer::from_gguf) reads, so tests and
/// tools can build tokenizers without a GGUF file. `None` means "key absent": the
/// llama.cpp default applies.
#[derive(Debug, Clone, Default)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`: `"llama"` or `"gpt2"`.
    pub model: String,
    /// `tokenizer.ggml.pre` (gpt2 only; absent means `"default"`).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (absent: all 0).
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (absent: all normal).
    pub token_types: Option<Vec<TokenType>>,
    /// `tokenizer.ggml.merges` (`"left right"`; required for gpt2).
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub eot_id: Option<u32>,
    pub eom_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub sep_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub mask_id: Option<u32>,
    pub fim_pre_id: Option<u32>,
    pub fim_suf_id: Option<u32>,
    pub fim_mid_id: Option<u32>,
    pub fim_pad_id: Option<u32>,
    pub fim_rep_id: Option<u32>,
    pub fim_sep_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `general.name` (llama.cpp keys a few per-token strip rules on it).
    pub model_name: Option<String>,
    /// `general.architecture`.
    pub architecture: Option<String>,
}

impl TokenizerSpec {
    /// A SentencePiece vocabulary from tokens, scores and token types.
    pub fn spm(tokens: Vec<String>, scores: Vec<f32>, token_types: Vec<TokenType>) -> Self {
        TokenizerSpec {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(token_types),
            ..Default::default()
        }
    }
    /// A byte-level BPE vocabulary from tokens (already in GPT-2's byte alphabet),
    /// merge rules and a pre-tokenizer name.
    pub fn gpt2(tokens: Vec<String>, merges: Vec<String>, pre: &str) -> Self {
        TokenizerSpec {
            model: "gpt2".into(),
            pre: Some(pre.into()),
            tokens,
            merges: Some(merges),
            ..Default::default()
        }
    }

    /// Reads every tokenizer key of a GGUF file.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let mut spec = Self::from_gguf_without_tokens(gguf)?;
        spec.tokens = gguf.get_str_array(KEY_TOKENS)?.to_vec();
        Ok(spec)
    }

    pub(crate) fn from_gguf_without_tokens(g: &GgufFile) -> Result<Self, TokenizerError> {
        let opt_str = |k: &str| -> Result<Option<String>, GgufError> {
            match g.get(k) {
                None => Ok(None),
                Some(_) => g.get_str(k).map(|s| Some(s.to_string())),
            }
        };
        let opt_bool = |k: &str| -> Result<Option<bool>, GgufError> {
            match g.get(k) {
                None => Ok(None),
                Some(_) => g.get_bool(k).map(Some),
            }
        };
        // Token ids: a negative value (some converters write -1) means "not set".
        let opt_id = |k: &str| -> Result<Option<u32>, GgufError> {
            match g.get(k) {
                None => Ok(None),
                Some(v) => match v.as_i64() {
                    Some(x) if x < 0 => Ok(None),
                    Some(x) => u32::try_from(x)
                        .map(Some)
                        .map_err(|_| GgufError::WrongType {
                            key: k.to_string(),
                            expected: "token id (u32)",
                            found: "integer out of range",
                        }),
                    None => Err(GgufError::WrongType {
                        key: k.to_string(),
                        expected: "token id (integer)",
                        found: meta_type_name(v),
                    }),
                },
            }
        };
        let model = g.get_str("tokenizer.ggml.model")?.to_string();
        let scores = match g.get("tokenizer.ggml.scores") {
            None => None,
            Some(_) => Some(g.get_f32_array("tokenizer.ggml.scores")?),
        };
        let token_types = match g.get("tokenizer.ggml.token_type") {
            None => None,
            Some(_) => Some(
                g.get_i64_array("tokenizer.ggml.token_type")?
                    .into_iter()
                    .map(TokenType::from_gguf)
                    .collect(),
            ),
        };
        let merges = match g.get("tokenizer.ggml.merges") {
            None => None,
            Some(_) => Some(g.get_str_array("tokenizer.ggml.merges")?.to_vec()),
        };
        Ok(TokenizerSpec {
            model,
            pre: opt_str("tokenizer.ggml.pre")?,
            tokens: Vec::new(),
            scores,
            token_types,
            merges,
            bos_id: opt_id("tokenizer.ggml.bos_token_id")?,
            eos_id: opt_id("tokenizer.ggml.eos_token_id")?,
            eot_id: opt_id("tokenizer.ggml.eot_token_id")?,
            eom_id: opt_id("tokenizer.ggml.eom_token_id")?,
            unk_id: opt_id("tokenizer.ggml.unknown_token_id")?,
            sep_id: opt_id("tokenizer.ggml.seperator_token_id")?,
            pad_id: opt_id("tokenizer.ggml.padding_token_id")?,
            mask_id: opt_id("tokenizer.ggml.mask_token_id")?,
            fim_pre_id: opt_id("tokenizer.ggml.fim_pre_token_id")?
                .or(opt_id("tokenizer.ggml.prefix_token_id")?),
            fim_suf_id: opt_id("tokenizer.ggml.fim_suf_token_id")?
                .or(opt_id("tokenizer.ggml.suffix_token_id")?),
            fim_mid_id: opt_id("tokenizer.ggml.fim_mid_token_id")?
                .or(opt_id("tokenizer.ggml.middle_token_id")?),
            fim_pad_id: opt_id("tokenizer.ggml.fim_pad_token_id")?,
            fim_rep_id: opt_id("tokenizer.ggml.fim_rep_token_id")?,
            fim_sep_id: opt_id("tokenizer.ggml.fim_sep_token_id")?,
            add_bos: opt_bool("tokenizer.ggml.add_bos_token")?,
            add_eos: opt_bool("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: opt_bool("tokenizer.ggml.add_space_prefix")?,
            model_name: opt_str("general.name").ok().flatten(),
            architecture: opt_str("general.architecture").ok().flatten(),
        })
    }
}

pub(crate) const KEY_TOKENS: &str = "tokenizer.ggml.tokens";

fn meta_type_name(v: &MetaValue) -> &'static str {
    v.type_name()
}

/// The special token ids in force (after llama.cpp's defaults and fix-ups).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub sep: Option<u32>,
    pub pad: Option<u32>,
    pub mask: Option<u32>,
    pub fim_pre: Option<u32>,
    pub fim_suf: Option<u32>,
    pub fim_mid: Option<u32>,
    pub fim_pad: Option<u32>,
    pub fim_rep: Option<u32>,
    pub fim_sep: Option<u32>,
}
