//! Stored prompts in OpenAI requests: `"prompt": "name@ref"` (chat) or
//! `"prompt_template": "name@ref"` (completions, whose `prompt` is the text) with
//! `"variables": {...}`, rendered from the registry's prompt store. On chat, the
//! template's system part becomes a system message and its user part a user message,
//! both placed before the request's own `messages`; on completions, the rendered text
//! (system part, blank line, user part) is the prompt. The response names the version
//! used (`"prompt": {"name", "version", "reference"}`).
//!
//! Resolution and rendering are the registry's; this module only unpacks and maps errors.

use crate::error::ApiError;
use crate::InferenceState;
use hangar_engine::chat::ChatMessage;
use hangar_registry::{Principal, RegistryError, RenderedPrompt, Role};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The request fields of a stored prompt on chat (flattened into the request).
#[derive(Debug, Deserialize, Default)]
pub struct ChatPromptFields {
    /// `name`, `name@3`, `name@production`, `name@alias`.
    pub prompt: Option<String>,
    pub variables: Option<Map<String, Value>>,
}

/// The prompt version a response was rendered from.
#[derive(Debug, Clone, Serialize)]
pub struct PromptUsed {
    pub name: String,
    pub version: u32,
    pub reference: String,
}

/// Who reads prompts for inference requests: the server itself, as a reader (the
/// caller already passed the inference routes' authentication).
fn server_principal() -> Principal {
    Principal {
        name: "hangar-serve".into(),
        role: Role::Reader,
    }
}

fn to_api(e: RegistryError, field: &str) -> ApiError {
    match e {
        RegistryError::MissingVariables { .. } => ApiError::param("variables", e.to_string()),
        RegistryError::NotFound(m) => {
            let mut a = ApiError::not_found(format!("stored prompt not found: {m}"));
            a.param = Some(field.to_string());
            a
        }
        RegistryError::InvalidName { .. }
        | RegistryError::Invalid(_)
        | RegistryError::Template { .. } => ApiError::param(field, e.to_string()),
        e => e.into(),
    }
}

/// Resolves and renders `reference` with `variables`; unknown variable names are
/// refused (a typo would otherwise go unnoticed).
pub(crate) async fn render(
    state: &InferenceState,
    field: &'static str,
    reference: String,
    variables: Option<Map<String, Value>>,
) -> Result<(PromptUsed, RenderedPrompt), ApiError> {
    let Some(registry) = state.app.registry.clone() else {
        return Err(ApiError::param(
            field,
            "stored prompts need the registry, which this server does not mount \
             (started with --no-registry-api); send the text instead",
        ));
    };
    let vars = variables.unwrap_or_default();
    tokio::task::spawn_blocking(move || {
        let reg = registry.lock().unwrap_or_else(|e| e.into_inner());
        let who = server_principal();
        let p = reg.prompt(&who, &reference).map_err(|e| to_api(e, field))?;
        let unknown = p.template.unknown_variables(&vars);
        if !unknown.is_empty() {
            return Err(ApiError::param(
                "variables",
                format!(
                    "prompt {} does not use the variable(s) {}; it uses {}",
                    p.reference,
                    unknown.join(", "),
                    if p.variables.is_empty() {
                        "none".to_string()
                    } else {
                        p.variables.join(", ")
                    }
                ),
            ));
        }
        let r = p
            .template
            .render(&p.reference, &vars)
            .map_err(|e| to_api(e, field))?;
        Ok((
            PromptUsed {
                name: p.name,
                version: p.version,
                reference: p.reference,
            },
            r,
        ))
    })
    .await
    .map_err(|e| ApiError::internal(format!("prompt task failed: {e}")))?
}

/// Chat: the rendered prompt's messages, then the request's. Without `prompt`, the
/// request's messages unchanged (and `variables` alone is refused).
pub(crate) async fn chat_messages(
    state: &InferenceState,
    fields: ChatPromptFields,
    messages: Vec<ChatMessage>,
) -> Result<(Vec<ChatMessage>, Option<PromptUsed>), ApiError> {
    let Some(reference) = fields.prompt else {
        if fields.variables.is_some() {
            return Err(ApiError::param(
                "variables",
                "variables need a stored prompt: add \"prompt\": \"name@version\"",
            ));
        }
        return Ok((messages, None));
    };
    let (used, r) = render(state, "prompt", reference, fields.variables).await?;
    let mut out = Vec::with_capacity(messages.len() + 2);
    if let Some(s) = r.system {
        out.push(ChatMessage::new("system".to_string(), s));
    }
    out.push(ChatMessage::new("user".to_string(), r.user));
    out.extend(messages);
    Ok((out, Some(used)))
}
