//! `use_beam_search` on `/v1/completions` and `/v1/chat/completions` (vLLM's
//! parameters): `best_of` beams (default `n`), `length_penalty`, the `n` best returned.
//! Greedy only, not streamed, no stop strings (stop token ids and end of generation
//! end beams), no logprobs, tools or structured output. The search itself is
//! `hangar_engine::beam`.

use super::types::Common;
use crate::error::ApiError;
use crate::gen::Validated;
use crate::InferenceState;
use hangar_engine::beam::{beam_search, BeamParams};
use hangar_engine::{Completion, Finish, TokenEvent, Usage};

/// A request's beam search fields (both APIs).
pub struct Ask<'a> {
    pub common: &'a Common,
    pub use_beam_search: Option<bool>,
    pub best_of: Option<i64>,
    pub length_penalty: Option<f64>,
    /// Logprobs, echo or tools were asked for.
    pub extras: Option<&'static str>,
}

/// Beam search settings of a request, checked: `(width, length_penalty)`, or `None`
/// when it does not ask for beam search.
pub fn params(ask: Ask, n: usize) -> Result<Option<(usize, f64)>, ApiError> {
    if !ask.use_beam_search.unwrap_or(false) {
        if ask.best_of.is_some_and(|b| b != n as i64) {
            return Err(ApiError::param(
                "best_of",
                "best_of other than n needs use_beam_search (sampled best_of is not supported)",
            ));
        }
        if ask.length_penalty.is_some() {
            return Err(ApiError::param(
                "length_penalty",
                "length_penalty applies to beam search: set use_beam_search",
            ));
        }
        return Ok(None);
    }
    let c = ask.common;
    let refuse =
        |p: &str, why: &str| Err(ApiError::param(p, format!("{why} with use_beam_search")));
    if c.temperature.is_some_and(|t| t != 0.0) {
        return refuse(
            "temperature",
            "beam search is deterministic: temperature must be 0",
        );
    }
    if c.stream.unwrap_or(false) {
        return refuse("stream", "streaming is not supported");
    }
    if c.stop.is_some() {
        return refuse(
            "stop",
            "stop strings are not supported (use stop_token_ids)",
        );
    }
    if let Some(what) = ask.extras {
        return refuse(what, &format!("{what} is not supported"));
    }
    if c.structured.guided()?.is_some() {
        return refuse("response_format", "structured output is not supported");
    }
    let width = match ask.best_of {
        Some(b) if b < 1 => return refuse("best_of", "best_of must be at least 1"),
        Some(b) => b as usize,
        None => n,
    };
    if width < n {
        return refuse("best_of", "best_of (the beam width) must be at least n");
    }
    let lp = ask.length_penalty.unwrap_or(1.0);
    if !lp.is_finite() {
        return refuse("length_penalty", "length_penalty must be a finite number");
    }
    Ok(Some((width, lp)))
}

/// Runs the search for each prompt (off the async runtime) and returns `n` results per
/// prompt as completions, best first.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    state: &InferenceState,
    prompts: Vec<Vec<u32>>,
    v: &Validated,
    n: usize,
    width: usize,
    length_penalty: f64,
    default_max: Option<usize>,
    adapter: Option<std::sync::Arc<hangar_engine::LoraAdapter>>,
) -> Result<Vec<Completion>, ApiError> {
    let engine = state.engine();
    let info = engine.info().clone();
    let most = info
        .max_sequences_per_request
        .min(hangar_engine::sampler::MAX_LOGPROBS / 2);
    if width > most {
        return Err(ApiError::param(
            "best_of",
            format!("best_of (the beam width) must be at most {most} on this server (one request may run that many sequences)"),
        ));
    }
    let caller = crate::auth::current_caller();
    let tenant = caller.as_ref().map(|c| c.tenant()).unwrap_or_default();
    let mut out = Vec::with_capacity(prompts.len() * n);
    for prompt in prompts {
        let start = std::time::Instant::now();
        let max_tokens =
            hangar_engine::prompt::fit_max_tokens(&info, prompt.len(), v.max_tokens, default_max)?;
        // A managed key is charged the prompt once and every token the beams computed.
        let charge = match &caller {
            Some(crate::auth::Caller::Key(key)) => Some(
                state
                    .app
                    .tenants
                    .admit(key, (prompt.len() + width * max_tokens) as u64)?,
            ),
            _ => None,
        };
        let p = BeamParams {
            width,
            max_tokens,
            length_penalty,
            stop_token_ids: v.stop_token_ids.clone(),
            ignore_eos: v.ignore_eos,
            tenant,
            adapter: adapter.clone(),
        };
        let (service, prompt2) = (state.service.clone(), prompt.clone());
        let beams = tokio::task::spawn_blocking(move || beam_search(&service.engine, &prompt2, &p))
            .await
            .map_err(|e| ApiError::internal(format!("beam search stopped: {e}")))?
            .map_err(|e| ApiError::param("best_of", e.to_string()))?;
        let tok = engine.tokenizer();
        let computed: usize = beams.iter().map(|b| b.tokens.len() + 1).sum();
        if let Some(c) = &charge {
            c.add(prompt.len() as u64, computed as u64);
        }
        for b in beams.into_iter().take(n) {
            let c = Completion {
                text: tok.decode(&b.tokens, v.skip_special_tokens),
                tokens: Vec::new(),
                prompt_logprobs: Vec::new(),
                finish: if b.ended_by.is_some() {
                    Finish::Stop
                } else {
                    Finish::Length
                },
                usage: Usage {
                    prompt_tokens: prompt.len(),
                    completion_tokens: b.tokens.len() + usize::from(b.ended_by.is_some()),
                    cached_tokens: 0,
                    queue_us: 0,
                },
            };
            observe(state, out.len(), &prompt, start, &c);
            out.push(c);
        }
    }
    Ok(out)
}

/// Counts a returned beam in the metrics and the request log as a whole (unstreamed)
/// answer, as a sampled choice would be.
fn observe(
    state: &InferenceState,
    index: usize,
    prompt: &[u32],
    start: std::time::Instant,
    c: &Completion,
) {
    use std::sync::atomic::Ordering;
    let m = &state.app.metrics;
    m.e2e.observe(start.elapsed().as_secs_f64());
    m.prompt_tokens
        .fetch_add(c.usage.prompt_tokens as u64, Ordering::Relaxed);
    m.generation_tokens
        .fetch_add(c.usage.completion_tokens as u64, Ordering::Relaxed);
    if let Some(mut trace) = crate::monitoring::Trace::begin(&state.app, index, prompt, start) {
        trace.on_event(&TokenEvent::Done {
            finish: c.finish,
            usage: c.usage,
            text: c.text.clone(),
        });
        trace.finish(
            &state.app,
            crate::monitoring::Outcome::Done(c.finish, c.usage),
        );
    }
}
