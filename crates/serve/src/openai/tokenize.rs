//! vLLM's `POST /tokenize` and `POST /detokenize`: the token ids the server would
//! feed the model for a prompt or a chat (rendered by the chat template, with the
//! request's tools), and the text of token ids. For clients that count tokens
//! before sending, and for checking what a chat template makes of a conversation.

use super::types::Message;
use super::{chat_prompt, conversation, tools::ToolFields};
use crate::error::ApiError;
use crate::gen::{self, read_body};
use crate::InferenceState;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use hangar_engine::Prompt;
use serde::{Deserialize, Serialize};

/// `POST /tokenize`: either `prompt` (text; BOS added unless `add_special_tokens`
/// is false) or `messages` (and optionally `tools`).
#[derive(Debug, Deserialize)]
pub struct TokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Option<String>,
    pub messages: Option<Vec<Message>>,
    pub add_special_tokens: Option<bool>,
    pub add_generation_prompt: Option<bool>,
    #[serde(default)]
    pub return_token_strs: bool,
    #[serde(flatten)]
    pub tools: ToolFields,
}

#[derive(Debug, Serialize)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

pub async fn tokenize(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TokenizeResponse>, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req: TokenizeRequest = gen::parse_json(&bytes)?;
    check_model(&state, req.model.as_deref())?;
    let tokens = match (req.prompt, req.messages) {
        (Some(p), None) => {
            if req.tools.tools.is_some() || req.add_generation_prompt.is_some() {
                return Err(ApiError::param(
                    "prompt",
                    "tools and add_generation_prompt apply to messages, not to a prompt",
                ));
            }
            if req.add_special_tokens == Some(false) {
                state
                    .engine()
                    .tokenizer()
                    .encode(&p, false, state.text_encoding().parse_special)
            } else {
                gen::encode(&state, Prompt::Text(p))?
            }
        }
        (None, Some(messages)) => {
            if messages.is_empty() {
                return Err(ApiError::param("messages", "messages must not be empty"));
            }
            if req.add_generation_prompt == Some(false) {
                return Err(ApiError::param(
                    "add_generation_prompt",
                    "only add_generation_prompt: true is supported (the prompt ends where the assistant's reply begins, as chat completions send it)",
                ));
            }
            let (_, convo) = conversation(&state, messages, &req.tools)?;
            gen::encode(&state, chat_prompt(convo.messages, convo.tools))?
        }
        _ => {
            return Err(ApiError::bad_request(
                "send exactly one of prompt (text) or messages (a chat)",
            ))
        }
    };
    let tok = state.engine().tokenizer();
    let token_strs = req.return_token_strs.then(|| {
        tokens
            .iter()
            .map(|&id| tok.id_to_token(id).unwrap_or("").to_string())
            .collect()
    });
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: state.engine().info().max_model_len,
        tokens,
        token_strs,
    }))
}

/// The base model or one of its LoRA adapters (they share the tokenizer).
fn check_model(state: &InferenceState, model: Option<&str>) -> Result<(), ApiError> {
    crate::lora_api::resolve_model(state, model).map(|_| ())
}

/// `POST /detokenize`: `{"tokens": [...]}` → `{"prompt": text}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Serialize)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

pub async fn detokenize(
    State(state): State<InferenceState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<DetokenizeResponse>, ApiError> {
    let bytes = read_body(&headers, body, state.app.cfg.max_body_bytes).await?;
    let req: DetokenizeRequest = gen::parse_json(&bytes)?;
    check_model(&state, req.model.as_deref())?;
    let vocab = state.engine().info().vocab_size;
    if let Some(&id) = req.tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(ApiError::param(
            "tokens",
            format!("token id {id} is outside the vocabulary ({vocab} tokens)"),
        ));
    }
    Ok(Json(DetokenizeResponse {
        prompt: state.engine().tokenizer().decode(&req.tokens, false),
    }))
}
