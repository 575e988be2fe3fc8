//! OpenAI-compatible endpoints: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions`, streaming (SSE) or not.
//!
//! A thin adapter: unpacks the wire types, hands prompts to the engine's request API
//! (`hangar_engine::prompt`, through `gen`), and wraps the results; no sampling or
//! scheduling here.

mod beam;
mod gbnf;
mod stored_prompt;
mod stream;
mod structured;
mod tools;
pub mod types;

pub use tokenize::{detokenize, tokenize};
mod tokenize;

use crate::error::ApiError;
use crate::gen::{self, read_body, submit_all, SamplingOptions, Validated, MAX_CHOICES};
use crate::{AppState, InferenceState};
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hangar_engine::chat::ChatMessage;
use hangar_engine::{Completion, GenerateRequest, Prompt, Usage};
use hangar_tokenizer::Tokenizer;
use std::sync::Arc;
use types::{
    AssistantMessage, ChatChoice, ChatLogprobs, ChatRequest, Common, CompletionChoice,
    CompletionLogprobs, CompletionRequest, Content, Envelope, Message, ModelCard, ModelList,
    OneOrMany, PromptInput,
};

/// The inference routes of the OpenAI API (`/v1/models` is mounted with health, as it
/// answers without a model too).
pub(crate) fn routes(state: crate::InferenceRoutes) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/rag/chat", post(rag_chat))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .with_state(state)
}

/// `GET /v1/models`: the served model and the embedding model, if any.
pub async fn models(State(state): State<Arc<AppState>>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: state
            .inference
            .iter()
            .map(|slot| {
                let i = slot.current();
                ModelCard {
                    id: i.model_name.clone(),
                    object: "model",
                    created: state.started,
                    owned_by: "hangar",
                    max_model_len: i.engine.info().max_model_len,
                    version: i.version.as_ref().map(|v| v.version),
                    reference: i.version.as_ref().map(|v| v.reference()),
                    sha256: i.version.as_ref().and_then(|v| v.sha256.clone()),
                    device: i.engine.info().device.clone(),
                    root: None,
                    parent: None,
                }
            })
            .chain(adapter_cards(&state))
            .chain(state.embeddings.iter().map(|e| ModelCard {
                id: e.model().name().to_string(),
                object: "model",
                created: state.started,
                owned_by: "hangar",
                max_model_len: e.model().max_tokens(),
                version: None,
                reference: None,
                sha256: None,
                device: "cpu".into(),
                root: None,
                parent: None,
            }))
            .collect(),
    })
}

/// The loaded LoRA adapters, each with the served model as its parent (as vLLM lists
/// them).
fn adapter_cards(state: &AppState) -> Vec<ModelCard> {
    let Some(slot) = &state.inference else {
        return Vec::new();
    };
    let base = slot.current();
    state
        .lora
        .list()
        .into_iter()
        .map(|(name, l)| ModelCard {
            id: name,
            object: "model",
            created: l.created,
            owned_by: "hangar",
            max_model_len: base.engine.info().max_model_len,
            version: None,
            reference: None,
            sha256: None,
            device: base.engine.info().device.clone(),
            root: Some(l.source),
            parent: Some(base.model_name.clone()),
        })
        .collect()
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

    /// The model name to echo and the LoRA adapter the request runs under.
    fn check_model(
        &self,
        state: &InferenceState,
    ) -> Result<(String, Option<Arc<hangar_engine::LoraAdapter>>), ApiError> {
        crate::lora_api::resolve_model(state, self.model.as_deref())
    }

    fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
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

/// Which OpenAI API a job answers.
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
    /// Completions with `echo` and `logprobs`: the prompt's tokens lead the logprobs.
    echo_logprobs: bool,
    /// Chat with tools: answers are parsed for tool calls.
    tools: Option<tools::ToolSetup>,
    /// The stored prompt the request was rendered from, reported in the response.
    prompt: Option<stored_prompt::PromptUsed>,
    /// Retrieval-augmented chat: the passages the prompt cites.
    citations: Option<Vec<crate::rag_api::Citation>>,
}

impl Job {
    /// Total usage over choices; a prompt shared by `n` choices counts once.
    fn sum_usage(&self, per_choice: impl Iterator<Item = (usize, Usage)>) -> Usage {
        let mut total = Usage::default();
        let mut seen = std::collections::HashSet::new();
        for (i, u) in per_choice {
            if seen.insert(self.prompt_of.get(i).copied().unwrap_or(i)) {
                total.prompt_tokens += u.prompt_tokens;
                total.cached_tokens += u.cached_tokens;
            }
            total.completion_tokens += u.completion_tokens;
        }
        total
    }

    fn envelope<C>(
        &self,
        object: &'static str,
        choices: Vec<C>,
        usage: Option<Option<Usage>>,
    ) -> Envelope<C> {
        Envelope {
            id: self.id.clone(),
            object,
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: usage.map(|u| u.map(Into::into)),
            prompt: self.prompt.clone(),
            citations: None,
        }
    }
}

/// `POST /v1/completions`
pub async fn completions(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req: CompletionRequest = gen::parse_json(&bytes)?;
    let (model, adapter) = req.common.check_model(&state)?;
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::param("suffix", "suffix is not supported"));
    }
    let n = req.common.n()?;
    let beam = beam::params(
        beam::Ask {
            common: &req.common,
            use_beam_search: req.use_beam_search,
            best_of: req.best_of,
            length_penalty: req.length_penalty,
            extras: if req.logprobs.is_some() {
                Some("logprobs")
            } else if req.echo.unwrap_or(false) {
                Some("echo")
            } else {
                None
            },
        },
        n,
    )?;
    let echo = req.echo.unwrap_or(false);
    let stream = req.common.stream.unwrap_or(false);
    // `max_tokens: 0` with `echo` only scores the prompt (lm-eval's log-likelihoods).
    let score_only = echo && req.common.max_tokens == Some(0);
    let echo_logprobs = echo && req.logprobs.is_some();
    if stream && (score_only || echo_logprobs) {
        return Err(ApiError::param(
            "echo",
            "echo with logprobs or with max_tokens 0 is not supported when streaming; set stream to false",
        ));
    }
    let mut options = req.common.options(req.logprobs);
    if score_only {
        options.max_tokens = None;
    }
    let v = options.validate(state.engine().info())?;
    let (input, prompt_used) =
        completion_input(&state, req.prompt, req.prompt_template, req.variables).await?;
    let prompts: Vec<Prompt> = match input {
        PromptInput::Text(t) => vec![Prompt::Text(t)],
        PromptInput::Texts(ts) => ts.into_iter().map(Prompt::Text).collect(),
        PromptInput::Tokens(ids) => vec![Prompt::Tokens(ids)],
        PromptInput::TokenLists(l) => l.into_iter().map(Prompt::Tokens).collect(),
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
    if let Some((width, length_penalty)) = beam {
        let ids = prompts
            .into_iter()
            .map(|p| gen::encode(&state, p))
            .collect::<Result<Vec<_>, _>>()?;
        let prompt_of = (0..ids.len())
            .flat_map(|pi| std::iter::repeat_n(pi, n))
            .collect();
        let results =
            beam::run(&state, ids, &v, n, width, length_penalty, Some(16), adapter).await?;
        let job = Job {
            api: Api::Completions,
            id: request_id("cmpl", &state.app),
            model,
            created: now_secs(),
            prompt_of,
            logprobs: false,
            echo: Vec::new(),
            echo_logprobs: false,
            tools: None,
            prompt: prompt_used,
            citations: None,
        };
        return Ok(whole_response(&job, results, state.engine().tokenizer()));
    }
    let mut reqs = Vec::new();
    let mut prompt_of = Vec::new();
    let mut echoes = Vec::new();
    for (pi, p) in prompts.into_iter().enumerate() {
        let text = match &p {
            Prompt::Text(t) if echo => Some(t.clone()),
            _ => None,
        };
        let ids = gen::encode(&state, p)?;
        let echoed =
            echo.then(|| text.unwrap_or_else(|| state.engine().tokenizer().decode(&ids, false)));
        for j in 0..n {
            let mut r = v.request(ids.clone(), j, Some(16), state.engine().info())?;
            if score_only {
                r.max_tokens = 0;
            }
            if echo_logprobs {
                r.prompt_logprobs = v.logprobs;
            }
            r.adapter = adapter.clone();
            reqs.push(r);
            prompt_of.push(pi);
            echoes.push(echoed.clone());
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
        echo_logprobs,
        tools: None,
        prompt: prompt_used,
        citations: None,
    };
    let guided = req.common.structured.guided()?;
    structured::attach(&state, guided, &mut reqs).await?;
    run(&state, job, reqs, &req.common).await
}

/// The completions prompt: the request's text, or a stored prompt rendered to text.
async fn completion_input(
    state: &InferenceState,
    prompt: Option<PromptInput>,
    template: Option<String>,
    variables: Option<serde_json::Map<String, serde_json::Value>>,
) -> Result<(PromptInput, Option<stored_prompt::PromptUsed>), ApiError> {
    match (prompt, template) {
        (Some(p), None) if variables.is_none() => Ok((p, None)),
        (Some(_), None) => Err(ApiError::param(
            "variables",
            "variables need a stored prompt: add \"prompt_template\": \"name@version\"",
        )),
        (None, Some(t)) => {
            let (used, r) = stored_prompt::render(state, "prompt_template", t, variables).await?;
            Ok((PromptInput::Text(r.to_text()), Some(used)))
        }
        (Some(_), Some(_)) => Err(ApiError::param(
            "prompt_template",
            "give either prompt (the text) or prompt_template (a stored prompt), not both",
        )),
        (None, None) => Err(ApiError::param(
            "prompt",
            "prompt is required (or prompt_template with variables)",
        )),
    }
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

/// A chat request's tool setup and its conversation for the model's chat template
/// (tools rendered by the template when it can, else by the built-in format).
fn conversation(
    state: &InferenceState,
    messages: Vec<Message>,
    fields: &tools::ToolFields,
) -> Result<(Option<tools::ToolSetup>, tools::Conversation), ApiError> {
    let engine = state.engine();
    let template_tools = engine.chat_supports_tools();
    let family = tools::Family::detect(
        &engine.info().arch,
        template_tools
            .then(|| engine.chat_template_source())
            .flatten(),
    );
    let setup = fields.setup(family)?;
    let convo = tools::chat_messages(
        messages,
        setup.as_ref(),
        family,
        template_tools,
        message_text,
    )?;
    Ok((setup, convo))
}

fn chat_prompt(messages: Vec<ChatMessage>, tools: Option<Vec<serde_json::Value>>) -> Prompt {
    match tools {
        Some(t) => Prompt::ChatWithTools(messages, t),
        None => Prompt::Chat(messages),
    }
}

/// `POST /v1/chat/completions` (retrieval-augmented when the body has `retrieval`).
pub async fn chat(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    chat_request(state, gen::parse_json(&bytes)?).await
}

/// `POST /v1/rag/chat`: a chat completion whose body must have `retrieval`.
pub async fn rag_chat(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req: ChatRequest = gen::parse_json(&bytes)?;
    if req.retrieval.as_ref().is_none_or(|r| r.is_null()) {
        return Err(ApiError::param(
            "retrieval",
            "/v1/rag/chat needs \"retrieval\": {\"collection\": \"...\", \"top_k\": 4}",
        ));
    }
    chat_request(state, req).await
}

async fn chat_request(state: InferenceState, req: ChatRequest) -> Result<Response, ApiError> {
    let (model, adapter) = req.common.check_model(&state)?;
    let n = req.common.n()?;
    if req.messages.is_empty() && req.stored_prompt.prompt.is_none() {
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
    let beam = beam::params(
        beam::Ask {
            common: &req.common,
            use_beam_search: req.use_beam_search,
            best_of: req.best_of,
            length_penalty: req.length_penalty,
            extras: if logprobs.is_some() {
                Some("logprobs")
            } else if req.tools.tools.as_ref().is_some_and(|t| !t.is_empty()) {
                Some("tools")
            } else {
                None
            },
        },
        n,
    )?;
    let (tool_setup, convo) = conversation(&state, req.messages, &req.tools)?;
    let guided = structured::guided_with_tools(&req.common.structured, tool_setup.as_ref())?;
    let (mut messages, prompt_used) =
        stored_prompt::chat_messages(&state, req.stored_prompt, convo.messages).await?;
    // Retrieval runs on the rendered conversation (a stored prompt may set the question).
    let citations = match req.retrieval {
        Some(r) if !r.is_null() => Some(crate::rag_api::augment(&state, r, &mut messages).await?),
        _ => None,
    };
    let prompt = gen::encode(&state, chat_prompt(messages, convo.tools))?;
    let job = Job {
        api: Api::Chat,
        id: request_id("chatcmpl", &state.app),
        model,
        created: now_secs(),
        prompt_of: vec![0; n],
        logprobs: v.logprobs.is_some(),
        echo: vec![None; n],
        echo_logprobs: false,
        tools: tool_setup,
        prompt: prompt_used,
        citations,
    };
    if let Some((width, length_penalty)) = beam {
        let results = beam::run(
            &state,
            vec![prompt],
            &v,
            n,
            width,
            length_penalty,
            None,
            adapter,
        )
        .await?;
        return Ok(whole_response(&job, results, state.engine().tokenizer()));
    }
    let mut reqs = (0..n)
        .map(|j| v.request(prompt.clone(), j, None, state.engine().info()))
        .collect::<Result<Vec<_>, _>>()?;
    for r in &mut reqs {
        r.adapter = adapter.clone();
    }
    structured::attach(&state, guided, &mut reqs).await?;
    run(&state, job, reqs, &req.common).await
}

async fn run(
    state: &InferenceState,
    job: Job,
    reqs: Vec<GenerateRequest>,
    common: &Common,
) -> Result<Response, ApiError> {
    let choices = submit_all(state, reqs)?;
    if common.stream.unwrap_or(false) {
        Ok(stream::response(job, choices, common.include_usage()))
    } else {
        let results = gen::collect(choices, job.logprobs).await?;
        Ok(whole_response(&job, results, state.engine().tokenizer()))
    }
}

/// The non-streamed answer.
fn whole_response(job: &Job, results: Vec<Completion>, tok: &Tokenizer) -> Response {
    let usage = job.sum_usage(results.iter().map(|c| c.usage).enumerate());
    match job.api {
        Api::Completions => {
            let choices = results
                .into_iter()
                .enumerate()
                .map(|(i, c)| CompletionChoice {
                    index: i,
                    logprobs: job.logprobs.then(|| {
                        if job.echo_logprobs {
                            CompletionLogprobs::with_prompt(&c.prompt_logprobs, &c.tokens, tok)
                        } else {
                            let echoed = job.echo.get(i).cloned().flatten();
                            let offset0 = echoed.map_or(0, |e| e.chars().count());
                            CompletionLogprobs::from_tokens(&c.tokens, offset0)
                        }
                    }),
                    text: match job.echo.get(i).cloned().flatten() {
                        Some(p) => p + &c.text,
                        None => c.text,
                    },
                    finish_reason: Some(gen::finish_reason(c.finish)),
                })
                .collect();
            Json(job.envelope("text_completion", choices, Some(Some(usage)))).into_response()
        }
        Api::Chat => {
            let choices = results
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    let (content, calls, finish) =
                        tools::answer(job.tools.as_ref(), c.text, c.finish);
                    ChatChoice {
                        index: i,
                        logprobs: job.logprobs.then(|| ChatLogprobs::from_tokens(&c.tokens)),
                        message: AssistantMessage {
                            role: "assistant",
                            content,
                            tool_calls: calls,
                        },
                        finish_reason: Some(finish),
                    }
                })
                .collect();
            let mut env = job.envelope("chat.completion", choices, Some(Some(usage)));
            env.citations = job.citations.clone();
            Json(env).into_response()
        }
    }
}
