//! Structured output on `/v1/chat/completions` and `/v1/completions`: OpenAI's
//! `response_format` (`json_object`, `json_schema`), and vLLM's / llama.cpp's extra
//! fields `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar` (Lark, or
//! GBNF, which is translated) and llama.cpp's `grammar` / `json_schema`.
//!
//! Turns them into one [`GrammarSpec`], compiles it against the model's vocabulary
//! (an invalid grammar or an unsupported JSON-Schema keyword is a 400 naming it) and
//! attaches the constraint to every engine request of the call. The engine masks the
//! logits; nothing here runs per token.

use crate::error::ApiError;
use crate::InferenceState;
use hangar_engine::sampler::{Constraint, ConstraintError, GrammarSpec};
use hangar_engine::GenerateRequest;
use serde::Deserialize;
use serde_json::Value;

/// The structured-output fields of a request body (flattened into it).
#[derive(Debug, Default, Deserialize)]
pub struct StructuredFields {
    pub response_format: Option<Value>,
    pub guided_json: Option<Value>,
    pub guided_regex: Option<String>,
    pub guided_choice: Option<Vec<String>>,
    pub guided_grammar: Option<String>,
    /// llama.cpp's server: a GBNF grammar.
    pub grammar: Option<String>,
    /// llama.cpp's server: a JSON schema.
    pub json_schema: Option<Value>,
}

/// Which request field a grammar came from, for error messages.
pub struct Guided {
    pub spec: GrammarSpec,
    pub param: &'static str,
}

impl StructuredFields {
    /// The one grammar the request asks for, if any. More than one is an error.
    pub fn guided(&self) -> Result<Option<Guided>, ApiError> {
        let mut found: Vec<Guided> = Vec::new();
        if let Some(rf) = &self.response_format {
            if let Some(spec) = response_format(rf)? {
                found.push(Guided {
                    spec,
                    param: "response_format",
                });
            }
        }
        if let Some(v) = &self.guided_json {
            found.push(Guided {
                spec: GrammarSpec::JsonSchema(schema_value(v, "guided_json")?),
                param: "guided_json",
            });
        }
        if let Some(v) = &self.json_schema {
            found.push(Guided {
                spec: GrammarSpec::JsonSchema(schema_value(v, "json_schema")?),
                param: "json_schema",
            });
        }
        if let Some(r) = &self.guided_regex {
            found.push(Guided {
                spec: GrammarSpec::Regex(r.clone()),
                param: "guided_regex",
            });
        }
        if let Some(c) = &self.guided_choice {
            if c.is_empty() || c.iter().all(String::is_empty) {
                return Err(ApiError::param(
                    "guided_choice",
                    "guided_choice must list at least one non-empty string",
                ));
            }
            found.push(Guided {
                spec: GrammarSpec::Choice(c.clone()),
                param: "guided_choice",
            });
        }
        for (param, g) in [
            ("guided_grammar", &self.guided_grammar),
            ("grammar", &self.grammar),
        ] {
            if let Some(g) = g {
                found.push(Guided {
                    spec: GrammarSpec::Lark(grammar_to_lark(g).map_err(|e| {
                        ApiError::param(param, format!("{param} is not a valid grammar: {e}"))
                    })?),
                    param,
                });
            }
        }
        if found.len() > 1 {
            let names: Vec<&str> = found.iter().map(|g| g.param).collect();
            return Err(ApiError::bad_request(format!(
                "only one structured-output constraint may be given, got {}",
                names.join(", ")
            )));
        }
        Ok(found.pop())
    }
}

/// The request's grammar with tools in play: a required or named tool call brings
/// its own (and cannot be combined with another).
pub fn guided_with_tools(
    fields: &StructuredFields,
    tools: Option<&super::tools::ToolSetup>,
) -> Result<Option<Guided>, ApiError> {
    let g = fields.guided()?;
    match (g, tools.and_then(|t| t.grammar())) {
        (Some(g), Some(_)) => Err(ApiError::param(
            g.param,
            format!(
                "{} cannot be combined with tool_choice \"required\" or a named function; drop one",
                g.param
            ),
        )),
        (None, Some(spec)) => Ok(Some(Guided {
            spec,
            param: "tool_choice",
        })),
        (g, None) => Ok(g),
    }
}

/// `response_format`: `{"type": "text" | "json_object" | "json_schema", ...}`.
fn response_format(rf: &Value) -> Result<Option<GrammarSpec>, ApiError> {
    let p = "response_format";
    let kind = rf.get("type").and_then(Value::as_str).ok_or_else(|| {
        ApiError::param(
            p,
            "response_format needs a \"type\": \"text\", \"json_object\" or \"json_schema\"",
        )
    })?;
    match kind {
        "text" => Ok(None),
        "json_object" => Ok(Some(match rf.get("schema") {
            // vLLM and llama.cpp accept a schema here too.
            Some(s) => GrammarSpec::JsonSchema(schema_value(s, p)?),
            None => GrammarSpec::JsonObject,
        })),
        "json_schema" => {
            let js = rf.get("json_schema").ok_or_else(|| {
                ApiError::param(
                    p,
                    "response_format of type json_schema needs a \"json_schema\" object with \"name\" and \"schema\"",
                )
            })?;
            let schema = js.get("schema").ok_or_else(|| {
                ApiError::param(p, "response_format.json_schema needs a \"schema\"")
            })?;
            Ok(Some(GrammarSpec::JsonSchema(schema_value(
                schema,
                "response_format.json_schema.schema",
            )?)))
        }
        other => Err(ApiError::param(
            p,
            format!(
                "response_format type {other:?} is not supported; use \"text\", \"json_object\" or \"json_schema\""
            ),
        )),
    }
}

/// A schema given as an object, a boolean, or a JSON string holding one.
fn schema_value(v: &Value, param: &str) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => {
            let parsed: Value = serde_json::from_str(s).map_err(|e| {
                ApiError::param(param, format!("{param} is a string but not JSON: {e}"))
            })?;
            schema_value(&parsed, param)
        }
        _ => Err(ApiError::param(
            param,
            format!("{param} must be a JSON schema object"),
        )),
    }
}

/// GBNF (llama.cpp: `root ::= ...`) is translated to Lark; anything else is taken
/// as Lark already.
fn grammar_to_lark(g: &str) -> Result<String, String> {
    if g.contains("::=") {
        super::gbnf::to_lark(g)
    } else {
        Ok(g.to_string())
    }
}

/// Compiles the request's grammar (off the async threads: the first one builds the
/// token trie) and attaches it to every engine request.
pub async fn attach(
    state: &InferenceState,
    guided: Option<Guided>,
    reqs: &mut [GenerateRequest],
) -> Result<(), ApiError> {
    let Some(g) = guided else { return Ok(()) };
    let st = state.clone();
    let spec = g.spec;
    let c: Result<Constraint, ConstraintError> =
        tokio::task::spawn_blocking(move || st.engine().compile_grammar(&spec))
            .await
            .map_err(|e| ApiError::internal(format!("grammar compilation stopped: {e}")))?;
    let c = c.map_err(|e| match e {
        ConstraintError::Compile(m) => ApiError::param(
            g.param,
            format!(
                "{}: {m}; simplify it or remove the unsupported feature",
                g.param
            ),
        ),
        ConstraintError::EmptyChoice => ApiError::param(g.param, e.to_string()),
        other => ApiError::internal(other.to_string()),
    })?;
    for r in reqs.iter_mut() {
        r.constraint = Some(c.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> StructuredFields {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn response_formats() {
        let g = fields(json!({"response_format": {"type": "json_object"}}))
            .guided()
            .unwrap()
            .unwrap();
        assert_eq!(g.spec, GrammarSpec::JsonObject);
        let g = fields(json!({"response_format": {"type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "integer"}, "strict": true}}}))
        .guided()
        .unwrap()
        .unwrap();
        assert_eq!(g.spec, GrammarSpec::JsonSchema(json!({"type": "integer"})));
        assert!(fields(json!({"response_format": {"type": "text"}}))
            .guided()
            .unwrap()
            .is_none());
        let e = fields(json!({"response_format": {"type": "yaml"}}))
            .guided()
            .err()
            .unwrap();
        assert!(e.message.contains("yaml"));
        let e = fields(json!({"response_format": {"type": "json_schema"}}))
            .guided()
            .err()
            .unwrap();
        assert!(e.message.contains("json_schema"));
    }

    #[test]
    fn guided_fields_and_conflicts() {
        let g = fields(json!({"guided_json": "{\"type\": \"string\"}"}))
            .guided()
            .unwrap()
            .unwrap();
        assert_eq!(g.spec, GrammarSpec::JsonSchema(json!({"type": "string"})));
        let g = fields(json!({"guided_grammar": "root ::= \"a\" | \"b\""}))
            .guided()
            .unwrap()
            .unwrap();
        assert!(matches!(g.spec, GrammarSpec::Lark(ref s) if s.contains("start")));
        let e = fields(json!({"guided_regex": "a+", "guided_choice": ["x"]}))
            .guided()
            .err()
            .unwrap();
        assert!(e.message.contains("guided_regex, guided_choice"));
        assert!(fields(json!({"guided_choice": []})).guided().is_err());
    }
}
