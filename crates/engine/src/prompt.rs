//! The request API every protocol shares, once: a prompt (text, token ids or chat
//! messages) becomes checked token ids, the generation budget is fitted to the context,
//! a group of requests is submitted all or nothing, and events fold into final results.
//!
//! Protocol-neutral: no wire formats, no HTTP; adapters map [`PromptError`] to theirs.

use crate::chat::{ChatError, ChatMessage};
use crate::{
    Engine, EngineError, Finish, GenerateRequest, ModelInfo, PromptTokenLogprob, TokenEvent,
    TokenOut, Usage,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// A prompt as a client sends it.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// Plain text; the tokenizer adds BOS.
    Text(String),
    /// Token ids, used as they are.
    Tokens(Vec<u32>),
    /// Chat messages, rendered with the model's template.
    Chat(Vec<ChatMessage>),
    /// Chat messages and the request's tools (OpenAI's function objects), for a
    /// template that renders tools itself.
    ChatWithTools(Vec<ChatMessage>, Vec<serde_json::Value>),
}

/// How a client's text (prompts and chat message content) is tokenized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TextEncoding {
    /// Read special-token text (`<start_of_turn>`, `<eos>`, ...) in a text prompt or in
    /// chat message content as the special tokens. Off by default, so a client's text
    /// stays text and cannot forge control tokens; on only where an operator opted in.
    /// A chat template's own markers are special tokens either way.
    pub parse_special: bool,
}

/// Why a prompt could not become a request, or a request no result.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("the prompt is empty")]
    Empty,
    #[error("token id {id} is outside the vocabulary ({vocab_size} tokens)")]
    OutOfVocabulary { id: u32, vocab_size: usize },
    #[error("this model's maximum context length is {limit} tokens, but the prompt has {prompt} tokens; shorten it")]
    PromptTooLong { limit: usize, prompt: usize },
    #[error("this model's maximum context length is {limit} tokens, but {prompt} prompt tokens plus max_tokens {max_tokens} exceed it; lower max_tokens to at most {room}")]
    BudgetTooLong {
        limit: usize,
        prompt: usize,
        max_tokens: usize,
        room: usize,
    },
    #[error(transparent)]
    Chat(#[from] ChatError),
    #[error("the server is overloaded ({waiting} requests waiting); retry later")]
    Overloaded { waiting: usize },
    #[error("the engine has stopped")]
    Stopped,
    #[error("the engine stopped before the request finished")]
    Incomplete,
    /// The engine reported a failure for a running request.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Tokenizes `prompt` and checks the ids against the vocabulary.
pub fn encode(engine: &Engine, prompt: Prompt, enc: TextEncoding) -> Result<Vec<u32>, PromptError> {
    let ids = match prompt {
        Prompt::Text(t) => engine.tokenizer().encode(&t, true, enc.parse_special),
        Prompt::Tokens(ids) => ids,
        Prompt::Chat(m) => engine.encode_chat_with(&m, enc.parse_special)?,
        Prompt::ChatWithTools(m, tools) => {
            engine.encode_chat_tools(&m, Some(&tools), enc.parse_special)?
        }
    };
    check_tokens(engine.info(), &ids)?;
    Ok(ids)
}

/// A prompt must be non-empty and inside the vocabulary.
pub fn check_tokens(info: &ModelInfo, ids: &[u32]) -> Result<(), PromptError> {
    if ids.is_empty() {
        return Err(PromptError::Empty);
    }
    match ids.iter().find(|&&id| id as usize >= info.vocab_size) {
        Some(&id) => Err(PromptError::OutOfVocabulary {
            id,
            vocab_size: info.vocab_size,
        }),
        None => Ok(()),
    }
}

/// The generation budget of a prompt of `prompt_len` tokens: `requested` when it fits
/// in the context (an error otherwise); without one, `default` capped by the room left,
/// or all of the room when there is no default.
pub fn fit_max_tokens(
    info: &ModelInfo,
    prompt_len: usize,
    requested: Option<usize>,
    default: Option<usize>,
) -> Result<usize, PromptError> {
    let limit = info.max_model_len;
    if prompt_len == 0 {
        return Err(PromptError::Empty);
    }
    if prompt_len >= limit {
        return Err(PromptError::PromptTooLong {
            limit,
            prompt: prompt_len,
        });
    }
    let room = limit - prompt_len;
    match requested {
        Some(m) if m > room => Err(PromptError::BudgetTooLong {
            limit,
            prompt: prompt_len,
            max_tokens: m,
            room,
        }),
        Some(m) => Ok(m),
        None => Ok(default.unwrap_or(room).min(room)),
    }
}

/// Submits the sequences of one client request (its `n` choices, over one or more
/// prompts) as one group, all or none: refused when the engine has stopped, when the
/// queue would grow past `max_waiting`, or by the engine (per-request share, context).
pub fn submit_all(
    engine: &Engine,
    reqs: Vec<GenerateRequest>,
    max_waiting: usize,
) -> Result<Vec<UnboundedReceiver<TokenEvent>>, PromptError> {
    if !engine.is_alive() {
        return Err(PromptError::Stopped);
    }
    let waiting = engine.stats().waiting;
    if waiting.saturating_add(reqs.len()) > max_waiting {
        return Err(PromptError::Overloaded { waiting });
    }
    Ok(engine
        .submit_group(reqs)?
        .into_iter()
        .map(|(_, rx)| rx)
        .collect())
}

/// The final result of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    /// The generated tokens, kept only when asked for (logprob reports).
    pub tokens: Vec<TokenOut>,
    /// Every prompt token with its log-probability, when the request asked for them.
    pub prompt_logprobs: Vec<PromptTokenLogprob>,
    pub finish: Finish,
    pub usage: Usage,
}

#[derive(Debug, Default)]
struct Partial {
    text: String,
    tokens: Vec<TokenOut>,
    prompt_logprobs: Vec<PromptTokenLogprob>,
    done: Option<(Finish, Usage)>,
}

/// Folds the events of a group of requests (by index) into their final results.
#[derive(Debug)]
pub struct Collector {
    keep_tokens: bool,
    parts: Vec<Partial>,
}

impl Collector {
    /// A collector for `n` requests; `keep_tokens` keeps each token for logprobs.
    pub fn new(n: usize, keep_tokens: bool) -> Self {
        Collector {
            keep_tokens,
            parts: (0..n).map(|_| Partial::default()).collect(),
        }
    }

    /// Adds one event of request `i`; a failed request fails the group.
    pub fn push(&mut self, i: usize, ev: TokenEvent) -> Result<(), PromptError> {
        let Some(p) = self.parts.get_mut(i) else {
            return Err(PromptError::Failed(format!(
                "event for request {i} of a group of {}",
                self.parts.len()
            )));
        };
        match ev {
            TokenEvent::PromptLogprobs(p_lp) => p.prompt_logprobs = p_lp,
            TokenEvent::Token(t) => {
                p.text.push_str(&t.text);
                if self.keep_tokens {
                    p.tokens.push(t);
                }
            }
            TokenEvent::Done {
                finish,
                usage,
                text,
            } => {
                p.text.push_str(&text);
                p.done = Some((finish, usage));
            }
            TokenEvent::Error(e) => return Err(PromptError::Failed(e)),
        }
        Ok(())
    }

    /// The results in request order, once every request has finished.
    pub fn finish(self) -> Result<Vec<Completion>, PromptError> {
        self.parts
            .into_iter()
            .map(|p| match p.done {
                Some((finish, usage)) => Ok(Completion {
                    text: p.text,
                    tokens: p.tokens,
                    prompt_logprobs: p.prompt_logprobs,
                    finish,
                    usage,
                }),
                None => Err(PromptError::Incomplete),
            })
            .collect()
    }
}

/// Waits for one request's events and returns its result.
pub async fn collect(
    mut rx: UnboundedReceiver<TokenEvent>,
    keep_tokens: bool,
) -> Result<Completion, PromptError> {
    let mut c = Collector::new(1, keep_tokens);
    while let Some(ev) = rx.recv().await {
        c.push(0, ev)?;
    }
    c.finish()?.pop().ok_or(PromptError::Incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(max_model_len: usize) -> ModelInfo {
        ModelInfo {
            device: "cpu".into(),
            arch: "test".into(),
            vocab_size: 100,
            ctx_len: max_model_len,
            max_model_len,
            kv_block_size: 16,
            kv_blocks: vec![4],
            kv_bytes: 0,
            max_sequences_per_request: 16,
            lora: None,
        }
    }

    fn token(text: &str) -> TokenEvent {
        TokenEvent::Token(TokenOut {
            id: 1,
            text: text.into(),
            token: text.into(),
            logprob: None,
            top_logprobs: Vec::new(),
        })
    }

    fn done(text: &str, n: usize) -> TokenEvent {
        TokenEvent::Done {
            finish: Finish::Length,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: n,
                cached_tokens: 0,
                queue_us: 0,
            },
            text: text.into(),
        }
    }

    #[test]
    fn budget_defaults_to_the_room_left() {
        let i = info(32);
        assert_eq!(fit_max_tokens(&i, 2, None, None).unwrap(), 30);
        assert_eq!(fit_max_tokens(&i, 2, None, Some(16)).unwrap(), 16);
        assert_eq!(fit_max_tokens(&i, 20, None, Some(16)).unwrap(), 12);
        assert_eq!(fit_max_tokens(&i, 2, Some(30), None).unwrap(), 30);
    }

    #[test]
    fn budget_past_the_context_is_refused_with_the_room() {
        let i = info(32);
        let e = fit_max_tokens(&i, 2, Some(31), None).unwrap_err();
        assert!(matches!(e, PromptError::BudgetTooLong { room: 30, .. }));
        assert!(e.to_string().contains("max_tokens"));
        let e = fit_max_tokens(&i, 32, None, None).unwrap_err();
        assert!(matches!(e, PromptError::PromptTooLong { prompt: 32, .. }));
        assert!(matches!(
            fit_max_tokens(&i, 0, None, None),
            Err(PromptError::Empty)
        ));
    }

    #[test]
    fn tokens_must_be_in_the_vocabulary() {
        let i = info(32);
        assert!(check_tokens(&i, &[0, 99]).is_ok());
        assert!(matches!(check_tokens(&i, &[]), Err(PromptError::Empty)));
        assert!(matches!(
            check_tokens(&i, &[5, 100]),
            Err(PromptError::OutOfVocabulary { id: 100, .. })
        ));
    }

    #[test]
    fn collector_folds_interleaved_events_in_request_order() {
        let mut c = Collector::new(2, true);
        c.push(1, token("b1")).unwrap();
        c.push(0, token("a1")).unwrap();
        c.push(0, done(" end", 1)).unwrap();
        c.push(1, token("b2")).unwrap();
        c.push(1, done("", 2)).unwrap();
        let out = c.finish().unwrap();
        assert_eq!(out[0].text, "a1 end");
        assert_eq!(out[1].text, "b1b2");
        assert_eq!(out[1].tokens.len(), 2);
        assert_eq!(out[1].usage.completion_tokens, 2);
        assert_eq!(out[0].finish, Finish::Length);
    }

    #[test]
    fn collector_reports_failures_and_unfinished_requests() {
        let mut c = Collector::new(1, false);
        c.push(0, token("x")).unwrap();
        assert!(c.parts[0].tokens.is_empty());
        assert!(matches!(c.finish(), Err(PromptError::Incomplete)));
        let mut c = Collector::new(1, false);
        let e = c.push(0, TokenEvent::Error("boom".into())).unwrap_err();
        assert_eq!(e.to_string(), "boom");
        assert!(c.push(3, token("x")).is_err());
    }
}
