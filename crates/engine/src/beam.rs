//! Beam search over the batching engine (vLLM's and Hugging Face's `use_beam_search`
//! / `num_beams`): each step asks the engine for the next token of every live beam
//! with its top 2·W log-probabilities, keeps the W best extensions by cumulative
//! log-probability, and sets aside the beams that end (an end-of-generation or stop
//! token among the W best). Beams share their prompt and common prefix through the
//! prefix cache, so a step computes only each beam's unshared tail.
//!
//! Scores follow Hugging Face: `cumulative logprob / generated_len^length_penalty`,
//! where `generated_len` does not count the ending token; the result is the W best
//! finished or unfinished beams by score. The search stops at `max_tokens`, when every
//! beam has ended, or (Hugging Face's default rule) once W beams have finished and no
//! live beam scores better at its current length than the W-th of them.

use crate::engine::{Engine, GenerateRequest, Tenant, TokenEvent};
use crate::EngineError;

/// Beam search settings.
#[derive(Debug, Clone)]
pub struct BeamParams {
    /// Beams kept per step (W) and results returned.
    pub width: usize,
    /// Most tokens per beam.
    pub max_tokens: usize,
    /// Exponent of the length normalisation (0: plain cumulative log-probability;
    /// above 0 favours longer answers).
    pub length_penalty: f64,
    /// Token ids that end a beam besides the model's end-of-generation ids.
    pub stop_token_ids: Vec<u32>,
    /// Do not end beams at end-of-generation tokens.
    pub ignore_eos: bool,
    pub tenant: Tenant,
    /// Every beam runs under this LoRA adapter (`None`: the base model).
    pub adapter: Option<std::sync::Arc<hangar_models::LoraAdapter>>,
}

/// One beam of the result.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamResult {
    /// Generated tokens, without the ending token.
    pub tokens: Vec<u32>,
    /// The ending token, when the beam ended on one.
    pub ended_by: Option<u32>,
    /// Sum of the log-probabilities of the generated tokens, ending token included.
    pub cum_logprob: f64,
    /// `cum_logprob / max(len, 1)^length_penalty`.
    pub score: f64,
}

#[derive(Debug, Clone)]
struct Beam {
    tokens: Vec<u32>,
    cum: f64,
}

fn score(cum: f64, len: usize, length_penalty: f64) -> f64 {
    cum / (len.max(1) as f64).powf(length_penalty)
}

/// Runs beam search for `prompt` on `engine` (blocking: call it off the async
/// runtime). The W best beams come back best first.
pub fn beam_search(
    engine: &Engine,
    prompt: &[u32],
    p: &BeamParams,
) -> Result<Vec<BeamResult>, EngineError> {
    let w = p.width;
    if w == 0 || 2 * w > crate::sampler::MAX_LOGPROBS {
        return Err(EngineError::Invalid(format!(
            "beam width must be 1 to {}, got {w}",
            crate::sampler::MAX_LOGPROBS / 2
        )));
    }
    let cap = engine.info().max_sequences_per_request;
    if w > cap {
        return Err(EngineError::Invalid(format!(
            "beam width {w} is above the {cap} sequences one request may run (--max-request-share of --max-running)"
        )));
    }
    if prompt.is_empty() {
        return Err(EngineError::Invalid("the prompt is empty".into()));
    }
    let max_len = engine.info().max_model_len;
    let tok = engine.tokenizer();
    let ends = |id: u32| p.stop_token_ids.contains(&id) || (!p.ignore_eos && tok.is_eog(id));
    let mut live = vec![Beam {
        tokens: Vec::new(),
        cum: 0.0,
    }];
    let mut done: Vec<BeamResult> = Vec::new();
    for _ in 0..p.max_tokens {
        if live.is_empty() || prompt.len() + live[0].tokens.len() >= max_len {
            break;
        }
        // One step of every live beam, batched by the engine.
        let mut rxs = Vec::with_capacity(live.len());
        for b in &live {
            let mut ids = prompt.to_vec();
            ids.extend_from_slice(&b.tokens);
            let mut r = GenerateRequest::greedy(ids, 1);
            r.ignore_eos = true;
            r.logprobs = Some(2 * w);
            r.sampling.n_logprobs = 2 * w;
            r.tenant = p.tenant;
            r.adapter = p.adapter.clone();
            rxs.push(engine.submit(r)?.1);
        }
        let mut cands: Vec<(f64, usize, u32)> = Vec::new();
        for (bi, mut rx) in rxs.into_iter().enumerate() {
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    TokenEvent::Token(t) => {
                        for alt in &t.top_logprobs {
                            cands.push((live[bi].cum + f64::from(alt.logprob), bi, alt.id));
                        }
                    }
                    TokenEvent::Error(e) => return Err(EngineError::Invalid(e)),
                    TokenEvent::Done { .. } | TokenEvent::PromptLogprobs(_) => {}
                }
            }
        }
        // Best first; ties by beam then token, so results do not depend on timing.
        cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let mut next = Vec::with_capacity(w);
        for (rank, &(cum, bi, id)) in cands.iter().enumerate() {
            if next.len() == w {
                break;
            }
            let parent = &live[bi];
            if ends(id) {
                // An ending among the W best finishes a beam; below them it is dropped.
                if rank < w {
                    done.push(BeamResult {
                        tokens: parent.tokens.clone(),
                        ended_by: Some(id),
                        cum_logprob: cum,
                        score: score(cum, parent.tokens.len(), p.length_penalty),
                    });
                }
                continue;
            }
            let mut tokens = parent.tokens.clone();
            tokens.push(id);
            next.push(Beam { tokens, cum });
        }
        live = next;
        // Hugging Face's default stopping rule: once W beams have finished, stop when
        // no live beam scores better at its current length than the W-th finished one.
        if done.len() >= w {
            let mut scores: Vec<f64> = done.iter().map(|d| d.score).collect();
            scores.sort_by(|a, b| b.total_cmp(a));
            let worst_kept = scores[w - 1];
            let best_live = live
                .iter()
                .map(|b| score(b.cum, b.tokens.len(), p.length_penalty))
                .fold(f64::NEG_INFINITY, f64::max);
            if best_live <= worst_kept {
                break;
            }
        }
    }
    done.extend(live.into_iter().map(|b| BeamResult {
        score: score(b.cum, b.tokens.len(), p.length_penalty),
        tokens: b.tokens,
        ended_by: None,
        cum_logprob: b.cum,
    }));
    done.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.tokens.cmp(&b.tokens))
    });
    done.truncate(w);
    Ok(done)
}
