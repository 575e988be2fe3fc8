//! Single-sequence generation: prefill the prompt in chunks, then decode token by
//! token, streaming text through the incremental detokenizer and the stop-string
//! matcher, optionally speculative (drafts verified K+1 positions per forward, see
//! [`crate::spec`]). Used by `hangar generate`; the server's scheduler batches many.

use crate::engine::{BorrowedCpuRunner, ModelRunner};
use crate::sampler::{SampledToken, Sampler, SamplingParams, StopMatcher};
use crate::spec::{ngram, DraftLength, DraftModel, SpecConfig, SpecMode, SpecStats};
use crate::{EngineError, LoadedModel};
use hangar_models::{LogitsWanted, SeqInput};
use hangar_tokenizer::Tokenizer;
use std::time::{Duration, Instant};

/// Options of one generation.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop strings: generation ends before the first occurrence, which is not emitted.
    pub stop: Vec<String>,
    /// Extra token ids that end generation (end-of-generation tokens always do, unless
    /// `ignore_eos`).
    pub stop_tokens: Vec<u32>,
    pub ignore_eos: bool,
    /// KV capacity in tokens (prompt + generated); 0 = the model's context length.
    pub context: usize,
    /// Prompt tokens per forward call during prefill.
    pub prefill_chunk: usize,
    /// Speculative decoding (off by default).
    pub speculative: SpecConfig,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            stop_tokens: Vec::new(),
            ignore_eos: false,
            context: 0,
            prefill_chunk: 512,
            speculative: SpecConfig::default(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_tokens` reached (or the context is full).
    Length,
    /// A stop string or stop token.
    Stop,
}

/// The outcome of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Sampling details per generated token (logprobs when requested).
    pub sampled: Vec<SampledToken>,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Decode forwards, drafts and acceptances (drafted = 0 without speculation).
    pub spec: SpecStats,
}

/// Generates from `prompt` (token ids, BOS included if wanted), calling `on_text` with
/// each piece of text as soon as it is final (whole UTF-8 characters, never a part
/// of a stop string). `on_text` returns `false` to cancel.
pub fn generate(
    lm: &LoadedModel,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
    let mut runner = BorrowedCpuRunner::new(&lm.model, &lm.pool);
    generate_on(&mut runner, &lm.tokenizer, prompt, opts, on_text)
}

/// As [`generate`], drafting with `draft` when `opts.speculative.mode` is
/// [`SpecMode::Draft`].
pub fn generate_with_draft(
    lm: &LoadedModel,
    draft: Option<&mut DraftModel>,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
    let mut runner = BorrowedCpuRunner::new(&lm.model, &lm.pool);
    generate_on_with_draft(&mut runner, draft, &lm.tokenizer, prompt, opts, on_text)
}

/// As [`generate`], on any backend: `runner` (its KV storage is reallocated for this
/// prompt) and the model's tokenizer.
pub fn generate_on(
    runner: &mut dyn ModelRunner,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
    generate_on_with_draft(runner, None, tokenizer, prompt, opts, on_text)
}

/// As [`generate_on`], with an optional draft model for [`SpecMode::Draft`].
pub fn generate_on_with_draft(
    runner: &mut dyn ModelRunner,
    mut draft: Option<&mut DraftModel>,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
    let spec = opts.speculative;
    if spec.mode == SpecMode::Draft && draft.is_none() {
        return Err(EngineError::Invalid(
            "speculative mode `draft` needs a draft model (--draft-model)".into(),
        ));
    }
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt is empty".into()));
    }
    let ctx_len = runner.ctx_len();
    let context = if opts.context == 0 {
        ctx_len
    } else {
        opts.context.min(ctx_len)
    };
    if prompt.len() >= context {
        return Err(EngineError::Invalid(format!(
            "the prompt has {} tokens; the context holds {context} (raise --ctx or shorten the prompt)",
            prompt.len()
        )));
    }
    let max_tokens = opts.max_tokens.min(context - prompt.len());
    let mut sampler = Sampler::new(opts.sampling.clone())?;
    let block = 16;
    let cap = prompt.len() + max_tokens + 1;
    let n_blocks = cap.div_ceil(block);
    let groups = runner.kv_layout().n_groups();
    runner.allocate_kv(block, &vec![n_blocks; groups])?;
    let table: Vec<u32> = (0..n_blocks as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; groups];
    let mut logits = Vec::new();

    let t0 = Instant::now();
    let chunk = opts.prefill_chunk.max(1);
    let mut pos = 0;
    while pos < prompt.len() {
        let end = (pos + chunk).min(prompt.len());
        let want = if end == prompt.len() {
            LogitsWanted::Last
        } else {
            LogitsWanted::None
        };
        let seq = SeqInput {
            tokens: &prompt[pos..end],
            start_pos: pos,
            block_tables: &tables,
            logits: want,
        };
        runner.execute(&[seq], &mut logits)?;
        pos = end;
    }
    let prefill_time = t0.elapsed();

    let t1 = Instant::now();
    let v = runner.vocab_size();
    if let (SpecMode::Draft, Some(d)) = (spec.mode, draft.as_deref_mut()) {
        d.start(cap, &opts.sampling)?;
    } else {
        draft = None;
    }
    let speculate = spec.enabled();
    let mut k_policy = DraftLength::new(&spec);
    let mut stats = SpecStats::default();
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut sampled = Vec::new();
    let mut text = String::new();
    let mut decoder = tokenizer.incremental_decoder(true);
    let mut stops = StopMatcher::new(opts.stop.clone());
    let mut finish = FinishReason::Length;
    // `logits` holds one row per position of the last forward: row i follows the
    // history plus `proposal[..i]`.
    let mut proposal: Vec<u32> = Vec::new();
    let mut input: Vec<u32> = Vec::new();
    while tokens.len() < max_tokens {
        let base = history.len();
        let mut accepted = 0;
        let mut done = false;
        for i in 0..=proposal.len() {
            let row = &mut logits[i * v..(i + 1) * v];
            let (s, matched) = match proposal.get(i) {
                Some(&d) => {
                    let q = draft.as_deref().and_then(|m| m.dist(i));
                    sampler.verify(row, &history, d, q)
                }
                None => (sampler.sample(row, &history), false),
            };
            let id = s.id;
            let is_end =
                (!opts.ignore_eos && tokenizer.is_eog(id)) || opts.stop_tokens.contains(&id);
            if is_end {
                finish = FinishReason::Stop;
                done = true;
                break;
            }
            tokens.push(id);
            history.push(id);
            sampled.push(s);
            // The first token comes from the prefill's logits, not a decode step.
            stats.emitted += u64::from(tokens.len() > 1);
            let piece = decoder.push(id);
            let (emit, hit) = stops.push(&piece);
            if !emit.is_empty() {
                text.push_str(&emit);
                if !on_text(&emit) {
                    done = true;
                    break;
                }
            }
            if hit {
                finish = FinishReason::Stop;
                done = true;
                break;
            }
            if tokens.len() == max_tokens {
                done = true;
                break;
            }
            if !matched {
                break;
            }
            accepted += 1;
        }
        if !proposal.is_empty() {
            stats.draft_steps += 1;
            stats.drafted += proposal.len() as u64;
            stats.accepted += accepted as u64;
            k_policy.record(proposal.len(), accepted);
            if let Some(d) = draft.as_deref_mut() {
                d.rollback(base, accepted);
            }
        }
        if done {
            break;
        }
        // Draft for the next step: never more than can still be emitted (the
        // target's own token comes on top).
        let k = if speculate {
            k_policy.next().min(max_tokens - tokens.len() - 1)
        } else {
            0
        };
        match (spec.mode, draft.as_deref_mut()) {
            _ if k == 0 => proposal.clear(),
            (SpecMode::Draft, Some(d)) => d.propose(&history, k, &mut proposal)?,
            _ => ngram::propose(&history, k, spec.ngram_max, spec.ngram_min, &mut proposal),
        }
        input.clear();
        input.push(history[history.len() - 1]);
        input.extend_from_slice(&proposal);
        let seq = SeqInput {
            tokens: &input,
            start_pos: history.len() - 1,
            block_tables: &tables,
            logits: if proposal.is_empty() {
                LogitsWanted::Last
            } else {
                LogitsWanted::All
            },
        };
        runner.execute(&[seq], &mut logits)?;
        stats.steps += 1;
    }
    if finish != FinishReason::Stop || !stops.matched() {
        let rest = stops.finish(&decoder.flush());
        if !rest.is_empty() {
            text.push_str(&rest);
            on_text(&rest);
        }
    }
    Ok(Generation {
        tokens,
        text,
        finish,
        prompt_tokens: prompt.len(),
        sampled,
        prefill_time,
        decode_time: t1.elapsed(),
        spec: stats,
    })
}
