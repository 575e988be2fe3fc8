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

mod bpe;
mod decoder;
mod pretok;
mod special;
mod spm;
mod unicode;
mod vocab;

pub use decoder::IncrementalDecoder;

use bpe::Merges;
use hangar_formats::{GgufError, GgufFile, MetaValue};
use pretok::Stage;
use special::{Fragment, SpecialEntry, SpecialIndex};
use vocab::attr;
pub(crate) use vocab::Vocab;

/// Pre-tokenizer names (`tokenizer.ggml.pre`) accepted for `"gpt2"` vocabularies.
pub const SUPPORTED_PRE: &str = "default, gpt-2 family (gpt-2, phi-2, mpt, olmo, jais, \
    roberta-bpe, …), llama3 family (llama3, llama-bpe, dbrx, smaug-bpe, glm4, …), \
    qwen2 family (qwen2, deepseek-r1-qwen, stablelm2, megrez, hunyuan, …), \
    starcoder family (starcoder, refact, command-r, smollm, codeshell, exaone, …)";

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
}

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
    fn attr(self) -> u16 {
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

/// A vocabulary as plain data: everything [`Tokenizer::from_gguf`] reads, so tests and
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

    fn from_gguf_without_tokens(g: &GgufFile) -> Result<Self, TokenizerError> {
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

const KEY_TOKENS: &str = "tokenizer.ggml.tokens";

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

/// Per-`pre` settings of a byte-level BPE vocabulary.
struct PreConfig {
    stages: Vec<Stage>,
    clean_spaces: bool,
    ignore_merges: bool,
    add_bos: bool,
    no_bos: bool,
}

fn pre_config(name: &str) -> Option<PreConfig> {
    let gpt2 = vec![Stage::Gpt2];
    let llama3 = vec![Stage::Llama3 { max_digits: 3 }];
    let qwen2 = vec![Stage::Llama3 { max_digits: 1 }];
    let digits_gpt2 = vec![Stage::EachNumber, Stage::Gpt2];
    let cfg = |stages: Vec<Stage>, clean_spaces: bool| PreConfig {
        stages,
        clean_spaces,
        ignore_merges: false,
        add_bos: false,
        no_bos: false,
    };
    Some(match name {
        "default" => cfg(
            vec![
                Stage::PunctRuns,
                Stage::Gpt2,
                Stage::NumberRuns,
                Stage::AsciiDigitTriples,
            ],
            true,
        ),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" => PreConfig {
            ignore_merges: true,
            add_bos: true,
            ..cfg(llama3, true)
        },
        "dbrx" | "smaug-bpe" => cfg(llama3, true),
        "glm4" | "chatglm-bpe" => PreConfig {
            no_bos: true,
            ..cfg(llama3, true)
        },
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de"
        | "a.x-4.0" | "mellum" | "modern-bert" | "exaone4" | "mpt" | "olmo" | "jais"
        | "jina-v1-en" | "jina-v2-code" | "roberta-bpe" => cfg(gpt2, true),
        "trillion" | "granite-docling" => cfg(gpt2, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg(digits_gpt2, true)
        }
        "command-r" | "smollm" => cfg(digits_gpt2, false),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
            cfg(qwen2, false)
        }
        "stablelm2" | "megrez" => cfg(qwen2, true),
        _ => return None,
    })
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

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
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let spec = TokenizerSpec::from_gguf_without_tokens(gguf)?;
        let tokens = gguf.get_str_array(KEY_TOKENS)?;
        Self::build(&spec, tokens)
    }

    /// Builds a tokenizer from plain data.
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        Self::build(spec, &spec.tokens)
    }

    fn build(spec: &TokenizerSpec, tokens: &[String]) -> Result<Tokenizer, TokenizerError> {
        let kind = match spec.model.as_str() {
            "llama" => ModelKind::Spm,
            "gpt2" => ModelKind::Bpe,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n >= i32::MAX as usize {
            return Err(TokenizerError::VocabTooLarge(n));
        }
        let scores = match &spec.scores {
            Some(s) if s.len() < n => {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.scores",
                    got: s.len(),
                    expected: n,
                })
            }
            Some(s) => s[..n].to_vec(),
            None => vec![0.0; n],
        };
        let mut attrs = match &spec.token_types {
            Some(t) if t.len() < n => {
                return Err(TokenizerError::LengthMismatch {
                    key: "tokenizer.ggml.token_type",
                    got: t.len(),
                    expected: n,
                })
            }
            Some(t) => t[..n].iter().map(|t| t.attr()).collect(),
            None => vec![attr::NORMAL; n],
        };

        // Defaults per vocabulary kind (llama.cpp `llama_vocab::impl::load`).
        let mut ids = SpecialIds::default();
        let mut merges = Merges::default();
        let mut stages = Vec::new();
        let mut ignore_merges = false;
        let (mut add_space_prefix, clean_spaces, mut add_bos, mut add_eos);
        match kind {
            ModelKind::Spm => {
                ids.bos = Some(1);
                ids.eos = Some(2);
                ids.unk = Some(0);
                add_space_prefix = true;
                clean_spaces = false;
                add_bos = true;
                add_eos = false;
            }
            ModelKind::Bpe => {
                let rules = spec.merges.as_ref().ok_or(TokenizerError::MissingMerges)?;
                merges = Merges::new(rules).map_err(|index| TokenizerError::BadMerge {
                    index,
                    rule: rules[index].clone(),
                })?;
                ids.bos = Some(11);
                ids.eos = Some(11);
                let pre = spec.pre.as_deref().unwrap_or("default");
                let cfg = pre_config(pre)
                    .ok_or_else(|| TokenizerError::UnsupportedPre(pre.to_string()))?;
                stages = cfg.stages;
                ignore_merges = cfg.ignore_merges;
                clean_spaces = cfg.clean_spaces;
                add_bos = cfg.add_bos;
                add_eos = false;
                add_space_prefix = false;
                if cfg.no_bos {
                    ids.bos = None;
                }
            }
        }
        if let Some(v) = spec.add_space_prefix {
            add_space_prefix = v;
        }

        // Texts: llama.cpp renames empty ones.
        let renamed: Vec<String>;
        let texts: &[String] = if tokens.iter().any(|t| t.is_empty()) {
            renamed = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    if t.is_empty() {
                        format!("[EMPTY_{i}]")
                    } else {
                        t.clone()
                    }
                })
                .collect();
            &renamed
        } else {
            tokens
        };
        let vocab = Vocab::new(texts, scores, Vec::new()).map_err(|(first, second)| {
            TokenizerError::DuplicateToken {
                text: texts[second as usize].clone(),
                first,
                second,
            }
        })?;

        // Special ids: a default outside the vocabulary is dropped; a given id
        // outside it is ignored (llama.cpp warns and keeps the default).
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        let pick = |default: Option<u32>, given: Option<u32>| match in_range(given) {
            Some(g) => Some(g),
            None => in_range(default),
        };
        ids.bos = pick(ids.bos, spec.bos_id);
        ids.eos = pick(ids.eos, spec.eos_id);
        ids.unk = pick(ids.unk, spec.unk_id);
        ids.eot = in_range(spec.eot_id);
        ids.eom = in_range(spec.eom_id);
        ids.sep = in_range(spec.sep_id);
        ids.pad = in_range(spec.pad_id);
        ids.mask = in_range(spec.mask_id);
        ids.fim_pre = in_range(spec.fim_pre_id);
        ids.fim_suf = in_range(spec.fim_suf_id);
        ids.fim_mid = in_range(spec.fim_mid_id);
        ids.fim_pad = in_range(spec.fim_pad_id);
        ids.fim_rep = in_range(spec.fim_rep_id);
        ids.fim_sep = in_range(spec.fim_sep_id);
        if let Some(v) = spec.add_bos {
            add_bos = v;
        }
        if let Some(v) = spec.add_eos {
            add_eos = v;
        }
        if add_bos && ids.bos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: "tokenizer.ggml.add_bos_token",
                what: "BOS (tokenizer.ggml.bos_token_id)",
            });
        }
        if add_eos && ids.eos.is_none() {
            return Err(TokenizerError::MissingSpecialToken {
                flag: "tokenizer.ggml.add_eos_token",
                what: "EOS (tokenizer.ggml.eos_token_id)",
            });
        }

        // Special tokens recognised by their text, as llama.cpp does; each one found
        // this way becomes a control token.
        let find = |texts: &[&str]| -> Option<u32> {
            let mut best: Option<u32> = None;
            for t in texts {
                if let Some(id) = vocab.lookup(t) {
                    best = Some(best.map_or(id, |b| b.min(id)));
                }
            }
            best
        };
        for (slot, list) in [
            (&mut ids.eot, EOT_TEXTS),
            (&mut ids.eom, EOM_TEXTS),
            (&mut ids.fim_pre, FIM_PRE_TEXTS),
            (&mut ids.fim_suf, FIM_SUF_TEXTS),
            (&mut ids.fim_mid, FIM_MID_TEXTS),
            (&mut ids.fim_pad, FIM_PAD_TEXTS),
            (&mut ids.fim_rep, FIM_REP_TEXTS),
            (&mut ids.fim_sep, FIM_SEP_TEXTS),
        ] {
            if slot.is_none() {
                if let Some(id) = find(list) {
                    *slot = Some(id);
                    attrs[id as usize] |= attr::CONTROL;
                }
            }
        }
        // Control tokens named "unused…" are unused.
        for (id, a) in attrs.iter_mut().enumerate() {
            if *a & attr::CONTROL != 0 && vocab.text(id as u32).contains("unused") {
                *a |= attr::UNUSED;
            }
        }
        // End-of-generation tokens.
        let mut eog: Vec<u32> = [ids.fim_pad, ids.fim_rep, ids.fim_sep]
            .into_iter()
            .flatten()
            .collect();
        for t in EOG_TEXTS {
            if let Some(id) = vocab.lookup(t) {
                eog.push(id);
                attrs[id as usize] |= attr::CONTROL;
            }
        }
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(id) = vocab.lookup(t) {
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        eog.extend([ids.eos, ids.eot, ids.eom].into_iter().flatten());
        eog.sort_unstable();
        eog.dedup();
        let eog_has = |eog: &[u32], t: &str| eog.iter().any(|&i| vocab.text(i) == t);
        // o200k_harmony / solar-open: "<|end|>" is not an end of generation.
        let has_call = eog_has(&eog, "<|call|>") || eog_has(&eog, "<|calls|>");
        if has_call
            && (eog_has(&eog, "<|return|>") || eog_has(&eog, "<|flush|>"))
            && eog_has(&eog, "<|end|>")
        {
            if let Some(id) = vocab.lookup("<|end|>") {
                eog.retain(|&i| i != id);
                attrs[id as usize] = attr::USER_DEFINED;
            }
        }
        // Gemma 4 / PaddleOCR: "</s>" is not an end of generation there.
        if eog_has(&eog, "<|tool_response>") && eog_has(&eog, "</s>") {
            if let Some(id) = vocab.lookup("</s>") {
                eog.retain(|&i| i != id);
                attrs[id as usize] = attr::NORMAL;
            }
        }

        // Special-token matching order: longest text first (ties: lower id).
        let mut special_ids: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                attrs[i as usize] & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_ids.sort_by_key(|&i| std::cmp::Reverse(vocab.text(i).len()));

        // Per-model strip rules (llama.cpp keys them on names).
        let name = spec.model_name.as_deref().unwrap_or("").to_lowercase();
        let pre_name = spec.pre.as_deref().unwrap_or("");
        let arch = spec.architecture.as_deref().unwrap_or("");
        let set = |attrs: &mut [u16], text: &str, bit: u16, on: bool| {
            if let Some(id) = vocab.lookup(text) {
                if on {
                    attrs[id as usize] |= bit;
                } else {
                    attrs[id as usize] &= !bit;
                }
            }
        };
        if ["jina-v2-de", "jina-v2-es", "jina-v2-code"]
            .iter()
            .any(|s| pre_name.contains(s))
            || ["nomic-bert-moe", "jina-bert-v3"]
                .iter()
                .any(|s| arch.contains(s))
        {
            set(&mut attrs, "<mask>", attr::LSTRIP, true);
        } else if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special_ids {
                attrs[id as usize] |= attr::RSTRIP;
            }
            set(&mut attrs, "</s>", attr::RSTRIP, true);
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                set(&mut attrs, t, attr::RSTRIP, false);
            }
        } else if name.contains("modern-bert") {
            set(&mut attrs, "[MASK]", attr::LSTRIP, true);
        }

        let special = SpecialIndex::new(
            special_ids
                .iter()
                .map(|&id| {
                    let a = attrs[id as usize];
                    SpecialEntry {
                        id,
                        text: vocab.text(id).into(),
                        needs_parse_special: a & (attr::CONTROL | attr::UNKNOWN) != 0,
                        lstrip: a & attr::LSTRIP != 0,
                        rstrip: a & attr::RSTRIP != 0,
                    }
                })
                .collect(),
        );

        let mut vocab = vocab;
        vocab.attrs = attrs;
        let mut tok = Tokenizer {
            kind,
            pre: spec.pre.clone(),
            vocab,
            merges,
            stages,
            ignore_merges,
            clean_spaces,
            add_space_prefix,
            add_bos,
            add_eos,
            ids,
            eog,
            special,
            pieces: Vec::new(),
            piece_offsets: Vec::new(),
        };
        tok.build_pieces();
        Ok(tok)
    }

    /// Renders every token once (llama.cpp `token_to_piece` with specials shown).
    fn build_pieces(&mut self) {
        let n = self.vocab.len();
        let mut pieces = Vec::with_capacity(n * 6);
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0u32);
        let codec = unicode::ByteCodec::get();
        for id in 0..n as u32 {
            let a = self.vocab.attrs[id as usize];
            let text = self.vocab.text(id);
            if a & (attr::UNKNOWN | attr::CONTROL | attr::USER_DEFINED) != 0 {
                pieces.extend_from_slice(text.as_bytes());
            } else if a & attr::NORMAL != 0 {
                match self.kind {
                    ModelKind::Spm => {
                        let mut rest = text;
                        while let Some(p) = rest.find('\u{2581}') {
                            pieces.extend_from_slice(&rest.as_bytes()[..p]);
                            pieces.push(b' ');
                            rest = &rest[p + '\u{2581}'.len_utf8()..];
                        }
                        pieces.extend_from_slice(rest.as_bytes());
                    }
                    ModelKind::Bpe => codec.decode_text(text, &mut pieces),
                }
            } else if a & attr::BYTE != 0 {
                pieces.push(byte_of_token_text(text));
            }
            offsets.push(pieces.len() as u32);
        }
        pieces.shrink_to_fit();
        self.pieces = pieces;
        self.piece_offsets = offsets;
    }

    // ----- queries -----

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

    // ----- encode -----

    /// Token ids of `text`.
    ///
    /// * `add_special`: add BOS / EOS where the model asks for them
    ///   (`tokenizer.ggml.add_bos_token`, `add_eos_token`).
    /// * `parse_special`: match control tokens written as text (`"<start_of_turn>"`)
    ///   as those tokens; when false they are tokenized as plain text. User-defined
    ///   tokens (type 4) are always matched whole, as in llama.cpp.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let frags = self.special.partition(text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 4);
        if add_special && self.add_bos {
            out.extend(self.ids.bos);
        }
        match self.kind {
            ModelKind::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push('\u{2581}');
                            }
                            for c in text[a..b].chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(&self.vocab, self.ids.unk, &buf, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            ModelKind::Bpe => {
                let codec = unicode::ByteCodec::get();
                let mut word = String::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            let frag = &text[a..b];
                            for r in pretok::split(frag, &self.stages) {
                                word.clear();
                                codec.encode_into(&frag[r], &mut word);
                                bpe::tokenize_word(
                                    &self.vocab,
                                    &self.merges,
                                    self.ignore_merges,
                                    &word,
                                    &mut out,
                                );
                            }
                        }
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.ids.eos);
        }
        out
    }

    /// The usual prompt encoding: BOS/EOS as the model asks, special tokens parsed.
    /// (No chat template is applied; callers format turns themselves.)
    pub fn encode_prompt(&self, text: &str) -> Vec<u32> {
        self.encode(text, true, true)
    }

    // ----- decode -----

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

/// `<0xXX>` → its byte, read like C's `strtol(text.substr(3, 2), 16)`.
fn byte_of_token_text(text: &str) -> u8 {
    let digits = text.get(3..).unwrap_or("");
    let mut v: u32 = 0;
    for c in digits.chars().take(2) {
        match c.to_digit(16) {
            Some(d) => v = v * 16 + d,
            None => break,
        }
    }
    v as u8
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

    #[test]
    fn byte_text() {
        assert_eq!(byte_of_token_text("<0x0A>"), 10);
        assert_eq!(byte_of_token_text("<0xFF>"), 255);
        assert_eq!(byte_of_token_text("<0x"), 0);
    }
}
