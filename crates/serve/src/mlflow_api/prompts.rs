//! MLflow's prompt registry (`mlflow.genai.register_prompt` / `load_prompt`) on the
//! registry's prompt store. MLflow keeps a prompt as a registered model tagged
//! `mlflow.prompt.is_prompt=true` whose versions carry the template in the tag
//! `mlflow.prompt.text` (`_mlflow_prompt_type` `text`, or `chat`: a JSON list of
//! messages). Here the name is a registry prompt and each version a prompt version:
//! a text template is the user part; a chat template may hold system messages then
//! one user message. Other version tags are kept in the version's metadata.

use super::{MlResult, MlflowError};
use hangar_registry::{NewPrompt, Principal, PromptVersion, Registry};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

pub(super) const IS_PROMPT: &str = "mlflow.prompt.is_prompt";
const TEXT: &str = "mlflow.prompt.text";
const TYPE: &str = "_mlflow_prompt_type";

/// An MLflow `{key, value}` tag.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Whether MLflow tags mark a prompt.
pub(super) fn tagged_prompt(tags: &[Tag]) -> bool {
    tags.iter().any(|t| t.key == IS_PROMPT && t.value == "true")
}

/// Whether `name` is a registry prompt.
pub(super) fn is_prompt(reg: &Registry, who: &Principal, name: &str) -> MlResult<bool> {
    Ok(reg.kind_of(who, name)?.as_deref() == Some("prompt"))
}

/// A prompt version as an MLflow model version (tags carry the template).
pub(super) fn version_json(p: &PromptVersion) -> Value {
    let (kind, text) = match &p.template.system {
        None => ("text", p.template.user.clone()),
        Some(s) => (
            "chat",
            json!([{"role": "system", "content": s}, {"role": "user", "content": p.template.user}])
                .to_string(),
        ),
    };
    let mut tags = vec![
        json!({"key": IS_PROMPT, "value": "true"}),
        json!({"key": TEXT, "value": text}),
        json!({"key": TYPE, "value": kind}),
    ];
    tags.extend(
        p.metadata
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v})),
    );
    json!({
        "name": p.name,
        "version": p.version.to_string(),
        "creation_timestamp": p.created_at * 1000,
        "last_updated_timestamp": p.created_at * 1000,
        "user_id": p.created_by,
        "current_stage": super::models::mlflow_stage(p.stage.as_deref()),
        "description": p.description.clone().unwrap_or_default(),
        "source": "dummy-source",
        "run_id": "",
        "status": "READY",
        "tags": tags,
        "aliases": p.aliases,
    })
}

/// The (system, user) parts of an MLflow template.
fn parts(kind: Option<&str>, text: &str) -> MlResult<(Option<String>, String)> {
    if kind != Some("chat") {
        return Ok((None, text.to_string()));
    }
    #[derive(Deserialize)]
    struct Msg {
        role: String,
        content: String,
    }
    let msgs: Vec<Msg> = serde_json::from_str(text).map_err(|e| {
        MlflowError::invalid(format!(
            "a chat prompt's {TEXT} must be a JSON list of {{role, content}} messages: {e}"
        ))
    })?;
    let (system, rest): (Vec<&Msg>, Vec<&Msg>) = msgs.iter().partition(|m| m.role == "system");
    match rest.as_slice() {
        [u] if u.role == "user" && msgs.last().is_some_and(|l| l.role == "user") => {
            let system: Vec<&str> = system.iter().map(|m| m.content.as_str()).collect();
            Ok((
                (!system.is_empty()).then(|| system.join("\n\n")),
                u.content.clone(),
            ))
        }
        _ => Err(MlflowError::invalid(
            "Hangar prompts hold system messages followed by one user message; \
             register the other turns with the request instead",
        )),
    }
}

/// `model-versions/create` for a prompt: the template from the version's tags.
pub(super) fn create_version(
    reg: &mut Registry,
    who: &Principal,
    name: String,
    description: Option<String>,
    tags: &[Tag],
) -> MlResult<Value> {
    let tag = |k: &str| tags.iter().find(|t| t.key == k).map(|t| t.value.as_str());
    let text = tag(TEXT).ok_or_else(|| {
        MlflowError::invalid(format!(
            "{name} is a prompt: a new version needs its template in the tag {TEXT}"
        ))
    })?;
    let (system, user) = parts(tag(TYPE), text)?;
    let metadata: BTreeMap<String, String> = tags
        .iter()
        .filter(|t| ![IS_PROMPT, TEXT, TYPE].contains(&t.key.as_str()))
        .map(|t| (t.key.clone(), t.value.clone()))
        .collect();
    let p = reg.create_prompt(
        who,
        &NewPrompt {
            name,
            system,
            user,
            description,
            metadata,
            ..Default::default()
        },
    )?;
    Ok(json!({ "model_version": version_json(&p) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_templates_split_into_system_and_user() {
        let t = r#"[{"role": "system", "content": "Be {{ tone }}."}, {"role": "user", "content": "{{ q }}"}]"#;
        let (s, u) = parts(Some("chat"), t).unwrap();
        assert_eq!(
            (s.as_deref(), u.as_str()),
            (Some("Be {{ tone }}."), "{{ q }}")
        );
        let (s, u) = parts(Some("text"), "Hi {{ x }}").unwrap();
        assert_eq!((s, u.as_str()), (None, "Hi {{ x }}"));
        let two_users = r#"[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]"#;
        assert!(parts(Some("chat"), two_users).is_err());
        assert!(parts(Some("chat"), "not json").is_err());
    }
}
