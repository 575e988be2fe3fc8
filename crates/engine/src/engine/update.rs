//! The post-step bookkeeping, as one function over plain data (vLLM v1's
//! `update_from_output`): append sampled tokens, apply the stop rules, finish and
//! free sequences, and produce every event of the step in order.
//!
//! Sends nothing and runs no model: the loop sends the events it returns.

use super::request::{Finish, PromptTokenLogprob, TokenEvent, TokenOut, TopLogprob, Usage};
use crate::kv_manager::KvBlockManager;
use crate::sampler::{Constraint, SampledToken, Sampler, StopMatcher};
use crate::scheduler::{Batch, SchedSeq, Scheduler, SeqId};
use crate::spec::DraftLength;
use hangar_tokenizer::{IncrementalDecoder, Tokenizer};
use std::collections::HashMap;
use tokio::sync::mpsc::UnboundedSender;

/// Per-request state the loop keeps beside the scheduler's sequence.
pub(crate) struct Live<'t> {
    pub tx: UnboundedSender<TokenEvent>,
    pub sampler: Sampler,
    pub decoder: IncrementalDecoder<'t>,
    pub stop: StopMatcher,
    pub max_tokens: usize,
    pub stop_ids: Vec<u32>,
    pub logprobs: Option<usize>,
    /// Alternatives per prompt token, when prompt logprobs were asked for.
    pub prompt_logprobs: Option<usize>,
    /// Prompt logprobs by position, filled as prefill chunks run; sent (and emptied)
    /// with the first sampled token.
    pub prompt_lp: Vec<Option<PromptTokenLogprob>>,
    /// Structured output: masks the logits, advances on each token.
    pub constraint: Option<Constraint>,
    /// Speculative decoding's draft length for this sequence (None: it never drafts,
    /// as when speculation is off or a grammar constrains it).
    pub spec: Option<DraftLength>,
    /// The LoRA adapter the sequence runs under (`None`: the base model).
    pub adapter: Option<std::sync::Arc<hangar_models::LoraAdapter>>,
}

/// What one step produced.
#[derive(Default)]
pub(crate) struct StepOutput {
    /// Every event of the step, in the order it must be sent: token events, then the
    /// final events of sequences that finished (their blocks are already freed).
    pub events: Vec<(UnboundedSender<TokenEvent>, TokenEvent)>,
    /// Sequences that ended in this step (finished, or their client left).
    pub finished: Vec<SeqId>,
    pub prompt_tokens_computed: u64,
    pub generated_tokens: u64,
    /// Speculative decoding: steps that verified a draft, tokens drafted, drafted
    /// tokens accepted, tokens those steps emitted.
    pub spec_steps: u64,
    pub spec_drafted: u64,
    pub spec_accepted: u64,
    pub spec_emitted: u64,
}

/// Applies one step's sampled tokens. `sampled` is indexed like `batch.chunks`: the
/// tokens each chunk emitted, in order (one, or with a verified draft up to the draft
/// plus one); a chunk that does not end its sequence, or whose request is gone,
/// contributes nothing — and never stops the others from being processed.
pub(crate) fn update_from_output<'t>(
    sched: &mut Scheduler,
    kvm: &mut KvBlockManager,
    live: &mut HashMap<SeqId, Live<'t>>,
    batch: &Batch,
    sampled: Vec<Vec<SampledToken>>,
    tok: &Tokenizer,
    max_model_len: usize,
) -> StepOutput {
    let mut out = StepOutput::default();
    let mut ended: Vec<(SeqId, Option<TokenEvent>)> = Vec::new();
    for (c, toks) in batch.chunks.iter().zip(sampled) {
        let seq = &mut sched.running_mut()[c.slot];
        if c.start < seq.prompt_len {
            let n = (c.start + c.len).min(seq.prompt_len) - c.start;
            out.prompt_tokens_computed += n as u64;
        }
        if !c.sample {
            continue;
        }
        let (Some(l), false) = (live.get_mut(&c.id), toks.is_empty()) else {
            ended.push((c.id, None));
            continue;
        };
        if l.prompt_logprobs.is_some() && !l.prompt_lp.is_empty() {
            let report = prompt_report(std::mem::take(&mut l.prompt_lp), seq, tok);
            out.events
                .push((l.tx.clone(), TokenEvent::PromptLogprobs(report)));
        }
        if l.max_tokens == 0 {
            // Scoring only (echo with max_tokens 0): the prompt was all there was to do.
            let usage = Usage {
                prompt_tokens: seq.prompt_len,
                completion_tokens: 0,
                cached_tokens: seq.cached_tokens,
                queue_us: seq.queue_time.as_micros() as u64,
            };
            ended.push((
                c.id,
                Some(TokenEvent::Done {
                    finish: Finish::Length,
                    usage,
                    text: String::new(),
                }),
            ));
            continue;
        }
        let emitted = toks.len() as u64;
        let mut over = false;
        for s in toks {
            out.generated_tokens += 1;
            let (event, finish) = accept_token(l, seq, s, tok, max_model_len);
            if l.tx.is_closed() {
                ended.push((c.id, None));
                over = true;
                break;
            }
            out.events.push((l.tx.clone(), event));
            if let Some(fin) = finish {
                ended.push((c.id, Some(fin)));
                over = true;
                break;
            }
        }
        if c.draft > 0 {
            // The walk stops at the first token that differs from the draft, so all
            // but the last emitted token were drafted ones.
            let accepted = emitted.saturating_sub(1);
            out.spec_steps += 1;
            out.spec_drafted += c.draft as u64;
            out.spec_accepted += accepted;
            out.spec_emitted += emitted;
            if let Some(k) = l.spec.as_mut() {
                k.record(c.draft, accepted as usize);
            }
            if !over {
                sched.accept_draft(c.slot, kvm);
            }
        }
    }
    for (id, ev) in ended {
        let l = live.remove(&id);
        sched.finish(id, kvm);
        out.finished.push(id);
        if let (Some(l), Some(ev)) = (l, ev) {
            out.events.push((l.tx, ev));
        }
    }
    out
}

/// The prompt logprobs of a sequence whose prefill finished: position 0 has none.
fn prompt_report(
    by_pos: Vec<Option<PromptTokenLogprob>>,
    seq: &SchedSeq,
    tok: &Tokenizer,
) -> Vec<PromptTokenLogprob> {
    by_pos
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.unwrap_or_else(|| {
                let id = seq.tokens.get(i).copied().unwrap_or(0);
                PromptTokenLogprob {
                    id,
                    token: tok.decode(&[id], false),
                    logprob: None,
                    top_logprobs: Vec::new(),
                }
            })
        })
        .collect()
}

/// Appends the sampled token to `seq` and checks the stop rules: returns the token's
/// event and, when the sequence is done, its final event.
fn accept_token(
    l: &mut Live,
    seq: &mut SchedSeq,
    s: SampledToken,
    tok: &Tokenizer,
    max_model_len: usize,
) -> (TokenEvent, Option<TokenEvent>) {
    seq.tokens.push(s.id);
    let generated = seq.generated();
    let is_stop_id = l.stop_ids.contains(&s.id);
    let (text, mut stopped) = if is_stop_id {
        (String::new(), true)
    } else {
        let piece = l.decoder.push(s.id);
        l.stop.push(&piece)
    };
    let mut grammar_done = false;
    if let (Some(c), false) = (l.constraint.as_mut(), is_stop_id) {
        if let Err(e) = c.advance(s.id) {
            let ev = TokenEvent::Error(format!("structured output failed: {e}"));
            return (TokenEvent::Token(token_out(l, &s, text, tok)), Some(ev));
        }
        // The grammar allows nothing more: end here rather than spend a step on
        // the end-of-generation token it would force.
        if c.is_stopped() && !stopped {
            stopped = true;
            grammar_done = true;
        }
    }
    let event = TokenEvent::Token(token_out(l, &s, text, tok));
    let finish = if stopped {
        Finish::Stop
    } else if generated >= l.max_tokens || seq.tokens.len() >= max_model_len {
        Finish::Length
    } else {
        return (event, None);
    };
    let text = if stopped && !grammar_done {
        String::new()
    } else {
        l.stop.finish(&l.decoder.flush())
    };
    let usage = Usage {
        prompt_tokens: seq.prompt_len,
        completion_tokens: generated,
        cached_tokens: seq.cached_tokens,
        queue_us: seq.queue_time.as_micros() as u64,
    };
    (
        event,
        Some(TokenEvent::Done {
            finish,
            usage,
            text,
        }),
    )
}

/// The token event of a sampled token carrying `text`.
fn token_out(l: &Live, s: &SampledToken, text: String, tok: &Tokenizer) -> TokenOut {
    let (token, top_logprobs) = match l.logprobs {
        Some(_) => (
            tok.decode(&[s.id], false),
            s.top_logprobs
                .iter()
                .map(|&(id, logprob)| TopLogprob {
                    id,
                    token: tok.decode(&[id], false),
                    logprob,
                })
                .collect(),
        ),
        None => (String::new(), Vec::new()),
    };
    TokenOut {
        id: s.id,
        text,
        token,
        logprob: l.logprobs.map(|_| s.logprob),
        top_logprobs,
    }
}
