//! Single-sequence generation: prefill the prompt in chunks, then decode token by
//! token, streaming text through the incremental detokenizer and the stop-string
//! matcher. Used by `hangar generate`; the server's scheduler batches many of these.

use crate::engine::{BorrowedCpuRunner, ModelRunner};
use crate::sampler::{SampledToken, Sampler, SamplingParams, StopMatcher};
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

/// As [`generate`], on any backend: `runner` (its KV storage is reallocated for this
/// prompt) and the model's tokenizer.
pub fn generate_on(
    runner: &mut dyn ModelRunner,
    tokenizer: &Tokenizer,
    prompt: &[u32],
    opts: &GenerateOptions,
    mut on_text: impl FnMut(&str) -> bool,
) -> Result<Generation, EngineError> {
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
    let mut history: Vec<u32> = prompt.to_vec();
    let mut tokens = Vec::new();
    let mut sampled = Vec::new();
    let mut text = String::new();
    let mut decoder = tokenizer.incremental_decoder(true);
    let mut stops = StopMatcher::new(opts.stop.clone());
    let mut finish = FinishReason::Length;
    while tokens.len() < max_tokens {
        let s = sampler.sample(&mut logits, &history);
        let id = s.id;
        let is_end = (!opts.ignore_eos && tokenizer.is_eog(id)) || opts.stop_tokens.contains(&id);
        if is_end {
            finish = FinishReason::Stop;
            break;
        }
        tokens.push(id);
        history.push(id);
        sampled.push(s);
        let piece = decoder.push(id);
        let (emit, hit) = stops.push(&piece);
        if !emit.is_empty() {
            text.push_str(&emit);
            if !on_text(&emit) {
                break;
            }
        }
        if hit {
            finish = FinishReason::Stop;
            break;
        }
        if tokens.len() == max_tokens {
            break;
        }
        let seq = SeqInput {
            tokens: &[id],
            start_pos: history.len() - 1,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        runner.execute(&[seq], &mut logits)?;
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
    })
}
