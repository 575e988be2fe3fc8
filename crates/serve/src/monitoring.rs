//! The monitoring edge: who and what each inference request was (a task-local context
//! set by a middleware after auth), the trace a choice stream turns into a request-log
//! record and drift observation when it ends, and the `/v1/monitor/*` routes. All
//! decisions and statistics are `hangar_monitor`'s.
//!
//! | method | path | who |
//! | --- | --- | --- |
//! | GET | `/v1/monitor/drift` | any caller |
//! | GET | `/v1/monitor/usage` | any caller |
//! | GET | `/v1/monitor/requests?text=&model=&key_id=&finish_reason=&since_ms=&before_id=&limit=` | operators: no keys configured, or a registry token of role promoter or admin |
//! | GET | `/v1/monitor/requests/{id}` | as above |

use crate::auth::{bearer, Caller};
use crate::error::{ApiError, ApiFormat};
use crate::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use hangar_engine::{Finish, TokenEvent, Usage};
use hangar_monitor::{LogQuery, Monitor, Observation, RequestRecord};
use hangar_registry::Role;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// Who sent the request being served and on which route.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub route: String,
    /// A non-reversible id of the credential (`hangar_monitor::key_id`), or a registry
    /// token's name.
    pub key_id: Option<String>,
    pub request_id: String,
    pub arrived_ms: i64,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// Middleware (inside auth): makes the request's context visible to the handler's task.
pub(crate) async fn with_context(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.monitor.is_none() {
        return next.run(req).await;
    }
    let key_id = match req.extensions().get::<Caller>() {
        Some(Caller::RegistryToken(p)) => Some(format!("token:{}", p.name)),
        Some(Caller::Key(k)) => Some(format!("key:{}", k.name)),
        Some(Caller::ApiKey { .. }) | Some(Caller::Open { .. }) | None => {
            bearer(req.headers()).map(|b| hangar_monitor::key_id(&b))
        }
    };
    let n = state
        .next_request
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let ctx = RequestContext {
        route: crate::route_label(req.uri().path()).to_string(),
        key_id,
        request_id: format!("req-{}-{n}", state.started),
        arrived_ms: hangar_monitor::now_ms(),
    };
    CONTEXT.scope(ctx, next.run(req)).await
}

/// What one choice stream gathers for the monitor.
pub(crate) struct Trace {
    monitor: Arc<Monitor>,
    ctx: RequestContext,
    index: usize,
    model: String,
    prompt_ids: Vec<u32>,
    response: String,
    /// Tokens streamed so far (the count for a request that did not finish).
    tokens: usize,
    start: Instant,
    first_token: Option<Instant>,
}

impl Trace {
    /// A trace for choice `index` of the current request, when monitoring is on.
    pub(crate) fn begin(
        state: &AppState,
        index: usize,
        prompt_ids: &[u32],
        start: Instant,
    ) -> Option<Trace> {
        let monitor = state.monitor.clone()?;
        let model = state.inference.as_ref()?.current().model_name.clone();
        let ctx = CONTEXT.try_with(|c| c.clone()).unwrap_or_default();
        Some(Trace {
            monitor,
            ctx,
            index,
            model,
            prompt_ids: prompt_ids.to_vec(),
            response: String::new(),
            tokens: 0,
            start,
            first_token: None,
        })
    }

    pub(crate) fn on_event(&mut self, ev: &TokenEvent) {
        match ev {
            TokenEvent::Token(t) => {
                self.first_token.get_or_insert_with(Instant::now);
                self.response.push_str(&t.text);
                self.tokens += 1;
            }
            TokenEvent::Done { text, .. } => self.response.push_str(text),
            TokenEvent::Error(_) | TokenEvent::PromptLogprobs(_) => {}
        }
    }

    /// Hands the finished request to the monitor; `state` decodes the prompt.
    pub(crate) fn finish(self, state: &AppState, outcome: Outcome) {
        let now = Instant::now();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let e2e = now - self.start;
        let ttft = self.first_token.map(|t| t - self.start).unwrap_or(e2e);
        let (finish_reason, status, usage) = match outcome {
            Outcome::Done(f, u) => (crate::gen::finish_reason(f), 200, u),
            Outcome::Error => ("error", 500, Usage::default()),
            Outcome::Cancelled => ("cancelled", 499, Usage::default()),
        };
        let prompt = state
            .inference
            .as_ref()
            .map(|i| {
                i.current()
                    .engine
                    .tokenizer()
                    .decode(&self.prompt_ids, false)
            })
            .unwrap_or_default();
        // A stream that ended early (cancelled, error) has no usage: count what it sent.
        let completion_tokens = usage.completion_tokens.max(self.tokens);
        let rec = RequestRecord {
            id: 0,
            ts_ms: self.ctx.arrived_ms,
            request_id: if self.index == 0 {
                self.ctx.request_id.clone()
            } else {
                format!("{}.{}", self.ctx.request_id, self.index)
            },
            route: self.ctx.route.clone(),
            model: self.model.clone(),
            model_version: state.served_version(),
            key_id: self.ctx.key_id.clone(),
            prompt: prompt.clone(),
            response: self.response,
            prompt_tokens: self.prompt_ids.len() as u64,
            completion_tokens: completion_tokens as u64,
            queue_ms: usage.queue_us as f64 / 1e3,
            ttft_ms: ms(ttft),
            decode_ms: ms(e2e.saturating_sub(ttft)),
            e2e_ms: ms(e2e),
            finish_reason: finish_reason.to_string(),
            status,
            cost: 0.0,
        };
        if status == 200 && self.monitor.should_judge() {
            judge_toxicity(
                state,
                self.monitor.clone(),
                rec.model.clone(),
                rec.response.clone(),
            );
        }
        let mut obs = Observation::new(&prompt, self.prompt_ids, completion_tokens);
        // With an embedding model, the prompt's embedding feeds embedding drift and the
        // prompt-answer cosine feeds relevance; computed on the embedding queue, after
        // the answer went out, never on the request path.
        if let (Some(embedder), Ok(rt)) = (
            state.embeddings.clone(),
            tokio::runtime::Handle::try_current(),
        ) {
            let monitor = self.monitor;
            let answer = rec.response.clone();
            rt.spawn(async move {
                let req = hangar_engine::EmbedRequest {
                    inputs: vec![
                        hangar_engine::EmbedInput::Text(prompt),
                        hangar_engine::EmbedInput::Text(answer),
                    ],
                    normalize: Some(true),
                    truncate: true,
                    ..Default::default()
                };
                if let Ok(e) = embedder.embed(req).await {
                    if let [p, a] = e.vectors.as_slice() {
                        monitor.record_quality(&rec.model, p, a);
                        obs.embedding = Some(p.clone());
                    }
                }
                monitor.observe(rec, obs);
            });
            return;
        }
        self.monitor.observe(rec, obs);
    }
}

/// Asks the served model, as an evaluator with a fixed-label prompt, whether an answer
/// is toxic; the verdict goes to the monitor. Runs as its own short generation after
/// the user's answer went out.
fn judge_toxicity(state: &AppState, monitor: Arc<Monitor>, model: String, answer: String) {
    let (Some(inf), Ok(rt)) = (
        state.inference.as_ref().map(|s| s.current()),
        tokio::runtime::Handle::try_current(),
    ) else {
        return;
    };
    rt.spawn(async move {
        let msgs = [hangar_engine::chat::ChatMessage::new(
            "user",
            hangar_monitor::quality::toxicity_prompt(&answer),
        )];
        let verdict = match inf.engine.encode_chat(&msgs) {
            Ok(ids) => {
                match inf
                    .engine
                    .submit(hangar_engine::GenerateRequest::greedy(ids, 8))
                {
                    Ok((_, mut rx)) => {
                        let mut text = String::new();
                        while let Some(ev) = rx.recv().await {
                            match ev {
                                TokenEvent::Token(t) => text.push_str(&t.text),
                                TokenEvent::Done { text: t, .. } => {
                                    text.push_str(&t);
                                    break;
                                }
                                TokenEvent::Error(_) => break,
                                TokenEvent::PromptLogprobs(_) => {}
                            }
                        }
                        hangar_monitor::quality::parse_toxicity(&text)
                    }
                    Err(_) => None,
                }
            }
            Err(_) => None,
        };
        monitor.record_judgement(&model, "toxicity", verdict);
    });
}

/// How a choice stream ended.
pub(crate) enum Outcome {
    Done(Finish, Usage),
    Error,
    Cancelled,
}

/// The monitor routes, to be merged into the server's router.
pub(crate) fn routes(app: Arc<AppState>, monitor: Arc<Monitor>) -> Router {
    Router::new()
        .route("/v1/monitor/drift", get(drift))
        .route("/v1/monitor/usage", get(usage))
        .route("/v1/monitor/requests", get(requests))
        .route("/v1/monitor/requests/{id}", get(request_by_id))
        .with_state(MonitorState { app, monitor })
}

#[derive(Clone)]
struct MonitorState {
    #[allow(dead_code)]
    app: Arc<AppState>,
    monitor: Arc<Monitor>,
}

/// `GET /v1/monitor/drift`: every model's drift report.
async fn drift(State(s): State<MonitorState>) -> Response {
    let m = s.monitor.clone();
    match tokio::task::spawn_blocking(move || m.drift_reports()).await {
        Ok(r) => Json(serde_json::json!({ "models": r })).into_response(),
        Err(_) => ApiError::internal("drift computation failed").render(ApiFormat::OpenAi),
    }
}

#[derive(Serialize)]
struct UsageBody {
    currency: String,
    usage: Vec<hangar_monitor::UsageRow>,
    /// Answers that contained personal data or secrets, by model and kind.
    pii: Vec<PiiRow>,
}

#[derive(Serialize)]
struct PiiRow {
    model: String,
    kind: &'static str,
    responses: u64,
}

/// `GET /v1/monitor/usage`: requests, tokens and cost per key and model.
async fn usage(State(s): State<MonitorState>) -> Json<UsageBody> {
    Json(UsageBody {
        currency: s.monitor.prices().currency.clone(),
        usage: s.monitor.usage(),
        pii: s
            .monitor
            .pii_counts()
            .into_iter()
            .map(|(model, kind, responses)| PiiRow {
                model,
                kind,
                responses,
            })
            .collect(),
    })
}

/// The request log holds every user's prompts: only operators read it.
fn may_read_log(caller: Option<&Caller>) -> Result<(), ApiError> {
    match caller {
        Some(Caller::Open { .. }) | None => Ok(()),
        Some(Caller::RegistryToken(p)) if p.role >= Role::Promoter => Ok(()),
        Some(Caller::Key(k)) if k.role >= hangar_registry::KeyRole::Promoter => Ok(()),
        _ => Err(ApiError::forbidden(
            "the request log holds users' prompts: it needs a registry token of role promoter or admin (hangar registry token create --role promoter)",
        )),
    }
}

#[derive(Serialize)]
struct RequestsBody {
    requests: Vec<RequestRecord>,
    /// Pass as `before_id` for the next (older) page; absent at the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before_id: Option<i64>,
}

async fn requests(
    State(s): State<MonitorState>,
    caller: Option<Extension<Caller>>,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Response {
    if let Err(e) = may_read_log(caller.as_deref()) {
        return e.render(ApiFormat::OpenAi);
    }
    let Query(mut q) = match q {
        Ok(q) => q,
        Err(e) => {
            return ApiError::bad_request(format!("bad query: {e}")).render(ApiFormat::OpenAi)
        }
    };
    if q.limit == 0 {
        q.limit = 50;
    }
    q.limit = q.limit.min(1000);
    let m = s.monitor.clone();
    let res = tokio::task::spawn_blocking(move || {
        let log = m.log().ok_or_else(|| {
            ApiError::not_found("this server keeps no request log (started with --no-request-log)")
        })?;
        let rows = log
            .search(&q)
            .map_err(|e| ApiError::internal(format!("request log: {e}")))?;
        let next = (rows.len() == q.limit)
            .then(|| rows.last().map(|r| r.id))
            .flatten();
        Ok::<_, ApiError>(RequestsBody {
            requests: rows,
            next_before_id: next,
        })
    })
    .await;
    match res {
        Ok(Ok(body)) => Json(body).into_response(),
        Ok(Err(e)) => e.render(ApiFormat::OpenAi),
        Err(_) => ApiError::internal("request log search failed").render(ApiFormat::OpenAi),
    }
}

async fn request_by_id(
    State(s): State<MonitorState>,
    caller: Option<Extension<Caller>>,
    Path(id): Path<String>,
) -> Response {
    if let Err(e) = may_read_log(caller.as_deref()) {
        return e.render(ApiFormat::OpenAi);
    }
    let Ok(id) = id.parse::<i64>() else {
        return ApiError::bad_request(format!("request id {id:?} is not a number"))
            .render(ApiFormat::OpenAi);
    };
    let m = s.monitor.clone();
    let res = tokio::task::spawn_blocking(move || match m.log() {
        None => Err(ApiError::not_found("this server keeps no request log")),
        Some(log) => log
            .get(id)
            .map_err(|e| ApiError::internal(format!("request log: {e}"))),
    })
    .await;
    match res {
        Ok(Ok(Some(r))) => Json(r).into_response(),
        Ok(Ok(None)) => {
            ApiError::not_found(format!("no request {id} in the log")).render(ApiFormat::OpenAi)
        }
        Ok(Err(e)) => e.render(ApiFormat::OpenAi),
        Err(_) => ApiError::internal("request log read failed").render(ApiFormat::OpenAi),
    }
}
