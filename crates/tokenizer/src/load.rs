//! Building a [`Tokenizer`] from GGUF metadata or a [`TokenizerSpec`]: llama.cpp's
//! defaults and fix-ups, the special-token index, the rendered pieces. Runs once.

use crate::bpe::Merges;
use crate::named_tokens::*;
use crate::pretok::Stage;
use crate::spec::KEY_TOKENS;
use crate::special::{SpecialEntry, SpecialIndex};
use crate::vocab::{attr, Vocab};
use crate::{unicode, ModelKind, SpecialIds, Tokenizer, TokenizerError, TokenizerSpec};
use hangar_formats::GgufFile;

/// Pre-tokenizer names (`tokenizer.ggml.pre`) accepted for `"gpt2"` vocabularies.
pub const SUPPORTED_PRE: &str = "default, gpt-2 family (gpt-2, phi-2, mpt, olmo, jais, \
    roberta-bpe, …), llama3 family (llama3, llama-bpe, dbrx, smaug-bpe, glm4, …), \
    qwen2 family (qwen2, deepseek-r1-qwen, stablelm2, megrez, hunyuan, …), \
    starcoder family (starcoder, refact, command-r, smollm, codeshell, exaone, …)";

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_text() {
        assert_eq!(byte_of_token_text("<0x0A>"), 10);
        assert_eq!(byte_of_token_text("<0xFF>"), 255);
        assert_eq!(byte_of_token_text("<0x"), 0);
    }
}
