//! Prompt templates as registry objects. A prompt is a registry name of kind `prompt`;
//! each version holds one file, `prompt.json` (`{"system": ..., "user": ...}`), in the
//! content-addressed store, and versions, stages, aliases, tags and the audit log are
//! the model registry's own. Templates are minijinja (`{{ question }}`); their variables
//! are listed from the source and a render without one of them is an error.
//! Knows nothing about HTTP, engines or chat templates.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::auth::{Principal, Role};
use crate::db::{self, LeaseKind};
use crate::error::{RegistryError, Result};
use crate::names::{self, ModelRef, ARCHIVED, PRODUCTION, STAGING};
use crate::registry::{FileRecord, Registry, VersionRow, KIND_PROMPT};
use crate::transfer::content_digest;

/// The file every prompt version holds.
pub const PROMPT_FILE: &str = "prompt.json";
/// Largest template (system and user parts together) accepted, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 256 << 10;
/// minijinja fuel for one render: bounds the loops of a hostile template.
const RENDER_FUEL: u64 = 2_000_000;

/// A prompt template: an optional system part and a user part, both minijinja.
/// Rendered for a chat request, they become a system message (when present) and a
/// user message; as plain text (completions, task prompts), the system part, a blank
/// line and the user part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTemplate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub user: String,
}

/// A rendered template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderedPrompt {
    pub system: Option<String>,
    pub user: String,
}

impl RenderedPrompt {
    /// One text: the system part, a blank line, the user part.
    pub fn to_text(&self) -> String {
        match &self.system {
            Some(s) if !s.is_empty() => format!("{s}\n\n{}", self.user),
            _ => self.user.clone(),
        }
    }
}

fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env.set_fuel(Some(RENDER_FUEL));
    env
}

impl PromptTemplate {
    /// A template, checked: the user part is not empty, both parts parse, the whole
    /// is at most [`MAX_TEMPLATE_BYTES`]. `label` names the prompt in errors.
    pub fn new(system: Option<String>, user: String, label: &str) -> Result<Self> {
        let t = PromptTemplate {
            system: system.filter(|s| !s.trim().is_empty()),
            user,
        };
        t.check(label)?;
        Ok(t)
    }

    fn check(&self, label: &str) -> Result<()> {
        let bad = |reason: String| RegistryError::Template {
            prompt: label.to_string(),
            reason,
        };
        if self.user.trim().is_empty() {
            return Err(bad(
                "the user part is empty; give the text the model should see".into(),
            ));
        }
        let size = self.user.len() + self.system.as_ref().map_or(0, String::len);
        if size > MAX_TEMPLATE_BYTES {
            return Err(bad(format!(
                "{size} bytes is more than the {MAX_TEMPLATE_BYTES} a template may hold"
            )));
        }
        let env = environment();
        for (part, src) in self.parts() {
            env.template_from_str(src)
                .map_err(|e| bad(format!("the {part} part does not parse: {e}")))?;
        }
        Ok(())
    }

    fn parts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.system
            .as_deref()
            .map(|s| ("system", s))
            .into_iter()
            .chain(std::iter::once(("user", self.user.as_str())))
    }

    /// The variables the template reads, sorted (minijinja's globals such as `range`
    /// left out).
    pub fn variables(&self) -> Vec<String> {
        let env = environment();
        let globals: BTreeSet<&str> = env.globals().map(|(k, _)| k).collect();
        let mut out = BTreeSet::new();
        for (_, src) in self.parts() {
            if let Ok(t) = env.template_from_str(src) {
                out.extend(
                    t.undeclared_variables(false)
                        .into_iter()
                        .filter(|v| !globals.contains(v.as_str())),
                );
            }
        }
        out.into_iter().collect()
    }

    /// Renders with `vars`. Every variable the template reads must be given (else
    /// [`RegistryError::MissingVariables`]); extra ones are ignored here (see
    /// [`PromptTemplate::unknown_variables`]). `label` names the prompt in errors.
    pub fn render(
        &self,
        label: &str,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<RenderedPrompt> {
        let needed = self.variables();
        let missing: Vec<String> = needed
            .iter()
            .filter(|v| !vars.contains_key(v.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(RegistryError::MissingVariables {
                prompt: label.to_string(),
                missing,
                needed,
            });
        }
        let env = environment();
        let ctx = minijinja::Value::from(minijinja::value::Serde(vars));
        let render = |part: &str, src: &str| -> Result<String> {
            env.template_from_str(src)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| RegistryError::Template {
                    prompt: label.to_string(),
                    reason: format!("rendering the {part} part failed: {e}"),
                })
        };
        Ok(RenderedPrompt {
            system: match &self.system {
                Some(s) => Some(render("system", s)?),
                None => None,
            },
            user: render("user", &self.user)?,
        })
    }

    /// Names in `vars` that the template does not read (likely typos), sorted.
    pub fn unknown_variables(
        &self,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<String> {
        let known: BTreeSet<String> = self.variables().into_iter().collect();
        vars.keys()
            .filter(|k| !known.contains(*k))
            .cloned()
            .collect()
    }
}

/// One version of a prompt (`hangar prompts show`).
#[derive(Debug, Clone, Serialize)]
pub struct PromptVersion {
    pub name: String,
    pub version: u32,
    /// `name@version`: what a request that used it reports.
    pub reference: String,
    pub created_at: i64,
    pub created_by: String,
    pub stage: Option<String>,
    pub aliases: Vec<String>,
    pub tags: Vec<String>,
    pub description: Option<String>,
    /// Other key-values recorded with the version (e.g. MLflow's prompt tags).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    pub variables: Vec<String>,
    pub template: PromptTemplate,
    /// sha256 of the stored `prompt.json`.
    pub sha256: String,
    /// False when `create` found the newest version already equal (no new version).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub already_present: bool,
}

/// One row of `hangar prompts list`.
#[derive(Debug, Clone, Serialize)]
pub struct PromptSummary {
    pub name: String,
    pub versions: u32,
    pub latest: u32,
    pub production: Option<u32>,
    /// Alias -> version.
    pub aliases: BTreeMap<String, u32>,
    pub description: Option<String>,
}

/// What `create_prompt` stores.
#[derive(Debug, Clone, Default)]
pub struct NewPrompt {
    pub name: String,
    pub system: Option<String>,
    pub user: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// Other key-values to record with the version (keys of 1 to 128 bytes).
    pub metadata: BTreeMap<String, String>,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

impl Registry {
    /// Stores `p` as the next version of prompt `p.name` (creating the prompt). A
    /// template equal to the newest version's (and the same description) makes no new
    /// version. A name that holds a model is refused.
    pub fn create_prompt(&mut self, who: &Principal, p: &NewPrompt) -> Result<PromptVersion> {
        who.require(Role::Writer, "creating a prompt version")?;
        names::validate_model_name(&p.name)?;
        for t in &p.tags {
            names::validate_label(t)?;
        }
        let template = PromptTemplate::new(p.system.clone(), p.user.clone(), &p.name)?;
        let lease = db::take_lease(&mut self.db, LeaseKind::Import)?;
        let r = self.create_prompt_leased(who, p, &template);
        db::release_lease(&self.db, lease);
        r
    }

    fn create_prompt_leased(
        &mut self,
        who: &Principal,
        p: &NewPrompt,
        template: &PromptTemplate,
    ) -> Result<PromptVersion> {
        let bytes = serde_json::to_vec_pretty(template)
            .map_err(|e| RegistryError::Invalid(format!("encoding the template: {e}")))?;
        let sha = sha256_hex(&bytes);
        // One chunk: prompts are small. The chunk is durable before the metadata commits.
        if !self.store.has(&sha)? {
            self.store.put(&sha, &bytes)?;
        }
        self.store.flush()?;
        let record = FileRecord {
            path: PROMPT_FILE.into(),
            format: "text".into(),
            size: bytes.len() as u64,
            sha256: sha.clone(),
        };
        let mut metadata = p.metadata.clone();
        if let Some(k) = metadata.keys().find(|k| k.is_empty() || k.len() > 128) {
            return Err(RegistryError::Invalid(format!(
                "metadata key {k:?} must be 1 to 128 bytes"
            )));
        }
        if let Some(d) = p.description.as_ref().filter(|d| !d.is_empty()) {
            metadata.insert("description".to_string(), d.clone());
        }
        let digest = content_digest(std::slice::from_ref(&record), &metadata);
        let tx = self
            .db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let existing: Option<(i64, String)> = tx
            .query_row(
                "SELECT id, kind FROM models WHERE name = ?1",
                [&p.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let model_id = match existing {
            Some((_, kind)) if kind != KIND_PROMPT => {
                return Err(RegistryError::Conflict(format!(
                    "{:?} is the name of a model; give the prompt another name",
                    p.name
                )))
            }
            Some((id, _)) => id,
            None => {
                tx.execute(
                    "INSERT INTO models(name, created_at, kind) VALUES(?1, ?2, ?3)",
                    params![p.name, db::now(), KIND_PROMPT],
                )?;
                tx.last_insert_rowid()
            }
        };
        let latest: Option<(u32, String)> = tx
            .query_row(
                "SELECT number, content_digest FROM versions WHERE model_id = ?1
                 ORDER BY number DESC LIMIT 1",
                [model_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((v, d)) = latest {
            if d == digest {
                tx.commit()?;
                let mut out = self.prompt(who, &format!("{}@{v}", p.name))?;
                out.already_present = true;
                return Ok(out);
            }
        }
        let number: u32 = tx.query_row(
            "UPDATE models SET next_version = next_version + 1 WHERE id = ?1
             RETURNING next_version - 1",
            [model_id],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO versions(model_id, number, created_at, created_by, metadata,
                content_digest, total_size, new_bytes)
             VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                model_id,
                number,
                db::now(),
                who.name,
                serde_json::to_string(&metadata).unwrap_or_else(|_| "{}".into()),
                digest,
                bytes.len() as i64,
                bytes.len() as i64
            ],
        )?;
        let version_id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO files(version_id, path, format, size, sha256) VALUES(?1, ?2, ?3, ?4, ?5)",
            params![
                version_id,
                record.path,
                record.format,
                bytes.len() as i64,
                sha
            ],
        )?;
        let file_id = tx.last_insert_rowid();
        tx.execute(
            "INSERT INTO file_chunks(file_id, seq, chunk, len) VALUES(?1, 0, ?2, ?3)",
            params![file_id, sha, bytes.len() as i64],
        )?;
        tx.execute(
            "INSERT OR IGNORE INTO chunks(hash, len) VALUES(?1, ?2)",
            params![sha, bytes.len() as i64],
        )?;
        for t in &p.tags {
            tx.execute(
                "INSERT OR IGNORE INTO tags(version_id, tag) VALUES(?1, ?2)",
                params![version_id, t],
            )?;
        }
        db::audit(
            &tx,
            &who.name,
            "prompt.create",
            &format!("{}@{number}", p.name),
            &json!({"sha256": sha, "variables": template.variables()}),
        )?;
        tx.commit()?;
        self.prompt(who, &format!("{}@{number}", p.name))
    }

    /// What a registry name holds: `Some("model")`, `Some("prompt")`, or `None` when
    /// the name is unknown.
    pub fn kind_of(&self, who: &Principal, name: &str) -> Result<Option<String>> {
        who.require(Role::Reader, "reading the registry")?;
        names::validate_model_name(name)?;
        Ok(self.name_kind(name)?.map(|(_, k)| k))
    }

    /// Claims `name` for a prompt before its first version (MLflow registers a prompt's
    /// name, then its versions). A name holding a model is refused; an existing prompt
    /// is left as it is.
    pub fn reserve_prompt(&self, who: &Principal, name: &str) -> Result<()> {
        who.require(Role::Writer, "creating a prompt")?;
        names::validate_model_name(name)?;
        match self.name_kind(name)? {
            Some((_, k)) if k != KIND_PROMPT => Err(RegistryError::Conflict(format!(
                "{name:?} is the name of a model; give the prompt another name"
            ))),
            Some(_) => Ok(()),
            None => {
                self.db.execute(
                    "INSERT INTO models(name, created_at, kind) VALUES(?1, ?2, ?3)",
                    params![name, db::now(), KIND_PROMPT],
                )?;
                db::audit(&self.db, &who.name, "prompt.reserve", name, &json!({}))?;
                Ok(())
            }
        }
    }

    /// Finds a prompt version; a model's name is refused with a sentence.
    fn find_prompt(&self, reference: &str) -> Result<VersionRow> {
        let r: ModelRef = reference.parse()?;
        let row = self.find(&r).map_err(|e| match e {
            RegistryError::NotFound(_) => RegistryError::NotFound(format!(
                "prompt {reference:?}; `hangar prompts list` shows the prompts there are"
            )),
            e => e,
        })?;
        if row.kind != KIND_PROMPT {
            return Err(RegistryError::Invalid(format!(
                "{:?} is a model, not a prompt; use `hangar registry show {}`",
                r.name, r.name
            )));
        }
        Ok(row)
    }

    /// Reads a stored template back, verifying its sha256.
    fn read_template(&self, row: &VersionRow) -> Result<(PromptTemplate, String)> {
        let label = format!("{}@{}", row.name, row.number);
        let (file_id, rec) = self
            .files_of(row.id)?
            .into_iter()
            .find(|(_, f)| f.path == PROMPT_FILE)
            .ok_or_else(|| RegistryError::Integrity(format!("{label} has no {PROMPT_FILE}")))?;
        let mut bytes = Vec::with_capacity(rec.size as usize);
        for (hash, _) in self.chunks_of(file_id)? {
            bytes.extend(self.store.get(&hash)?);
        }
        if sha256_hex(&bytes) != rec.sha256 {
            return Err(RegistryError::Integrity(format!(
                "{label}: {PROMPT_FILE} does not match its recorded sha256; run `hangar registry verify`"
            )));
        }
        let t: PromptTemplate = serde_json::from_slice(&bytes).map_err(|e| {
            RegistryError::Integrity(format!("{label}: {PROMPT_FILE} is not a template: {e}"))
        })?;
        Ok((t, rec.sha256))
    }

    /// One prompt version: `name` (production, else newest), `name@3`, `name@alias`,
    /// `name@production`, `name@latest`.
    pub fn prompt(&self, who: &Principal, reference: &str) -> Result<PromptVersion> {
        who.require(Role::Reader, "reading a prompt")?;
        let row = self.find_prompt(reference)?;
        let info = self.show(who, &format!("{}@{}", row.name, row.number))?;
        let (template, sha256) = self.read_template(&row)?;
        let mut metadata = info.metadata;
        let description = metadata.remove("description");
        Ok(PromptVersion {
            reference: format!("{}@{}", row.name, row.number),
            name: row.name,
            version: row.number,
            created_at: info.created_at,
            created_by: info.created_by,
            stage: info.stage,
            aliases: info.aliases,
            tags: info.tags,
            description,
            metadata,
            variables: template.variables(),
            template,
            sha256,
            already_present: false,
        })
    }

    /// Every version of a prompt, oldest first.
    pub fn prompt_versions(&self, who: &Principal, name: &str) -> Result<Vec<PromptVersion>> {
        who.require(Role::Reader, "reading a prompt")?;
        names::validate_model_name(name)?;
        self.find_prompt(&format!("{name}@latest"))?;
        let numbers: Vec<u32> = {
            let mut st = self.db.prepare(
                "SELECT v.number FROM versions v JOIN models m ON m.id = v.model_id
                 WHERE m.name = ?1 ORDER BY v.number",
            )?;
            let v = st
                .query_map([name], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            v
        };
        numbers
            .into_iter()
            .map(|n| self.prompt(who, &format!("{name}@{n}")))
            .collect()
    }

    /// Every prompt with its version count, newest and production version, aliases.
    pub fn list_prompts(&self, who: &Principal) -> Result<Vec<PromptSummary>> {
        who.require(Role::Reader, "listing prompts")?;
        let mut st = self.db.prepare(
            "SELECT m.name, COUNT(v.id), MAX(v.number),
                    (SELECT number FROM versions p WHERE p.model_id = m.id AND p.stage = 'production')
             FROM models m JOIN versions v ON v.model_id = m.id
             WHERE m.kind = 'prompt' GROUP BY m.id ORDER BY m.name",
        )?;
        let rows: Vec<(String, u32, u32, Option<u32>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for (name, versions, latest, production) in rows {
            let mut st = self.db.prepare(
                "SELECT a.alias, v.number FROM aliases a JOIN versions v ON v.id = a.version_id
                 JOIN models m ON m.id = a.model_id WHERE m.name = ?1 ORDER BY a.alias",
            )?;
            let aliases = st
                .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let description = self
                .show(who, &format!("{name}@{latest}"))?
                .metadata
                .get("description")
                .cloned();
            out.push(PromptSummary {
                name,
                versions,
                latest,
                production,
                aliases,
                description,
            });
        }
        Ok(out)
    }

    /// Points `label` at a prompt version. `production`, `staging` and `archived` are
    /// stages and go through [`Registry::promote`] (production needs the promoter
    /// role); any other label is an alias (writer).
    pub fn set_prompt_alias(
        &self,
        who: &Principal,
        reference: &str,
        label: &str,
    ) -> Result<PromptVersion> {
        let row = self.find_prompt(reference)?;
        let exact = format!("{}@{}", row.name, row.number);
        if [PRODUCTION, STAGING, ARCHIVED].contains(&label) {
            self.promote(who, &exact, label)?;
        } else {
            self.set_alias(who, &exact, label)?;
        }
        self.prompt(who, &exact)
    }

    /// Resolves and renders a prompt in one call (what a chat request does).
    pub fn render_prompt(
        &self,
        who: &Principal,
        reference: &str,
        vars: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(PromptVersion, RenderedPrompt)> {
        let p = self.prompt(who, reference)?;
        let r = p.template.render(&p.reference, vars)?;
        Ok((p, r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn lists_variables_of_both_parts_without_globals() {
        let t = PromptTemplate::new(
            Some("You answer in {{ language }}.".into()),
            "{% for i in range(n) %}{{ question }}{% endfor %} {{ ctx.title }}".into(),
            "p",
        )
        .unwrap();
        assert_eq!(t.variables(), ["ctx", "language", "n", "question"]);
    }

    #[test]
    fn renders_system_and_user_parts() {
        let t =
            PromptTemplate::new(Some("Be {{ tone }}.".into()), "Q: {{ q }}\n".into(), "p").unwrap();
        let r = t
            .render("p@1", &vars(json!({"tone": "brief", "q": "2+2?"})))
            .unwrap();
        assert_eq!(r.system.as_deref(), Some("Be brief."));
        assert_eq!(r.user, "Q: 2+2?\n");
        assert_eq!(r.to_text(), "Be brief.\n\nQ: 2+2?\n");
    }

    #[test]
    fn a_missing_variable_is_an_error_naming_it() {
        let t = PromptTemplate::new(None, "{{ a }} and {{ b }}".into(), "p").unwrap();
        let e = t.render("p@2", &vars(json!({"a": 1}))).unwrap_err();
        match &e {
            RegistryError::MissingVariables {
                prompt,
                missing,
                needed,
            } => {
                assert_eq!(prompt, "p@2");
                assert_eq!(missing, &["b"]);
                assert_eq!(needed, &["a", "b"]);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(e.to_string().contains("needs the variable(s) b"), "{e}");
        assert_eq!(
            t.unknown_variables(&vars(json!({"a": 1, "b": 2, "c": 3}))),
            ["c"]
        );
    }

    #[test]
    fn refuses_empty_and_unparseable_templates() {
        assert!(matches!(
            PromptTemplate::new(None, "  ".into(), "p"),
            Err(RegistryError::Template { .. })
        ));
        let e = PromptTemplate::new(None, "{% for x in %}".into(), "p").unwrap_err();
        assert!(e.to_string().contains("does not parse"), "{e}");
        let e = PromptTemplate::new(Some("{{ ".into()), "ok".into(), "p").unwrap_err();
        assert!(e.to_string().contains("system part"), "{e}");
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let t = PromptTemplate::new(
            None,
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
                .into(),
            "p",
        )
        .unwrap();
        let e = t.render("p@1", &serde_json::Map::new()).unwrap_err();
        assert!(matches!(e, RegistryError::Template { .. }), "{e}");
    }
}
