//! OpenAI wire types: the request and response bodies of `/v1/*` as serde structs.
//! Shapes only; validation and the mapping to engine requests live in the handlers.

use crate::error::ApiError;
use hangar_engine::{PromptTokenLogprob, TokenOut, Usage};
use hangar_tokenizer::Tokenizer;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::HashMap;

// ---- requests --------------------------------------------------------------------

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
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
    /// `response_format`, `guided_*`: structured output.
    #[serde(flatten)]
    pub structured: super::structured::StructuredFields,
}

/// `prompt`: a text, several texts, token ids, or several lists of ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

/// `POST /v1/completions`
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    /// The text; absent when `prompt_template` names a stored prompt.
    #[serde(default)]
    pub prompt: Option<PromptInput>,
    /// A stored prompt (`name@ref`) rendered with `variables` into the text.
    pub prompt_template: Option<String>,
    pub variables: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(flatten)]
    pub common: Common,
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub suffix: Option<String>,
    /// Beam search (vLLM): `best_of` beams, the `n` best returned.
    pub use_beam_search: Option<bool>,
    /// Beam scores are `cumulative logprob / length^length_penalty` (default 1).
    pub length_penalty: Option<f64>,
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
    /// An assistant message's tool calls.
    pub tool_calls: Option<Vec<super::tools::ToolCallIn>>,
    /// A tool message: the call it answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

/// `POST /v1/chat/completions`
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// May be empty when a stored prompt gives the messages.
    #[serde(default)]
    pub messages: Vec<Message>,
    /// `prompt` and `variables`: a stored prompt rendered before `messages`.
    #[serde(flatten)]
    pub stored_prompt: super::stored_prompt::ChatPromptFields,
    #[serde(flatten)]
    pub common: Common,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    /// `tools`, `tool_choice`, `parallel_tool_calls`.
    #[serde(flatten)]
    pub tools: super::tools::ToolFields,
    /// Hangar extension: retrieval-augmented generation (`{collection, top_k, filter,
    /// score_threshold}`; the OpenAI client sends it through `extra_body`).
    #[serde(default)]
    pub retrieval: Option<serde_json::Value>,
    /// Beam search (vLLM): `best_of` beams (default `n`), the `n` best returned.
    pub use_beam_search: Option<bool>,
    pub best_of: Option<i64>,
    /// Beam scores are `cumulative logprob / length^length_penalty` (default 1).
    pub length_penalty: Option<f64>,
}

// ---- responses -------------------------------------------------------------------

/// `GET /v1/models`
#[derive(Debug, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
    pub max_model_len: usize,
    /// Registry version of the served weights (`name@3` in `reference`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Where the model runs: `cpu`, or e.g. `cuda:0 (NVIDIA H200, sm_90a)`.
    pub device: String,
    /// A LoRA adapter's source (its `lora_path`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// A LoRA adapter's base model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct UsageBody {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl From<Usage> for UsageBody {
    fn from(u: Usage) -> Self {
        UsageBody {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_tokens,
            },
        }
    }
}

/// A whole answer (`text_completion`, `chat.completion`) or one streamed chunk
/// (`text_completion`, `chat.completion.chunk`), generic over the choice type.
#[derive(Debug, Serialize)]
pub struct Envelope<C> {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    /// Absent from chunks unless `stream_options.include_usage`; then null on every
    /// chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageBody>>,
    /// The stored prompt the request was rendered from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<super::stored_prompt::PromptUsed>,
    /// Retrieval-augmented answers: the passages the prompt numbered [1], [2], ... (on
    /// the whole answer, or the first streamed chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub citations: Option<Vec<crate::rag_api::Citation>>,
}

/// A completions choice (whole or streamed).
#[derive(Debug, Serialize)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// The legacy completions logprobs object.
#[derive(Debug, Serialize)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<TopMap>,
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Echo with logprobs: every prompt token (the first has a null logprob), then
    /// the generated ones. Offsets are in characters of the echoed text; special
    /// tokens (BOS) take no room in it.
    pub fn with_prompt(
        prompt: &[PromptTokenLogprob],
        generated: &[TokenOut],
        tok: &Tokenizer,
    ) -> Self {
        let mut text_offset = Vec::with_capacity(prompt.len() + generated.len());
        let mut dec = tok.incremental_decoder(true);
        let mut offset = 0usize;
        for p in prompt {
            text_offset.push(offset);
            offset += dec.push(p.id).chars().count();
        }
        offset += dec.flush().chars().count();
        let gen = CompletionLogprobs::from_tokens(generated, offset);
        let top = |alts: &[hangar_engine::TopLogprob]| {
            TopMap(alts.iter().map(|a| (a.token.clone(), a.logprob)).collect())
        };
        CompletionLogprobs {
            tokens: prompt
                .iter()
                .map(|p| p.token.clone())
                .chain(gen.tokens)
                .collect(),
            token_logprobs: prompt
                .iter()
                .map(|p| p.logprob)
                .chain(gen.token_logprobs)
                .collect(),
            top_logprobs: prompt
                .iter()
                .map(|p| top(&p.top_logprobs))
                .chain(gen.top_logprobs)
                .collect(),
            text_offset: text_offset.into_iter().chain(gen.text_offset).collect(),
        }
    }
}

/// `{token: logprob}` in rank order; a token text seen twice keeps its best rank.
#[derive(Debug)]
pub struct TopMap(pub Vec<(String, f32)>);

impl Serialize for TopMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seen = std::collections::HashSet::new();
        let mut m = s.serialize_map(None)?;
        for (k, v) in &self.0 {
            if seen.insert(k.as_str()) {
                m.serialize_entry(k, v)?;
            }
        }
        m.end()
    }
}

impl CompletionLogprobs {
    pub fn from_tokens(tokens: &[TokenOut], offset0: usize) -> Self {
        let mut offset = offset0;
        let mut text_offset = Vec::with_capacity(tokens.len());
        for t in tokens {
            text_offset.push(offset);
            offset += t.token.chars().count();
        }
        CompletionLogprobs {
            tokens: tokens.iter().map(|t| t.token.clone()).collect(),
            token_logprobs: tokens.iter().map(|t| t.logprob).collect(),
            top_logprobs: tokens
                .iter()
                .map(|t| {
                    TopMap(
                        t.top_logprobs
                            .iter()
                            .map(|a| (a.token.clone(), a.logprob))
                            .collect(),
                    )
                })
                .collect(),
            text_offset,
        }
    }
}

/// A chat choice of a whole answer.
#[derive(Debug, Serialize)]
pub struct ChatChoice {
    pub index: usize,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
pub struct AssistantMessage {
    pub role: &'static str,
    /// Null when the answer is only tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<super::tools::ToolCallOut>>,
}

/// A chat choice of a streamed chunk.
#[derive(Debug, Serialize)]
pub struct ChatChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<&'static str>,
}

/// What a chunk adds; `{}` on the final chunk when nothing is left.
#[derive(Debug, Default, Serialize)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<super::tools::ToolCallDelta>>,
}

#[derive(Debug, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Serialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: Option<f32>,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Serialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl ChatLogprobs {
    pub fn from_tokens(tokens: &[TokenOut]) -> Self {
        ChatLogprobs {
            content: tokens
                .iter()
                .map(|t| ChatTokenLogprob {
                    token: t.token.clone(),
                    logprob: t.logprob,
                    bytes: t.token.as_bytes().to_vec(),
                    top_logprobs: t
                        .top_logprobs
                        .iter()
                        .map(|a| ChatTopLogprob {
                            token: a.token.clone(),
                            logprob: a.logprob,
                            bytes: a.token.as_bytes().to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// `{"error": {"message", "type", "param", "code"}}`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

impl From<ApiError> for ErrorBody {
    fn from(e: ApiError) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: e.message,
                kind: e.kind.to_string(),
                param: e.param,
                code: e.code.map(str::to_string),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_engine::TopLogprob;

    fn tok(t: &str, alts: &[(&str, f32)]) -> TokenOut {
        TokenOut {
            id: 0,
            text: t.into(),
            token: t.into(),
            logprob: Some(-0.5),
            top_logprobs: alts
                .iter()
                .map(|(a, l)| TopLogprob {
                    id: 0,
                    token: a.to_string(),
                    logprob: *l,
                })
                .collect(),
        }
    }

    #[test]
    fn completion_logprobs_have_offsets_and_rank_ordered_alternatives() {
        let lp = CompletionLogprobs::from_tokens(
            &[
                tok("Hi", &[("Hi", -0.5), ("Ho", -1.0), ("Hi", -2.0)]),
                tok("!", &[]),
            ],
            0,
        );
        let v = serde_json::to_string(&lp).unwrap();
        assert_eq!(
            v,
            r#"{"tokens":["Hi","!"],"token_logprobs":[-0.5,-0.5],"top_logprobs":[{"Hi":-0.5,"Ho":-1.0},{}],"text_offset":[0,2]}"#
        );
    }

    #[test]
    fn chunks_carry_usage_only_when_asked() {
        let mut e = Envelope::<CompletionChoice> {
            id: "x".into(),
            object: "text_completion",
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage: None,
            prompt: None,
            citations: None,
        };
        assert!(!serde_json::to_string(&e).unwrap().contains("usage"));
        assert!(!serde_json::to_string(&e).unwrap().contains("prompt"));
        assert!(!serde_json::to_string(&e).unwrap().contains("citations"));
        e.usage = Some(None);
        assert!(serde_json::to_string(&e)
            .unwrap()
            .contains(r#""usage":null"#));
    }

    #[test]
    fn final_chat_delta_without_text_is_an_empty_object() {
        let d = serde_json::to_string(&Delta::default()).unwrap();
        assert_eq!(d, "{}");
    }
}
