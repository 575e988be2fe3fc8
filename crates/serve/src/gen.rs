//! What both APIs share between parsing a body and writing a response: validated
//! sampling parameters, the request body reader with its size limit, and the token
//! event stream of each choice with its latency metrics.
//!
//! Knows no wire format beyond "a JSON body"; OpenAI and KServe shapes live in their
//! own modules.

use crate::error::ApiError;
use crate::{AppState, InferenceState};
use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use futures_util::stream::{self, Stream, StreamExt};
use hangar_engine::prompt::{self, Collector, Completion, Prompt};
use hangar_engine::sampler::SamplingParams;
use hangar_engine::{Finish, GenerateRequest, ModelInfo, TokenEvent};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedReceiver;

/// Most choices (n × prompts) one request may ask for.
pub const MAX_CHOICES: usize = 64;
/// Most alternatives per token in logprob reports.
pub const MAX_TOP_LOGPROBS: usize = 20;

/// Reads the whole body, answering 413 past `limit` bytes.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ApiError::too_large(limit));
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if crate::server::is_body_timeout(&e) {
            return ApiError::body_timeout();
        }
        let msg = format!("{e}");
        let too_large = std::error::Error::source(&e)
            .map(|s| s.to_string().contains("length limit"))
            .unwrap_or(false)
            || msg.contains("length limit");
        if too_large {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("could not read the request body: {msg}"))
        }
    })
}

/// Parses a JSON body into `T`, with serde's message (what and where) on failure.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(ApiError::json)
}

/// Sampling and stopping options as clients send them (before validation).
#[derive(Debug, Clone, Default)]
pub struct SamplingOptions {
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// (token id as sent, bias)
    pub logit_bias: Vec<(String, f32)>,
    pub logprobs: Option<i64>,
    pub skip_special_tokens: bool,
}

fn check_range(
    name: &str,
    v: Option<f32>,
    lo: f32,
    hi: f32,
    lo_open: bool,
) -> Result<(), ApiError> {
    if let Some(x) = v {
        let bad = !x.is_finite() || x > hi || x < lo || (lo_open && x == lo);
        if bad {
            let open = if lo_open { "(" } else { "[" };
            return Err(ApiError::param(
                name,
                format!("{name} must be in {open}{lo}, {hi}], got {x}"),
            ));
        }
    }
    Ok(())
}

/// Validated, ready-to-submit options.
#[derive(Debug, Clone)]
pub struct Validated {
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub logprobs: Option<usize>,
    pub seed: Option<u64>,
    pub skip_special_tokens: bool,
}

impl SamplingOptions {
    /// Checks every range against the model; the error names the parameter.
    pub fn validate(&self, info: &ModelInfo) -> Result<Validated, ApiError> {
        check_range("temperature", self.temperature, 0.0, 2.0, false)?;
        check_range("top_p", self.top_p, 0.0, 1.0, true)?;
        check_range("min_p", self.min_p, 0.0, 1.0, false)?;
        check_range("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?;
        check_range(
            "frequency_penalty",
            self.frequency_penalty,
            -2.0,
            2.0,
            false,
        )?;
        check_range(
            "repetition_penalty",
            self.repetition_penalty,
            0.0,
            10.0,
            true,
        )?;
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => usize::try_from(k)
                .unwrap_or(usize::MAX)
                .min(info.vocab_size),
            Some(k) => {
                return Err(ApiError::param(
                    "top_k",
                    format!("top_k must be -1 (off) or positive, got {k}"),
                ))
            }
        };
        let max_tokens = match self.max_tokens {
            None => None,
            Some(m) if m >= 1 => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            Some(m) => {
                return Err(ApiError::param(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {m}"),
                ))
            }
        };
        let logprobs = match self.logprobs {
            None => None,
            Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
            Some(k) => {
                return Err(ApiError::param(
                    "logprobs",
                    format!(
                        "logprobs / top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"
                    ),
                ))
            }
        };
        if self.stop.len() > 16 {
            return Err(ApiError::param("stop", "at most 16 stop sequences"));
        }
        if let Some(s) = self.stop.iter().find(|s| s.len() > 1024) {
            return Err(ApiError::param(
                "stop",
                format!(
                    "stop sequence of {} bytes is too long (limit 1024)",
                    s.len()
                ),
            ));
        }
        if let Some(&id) = self
            .stop_token_ids
            .iter()
            .find(|&&id| id as usize >= info.vocab_size)
        {
            return Err(ApiError::param(
                "stop_token_ids",
                format!(
                    "token id {id} is outside the vocabulary ({})",
                    info.vocab_size
                ),
            ));
        }
        if self.logit_bias.len() > 1024 {
            return Err(ApiError::param(
                "logit_bias",
                "at most 1024 logit_bias entries",
            ));
        }
        let mut bias = Vec::with_capacity(self.logit_bias.len());
        for (k, v) in &self.logit_bias {
            let id: u32 = k.trim().parse().map_err(|_| {
                ApiError::param(
                    "logit_bias",
                    format!("logit_bias key {k:?} is not a token id"),
                )
            })?;
            if id as usize >= info.vocab_size {
                return Err(ApiError::param(
                    "logit_bias",
                    format!(
                        "logit_bias token {id} is outside the vocabulary ({})",
                        info.vocab_size
                    ),
                ));
            }
            if !(-100.0..=100.0).contains(v) {
                return Err(ApiError::param(
                    "logit_bias",
                    format!("logit_bias values must be in [-100, 100], got {v}"),
                ));
            }
            bias.push((id, *v));
        }
        let seed = self.seed.map(|s| s as u64);
        let sampling = crate::sampling::build(self, top_k, bias, seed, logprobs);
        Ok(Validated {
            sampling,
            max_tokens,
            stop: self
                .stop
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            logprobs,
            seed,
            skip_special_tokens: self.skip_special_tokens,
        })
    }
}

impl Validated {
    /// The engine request of choice `index` over `prompt`; `default_max` applies when
    /// the client gave no max_tokens. Checks the context length.
    pub fn request(
        &self,
        prompt: Vec<u32>,
        index: usize,
        default_max: Option<usize>,
        info: &ModelInfo,
    ) -> Result<GenerateRequest, ApiError> {
        let max_tokens = prompt::fit_max_tokens(info, prompt.len(), self.max_tokens, default_max)?;
        let mut sampling = self.sampling.clone();
        crate::sampling::set_seed(
            &mut sampling,
            self.seed.map(|s| s.wrapping_add(index as u64)),
        );
        Ok(GenerateRequest {
            prompt,
            sampling,
            max_tokens,
            stop: self.stop.clone(),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
            logprobs: self.logprobs,
            prompt_logprobs: None,
            skip_special_tokens: self.skip_special_tokens,
            constraint: None,
            tenant: Default::default(),
            adapter: None,
        })
    }
}

/// Tokenizes a client's prompt with the server's text encoding (the engine's request
/// API does the work).
pub fn encode(state: &InferenceState, p: Prompt) -> Result<Vec<u32>, ApiError> {
    Ok(prompt::encode(state.engine(), p, state.text_encoding())?)
}

/// `finish_reason` of both APIs.
pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// One choice's event stream, recording TTFT, inter-token and end-to-end latency.
pub struct ChoiceStream {
    pub index: usize,
    rx: UnboundedReceiver<TokenEvent>,
    state: Arc<AppState>,
    start: Instant,
    last: Option<Instant>,
    done: bool,
    /// What the monitor gets when the stream ends (None when monitoring is off).
    trace: Option<crate::monitoring::Trace>,
    /// The model this choice runs on: a reload frees the old engine only once every
    /// stream on it has ended.
    _model: Option<Arc<crate::Inference>>,
    /// The managed key this request is charged to, with this choice's prompt length
    /// and tokens seen (a choice that never finishes is charged what it streamed).
    charge: Option<Arc<crate::tenants::KeyCharge>>,
    prompt_len: usize,
    seen: usize,
}

impl ChoiceStream {
    pub fn new(
        index: usize,
        rx: UnboundedReceiver<TokenEvent>,
        state: Arc<AppState>,
        start: Instant,
    ) -> Self {
        ChoiceStream {
            index,
            rx,
            state,
            start,
            last: None,
            done: false,
            trace: None,
            _model: None,
            charge: None,
            prompt_len: 0,
            seen: 0,
        }
    }

    /// Charges this choice's tokens to a managed key when it ends.
    fn charged(mut self, charge: Arc<crate::tenants::KeyCharge>, prompt_len: usize) -> Self {
        self.charge = Some(charge);
        self.prompt_len = prompt_len;
        self
    }

    /// Hands this choice's tokens to its key's charge (once).
    fn settle(&mut self, prompt: usize, completion: usize) {
        if let Some(c) = self.charge.take() {
            c.add(prompt as u64, completion as u64);
        }
    }

    /// Records this choice in the request log and drift windows when it ends.
    pub fn traced(mut self, prompt: &[u32]) -> Self {
        self.trace = crate::monitoring::Trace::begin(&self.state, self.index, prompt, self.start);
        self
    }

    /// The next event, `None` once the engine closed the stream.
    pub async fn next(&mut self) -> Option<TokenEvent> {
        let ev = self.rx.recv().await;
        let now = Instant::now();
        let m = &self.state.metrics;
        match &ev {
            Some(TokenEvent::Token(_)) => {
                match self.last {
                    None => m.ttft.observe((now - self.start).as_secs_f64()),
                    Some(t) => m.itl.observe((now - t).as_secs_f64()),
                }
                self.last = Some(now);
                m.generation_tokens.fetch_add(1, Ordering::Relaxed);
                self.seen += 1;
            }
            Some(TokenEvent::Done { usage, .. }) => {
                self.done = true;
                if let Some(c) = self.charge.take() {
                    c.add(usage.prompt_tokens as u64, usage.completion_tokens as u64);
                }
                m.e2e.observe((now - self.start).as_secs_f64());
                m.prompt_tokens
                    .fetch_add(usage.prompt_tokens as u64, Ordering::Relaxed);
            }
            Some(TokenEvent::PromptLogprobs(_)) => {}
            Some(TokenEvent::Error(_)) | None => self.done = true,
        }
        if let (Some(trace), Some(ev)) = (self.trace.as_mut(), ev.as_ref()) {
            trace.on_event(ev);
        }
        if self.done {
            if let Some(trace) = self.trace.take() {
                let outcome = match &ev {
                    Some(TokenEvent::Done { finish, usage, .. }) => {
                        crate::monitoring::Outcome::Done(*finish, *usage)
                    }
                    _ => crate::monitoring::Outcome::Error,
                };
                trace.finish(&self.state, outcome);
            }
        }
        ev
    }
}

impl Drop for ChoiceStream {
    fn drop(&mut self) {
        self.settle(self.prompt_len, self.seen);
        if !self.done {
            self.state.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            if let Some(trace) = self.trace.take() {
                trace.finish(&self.state, crate::monitoring::Outcome::Cancelled);
            }
        }
    }
}

/// Events of several choices, interleaved as they come, tagged with the choice index.
pub type Merged = Pin<Box<dyn Stream<Item = (usize, TokenEvent)> + Send>>;

pub fn merge(choices: Vec<ChoiceStream>) -> Merged {
    let streams = choices.into_iter().map(|c| {
        stream::unfold(c, |mut c| async move {
            let ev = c.next().await?;
            Some(((c.index, ev), c))
        })
        .boxed()
    });
    stream::select_all(streams).boxed()
}

/// Submits every request or none (the engine's request API), each choice's stream
/// wrapped for metrics. The caller's tenant goes with each request (fair admission);
/// a managed key's limits are checked first, reserving prompt + max_tokens of every
/// choice, and the request is charged what it used once its choices end.
pub fn submit_all(
    state: &InferenceState,
    mut reqs: Vec<GenerateRequest>,
) -> Result<Vec<ChoiceStream>, ApiError> {
    let start = Instant::now();
    let caller = crate::auth::current_caller();
    let tenant = caller.as_ref().map(|c| c.tenant()).unwrap_or_default();
    for r in &mut reqs {
        r.tenant = tenant;
    }
    let charge = match &caller {
        Some(crate::auth::Caller::Key(key)) => {
            let reserve: u64 = reqs
                .iter()
                .map(|r| (r.prompt.len() + r.max_tokens) as u64)
                .sum();
            let charge = state.app.tenants.admit(key, reserve)?;
            if let Some(m) = &state.app.monitor {
                charge.priced(m.prices(), state.model_name());
            }
            Some(Arc::new(charge))
        }
        _ => None,
    };
    let prompt_lens: Vec<usize> = reqs.iter().map(|r| r.prompt.len()).collect();
    let prompts: Vec<Vec<u32>> = if state.app.monitor.is_some() {
        reqs.iter().map(|r| r.prompt.clone()).collect()
    } else {
        Vec::new()
    };
    let streams = prompt::submit_all(state.engine(), reqs, state.app.cfg.max_queue)?;
    Ok(streams
        .into_iter()
        .enumerate()
        .map(|(i, rx)| {
            let mut c = ChoiceStream::new(i, rx, state.app.clone(), start);
            c._model = Some(state.service.clone());
            if let Some(charge) = &charge {
                c = c.charged(charge.clone(), prompt_lens.get(i).copied().unwrap_or(0));
            }
            match prompts.get(i) {
                Some(p) => c.traced(p),
                None => c,
            }
        })
        .collect())
}

/// Waits for every choice and returns their final results in order.
pub async fn collect(
    choices: Vec<ChoiceStream>,
    keep_tokens: bool,
) -> Result<Vec<Completion>, ApiError> {
    let mut c = Collector::new(choices.len(), keep_tokens);
    let mut merged = merge(choices);
    while let Some((i, ev)) = merged.next().await {
        c.push(i, ev)?;
    }
    Ok(c.finish()?)
}
