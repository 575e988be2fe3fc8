//! Chat templates: turning a list of role/content messages into the prompt text a
//! model was trained on, and into token ids where message content stays plain text.
//!
//! Uses the model's own `tokenizer.chat_template` (Jinja, rendered by minijinja) when
//! the file has one, else a built-in template for the architecture. [`encode_chat`]
//! tokenizes the rendered text so that only the template's own markers can become
//! special tokens: a user who writes `<end_of_turn>` in a message cannot forge a turn.

use hangar_tokenizer::Tokenizer;
use minijinja::{context, Environment, Error as JinjaError, ErrorKind};
use serde_json::Value;
use std::ops::Range;

/// One chat message. The tool fields follow Hugging Face's chat-template
/// conventions and are only seen by templates that use them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    /// An assistant turn's calls: `{"id", "type": "function", "function": {"name",
    /// "arguments": {..}}}` with the arguments as a JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<Value>>,
    /// A `tool` turn: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` turn: the function that produced it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
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
    /// The template reads `tools` (it can describe functions to the model itself).
    supports_tools: bool,
    source: String,
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
        // A template comes with the model file: bound its work so a hostile one
        // cannot hang the server (output size is bounded in `render`).
        env.set_fuel(Some(RENDER_FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", src.clone())
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        let supports_tools = env
            .get_template("chat")
            .map(|t| t.undeclared_variables(false).contains("tools"))
            .unwrap_or(false);
        Ok(ChatTemplate {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            supports_tools,
            source: src,
            origin,
        })
    }

    /// Sets how many template instructions one render may execute (default
    /// 20 million). Fuzzing lowers it so a looping template costs milliseconds, not a
    /// second, per input; the limit's error path is the same.
    pub fn with_render_fuel(mut self, fuel: u64) -> Self {
        self.env.set_fuel(Some(fuel));
        self
    }

    /// Whether the template describes tools itself (it reads a `tools` variable, as
    /// Qwen 2.5, Llama 3.1 and Hermes templates do). The built-in templates do not.
    pub fn supports_tools(&self) -> bool {
        self.supports_tools
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages`; with `add_generation_prompt` the text ends where the
    /// assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with_tools(messages, add_generation_prompt, None)
    }

    /// As [`ChatTemplate::render`], with the request's tools (OpenAI's
    /// `{"type": "function", "function": {..}}` objects) given to the template as
    /// `tools`.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[Value]>,
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
        let content: usize = messages.iter().map(|m| m.content.len()).sum();
        let mut out = CappedOutput {
            buf: Vec::new(),
            cap: RENDER_BASE_BYTES + RENDER_CONTENT_FACTOR * content,
        };
        tmpl.render_captured_to(
            context! {
                messages => minijinja::Value::from(minijinja::value::Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                tools => tools.map(|t| minijinja::Value::from(minijinja::value::Serde(t))),
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            },
            &mut out,
        )
        .map(|_| ())
        .map_err(|e| {
            if out.buf.len() >= out.cap {
                ChatError::Render(format!(
                    "the chat template's output passed {} bytes; the template is not usable for these messages",
                    out.cap
                ))
            } else {
                ChatError::Render(e.to_string())
            }
        })?;
        String::from_utf8(out.buf)
            .map_err(|_| ChatError::Render("the chat template produced invalid UTF-8".into()))
    }
}

/// Template instructions one render may execute: real chat templates use a few
/// thousand per message; a looping template stops with an error instead of hanging.
const RENDER_FUEL: u64 = 20_000_000;
/// Rendered text may be this much plus a multiple of the messages' own text.
const RENDER_BASE_BYTES: usize = 1 << 20;
const RENDER_CONTENT_FACTOR: usize = 8;

/// A render target that refuses to grow past `cap` bytes.
struct CappedOutput {
    buf: Vec<u8>,
    cap: usize,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + data.len() > self.cap {
            self.buf.resize(self.cap, 0);
            return Err(std::io::Error::other("chat template output too large"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `messages` with `template` and tokenizes the text (no BOS added: the
/// template writes its own).
///
/// With `special_in_content` false, control tokens written as text inside message
/// content (`<end_of_turn>`, `<|im_start|>`…) stay plain text; only the template's
/// own markers become special tokens. Message content is located in the rendered
/// text by rendering the template a second time with a placeholder per message; the
/// text around a placeholder is the template's, the text in its place is content
/// (as the template emitted it, trimmed or not). Chats whose content holds no
/// special-token text get exactly the ids of `encode(rendered, false, true)`.
///
/// A template that rewrites content so that it cannot be located is accepted when no
/// content holds special-token text; otherwise the messages are refused rather than
/// encoded with forged markers. With `special_in_content` true, special-token text
/// anywhere is parsed (the behaviour before content was kept plain).
pub fn encode_chat(
    template: &ChatTemplate,
    tok: &Tokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    special_in_content: bool,
) -> Result<Vec<u32>, ChatError> {
    encode_chat_with_tools(
        template,
        tok,
        messages,
        None,
        add_generation_prompt,
        special_in_content,
    )
}

/// As [`encode_chat`], with the request's tools given to the template. Tool
/// definitions and the ids, names and arguments of calls are written by the
/// template as its own text, so none of them may hold special-token text.
pub fn encode_chat_with_tools(
    template: &ChatTemplate,
    tok: &Tokenizer,
    messages: &[ChatMessage],
    tools: Option<&[Value]>,
    add_generation_prompt: bool,
    special_in_content: bool,
) -> Result<Vec<u32>, ChatError> {
    let text = template.render_with_tools(messages, add_generation_prompt, tools)?;
    if special_in_content {
        return Ok(tok.encode(&text, false, true));
    }
    refuse_special_in_tool_fields(tok, messages, tools)?;
    if let Some(spans) = template.content_spans(messages, add_generation_prompt, tools, &text) {
        return Ok(tok.encode_with_plain_ranges(&text, false, &spans));
    }
    if let Some((i, m)) = messages
        .iter()
        .enumerate()
        .find(|(_, m)| tok.contains_special_text(&m.content))
    {
        return Err(ChatError::Messages(format!(
            "message {i} ({}) contains special-token text, and the chat template changes \
             message content so that it cannot be kept apart from the template's own \
             markers; remove the special-token text from the message",
            m.role
        )));
    }
    Ok(tok.encode(&text, false, true))
}

/// Tool definitions and call fields reach the prompt as template text; a control
/// token written inside one (a description holding `<|im_end|>`) would forge a turn.
fn refuse_special_in_tool_fields(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    tools: Option<&[Value]>,
) -> Result<(), ChatError> {
    fn holds_special(tok: &Tokenizer, v: &Value) -> bool {
        match v {
            Value::String(s) => tok.contains_special_text(s),
            Value::Array(a) => a.iter().any(|x| holds_special(tok, x)),
            Value::Object(o) => o
                .iter()
                .any(|(k, x)| tok.contains_special_text(k) || holds_special(tok, x)),
            _ => false,
        }
    }
    for (i, t) in tools.unwrap_or_default().iter().enumerate() {
        if holds_special(tok, t) {
            return Err(ChatError::Messages(format!(
                "tools[{i}] contains special-token text; remove it from the function's name, description and parameters"
            )));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        let calls = m.tool_calls.iter().flatten().any(|c| holds_special(tok, c));
        let ids = [&m.tool_call_id, &m.name]
            .into_iter()
            .flatten()
            .any(|s| tok.contains_special_text(s));
        if calls || ids {
            return Err(ChatError::Messages(format!(
                "message {i} ({}) has special-token text in its tool calls, tool_call_id or name; remove it",
                m.role
            )));
        }
    }
    Ok(())
}

/// Brackets a message index in the placeholder render; private-use characters that
/// templates neither trim nor write themselves.
const PLACEHOLDER_OPEN: char = '\u{F0000}';
const PLACEHOLDER_CLOSE: char = '\u{F0001}';

/// A rendered template seen as template text and message content in turn.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Template(&'a str),
    Content(usize),
}

/// Splits a placeholder render into template text and message references.
fn pieces(rendered: &str, n_messages: usize) -> Option<Vec<Piece<'_>>> {
    let mut out = Vec::new();
    let mut rest = rendered;
    while let Some(open) = rest.find(PLACEHOLDER_OPEN) {
        if open > 0 {
            out.push(Piece::Template(&rest[..open]));
        }
        let after = &rest[open + PLACEHOLDER_OPEN.len_utf8()..];
        let close = after.find(PLACEHOLDER_CLOSE)?;
        let i: usize = after[..close].parse().ok()?;
        if i >= n_messages {
            return None;
        }
        out.push(Piece::Content(i));
        rest = &after[close + PLACEHOLDER_CLOSE.len_utf8()..];
    }
    if !rest.is_empty() {
        out.push(Piece::Template(rest));
    }
    Some(out)
}

impl ChatTemplate {
    /// Byte ranges of message content in `rendered` (this template's output for
    /// `messages`), or `None` when the template does not emit content in a way that
    /// can be followed (it branches on or rewrites content).
    fn content_spans(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[Value]>,
        rendered: &str,
    ) -> Option<Vec<Range<usize>>> {
        let placeholders: Vec<ChatMessage> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| ChatMessage {
                content: format!("{PLACEHOLDER_OPEN}{i}{PLACEHOLDER_CLOSE}"),
                ..m.clone()
            })
            .collect();
        let skeleton = self
            .render_with_tools(&placeholders, add_generation_prompt, tools)
            .ok()?;
        let pieces = pieces(&skeleton, messages.len())?;
        let mut spans = Vec::new();
        let mut pos = 0;
        for (k, piece) in pieces.iter().enumerate() {
            let rest = &rendered[pos..];
            match *piece {
                Piece::Template(t) => {
                    if !rest.starts_with(t) {
                        return None;
                    }
                    pos += t.len();
                }
                Piece::Content(i) => {
                    // The content as the template may have emitted it; the first
                    // form followed by the next piece of template text wins.
                    let c = messages[i].content.as_str();
                    let forms = [c, c.trim(), c.trim_start(), c.trim_end()];
                    let fits = |f: &str| {
                        rest.starts_with(f)
                            && match pieces.get(k + 1) {
                                Some(Piece::Template(t)) => rest[f.len()..].starts_with(t),
                                Some(Piece::Content(_)) => true,
                                None => rest.len() == f.len(),
                            }
                    };
                    let form = forms.into_iter().find(|f| fits(f))?;
                    if !form.is_empty() {
                        spans.push(pos..pos + form.len());
                    }
                    pos += form.len();
                }
            }
        }
        (pos == rendered.len()).then_some(spans)
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
    fn content_spans_follow_trimmed_and_system_content() {
        let msgs = [
            ChatMessage::new("system", "Be brief. "),
            ChatMessage::new("user", "  Hi <end_of_turn> "),
            ChatMessage::new("assistant", ""),
        ];
        let text = gemma().render(&msgs, true).unwrap();
        let spans = gemma().content_spans(&msgs, true, None, &text).unwrap();
        let found: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        // System text untrimmed (the template adds "\n\n" after it), user text
        // trimmed, the empty reply has no span.
        assert_eq!(found, ["Be brief. ", "Hi <end_of_turn>"]);
    }

    #[test]
    fn content_spans_give_up_on_templates_that_rewrite_content() {
        let t = ChatTemplate::for_model(Some("{{ messages[0].content | upper }}"), "x", "", "")
            .unwrap();
        let msgs = [ChatMessage::new("user", "hi")];
        let text = t.render(&msgs, false).unwrap();
        assert_eq!(t.content_spans(&msgs, false, None, &text), None);
        assert_eq!(pieces("a\u{F0000}7\u{F0001}b", 2), None);
        assert_eq!(
            pieces("a\u{F0000}1\u{F0001}b", 2).unwrap(),
            [
                Piece::Template("a"),
                Piece::Content(1),
                Piece::Template("b")
            ]
        );
    }

    #[test]
    fn hostile_templates_stop_with_an_error_instead_of_hanging() {
        let msgs = [ChatMessage::new("user", "hi")];
        let looping =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::from_source(looping.into(), "<bos>", "<eos>", "test".into()).unwrap();
        let t0 = std::time::Instant::now();
        assert!(matches!(t.render(&msgs, true), Err(ChatError::Render(_))));
        assert!(t0.elapsed() < std::time::Duration::from_secs(30));
        // Few instructions, huge output: repeating the content is capped by size.
        let big = "{% for i in range(100000) %}{{ messages[0].content * 1000 }}{% endfor %}";
        let t = ChatTemplate::from_source(big.into(), "<bos>", "<eos>", "test".into()).unwrap();
        let msgs = [ChatMessage::new("user", "0123456789".repeat(10))];
        match t.render(&msgs, true) {
            Err(ChatError::Render(m)) => assert!(m.contains("passed"), "{m}"),
            other => panic!("expected a size error, got {other:?}"),
        }
    }

    #[test]
    fn render_fuel_can_be_lowered_and_real_templates_still_fit() {
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "And now?"),
        ];
        for arch in ["gemma3", "llama", "qwen2"] {
            let t = ChatTemplate::for_model(None, arch, "<bos>", "<eos>")
                .unwrap()
                .with_render_fuel(200_000);
            assert!(t.render(&msgs, true).is_ok(), "{arch}");
        }
        // 200 000 instructions: a loop of 10^6 stops, one of 10^3 does not.
        let short = "{% for i in range(1000) %}x{% endfor %}";
        let long = "{% for i in range(1000000) %}x{% endfor %}";
        let mk = |src: &str| {
            ChatTemplate::from_source(src.into(), "<bos>", "<eos>", "test".into())
                .unwrap()
                .with_render_fuel(200_000)
        };
        assert_eq!(mk(short).render(&msgs, true).unwrap().len(), 1000);
        assert!(matches!(
            mk(long).render(&msgs, true),
            Err(ChatError::Render(_))
        ));
    }

    /// A ChatML template that describes tools itself, in the style of Qwen 2.5's.
    pub(crate) const TOOLS_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}Functions:
{% for t in tools %}{{ t.function | tojson }}
{% endfor %}Call one as <tool_call>{"name": .., "arguments": ..}</tool_call>.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for m in messages if m.role != 'system' -%}
{%- if m.role == 'assistant' and m.tool_calls -%}
<|im_start|>assistant
{{ m.content }}{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif m.role == 'tool' -%}
<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% else -%}
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif -%}
{%- endfor -%}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif -%}"#;

    #[test]
    fn templates_that_read_tools_get_them_and_the_calls() {
        assert!(!gemma().supports_tools());
        let t = ChatTemplate::from_source(TOOLS_TEMPLATE.into(), "", "", "model".into()).unwrap();
        assert!(t.supports_tools());
        let tools = [serde_json::json!({"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object"}}})];
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![serde_json::json!({"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}})]);
        let mut result = ChatMessage::new("tool", "18 C");
        result.tool_call_id = Some("call_1".into());
        let msgs = [ChatMessage::new("user", "Weather in Paris?"), call, result];
        let text = t.render_with_tools(&msgs, true, Some(&tools)).unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nFunctions:\n{\"name\": \"get_weather\", \"parameters\": {\"type\": \"object\"}}\n\
             Call one as <tool_call>{\"name\": .., \"arguments\": ..}</tool_call>.<|im_end|>\n\
             <|im_start|>user\nWeather in Paris?<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\n"
        );
        // Without tools the same template renders a plain conversation.
        let plain = t
            .render_with_tools(&[ChatMessage::new("user", "Hi")], true, None)
            .unwrap();
        assert_eq!(
            plain,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // Content spans still follow the messages around the template's tool text.
        let spans = t.content_spans(&msgs, true, Some(&tools), &text).unwrap();
        let found: Vec<&str> = spans.iter().map(|r| &text[r.clone()]).collect();
        assert_eq!(found, ["Weather in Paris?", "18 C"]);
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
