//! Chat templates: turning a list of role/content messages into the prompt text a
//! model was trained on.
//!
//! Uses the model's own `tokenizer.chat_template` (Jinja, rendered by minijinja) when
//! the file has one, else a built-in template for the architecture. Does not tokenize.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Errors rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    #[error("the chat template failed on these messages: {0}")]
    Render(String),
    #[error("invalid messages: {0}")]
    Messages(String),
}

/// Gemma (2 and 3): system text is prepended to the first user turn; the assistant's
/// role is called `model`.
pub const GEMMA_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
{%- set loop_messages = messages[1:] -%}
{%- else -%}
{%- set first_user_prefix = '' -%}
{%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}{%- endif -%}
{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"#;

/// ChatML (Qwen 2/3).
pub const CHATML_TEMPLATE: &str = r#"{%- for message in messages -%}
{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"#;

/// Llama 3 instruct.
pub const LLAMA3_TEMPLATE: &str = r#"{{ bos_token }}
{%- for message in messages -%}
{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (message['content'] | trim) + '<|eot_id|>' }}
{%- endfor -%}
{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif -%}"#;

/// A compiled chat template.
///
/// ```
/// use hangar_engine::chat::{ChatMessage, ChatTemplate};
/// let t = ChatTemplate::for_model(None, "gemma3", "<bos>", "<eos>").unwrap();
/// let p = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
/// assert_eq!(p, "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
/// ```
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Where the template came from, for logs: `model` or `builtin:<name>`.
    pub origin: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("origin", &self.origin)
            .finish()
    }
}

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// The model's template when it has one, else the built-in one for `arch`
    /// (`general.architecture`), falling back to ChatML.
    pub fn for_model(
        model_template: Option<&str>,
        arch: &str,
        bos: &str,
        eos: &str,
    ) -> Result<Self, ChatError> {
        match model_template {
            Some(src) if !src.trim().is_empty() => {
                Self::from_source(src.to_string(), bos, eos, "model".into())
            }
            _ => {
                let (name, src) = match arch {
                    "gemma" | "gemma2" | "gemma3" => ("gemma", GEMMA_TEMPLATE),
                    "llama" => ("llama3", LLAMA3_TEMPLATE),
                    _ => ("chatml", CHATML_TEMPLATE),
                };
                Self::from_source(src.to_string(), bos, eos, format!("builtin:{name}"))
            }
        }
    }

    /// Compiles a Jinja chat template (Hugging Face conventions: `messages`,
    /// `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`).
    pub fn from_source(
        src: String,
        bos: &str,
        eos: &str,
        origin: String,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", src)
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            origin,
        })
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        if messages.is_empty() {
            return Err(ChatError::Messages(
                "at least one message is required".into(),
            ));
        }
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        tmpl.render(context! {
            messages => minijinja::Value::from(minijinja::value::Serde(messages)),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| ChatError::Render(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gemma() -> ChatTemplate {
        ChatTemplate::for_model(None, "gemma3", "<bos>", "<eos>").unwrap()
    }

    #[test]
    fn gemma_prepends_system_to_first_user_turn() {
        let p = gemma()
            .render(
                &[
                    ChatMessage::new("system", "Be brief."),
                    ChatMessage::new("user", "Hi"),
                    ChatMessage::new("assistant", "Hello!"),
                    ChatMessage::new("user", "Bye"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            p,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn uses_model_template_when_present() {
        let src = "{% for m in messages %}[{{ m.role }}]{{ m.content.strip() }}{% endfor %}{% if add_generation_prompt %}>{% endif %}";
        let t = ChatTemplate::for_model(Some(src), "gemma3", "", "").unwrap();
        assert_eq!(t.origin, "model");
        assert_eq!(
            t.render(&[ChatMessage::new("user", " x ")], true).unwrap(),
            "[user]x>"
        );
    }

    #[test]
    fn template_errors_are_reported_not_panicked() {
        let t =
            ChatTemplate::for_model(Some("{{ raise_exception('no system role') }}"), "x", "", "")
                .unwrap();
        assert!(matches!(
            t.render(&[ChatMessage::new("user", "a")], true),
            Err(ChatError::Render(_))
        ));
        assert!(ChatTemplate::for_model(Some("{% for %}"), "x", "", "").is_err());
        assert!(matches!(
            gemma().render(&[], true),
            Err(ChatError::Messages(_))
        ));
    }

    #[test]
    fn chatml_for_qwen() {
        let t = ChatTemplate::for_model(None, "qwen2", "", "").unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "Hi")], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }
}
