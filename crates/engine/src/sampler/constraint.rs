//! Constrained decoding: a per-sequence grammar that masks the logits (tokens the
//! grammar cannot accept get `-inf`) before sampling and advances on each sampled
//! token, so the output always parses. End-of-generation tokens are allowed only
//! where the grammar is complete.
//!
//! Built on `llguidance` (the engine behind llama.cpp's, vLLM's and SGLang's
//! structured output): a token trie over every token's byte string, an Earley parser
//! over lazily built lexer automata, JSON schema, regex and Lark front ends.
//! [`GrammarCompiler`] is built once per tokenizer (the trie: a few hundred ms for a
//! 262k vocabulary) and compiles a [`GrammarSpec`] into a [`Constraint`] per request.
//!
//! The token environment comes from Hangar's tokenizer: each id's bytes as
//! [`Tokenizer::token_bytes`] gives them (SentencePiece `▁` is a space, `<0xNN>`
//! byte-fallback tokens are their byte, GPT-2's byte alphabet is mapped back), and
//! control tokens are marked special (`0xFF` + their text) so no grammar text can
//! produce them. Unused tokens have no bytes and are never allowed.

use hangar_tokenizer::Tokenizer;
use llguidance::api::{GrammarWithLexer, ParserLimits, TopLevelGrammar};
use llguidance::toktrie::{
    InferenceCapabilities, SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv,
};
use llguidance::{JsonCompileOptions, Matcher, ParserFactory};
use std::sync::Arc;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum GrammarSpec {
    /// Any JSON object (`response_format: json_object`).
    JsonObject,
    /// A JSON value valid against this JSON schema.
    JsonSchema(serde_json::Value),
    /// A whole-output regular expression (Rust `regex` syntax).
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A grammar in llguidance's Lark dialect (`start: ...`).
    Lark(String),
}

/// Errors building or using a constraint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConstraintError {
    #[error("the grammar is not valid or uses an unsupported feature: {0}")]
    Compile(String),
    #[error("cannot build the token trie for constrained decoding: {0}")]
    Tokenizer(String),
    #[error("the constraint failed while decoding: {0}")]
    Runtime(String),
    #[error("guided_choice needs at least one non-empty choice")]
    EmptyChoice,
}

/// The token environment llguidance needs: the trie of every token's bytes.
struct HangarTokEnv {
    trie: TokTrie,
}

impl TokenizerEnv for HangarTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Only used for forced-token splices and prompt healing, both off here.
        self.trie.greedy_tokenize(s)
    }

    fn tokenize_is_canonical(&self) -> bool {
        false
    }
}

/// Each token id's byte string as the trie sees it; `n_vocab` may exceed the
/// tokenizer's (padded output rows), the extra ids get no bytes.
pub fn token_byte_strings(tok: &Tokenizer, n_vocab: usize) -> Vec<Vec<u8>> {
    (0..n_vocab as u32)
        .map(|id| {
            let bytes = tok.token_bytes(id);
            if tok.is_special(id) {
                if bytes.is_empty() {
                    return Vec::new();
                }
                let mut v = Vec::with_capacity(bytes.len() + 1);
                v.push(TokTrie::SPECIAL_TOKEN_MARKER);
                v.extend_from_slice(bytes);
                v
            } else {
                bytes.to_vec()
            }
        })
        .collect()
}

/// Compiles grammars for one tokenizer. Build once, share behind an `Arc`.
pub struct GrammarCompiler {
    factory: ParserFactory,
    n_vocab: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("n_vocab", &self.n_vocab)
            .finish()
    }
}

impl GrammarCompiler {
    /// Builds the token trie for `tok`, with `n_vocab` logits per row. Generation may
    /// end with any of the tokenizer's end-of-generation ids.
    pub fn new(tok: &Tokenizer, n_vocab: usize) -> Result<Self, ConstraintError> {
        let words = token_byte_strings(tok, n_vocab);
        let eog: Vec<u32> = tok
            .eog_ids()
            .iter()
            .copied()
            .filter(|&i| (i as usize) < n_vocab)
            .collect();
        let eos = tok
            .eos_id()
            .filter(|&i| (i as usize) < n_vocab)
            .or_else(|| eog.first().copied())
            .ok_or_else(|| {
                ConstraintError::Tokenizer("the vocabulary has no end-of-sequence token".into())
            })?;
        let info = TokRxInfo::new(n_vocab as u32, eos);
        let mut trie = llguidance::panic_utils::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Ok(TokTrie::from(&info, &words))
        }))
        .map_err(|e| ConstraintError::Tokenizer(e.to_string()))?;
        if !eog.is_empty() {
            trie = trie.with_eos_tokens(&eog);
        }
        let env: TokEnv = Arc::new(HangarTokEnv { trie });
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| ConstraintError::Tokenizer(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = ParserLimits::default();
        Ok(GrammarCompiler { factory, n_vocab })
    }

    /// Logits per row this compiler was built for.
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Compiles `spec` into a fresh per-sequence constraint. Unsupported schema
    /// keywords and invalid grammars are errors that name the problem.
    pub fn compile(&self, spec: &GrammarSpec) -> Result<Constraint, ConstraintError> {
        let grammar = match spec {
            GrammarSpec::JsonObject => json_grammar(serde_json::json!({"type": "object"})),
            GrammarSpec::JsonSchema(s) => json_grammar(s.clone()),
            GrammarSpec::Regex(r) => TopLevelGrammar::from_regex(r),
            GrammarSpec::Choice(c) => {
                let alts: Vec<String> = c
                    .iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| lark_string(s))
                    .collect();
                if alts.is_empty() {
                    return Err(ConstraintError::EmptyChoice);
                }
                TopLevelGrammar::from_lark(format!("start: {}\n", alts.join(" | ")))
            }
            GrammarSpec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        };
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| ConstraintError::Compile(clean_error(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher_error(&matcher) {
            return Err(ConstraintError::Compile(clean_error(&e)));
        }
        Ok(Constraint {
            matcher,
            mask: None,
            error: None,
        })
    }
}

/// JSON output in the compact, conventional form: `", "` and `": "` separators
/// (what models write), no free whitespace (fewer ways to waste tokens).
fn json_grammar(schema: serde_json::Value) -> TopLevelGrammar {
    let mut g = GrammarWithLexer::from_json_schema(schema);
    let opts = JsonCompileOptions {
        item_separator: ", ".into(),
        key_separator: ": ".into(),
        whitespace_flexible: false,
        ..JsonCompileOptions::default()
    };
    if let (Some(s), Ok(o)) = (g.json_schema.take(), serde_json::to_value(&opts)) {
        // llguidance reads its options from `x-guidance` inside the schema.
        let mut s = s;
        if let serde_json::Value::Object(m) = &mut s {
            m.entry("x-guidance").or_insert(o);
        }
        g.json_schema = Some(s);
    }
    TopLevelGrammar {
        grammars: vec![g],
        max_tokens: None,
    }
}

/// A Lark string literal for `s` (JSON escaping is valid Lark escaping).
fn lark_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn matcher_error(m: &Matcher) -> Option<String> {
    m.is_error().then(|| m.get_error().unwrap_or_default())
}

/// llguidance errors can carry the whole parser state; keep the first line.
fn clean_error(e: &str) -> String {
    let first = e.lines().next().unwrap_or(e).trim();
    let first = first.strip_prefix("Error: ").unwrap_or(first);
    if first.len() > 600 {
        let mut end = 600;
        while !first.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &first[..end])
    } else {
        first.to_string()
    }
}

/// One sequence's grammar state. Cheap to clone before decoding starts (choices of
/// one request each get their own).
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    /// The mask for the next token, when computed ahead of sampling.
    mask: Option<SimpleVob>,
    error: Option<String>,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint")
            .field("error", &self.error)
            .finish()
    }
}

impl Constraint {
    /// Computes the set of tokens allowed next (once per position; kept until
    /// [`Constraint::advance`]).
    pub fn compute_mask(&mut self) -> Result<(), ConstraintError> {
        if self.mask.is_some() {
            return Ok(());
        }
        match self.matcher.compute_mask_or_eos() {
            Ok(m) => {
                self.mask = Some(m);
                Ok(())
            }
            Err(e) => {
                let e = clean_error(&e.to_string());
                self.error = Some(e.clone());
                Err(ConstraintError::Runtime(e))
            }
        }
    }

    /// Sets every logit the grammar cannot accept to `-inf`. On an internal failure
    /// every token is banned (the sampler then returns token 0) and the error is
    /// kept for [`Constraint::error`].
    pub fn apply(&mut self, logits: &mut [f32]) {
        if self.compute_mask().is_err() {
            logits.fill(f32::NEG_INFINITY);
            return;
        }
        let Some(mask) = &self.mask else { return };
        apply_mask(mask.as_slice(), logits);
    }

    /// Whether `token` is allowed next (computes the mask if needed).
    pub fn allows(&mut self, token: u32) -> bool {
        self.compute_mask().is_ok()
            && self
                .mask
                .as_ref()
                .is_some_and(|m| (token as usize) < m.len() && m.is_allowed(token))
    }

    /// The grammar's verdict on `token` without computing the whole mask, for
    /// sampling optimistically: `Some(true|false)` when known from a computed mask or
    /// from walking the parser over this one token (microseconds, where a mask over a
    /// large vocabulary takes about a millisecond); `None` when only the full mask
    /// can answer (the grammar is stopped or has failed).
    pub fn quick_allows(&mut self, token: u32) -> Option<bool> {
        if self.error.is_some() {
            return None;
        }
        if let Some(m) = &self.mask {
            return Some((token as usize) < m.len() && m.is_allowed(token));
        }
        if self.matcher.is_stopped() {
            return None;
        }
        match self.matcher.validate_tokens(&[token]) {
            Ok(n) => Some(n == 1),
            Err(_) => None,
        }
    }

    /// Advances past a sampled token.
    pub fn advance(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.mask = None;
        if let Some(e) = &self.error {
            return Err(ConstraintError::Runtime(e.clone()));
        }
        self.matcher.consume_token(token).map_err(|e| {
            let e = clean_error(&e.to_string());
            self.error = Some(e.clone());
            ConstraintError::Runtime(e)
        })
    }

    /// Whether the output so far is complete (end of generation is allowed).
    pub fn is_accepting(&mut self) -> bool {
        self.matcher.is_accepting().unwrap_or(false)
    }

    /// Whether the grammar allows nothing more (only end of generation).
    pub fn is_stopped(&self) -> bool {
        self.matcher.is_stopped()
    }

    /// The failure that ended decoding, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// `logits[i] = -inf` wherever bit `i` of `bits` is clear. Whole zero words (the
/// common case: most of a large vocabulary is banned) are filled in one go.
fn apply_mask(bits: &[u32], logits: &mut [f32]) {
    for (w, chunk) in bits.iter().zip(logits.chunks_mut(32)) {
        match *w {
            0 => chunk.fill(f32::NEG_INFINITY),
            u32::MAX => {}
            w => {
                for (b, l) in chunk.iter_mut().enumerate() {
                    if w & (1 << b) == 0 {
                        *l = f32::NEG_INFINITY;
                    }
                }
            }
        }
    }
    // Rows longer than the mask: ids past it are outside the grammar's vocabulary.
    let covered = bits.len() * 32;
    if logits.len() > covered {
        logits[covered..].fill(f32::NEG_INFINITY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_bits_map_to_logits() {
        let mut l = vec![1.0f32; 70];
        let bits = [0b101u32, u32::MAX, 0];
        apply_mask(&bits, &mut l);
        assert_eq!(l[0], 1.0);
        assert_eq!(l[1], f32::NEG_INFINITY);
        assert_eq!(l[2], 1.0);
        assert!(l[3..32].iter().all(|x| *x == f32::NEG_INFINITY));
        assert!(l[32..64].iter().all(|x| *x == 1.0));
        assert!(l[64..].iter().all(|x| *x == f32::NEG_INFINITY));
    }

    #[test]
    fn errors_keep_one_line() {
        assert_eq!(clean_error("Error: bad\nstate dump"), "bad");
    }
}
