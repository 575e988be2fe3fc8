//! OpenAI-compatible endpoints: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions`, streaming (SSE) or not.
//!
//! Parses and validates bodies into engine requests and shapes events into OpenAI
//! JSON; the engine does the work.

pub mod types;

use crate::error::ApiError;
use crate::gen::{
    self, merge, read_body, submit_all, ChoiceStream, Merged, SamplingOptions, Validated,
    MAX_CHOICES,
};
use crate::{AppState, InferenceState};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures_util::stream::{self, StreamExt};
use hangar_engine::chat::ChatMessage;
use hangar_engine::{Finish, TokenEvent, TokenOut, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by both endpoints.
#[derive(Debug, Deserialize, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<OneOrMany<String>>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub skip_special_tokens: Option<bool>,
}

impl Common {
    fn options(&self, logprobs: Option<i64>) -> SamplingOptions {
        SamplingOptions {
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            stop: self
                .stop
                .clone()
                .map(OneOrMany::into_vec)
                .unwrap_or_default(),
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logit_bias: self
                .logit_bias
                .as_ref()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default(),
            logprobs,
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
        }
    }

    fn n(&self) -> Result<usize, ApiError> {
        match self.n {
            None => Ok(1),
            Some(n) if (1..=MAX_CHOICES as i64).contains(&n) => Ok(n as usize),
            Some(n) => Err(ApiError::param(
                "n",
                format!("n must be between 1 and {MAX_CHOICES}, got {n}"),
            )),
        }
    }

    fn check_model(&self, state: &InferenceState) -> Result<String, ApiError> {
        let served = state.model_name();
        match self.model.as_deref() {
            None | Some("") => Ok(served.to_string()),
            Some(m) if m == served => Ok(m.to_string()),
            Some(m) => Err(ApiError::model_not_found(m, served)),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    #[serde(flatten)]
    pub common: Common,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub common: Common,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn request_id(prefix: &str, state: &AppState) -> String {
    let n = state
        .next_request
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{:x}{n:06x}", state.started)
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

fn finish_str(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "stop",
        Finish::Length => "length",
    }
}

/// The inference routes of the OpenAI API (`/v1/models` is mounted with health, as it
/// answers without a model too).
pub(crate) fn routes(state: InferenceState) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .with_state(state)
}

/// `GET /v1/models`: the served model, or nothing on a server without one.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    let data: Vec<Value> = state
        .inference
        .iter()
        .map(|i| {
            json!({
                "id": i.model_name,
                "object": "model",
                "created": state.started,
                "owned_by": "hangar",
                "max_model_len": i.engine.info().max_model_len,
            })
        })
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

/// Which API's JSON to write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Completions,
    Chat,
}

/// Everything needed to write the answer of one request.
struct Job {
    api: Api,
    id: String,
    model: String,
    created: u64,
    /// Per choice: prompt index (usage counts each prompt once).
    prompt_of: Vec<usize>,
    logprobs: bool,
    echo: Vec<Option<String>>,
}

/// `POST /v1/completions`
pub async fn completions(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req: CompletionRequest = gen::parse_json(&bytes)?;
    let model = req.common.check_model(&state)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "suffix is not supported"));
    }
    let n = req.common.n()?;
    if let Some(b) = req.best_of {
        if b != n as i64 {
            return Err(ApiError::param(
                "best_of",
                "best_of other than n is not supported",
            ));
        }
    }
    let v = req
        .common
        .options(req.logprobs)
        .validate(state.engine().info())?;
    let tok = state.engine().tokenizer();
    let (prompts, texts): (Vec<Vec<u32>>, Vec<Option<String>>) = match req.prompt {
        Prompt::Text(t) => (vec![tok.encode(&t, true, true)], vec![Some(t)]),
        Prompt::Texts(ts) => ts
            .into_iter()
            .map(|t| (tok.encode(&t, true, true), Some(t)))
            .unzip(),
        Prompt::Tokens(ids) => (vec![ids], vec![None]),
        Prompt::TokenLists(l) => {
            let k = l.len();
            (l, vec![None; k])
        }
    };
    if prompts.is_empty() {
        return Err(ApiError::param("prompt", "the prompt list is empty"));
    }
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::param(
            "n",
            format!("prompts × n must be at most {MAX_CHOICES}"),
        ));
    }
    let echo = req.echo.unwrap_or(false);
    let info = state.engine().info();
    let mut reqs = Vec::new();
    let mut prompt_of = Vec::new();
    let mut echoes = Vec::new();
    for (pi, p) in prompts.into_iter().enumerate() {
        for j in 0..n {
            reqs.push(v.request(p.clone(), j, Some(16), info)?);
            prompt_of.push(pi);
            echoes.push(if echo {
                Some(texts[pi].clone().unwrap_or_else(|| tok.decode(&p, false)))
            } else {
                None
            });
        }
    }
    let job = Job {
        api: Api::Completions,
        id: request_id("cmpl", &state.app),
        model,
        created: now_secs(),
        prompt_of,
        logprobs: v.logprobs.is_some(),
        echo: echoes,
    };
    run(&state, job, reqs, &req.common).await
}

/// Flattens OpenAI message content to text; anything but text parts is refused.
fn message_text(m: Message, i: usize) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "developer" => "system".to_string(),
        "system" | "user" | "assistant" | "tool" => m.role,
        other => return Err(ApiError::param("messages", format!("messages[{i}].role {other:?} is not one of system, developer, user, assistant, tool"))),
    };
    let content = match m.content {
        None => String::new(),
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for p in parts {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => s.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::param("messages", format!("messages[{i}]: content part of type {kind:?} is not supported (text only)")))
                    }
                }
            }
            s
        }
    };
    Ok(ChatMessage::new(role, content))
}

/// `POST /v1/chat/completions`
pub async fn chat(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req: ChatRequest = gen::parse_json(&bytes)?;
    let model = req.common.check_model(&state)?;
    let n = req.common.n()?;
    if req.messages.is_empty() {
        return Err(ApiError::param("messages", "messages must not be empty"));
    }
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (true, k) => Some(k.unwrap_or(0)),
        (false, Some(_)) => {
            return Err(ApiError::param(
                "top_logprobs",
                "top_logprobs needs logprobs: true",
            ))
        }
        (false, None) => None,
    };
    let v: Validated = req
        .common
        .options(logprobs)
        .validate(state.engine().info())?;
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| message_text(m, i))
        .collect::<Result<Vec<_>, _>>()?;
    let prompt = state
        .engine()
        .encode_chat(&messages)
        .map_err(|e| ApiError::param("messages", e.to_string()))?;
    let info = state.engine().info();
    let reqs = (0..n)
        .map(|j| v.request(prompt.clone(), j, None, info))
        .collect::<Result<Vec<_>, _>>()?;
    let job = Job {
        api: Api::Chat,
        id: request_id("chatcmpl", &state.app),
        model,
        created: now_secs(),
        prompt_of: vec![0; n],
        logprobs: v.logprobs.is_some(),
        echo: vec![None; n],
    };
    run(&state, job, reqs, &req.common).await
}

async fn run(
    state: &InferenceState,
    job: Job,
    reqs: Vec<hangar_engine::GenerateRequest>,
    common: &Common,
) -> Result<Response, ApiError> {
    let choices = submit_all(state, reqs)?;
    if common.stream.unwrap_or(false) {
        let include_usage = common
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        Ok(stream_response(job, choices, include_usage))
    } else {
        collect_response(job, choices).await
    }
}

/// Per-choice accumulation for non-streamed answers.
#[derive(Default)]
struct Collected {
    text: String,
    tokens: Vec<TokenOut>,
    finish: Option<Finish>,
    usage: Usage,
}

fn sum_usage(job: &Job, per_choice: impl Iterator<Item = (usize, Usage)>) -> Usage {
    let mut total = Usage::default();
    let mut seen = std::collections::HashSet::new();
    for (i, u) in per_choice {
        if seen.insert(job.prompt_of[i]) {
            total.prompt_tokens += u.prompt_tokens;
            total.cached_tokens += u.cached_tokens;
        }
        total.completion_tokens += u.completion_tokens;
    }
    total
}

async fn collect_response(job: Job, choices: Vec<ChoiceStream>) -> Result<Response, ApiError> {
    let mut acc: Vec<Collected> = (0..choices.len()).map(|_| Collected::default()).collect();
    let mut merged = merge(choices);
    while let Some((i, ev)) = merged.next().await {
        let c = &mut acc[i];
        match ev {
            TokenEvent::Token(t) => {
                c.text.push_str(&t.text);
                if job.logprobs {
                    c.tokens.push(t);
                }
            }
            TokenEvent::Done {
                finish,
                usage,
                text,
            } => {
                c.text.push_str(&text);
                c.finish = Some(finish);
                c.usage = usage;
            }
            TokenEvent::Error(e) => return Err(ApiError::internal(e)),
        }
    }
    if acc.iter().any(|c| c.finish.is_none()) {
        return Err(ApiError::unavailable(
            "the engine stopped before the request finished",
        ));
    }
    let usage = sum_usage(&job, acc.iter().map(|c| c.usage).enumerate());
    let choices: Vec<Value> = acc
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let finish = c.finish.map(finish_str);
            match job.api {
                Api::Completions => {
                    let text = match &job.echo[i] {
                        Some(p) => format!("{p}{}", c.text),
                        None => c.text,
                    };
                    json!({
                        "index": i,
                        "text": text,
                        "logprobs": if job.logprobs { completion_logprobs(&c.tokens, 0) } else { Value::Null },
                        "finish_reason": finish,
                    })
                }
                Api::Chat => json!({
                    "index": i,
                    "message": { "role": "assistant", "content": c.text },
                    "logprobs": if job.logprobs { json!({ "content": chat_logprobs(&c.tokens) }) } else { Value::Null },
                    "finish_reason": finish,
                }),
            }
        })
        .collect();
    let object = match job.api {
        Api::Completions => "text_completion",
        Api::Chat => "chat.completion",
    };
    Ok(Json(json!({
        "id": job.id,
        "object": object,
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": usage_json(&usage),
    }))
    .into_response())
}

/// Legacy completions logprobs object.
fn completion_logprobs(tokens: &[TokenOut], offset0: usize) -> Value {
    let mut offset = offset0;
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        offsets.push(offset);
        offset += t.token.len();
    }
    json!({
        "tokens": tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": tokens.iter().map(|t| {
            t.top_logprobs.iter().map(|a| (a.token.clone(), json!(a.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// Chat logprobs `content` entries.
fn chat_logprobs(tokens: &[TokenOut]) -> Vec<Value> {
    tokens
        .iter()
        .map(|t| {
            json!({
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.token.as_bytes(),
                "top_logprobs": t.top_logprobs.iter().map(|a| json!({
                    "token": a.token, "logprob": a.logprob, "bytes": a.token.as_bytes(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// State of one SSE answer.
struct Streamer {
    job: Job,
    merged: Merged,
    pending: VecDeque<Event>,
    usage: Vec<Option<Usage>>,
    include_usage: bool,
    finished: bool,
}

impl Streamer {
    fn chunk(&self, choices: Value, usage: Option<Value>) -> Event {
        let object = match self.job.api {
            Api::Completions => "text_completion",
            Api::Chat => "chat.completion.chunk",
        };
        let mut v = json!({
            "id": self.job.id,
            "object": object,
            "created": self.job.created,
            "model": self.job.model,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = usage.unwrap_or(Value::Null);
        }
        Event::default().data(v.to_string())
    }

    fn choice(&self, i: usize, text: &str, tokens: &[TokenOut], finish: Option<Finish>) -> Value {
        let finish = finish.map(finish_str);
        match self.job.api {
            Api::Completions => json!([{
                "index": i,
                "text": text,
                "logprobs": if self.job.logprobs && !tokens.is_empty() { completion_logprobs(tokens, 0) } else { Value::Null },
                "finish_reason": finish,
            }]),
            Api::Chat => {
                let delta = if text.is_empty() && finish.is_some() {
                    json!({})
                } else {
                    json!({ "content": text })
                };
                json!([{
                    "index": i,
                    "delta": delta,
                    "logprobs": if self.job.logprobs && !tokens.is_empty() { json!({ "content": chat_logprobs(tokens) }) } else { Value::Null },
                    "finish_reason": finish,
                }])
            }
        }
    }

    fn start(&mut self) {
        for i in 0..self.usage.len() {
            let first = match (self.job.api, &self.job.echo[i]) {
                (Api::Chat, _) => Some(json!([{
                    "index": i, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null,
                }])),
                (Api::Completions, Some(p)) => Some(self.choice(i, p, &[], None)),
                (Api::Completions, None) => None,
            };
            if let Some(c) = first {
                let ev = self.chunk(c, None);
                self.pending.push_back(ev);
            }
        }
    }

    fn on_event(&mut self, i: usize, ev: TokenEvent) {
        match ev {
            TokenEvent::Token(t) => {
                if !t.text.is_empty() || self.job.logprobs {
                    let text = t.text.clone();
                    let c = self.choice(i, &text, std::slice::from_ref(&t), None);
                    let ev = self.chunk(c, None);
                    self.pending.push_back(ev);
                }
            }
            TokenEvent::Done {
                finish,
                usage,
                text,
            } => {
                self.usage[i] = Some(usage);
                let c = self.choice(i, &text, &[], Some(finish));
                let ev = self.chunk(c, None);
                self.pending.push_back(ev);
            }
            TokenEvent::Error(e) => {
                self.usage[i] = Some(Usage::default());
                let body = types::ErrorBody::from(ApiError::internal(e));
                let data = serde_json::to_string(&body).unwrap_or_default();
                self.pending.push_back(Event::default().data(data));
            }
        }
    }

    fn end(&mut self) {
        if self.include_usage {
            let usage = sum_usage(
                &self.job,
                self.usage
                    .iter()
                    .enumerate()
                    .filter_map(|(i, u)| u.map(|u| (i, u))),
            );
            let mut v = json!({
                "id": self.job.id,
                "object": if self.job.api == Api::Chat { "chat.completion.chunk" } else { "text_completion" },
                "created": self.job.created,
                "model": self.job.model,
                "choices": [],
            });
            v["usage"] = usage_json(&usage);
            self.pending.push_back(Event::default().data(v.to_string()));
        }
        self.pending.push_back(Event::default().data("[DONE]"));
        self.finished = true;
    }
}

fn stream_response(job: Job, choices: Vec<ChoiceStream>, include_usage: bool) -> Response {
    let n = choices.len();
    let mut s = Streamer {
        job,
        merged: merge(choices),
        pending: VecDeque::new(),
        usage: vec![None; n],
        include_usage,
        finished: false,
    };
    s.start();
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(ev) = s.pending.pop_front() {
                return Some((Ok::<Event, Infallible>(ev), s));
            }
            if s.finished {
                return None;
            }
            match s.merged.next().await {
                Some((i, ev)) => s.on_event(i, ev),
                None => s.end(),
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}
