//! Streamed OpenAI answers: token events of every choice become SSE chunks
//! (`text_completion` / `chat.completion.chunk`), then usage if asked, then `[DONE]`.
//! Shapes events only; the engine and `gen` produce them.

use super::types::{
    ChatChunkChoice, ChatLogprobs, CompletionChoice, CompletionLogprobs, Delta, ErrorBody,
};
use super::{Api, Job};
use crate::error::ApiError;
use crate::gen::{self, merge, ChoiceStream, Merged};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use hangar_engine::{Finish, TokenEvent, TokenOut, Usage};
use serde::Serialize;
use std::collections::VecDeque;
use std::convert::Infallible;

/// State of one SSE answer.
struct Streamer {
    job: Job,
    merged: Merged,
    pending: VecDeque<Event>,
    usage: Vec<Option<Usage>>,
    include_usage: bool,
    finished: bool,
    /// Chat with tools: text held back per choice while it may still be a tool call
    /// (`None` once it is known not to be, and streams as content).
    held: Vec<Option<String>>,
}

fn data<T: Serialize>(v: &T) -> Event {
    Event::default().data(serde_json::to_string(v).unwrap_or_default())
}

impl Streamer {
    fn object(&self) -> &'static str {
        match self.job.api {
            Api::Completions => "text_completion",
            Api::Chat => "chat.completion.chunk",
        }
    }

    /// Queues one chunk; with `include_usage`, `usage` is null but on the last chunk.
    fn push<C: Serialize>(&mut self, choices: Vec<C>, usage: Option<Usage>) {
        let env = self
            .job
            .envelope(self.object(), choices, self.include_usage.then_some(usage));
        self.pending.push_back(data(&env));
    }

    fn push_choice(&mut self, i: usize, text: &str, tokens: &[TokenOut], finish: Option<Finish>) {
        let with_logprobs = self.job.logprobs && !tokens.is_empty();
        match self.job.api {
            Api::Completions => self.push(
                vec![CompletionChoice {
                    index: i,
                    text: text.to_string(),
                    logprobs: with_logprobs.then(|| CompletionLogprobs::from_tokens(tokens, 0)),
                    finish_reason: finish.map(gen::finish_reason),
                }],
                None,
            ),
            Api::Chat => {
                let delta = if text.is_empty() && finish.is_some() {
                    Delta::default()
                } else {
                    Delta {
                        role: None,
                        content: Some(text.to_string()),
                        tool_calls: None,
                    }
                };
                self.push(
                    vec![ChatChunkChoice {
                        index: i,
                        delta,
                        logprobs: with_logprobs.then(|| ChatLogprobs::from_tokens(tokens)),
                        finish_reason: finish.map(gen::finish_reason),
                    }],
                    None,
                )
            }
        }
    }

    fn holding(&self, i: usize) -> bool {
        self.held.get(i).is_some_and(Option::is_some)
    }

    fn push_delta(&mut self, i: usize, delta: Delta, finish: Option<&'static str>) {
        self.push(
            vec![ChatChunkChoice {
                index: i,
                delta,
                logprobs: None,
                finish_reason: finish,
            }],
            None,
        )
    }

    /// The opening chunks: the assistant role for chat (the first also carries the
    /// citations of a retrieval-augmented answer), echoed prompts for completions.
    fn start(&mut self) {
        for i in 0..self.usage.len() {
            match (self.job.api, self.job.echo.get(i).cloned().flatten()) {
                (Api::Chat, _) => {
                    let mut env = self.job.envelope(
                        self.object(),
                        vec![ChatChunkChoice {
                            index: i,
                            delta: Delta {
                                role: Some("assistant"),
                                content: Some(String::new()),
                                tool_calls: None,
                            },
                            logprobs: None,
                            finish_reason: None,
                        }],
                        self.include_usage.then_some(None),
                    );
                    if i == 0 {
                        env.citations = self.job.citations.clone();
                    }
                    self.pending.push_back(data(&env));
                }
                (Api::Completions, Some(p)) => self.push_choice(i, &p, &[], None),
                (Api::Completions, None) => {}
            }
        }
    }

    fn on_event(&mut self, i: usize, ev: TokenEvent) {
        match ev {
            // Streaming never asks for prompt logprobs (echo is refused when streaming).
            TokenEvent::PromptLogprobs(_) => {}
            TokenEvent::Token(t) if self.holding(i) => {
                let setup = self.job.tools.as_ref();
                if let (Some(h), Some(s)) = (self.held.get_mut(i).and_then(Option::as_mut), setup) {
                    h.push_str(&t.text);
                    if !s.may_become_call(h) {
                        let text = std::mem::take(h);
                        self.held[i] = None;
                        self.push_choice(i, &text, std::slice::from_ref(&t), None);
                    }
                }
            }
            TokenEvent::Done {
                finish,
                usage,
                text,
            } if self.holding(i) => {
                if let Some(u) = self.usage.get_mut(i) {
                    *u = Some(usage);
                }
                let mut all = self.held[i].take().unwrap_or_default();
                all.push_str(&text);
                let (content, calls, reason) =
                    super::tools::answer(self.job.tools.as_ref(), all, finish);
                if let Some(c) = content.filter(|c| !c.is_empty()) {
                    self.push_choice(i, &c, &[], None);
                }
                if let Some(calls) = calls {
                    let deltas = calls.iter().enumerate().map(|(k, c)| c.delta(k)).collect();
                    self.push_delta(
                        i,
                        Delta {
                            tool_calls: Some(deltas),
                            ..Delta::default()
                        },
                        None,
                    );
                }
                self.push_delta(i, Delta::default(), Some(reason));
            }
            TokenEvent::Token(t) => {
                if !t.text.is_empty() || self.job.logprobs {
                    self.push_choice(i, &t.text, std::slice::from_ref(&t), None);
                }
            }
            TokenEvent::Done {
                finish,
                usage,
                text,
            } => {
                if let Some(u) = self.usage.get_mut(i) {
                    *u = Some(usage);
                }
                self.push_choice(i, &text, &[], Some(finish));
            }
            TokenEvent::Error(e) => {
                if let Some(u) = self.usage.get_mut(i) {
                    *u = Some(Usage::default());
                }
                self.pending
                    .push_back(data(&ErrorBody::from(ApiError::internal(e))));
            }
        }
    }

    fn end(&mut self) {
        if self.include_usage {
            let usage = self.job.sum_usage(
                self.usage
                    .iter()
                    .enumerate()
                    .filter_map(|(i, u)| u.map(|u| (i, u))),
            );
            self.push(Vec::<CompletionChoice>::new(), Some(usage));
        }
        self.pending.push_back(Event::default().data("[DONE]"));
        self.finished = true;
    }
}

/// The SSE response of a streamed request.
pub(super) fn response(job: Job, choices: Vec<ChoiceStream>, include_usage: bool) -> Response {
    let n = choices.len();
    let mut s = Streamer {
        job,
        merged: merge(choices),
        pending: VecDeque::new(),
        usage: vec![None; n],
        include_usage,
        finished: false,
        held: Vec::new(),
    };
    if s.job.tools.is_some() {
        s.held = vec![Some(String::new()); n];
    }
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
