//! Tool calling on `/v1/chat/completions`: OpenAI's `tools`, `tool_choice`
//! (`auto`, `none`, `required`, a named function) and `parallel_tool_calls`;
//! assistant `tool_calls` and `tool` messages in the conversation; answers with
//! `tool_calls` and `finish_reason: "tool_calls"`, whole or streamed.
//!
//! When the model's chat template reads `tools` (Qwen 2.5, Llama 3.1, Hermes…), the
//! tools, the assistant's calls and the tool results go to the template as Hugging
//! Face's conventions have them and the template writes them. Otherwise tools are
//! described to the model in a system preamble and calls are written in a built-in
//! format per model family (the formats the families were trained on): Qwen / Hermes
//! (ChatML) `<tool_call>{"name", "arguments"}</tool_call>`, Llama 3.x a bare
//! `{"name", "parameters"}` object, Gemma a fenced ```` ```tool_call ```` block. The
//! answer is parsed (and, when constrained, generated) in the family's format, which
//! for a template is read from the template itself.
//! With `required` or a named function the output is constrained to that format
//! and the arguments to the function's JSON schema; with `auto` the model chooses
//! and its output is parsed.

use super::types::Message;
use crate::error::ApiError;
use hangar_engine::chat::ChatMessage;
use hangar_engine::sampler::GrammarSpec;
use hangar_engine::Finish;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};

/// The tool-calling fields of a chat request (flattened into it).
#[derive(Debug, Default, Deserialize)]
pub struct ToolFields {
    pub tools: Option<Vec<ToolDef>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ToolDef {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
}

/// A tool call in an assistant message of the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    pub id: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    pub name: String,
    /// A JSON string, as OpenAI sends it (an object is accepted too).
    pub arguments: Value,
}

/// A tool call in an answer.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallOut {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionCallOut {
    pub name: String,
    pub arguments: String,
}

/// A streamed tool call (OpenAI's delta shape, sent whole).
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDelta {
    pub index: usize,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

impl ToolCallOut {
    pub fn delta(&self, index: usize) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: self.id.clone(),
            kind: "function",
            function: self.function.clone(),
        }
    }
}

/// How a model family writes a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen 2/3, Hermes and other ChatML models.
    Hermes,
    /// Llama 3.x: a bare JSON object with `parameters`.
    Llama3,
    /// Gemma 2/3: a fenced `tool_call` block.
    Gemma,
}

impl Family {
    pub fn of_arch(arch: &str) -> Family {
        match arch {
            "gemma" | "gemma2" | "gemma3" => Family::Gemma,
            "llama" => Family::Llama3,
            _ => Family::Hermes,
        }
    }

    /// The call format a model writes: the one its tool-aware chat template
    /// teaches when it has one, else its family's.
    pub fn detect(arch: &str, tool_template: Option<&str>) -> Family {
        match tool_template {
            Some(t) if t.contains("<tool_call>") => Family::Hermes,
            Some(t) if t.contains("```tool_call") => Family::Gemma,
            Some(t) if t.contains("<|python_tag|>") || t.contains("\"parameters\"") => {
                Family::Llama3
            }
            _ => Family::of_arch(arch),
        }
    }
    fn open(self) -> &'static str {
        match self {
            Family::Hermes => "<tool_call>\n",
            Family::Llama3 => "",
            Family::Gemma => "```tool_call\n",
        }
    }
    fn close(self) -> &'static str {
        match self {
            Family::Hermes => "\n</tool_call>",
            Family::Llama3 => "",
            Family::Gemma => "\n```",
        }
    }
    fn args_key(self) -> &'static str {
        match self {
            Family::Llama3 => "parameters",
            _ => "arguments",
        }
    }
    /// One call as the family writes it.
    fn write_call(self, name: &str, args: &Value) -> String {
        let mut obj = serde_json::Map::new();
        obj.insert("name".into(), Value::String(name.to_string()));
        obj.insert(self.args_key().into(), args.clone());
        format!(
            "{}{}{}",
            self.open(),
            compact(&Value::Object(obj)),
            self.close()
        )
    }
}

/// JSON with `", "` and `": "` separators (what the constraint produces too).
fn compact(v: &Value) -> String {
    let s = serde_json::to_string(v).unwrap_or_default();
    // Re-render with spaces after separators, outside strings.
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    let (mut in_str, mut esc) = (false, false);
    for c in s.chars() {
        out.push(c);
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
        } else if c == '"' {
            in_str = true;
        } else if c == ',' || c == ':' {
            out.push(' ');
        }
    }
    out
}

/// Most calls one constrained answer may hold.
const MAX_PARALLEL_CALLS: usize = 4;

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A chat request's tool setup, kept for answering.
#[derive(Debug, Clone)]
pub struct ToolSetup {
    pub family: Family,
    pub tools: Vec<FunctionDef>,
    pub choice: Choice,
    pub parallel: bool,
}

impl ToolFields {
    /// The request's tool setup; `None` without tools or with `tool_choice: none`.
    pub fn setup(&self, family: Family) -> Result<Option<ToolSetup>, ApiError> {
        let tools = self.tools.clone().unwrap_or_default();
        for (i, t) in tools.iter().enumerate() {
            if t.kind != "function" {
                return Err(ApiError::param(
                    "tools",
                    format!(
                        "tools[{i}].type {:?} is not supported (function only)",
                        t.kind
                    ),
                ));
            }
            let n = &t.function.name;
            if n.is_empty()
                || n.len() > 64
                || !n
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(ApiError::param(
                    "tools",
                    format!("tools[{i}].function.name {n:?} must be 1-64 characters of a-z, A-Z, 0-9, _ or -"),
                ));
            }
            if let Some(p) = &t.function.parameters {
                if !p.is_object() {
                    return Err(ApiError::param(
                        "tools",
                        format!("tools[{i}].function.parameters must be a JSON schema object"),
                    ));
                }
            }
        }
        let choice = match &self.tool_choice {
            None => Choice::Auto,
            Some(Value::String(s)) => match s.as_str() {
                "none" => Choice::None,
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    return Err(ApiError::param(
                        "tool_choice",
                        format!("tool_choice {other:?} is not one of none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}"),
                    ))
                }
            },
            Some(v) => {
                let name = v
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::param(
                            "tool_choice",
                            "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        )
                    })?;
                Choice::Named(name.to_string())
            }
        };
        if tools.is_empty() {
            return match choice {
                Choice::Required | Choice::Named(_) => Err(ApiError::param(
                    "tool_choice",
                    "tool_choice requires tools; list the functions in tools",
                )),
                _ => Ok(None),
            };
        }
        if let Choice::Named(n) = &choice {
            if !tools.iter().any(|t| &t.function.name == n) {
                return Err(ApiError::param(
                    "tool_choice",
                    format!("tool_choice names {n:?}, which is not among the tools"),
                ));
            }
        }
        if choice == Choice::None {
            return Ok(None);
        }
        Ok(Some(ToolSetup {
            family,
            tools: tools.into_iter().map(|t| t.function).collect(),
            choice,
            parallel: self.parallel_tool_calls.unwrap_or(true),
        }))
    }
}

impl ToolSetup {
    /// The system text that describes the tools and the call format.
    fn preamble(&self) -> String {
        let list: Vec<Value> = self
            .tools
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "description": f.description.clone().unwrap_or_default(),
                    "parameters": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                })
            })
            .collect();
        let mut s = String::from("You can call these functions (tools):\n");
        for t in &list {
            s.push_str(&compact(t));
            s.push('\n');
        }
        let example = self
            .family
            .write_call("function_name", &json!({"argument_name": "value"}));
        s.push_str(&format!(
            "\nTo call a function, reply with exactly:\n{example}\nusing the function's name and JSON arguments matching its parameters, and nothing else. "
        ));
        if self.parallel {
            s.push_str("To call several functions, write one such call per line. ");
        }
        match &self.choice {
            Choice::Required => s.push_str("You must call a function now."),
            Choice::Named(n) => s.push_str(&format!("You must call the function {n} now.")),
            _ => s.push_str(
                "If no function is needed, answer normally. When a function result is given, use it to answer the user.",
            ),
        }
        s
    }

    /// The grammar of the answer when a call is required: one call (or several,
    /// with parallel calls) in the family's format, arguments valid against the
    /// function's schema.
    pub fn grammar(&self) -> Option<GrammarSpec> {
        let fns: Vec<&FunctionDef> = match &self.choice {
            Choice::Required => self.tools.iter().collect(),
            Choice::Named(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
            _ => return None,
        };
        let calls: Vec<Value> = fns
            .iter()
            .map(|f| {
                let params = f
                    .parameters
                    .clone()
                    .unwrap_or_else(|| json!({"type": "object"}));
                json!({
                    "type": "object",
                    "properties": {
                        "name": {"const": f.name},
                        (self.family.args_key()): params,
                    },
                    "required": ["name", self.family.args_key()],
                    "additionalProperties": false,
                })
            })
            .collect();
        let mut schema = if calls.len() == 1 {
            calls.into_iter().next().unwrap_or(Value::Null)
        } else {
            json!({"anyOf": calls})
        };
        if let Value::Object(m) = &mut schema {
            m.insert(
                "x-guidance".into(),
                json!({"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": false}),
            );
        }
        let lit = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let mut block = String::new();
        if !self.family.open().is_empty() {
            block.push_str(&lit(self.family.open()));
            block.push(' ');
        }
        block.push_str("call");
        if !self.family.close().is_empty() {
            block.push(' ');
            block.push_str(&lit(self.family.close()));
        }
        // Parallel calls: at most one per tool (a small model would otherwise
        // repeat a call until max_tokens); a named function is called once.
        let most = if self.parallel && matches!(self.choice, Choice::Required) {
            fns.len().clamp(1, MAX_PARALLEL_CALLS)
        } else {
            1
        };
        let start = format!(
            "start: {}",
            (1..=most)
                .map(|k| vec!["block"; k].join(" \"\\n\" "))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        Some(GrammarSpec::Lark(format!(
            "{start}\nblock: {block}\ncall: %json {}\n",
            serde_json::to_string(&schema).unwrap_or_default()
        )))
    }

    /// Finds the calls in a model's answer: the text before the first call stays
    /// content; calls to unknown functions or with unparsable arguments are left
    /// as text.
    pub fn parse(&self, text: &str) -> (Option<String>, Vec<ToolCallOut>) {
        let mut calls = Vec::new();
        let mut content = String::new();
        let mut rest = text;
        loop {
            let start = match self.family {
                Family::Llama3 => rest.find('{'),
                f => rest.find(f.open().trim_end()),
            };
            let Some(start) = start else {
                content.push_str(rest);
                break;
            };
            let body_at = start + self.family.open().trim_end().len();
            let body = &rest[body_at..];
            let trimmed = body.trim_start();
            let mut de = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
            match de.next() {
                Some(Ok(v)) => {
                    let used = de.byte_offset();
                    match self.call_of(&v) {
                        Some(c) => {
                            content.push_str(&rest[..start]);
                            calls.push(c);
                            let mut after = &trimmed[used..];
                            let close = self.family.close().trim_start();
                            if let Some(a) = after.trim_start().strip_prefix(close) {
                                if !close.is_empty() {
                                    after = a;
                                }
                            }
                            rest = after;
                            if !self.parallel {
                                content.push_str(rest.trim());
                                break;
                            }
                        }
                        None => {
                            content.push_str(&rest[..body_at]);
                            rest = body;
                        }
                    }
                }
                _ => {
                    content.push_str(&rest[..body_at.max(start + 1).min(rest.len())]);
                    rest = &rest[body_at.max(start + 1).min(rest.len())..];
                }
            }
        }
        let content = content.trim();
        let content = (!content.is_empty() || calls.is_empty()).then(|| {
            if calls.is_empty() {
                text.to_string()
            } else {
                content.to_string()
            }
        });
        (content, calls)
    }

    fn call_of(&self, v: &Value) -> Option<ToolCallOut> {
        let name = v.get("name")?.as_str()?;
        if !self.tools.iter().any(|t| t.name == name) {
            return None;
        }
        let args = v
            .get(self.family.args_key())
            .or_else(|| v.get("arguments"))
            .or_else(|| v.get("parameters"))
            .cloned()
            .unwrap_or_else(|| json!({}));
        let args = match args {
            // Some models write the arguments as a JSON string.
            Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
            a => a,
        };
        Some(ToolCallOut {
            id: call_id(),
            kind: "function",
            function: FunctionCallOut {
                name: name.to_string(),
                arguments: serde_json::to_string(&args).unwrap_or_else(|_| "{}".into()),
            },
        })
    }

    /// Whether streamed text so far may still turn into a tool call (hold it back).
    pub fn may_become_call(&self, text: &str) -> bool {
        let t = text.trim_start();
        let open = match self.family {
            Family::Llama3 => "{",
            f => f.open().trim_end(),
        };
        if matches!(self.choice, Choice::Required | Choice::Named(_)) {
            return true;
        }
        t.len() < open.len() && open.starts_with(t) || t.starts_with(open)
    }
}

/// A chat answer's message parts and finish reason: with tools, the text is parsed
/// for calls (`finish_reason: "tool_calls"` when there are any); an answer cut by
/// `max_tokens` stays text with `"length"`.
pub fn answer(
    setup: Option<&ToolSetup>,
    text: String,
    finish: Finish,
) -> (Option<String>, Option<Vec<ToolCallOut>>, &'static str) {
    let reason = crate::gen::finish_reason(finish);
    match setup {
        Some(s) if finish == Finish::Stop => {
            let (content, calls) = s.parse(&text);
            if calls.is_empty() {
                (Some(text), None, reason)
            } else {
                (content, Some(calls), "tool_calls")
            }
        }
        _ => (Some(text), None, reason),
    }
}

fn call_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut x = t ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    format!("call_{x:016x}")
}

/// A chat request's conversation, ready for the chat template.
pub struct Conversation {
    pub messages: Vec<ChatMessage>,
    /// The tools for a template that renders them itself.
    pub tools: Option<Vec<Value>>,
}

/// The conversation for the chat template. A template that reads `tools`
/// (`template_tools`) gets the tools, the assistant's calls and the tool results
/// as they are. Otherwise the tool preamble joins (or becomes) the system message,
/// assistant tool calls are written in the family's format and tool results become
/// user turns naming the function; consecutive turns of one role are merged
/// (templates like Gemma's require alternation).
pub fn chat_messages(
    messages: Vec<Message>,
    setup: Option<&ToolSetup>,
    family: Family,
    template_tools: bool,
    text_of: impl Fn(Message, usize) -> Result<ChatMessage, ApiError>,
) -> Result<Conversation, ApiError> {
    let family = setup.map_or(family, |s| s.family);
    let uses_tools = setup.is_some()
        || messages
            .iter()
            .any(|m| m.role == "tool" || m.tool_calls.as_ref().is_some_and(|c| !c.is_empty()));
    if !uses_tools {
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| text_of(m, i))
            .collect::<Result<_, _>>()?;
        return Ok(Conversation {
            messages,
            tools: None,
        });
    }
    // Call ids → function names, for tool results that do not name theirs.
    let mut names = std::collections::HashMap::new();
    for m in &messages {
        for c in m.tool_calls.iter().flatten() {
            if let Some(id) = &c.id {
                names.insert(id.clone(), c.function.name.clone());
            }
        }
    }
    if template_tools {
        return templated_conversation(messages, setup, &names, text_of);
    }
    let mut out: Vec<ChatMessage> = Vec::new();
    if let Some(s) = setup {
        out.push(ChatMessage::new("system", s.preamble()));
    }
    for (i, m) in messages.into_iter().enumerate() {
        let Parts {
            role,
            msg: mut cm,
            calls,
            call_id,
            name,
        } = parts(m, i, &text_of)?;
        match role.as_str() {
            "assistant" if !calls.is_empty() => {
                let mut text = cm.content.trim().to_string();
                for c in &calls {
                    let args = call_arguments(i, c)?;
                    if !text.is_empty() {
                        text.push('\n');
                    }
                    text.push_str(&family.write_call(&c.function.name, &args));
                }
                cm.content = text;
            }
            "tool" => {
                let fname = name
                    .or_else(|| call_id.as_ref().and_then(|id| names.get(id).cloned()))
                    .unwrap_or_else(|| "the function".into());
                cm = ChatMessage::new(
                    "user",
                    match family {
                        Family::Hermes => {
                            format!("<tool_response>\n{}\n</tool_response>", cm.content)
                        }
                        _ => format!("Result of {fname}: {}", cm.content),
                    },
                );
            }
            _ => {}
        }
        match out.last_mut() {
            Some(last) if last.role == cm.role => {
                last.content.push_str("\n\n");
                last.content.push_str(&cm.content);
            }
            _ => out.push(cm),
        }
    }
    Ok(Conversation {
        messages: out,
        tools: None,
    })
}

/// A message taken apart: its role, its text as a chat message, and its tool fields.
struct Parts {
    role: String,
    msg: ChatMessage,
    calls: Vec<ToolCallIn>,
    call_id: Option<String>,
    name: Option<String>,
}

fn parts(
    mut m: Message,
    i: usize,
    text_of: &impl Fn(Message, usize) -> Result<ChatMessage, ApiError>,
) -> Result<Parts, ApiError> {
    let calls = m.tool_calls.take().unwrap_or_default();
    let call_id = m.tool_call_id.take();
    let name = m.name.take();
    let role = m.role.clone();
    Ok(Parts {
        role,
        msg: text_of(m, i)?,
        calls,
        call_id,
        name,
    })
}

/// A call's arguments as a JSON value (OpenAI sends them as a JSON string).
fn call_arguments(i: usize, c: &ToolCallIn) -> Result<Value, ApiError> {
    match &c.function.arguments {
        Value::String(s) => serde_json::from_str(s).map_err(|e| {
            ApiError::param(
                "messages",
                format!(
                    "messages[{i}].tool_calls: arguments of {} are not JSON: {e}",
                    c.function.name
                ),
            )
        }),
        v => Ok(v.clone()),
    }
}

/// The conversation for a template that renders tools itself, in Hugging Face's
/// shapes: `tools` as OpenAI's function objects, calls with their arguments as
/// objects, and `tool` turns with `tool_call_id` and `name`.
fn templated_conversation(
    messages: Vec<Message>,
    setup: Option<&ToolSetup>,
    names: &std::collections::HashMap<String, String>,
    text_of: impl Fn(Message, usize) -> Result<ChatMessage, ApiError>,
) -> Result<Conversation, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let Parts {
            role,
            msg: mut cm,
            calls,
            call_id,
            name,
        } = parts(m, i, &text_of)?;
        if role == "assistant" && !calls.is_empty() {
            let mut list = Vec::with_capacity(calls.len());
            for (k, c) in calls.iter().enumerate() {
                let id = c.id.clone().unwrap_or_else(|| format!("call_{i}_{k}"));
                list.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": call_arguments(i, c)?},
                }));
            }
            cm.tool_calls = Some(list);
        }
        if role == "tool" {
            cm.name = name.or_else(|| call_id.as_ref().and_then(|id| names.get(id).cloned()));
            cm.tool_call_id = call_id;
        }
        out.push(cm);
    }
    let tools = setup.map(|s| {
        s.tools
            .iter()
            .map(|f| {
                let mut function = json!({
                    "name": f.name,
                    "parameters": f.parameters.clone().unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                });
                if let Some(d) = &f.description {
                    function["description"] = Value::String(d.clone());
                }
                json!({"type": "function", "function": function})
            })
            .collect()
    });
    Ok(Conversation {
        messages: out,
        tools,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(family: Family, choice: Choice) -> ToolSetup {
        ToolSetup {
            family,
            tools: vec![FunctionDef {
                name: "get_weather".into(),
                description: Some("Weather in a city".into()),
                parameters: Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
                ),
            }],
            choice,
            parallel: true,
        }
    }

    #[test]
    fn parses_calls_per_family() {
        for f in [Family::Hermes, Family::Gemma, Family::Llama3] {
            let s = setup(f, Choice::Auto);
            let text = f.write_call("get_weather", &json!({"city": "Paris"}));
            let (content, calls) = s.parse(&text);
            assert_eq!(content, None, "{f:?}: {text}");
            assert_eq!(calls.len(), 1);
            assert_eq!(calls[0].function.name, "get_weather");
            assert_eq!(calls[0].function.arguments, r#"{"city":"Paris"}"#);
            // Two calls, with text before.
            let two = format!("Let me check.\n{text}\n{text}");
            let (content, calls) = s.parse(&two);
            assert_eq!(content.as_deref(), Some("Let me check."));
            assert_eq!(calls.len(), 2);
            assert_ne!(calls[0].id, calls[1].id);
        }
        // Plain answers and unknown functions stay text.
        let s = setup(Family::Gemma, Choice::Auto);
        assert_eq!(s.parse("It is sunny.").0.as_deref(), Some("It is sunny."));
        let other = Family::Gemma.write_call("other", &json!({}));
        let (c, calls) = s.parse(&other);
        assert!(calls.is_empty());
        assert_eq!(c.as_deref(), Some(other.as_str()));
    }

    #[test]
    fn grammar_only_when_a_call_is_required() {
        assert!(setup(Family::Gemma, Choice::Auto).grammar().is_none());
        let Some(GrammarSpec::Lark(g)) = setup(Family::Gemma, Choice::Required).grammar() else {
            panic!()
        };
        assert!(g.contains("%json") && g.contains("get_weather"), "{g}");
        assert!(g.starts_with("start: block\n"), "one tool, one call: {g}");
    }

    #[test]
    fn the_call_format_comes_from_a_tool_template_else_the_family() {
        assert_eq!(Family::detect("gemma3", None), Family::Gemma);
        assert_eq!(
            Family::detect("gemma3", Some("{{ '<tool_call>' }}")),
            Family::Hermes
        );
        assert_eq!(Family::detect("qwen2", Some("```tool_call")), Family::Gemma);
        assert_eq!(
            Family::detect("qwen2", Some("<|python_tag|>")),
            Family::Llama3
        );
        assert_eq!(Family::detect("llama", Some("{{ tools }}")), Family::Llama3);
    }

    #[test]
    fn a_tool_template_gets_calls_and_results_as_they_are() {
        let msgs: Vec<Message> = serde_json::from_value(json!([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "cold"},
            {"role": "tool", "tool_call_id": "c1", "content": "windy"},
        ]))
        .unwrap();
        let s = setup(Family::Hermes, Choice::Auto);
        let text = |m: Message, _| {
            let c = match m.content {
                Some(super::super::types::Content::Text(t)) => t,
                _ => String::new(),
            };
            Ok(ChatMessage::new(m.role, c))
        };
        let c = chat_messages(msgs, Some(&s), Family::Hermes, true, text).unwrap();
        // No preamble, no merging of the two tool turns.
        assert_eq!(c.messages.len(), 4);
        assert_eq!(
            c.messages[1].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            json!({"city": "Oslo"})
        );
        assert_eq!(c.messages[2].name.as_deref(), Some("get_weather"));
        assert_eq!(c.messages[3].tool_call_id.as_deref(), Some("c1"));
        let tools = c.tools.unwrap();
        assert_eq!(tools[0]["type"], "function");
        assert_eq!(tools[0]["function"]["name"], "get_weather");
    }

    #[test]
    fn compact_json_matches_the_constraint_separators() {
        assert_eq!(
            compact(&json!({"a": [1, 2], "b": "x, y: z"})),
            r#"{"a": [1, 2], "b": "x, y: z"}"#
        );
    }

    #[test]
    fn streaming_holds_back_only_what_may_become_a_call() {
        let s = setup(Family::Hermes, Choice::Auto);
        assert!(s.may_become_call("<tool"));
        assert!(s.may_become_call("<tool_call>\n{\"na"));
        assert!(!s.may_become_call("Hello"));
    }
}
