//! The `Registry` handle: opens the metadata database and the chunk store, checks
//! access, and answers queries about models, versions, stages, aliases and lineage.
//! Moving bytes in and out lives in `transfer.rs`; gc and verification in `maintain.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::json;

use crate::auth::{self, Principal, Role};
use crate::db;
use crate::error::{io_ctx, RegistryError, Result};
use crate::names::{self, ModelRef, Selector, ARCHIVED, PRODUCTION};
use crate::store::{ChunkStore, LocalChunkStore, S3ChunkStore, S3Config};

/// Where chunk bytes go.
#[derive(Debug, Clone, Default)]
pub enum StoreSpec {
    /// `home/registry/chunks` (the default).
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3(S3Config),
}

impl StoreSpec {
    /// `local` or `s3://bucket/prefix` (endpoint from `AWS_ENDPOINT_URL`).
    pub fn parse(s: &str) -> Result<Self> {
        if s == "local" {
            Ok(StoreSpec::Local)
        } else {
            Ok(StoreSpec::S3(S3Config::from_url(s)?))
        }
    }
}

/// A model registry rooted at a home folder.
///
/// ```no_run
/// use hangar_registry::{Registry, Principal};
/// let reg = Registry::open(None).unwrap();
/// let who = reg.principal(None).unwrap();
/// let model = reg.resolve(&who, "gemma3-270m").unwrap();
/// println!("{}", model.primary.unwrap().display());
/// ```
pub struct Registry {
    pub(crate) root: PathBuf,
    pub(crate) db: Connection,
    pub(crate) store: Arc<dyn ChunkStore>,
}

/// The default home: `$HANGAR_HOME`, else `$XDG_DATA_HOME/hangar`, else
/// `~/.local/share/hangar`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("HANGAR_HOME") {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("hangar");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".local/share/hangar")
}

/// One row of `list`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub name: String,
    pub versions: u32,
    pub latest: Option<u32>,
    pub production: Option<u32>,
    pub total_size: u64,
}

/// One file of a version.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct FileRecord {
    pub path: String,
    pub format: String,
    pub size: u64,
    pub sha256: String,
}

/// How a version was derived from another.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LineageInfo {
    pub base_model: String,
    pub base_version: u32,
    /// `quantized`, `merged-lora`, `pruned`, `fine-tuned`, `distilled` or another label.
    pub derivation: String,
    pub run: Option<String>,
}

/// Everything about one version (`show`).
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub name: String,
    pub version: u32,
    /// `model`, `adapter` (a LoRA adapter; its lineage names the base) or `prompt`.
    pub kind: String,
    pub created_at: i64,
    pub created_by: String,
    pub stage: Option<String>,
    pub aliases: Vec<String>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub lineage: Option<LineageInfo>,
    /// Ancestors, nearest first (`base`, its base, ...), as `name@version`.
    pub ancestry: Vec<String>,
    pub total_size: u64,
    /// Bytes this version added to the store when imported (the rest was shared).
    pub new_bytes: u64,
    pub content_digest: String,
    pub files: Vec<FileRecord>,
}

/// A model and its versions (`show NAME`).
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub name: String,
    pub created_at: i64,
    pub versions: Vec<VersionInfo>,
}

/// One audit-log entry.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub ts: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
}

/// Store-wide sizes (`stats`).
#[derive(Debug, Clone, Serialize)]
pub struct StoreStats {
    pub store: String,
    pub models: u64,
    pub versions: u64,
    /// Sum of every version's file sizes.
    pub logical_bytes: u64,
    /// Bytes of distinct chunks referenced by the database.
    pub stored_bytes: u64,
    pub chunks: u64,
    /// logical / stored (1.0 = no sharing).
    pub dedup_ratio: f64,
}

pub(crate) struct VersionRow {
    pub id: i64,
    pub model_id: i64,
    pub name: String,
    pub number: u32,
    pub stage: Option<String>,
    /// `model` or `prompt`.
    pub kind: String,
}

/// What a registry name holds: a model's files, a LoRA adapter's files (with lineage
/// to its base model) or a prompt template (`prompts.rs`).
pub(crate) const KIND_MODEL: &str = "model";
pub(crate) const KIND_ADAPTER: &str = "adapter";
pub(crate) const KIND_PROMPT: &str = "prompt";

impl Registry {
    /// Opens (creating if needed) the registry under `home` (default: [`default_home`])
    /// with the store recorded there, or local chunks for a new registry.
    pub fn open(home: Option<PathBuf>) -> Result<Self> {
        Self::open_with(home, None)
    }

    /// Opens with an explicit store. A registry remembers its store: opening an
    /// existing registry with a different one is refused.
    pub fn open_with(home: Option<PathBuf>, store: Option<StoreSpec>) -> Result<Self> {
        let home = home.unwrap_or_else(default_home);
        let root = home.join("registry");
        std::fs::create_dir_all(&root).map_err(io_ctx(format!("create {}", root.display())))?;
        let db = db::open(&root.join("registry.db"))?;
        let recorded = db::setting(&db, "store")?;
        let (spec, url) = match (store, recorded) {
            (Some(s), rec) => {
                let url = match &s {
                    StoreSpec::Local => "local".to_string(),
                    StoreSpec::S3(c) => c.url(),
                };
                if let Some(r) = rec {
                    if r != url {
                        return Err(RegistryError::Invalid(format!(
                            "this registry keeps its chunks in {r}, not {url}; \
                             use another --home for a different store"
                        )));
                    }
                }
                (s, url)
            }
            (None, Some(r)) => {
                let mut s = StoreSpec::parse(&r)?;
                if let (StoreSpec::S3(c), Some(ep)) = (&mut s, db::setting(&db, "store_endpoint")?)
                {
                    if c.endpoint.is_none() {
                        c.endpoint = Some(ep);
                    }
                }
                (s, r)
            }
            (None, None) => (StoreSpec::Local, "local".to_string()),
        };
        db::set_setting(&db, "store", &url)?;
        let store: Arc<dyn ChunkStore> = match &spec {
            StoreSpec::Local => Arc::new(LocalChunkStore::open(
                root.join("chunks"),
                root.join("tmp"),
            )?),
            StoreSpec::S3(c) => {
                if let Some(ep) = &c.endpoint {
                    db::set_setting(&db, "store_endpoint", ep)?;
                }
                Arc::new(S3ChunkStore::open(c)?)
            }
        };
        Ok(Registry { root, db, store })
    }

    /// The folder holding the database, chunks (local store) and cache.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The chunk store in use.
    pub fn store(&self) -> &dyn ChunkStore {
        &*self.store
    }

    // ---- access control -------------------------------------------------------------

    fn has_tokens(&self) -> Result<bool> {
        Ok(self
            .db
            .query_row("SELECT EXISTS(SELECT 1 FROM tokens)", [], |r| r.get(0))?)
    }

    /// The principal for a command-line call. With a token: its name and role. Without
    /// one: the local admin while the registry has no tokens (bootstrap), else refused.
    pub fn principal(&self, token: Option<&str>) -> Result<Principal> {
        match token {
            Some(t) => self.token_principal(t),
            None if !self.has_tokens()? => Ok(Principal::local_admin()),
            None => Err(RegistryError::Unauthorized(
                "this registry has access tokens; pass --token or set HANGAR_TOKEN".into(),
            )),
        }
    }

    /// The principal for a network call: a token is required, except that a registry
    /// without tokens lets anonymous callers read.
    pub fn principal_for_network(&self, token: Option<&str>) -> Result<Principal> {
        match token {
            Some(t) => self.token_principal(t),
            None if !self.has_tokens()? => Ok(Principal {
                name: "anonymous".into(),
                role: Role::Reader,
            }),
            None => Err(RegistryError::Unauthorized(
                "send `Authorization: Bearer <token>`".into(),
            )),
        }
    }

    fn token_principal(&self, token: &str) -> Result<Principal> {
        let row: Option<(String, String)> = self
            .db
            .query_row(
                "SELECT name, role FROM tokens WHERE digest = ?1",
                [auth::token_digest(token)],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            Some((name, role)) => Ok(Principal {
                name,
                role: role.parse()?,
            }),
            None => Err(RegistryError::Unauthorized(
                "unknown or revoked token".into(),
            )),
        }
    }

    /// Creates a token and returns its secret (shown once). Needs admin, except for the
    /// very first token of a registry.
    pub fn create_token(&self, who: &Principal, name: &str, role: Role) -> Result<String> {
        who.require(Role::Admin, "creating a token")?;
        names::validate_label(name)?;
        let token = auth::new_token()?;
        self.db
            .execute(
                "INSERT INTO tokens(digest, name, role, created_at) VALUES(?1, ?2, ?3, ?4)",
                params![auth::token_digest(&token), name, role.as_str(), db::now()],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    RegistryError::Conflict(format!("a token named {name:?} already exists"))
                }
                e => e.into(),
            })?;
        db::audit(
            &self.db,
            &who.name,
            "token.create",
            name,
            &json!({"role": role}),
        )?;
        Ok(token)
    }

    pub fn list_tokens(&self, who: &Principal) -> Result<Vec<TokenInfo>> {
        who.require(Role::Admin, "listing tokens")?;
        let mut st = self
            .db
            .prepare("SELECT name, role, created_at FROM tokens ORDER BY name")?;
        let rows = st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (name, role, created_at) = r?;
            out.push(TokenInfo {
                name,
                role: role.parse()?,
                created_at,
            });
        }
        Ok(out)
    }

    pub fn revoke_token(&self, who: &Principal, name: &str) -> Result<()> {
        who.require(Role::Admin, "revoking a token")?;
        let n = self
            .db
            .execute("DELETE FROM tokens WHERE name = ?1", [name])?;
        if n == 0 {
            return Err(RegistryError::NotFound(format!("token {name:?}")));
        }
        db::audit(&self.db, &who.name, "token.revoke", name, &json!({}))?;
        Ok(())
    }

    // ---- lookups --------------------------------------------------------------------

    pub(crate) fn model_id(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .db
            .query_row("SELECT id FROM models WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The id and kind (`model` or `prompt`) of a registry name.
    pub(crate) fn name_kind(&self, name: &str) -> Result<Option<(i64, String)>> {
        Ok(self
            .db
            .query_row("SELECT id, kind FROM models WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// Resolves a reference to one version row.
    pub(crate) fn find(&self, r: &ModelRef) -> Result<VersionRow> {
        let (model_id, kind) = self
            .name_kind(&r.name)?
            .ok_or_else(|| RegistryError::NotFound(format!("model {:?}", r.name)))?;
        let q = "SELECT id, number, stage FROM versions WHERE model_id = ?1";
        let row =
            |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<Option<(i64, u32, Option<String>)>> {
                Ok(self
                    .db
                    .query_row(sql, p, |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?)
            };
        let found = match &r.selector {
            Selector::Version(v) => row(&format!("{q} AND number = ?2"), &[&model_id, v])?,
            Selector::Latest => row(&format!("{q} ORDER BY number DESC LIMIT 1"), &[&model_id])?,
            Selector::Default => match row(&format!("{q} AND stage = 'production'"), &[&model_id])?
            {
                Some(x) => Some(x),
                None => row(&format!("{q} ORDER BY number DESC LIMIT 1"), &[&model_id])?,
            },
            Selector::Label(l) => {
                let alias = row(
                    "SELECT v.id, v.number, v.stage FROM aliases a JOIN versions v ON v.id = a.version_id
                     WHERE a.model_id = ?1 AND a.alias = ?2",
                    &[&model_id, l],
                )?;
                match alias {
                    Some(x) => Some(x),
                    None => row(
                        &format!("{q} AND stage = ?2 ORDER BY number DESC LIMIT 1"),
                        &[&model_id, l],
                    )?,
                }
            }
        };
        let (id, number, stage) =
            found.ok_or_else(|| RegistryError::NotFound(format!("model version {r}")))?;
        Ok(VersionRow {
            id,
            model_id,
            name: r.name.clone(),
            number,
            stage,
            kind,
        })
    }

    /// Like [`Registry::find`], refusing a prompt where a model is wanted.
    pub(crate) fn find_model(&self, r: &ModelRef) -> Result<VersionRow> {
        let row = self.find(r)?;
        if row.kind == KIND_ADAPTER {
            return Err(RegistryError::Invalid(format!(
                "{:?} is a LoRA adapter, not a model; serve it beside its base model with `hangar serve --lora {}={}`",
                r.name, r.name, r
            )));
        }
        if row.kind != KIND_MODEL {
            return Err(RegistryError::Invalid(format!(
                "{:?} is a prompt, not a model; use `hangar prompts show {}` to read it",
                r.name, r.name
            )));
        }
        Ok(row)
    }

    pub(crate) fn files_of(&self, version_id: i64) -> Result<Vec<(i64, FileRecord)>> {
        let mut st = self.db.prepare(
            "SELECT id, path, format, size, sha256 FROM files WHERE version_id = ?1 ORDER BY path",
        )?;
        let rows = st.query_map([version_id], |r| {
            Ok((
                r.get(0)?,
                FileRecord {
                    path: r.get(1)?,
                    format: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u64,
                    sha256: r.get(4)?,
                },
            ))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn chunks_of(&self, file_id: i64) -> Result<Vec<(String, u64)>> {
        let mut st = self
            .db
            .prepare("SELECT chunk, len FROM file_chunks WHERE file_id = ?1 ORDER BY seq")?;
        let rows = st.query_map([file_id], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn version_info(&self, row: &VersionRow) -> Result<VersionInfo> {
        #[allow(clippy::type_complexity)]
        let (
            created_at,
            created_by,
            metadata,
            base_model,
            base_version,
            derivation,
            run,
            digest,
            total,
            new,
        ): (
            i64,
            String,
            String,
            Option<String>,
            Option<u32>,
            Option<String>,
            Option<String>,
            String,
            i64,
            i64,
        ) = self.db.query_row(
            "SELECT created_at, created_by, metadata, base_model, base_version, derivation,
                    derived_by_run, content_digest, total_size, new_bytes
             FROM versions WHERE id = ?1",
            [row.id],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                    r.get(9)?,
                ))
            },
        )?;
        let strings = |sql: &str| -> Result<Vec<String>> {
            let mut st = self.db.prepare(sql)?;
            let v = st
                .query_map([row.id], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(v)
        };
        let aliases = strings("SELECT alias FROM aliases WHERE version_id = ?1 ORDER BY alias")?;
        let tags = strings("SELECT tag FROM tags WHERE version_id = ?1 ORDER BY tag")?;
        let lineage = match (base_model, base_version) {
            (Some(m), Some(v)) => Some(LineageInfo {
                base_model: m,
                base_version: v,
                derivation: derivation.unwrap_or_else(|| "derived".into()),
                run,
            }),
            _ => None,
        };
        let mut ancestry = Vec::new();
        let mut cur = lineage
            .as_ref()
            .map(|l| (l.base_model.clone(), l.base_version));
        while let Some((m, v)) = cur.take() {
            if ancestry.len() >= 32 {
                break;
            }
            ancestry.push(format!("{m}@{v}"));
            cur = self
                .db
                .query_row(
                    "SELECT v.base_model, v.base_version FROM versions v JOIN models m ON m.id = v.model_id
                     WHERE m.name = ?1 AND v.number = ?2",
                    params![m, v],
                    |r| Ok((r.get::<_, Option<String>>(0)?, r.get::<_, Option<u32>>(1)?)),
                )
                .optional()?
                .and_then(|(m, v)| Some((m?, v?)));
        }
        Ok(VersionInfo {
            name: row.name.clone(),
            version: row.number,
            kind: row.kind.clone(),
            created_at,
            created_by,
            stage: row.stage.clone(),
            aliases,
            tags,
            metadata: serde_json::from_str(&metadata).unwrap_or_default(),
            lineage,
            ancestry,
            total_size: total as u64,
            new_bytes: new as u64,
            content_digest: digest,
            files: self.files_of(row.id)?.into_iter().map(|(_, f)| f).collect(),
        })
    }

    // ---- queries --------------------------------------------------------------------

    /// Every model with its version count, newest and production version.
    pub fn list(&self, who: &Principal) -> Result<Vec<ModelSummary>> {
        who.require(Role::Reader, "listing models")?;
        let mut st = self.db.prepare(
            "SELECT m.name, COUNT(v.id), MAX(v.number),
                    (SELECT number FROM versions p WHERE p.model_id = m.id AND p.stage = 'production'),
                    COALESCE(SUM(v.total_size), 0)
             FROM models m LEFT JOIN versions v ON v.model_id = m.id
             WHERE m.kind = 'model'
             GROUP BY m.id HAVING COUNT(v.id) > 0 ORDER BY m.name",
        )?;
        let rows = st.query_map([], |r| {
            Ok(ModelSummary {
                name: r.get(0)?,
                versions: r.get(1)?,
                latest: r.get(2)?,
                production: r.get(3)?,
                total_size: r.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One version (`name@selector`).
    pub fn show(&self, who: &Principal, reference: &str) -> Result<VersionInfo> {
        who.require(Role::Reader, "showing a model")?;
        let r: ModelRef = reference.parse()?;
        let row = self.find(&r)?;
        self.version_info(&row)
    }

    /// A model with all its versions, oldest first.
    pub fn show_model(&self, who: &Principal, name: &str) -> Result<ModelInfo> {
        who.require(Role::Reader, "showing a model")?;
        names::validate_model_name(name)?;
        let (model_id, created_at, kind): (i64, i64, String) = self
            .db
            .query_row(
                "SELECT id, created_at, kind FROM models WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?
            .ok_or_else(|| RegistryError::NotFound(format!("model {name:?}")))?;
        let mut st = self.db.prepare(
            "SELECT id, number, stage FROM versions WHERE model_id = ?1 ORDER BY number",
        )?;
        let rows: Vec<VersionRow> = st
            .query_map([model_id], |r| {
                Ok(VersionRow {
                    id: r.get(0)?,
                    model_id,
                    name: name.to_string(),
                    number: r.get(1)?,
                    stage: r.get(2)?,
                    kind: kind.clone(),
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let versions = rows
            .iter()
            .map(|v| self.version_info(v))
            .collect::<Result<_>>()?;
        Ok(ModelInfo {
            name: name.to_string(),
            created_at,
            versions,
        })
    }

    /// Store-wide logical vs stored bytes.
    pub fn stats(&self, who: &Principal) -> Result<StoreStats> {
        who.require(Role::Reader, "reading stats")?;
        let q = |sql: &str| -> Result<i64> { Ok(self.db.query_row(sql, [], |r| r.get(0))?) };
        let logical = q("SELECT COALESCE(SUM(total_size), 0) FROM versions")? as u64;
        let stored = q("SELECT COALESCE(SUM(len), 0) FROM chunks WHERE hash IN (SELECT chunk FROM file_chunks)")? as u64;
        Ok(StoreStats {
            store: self.store.describe(),
            models: q("SELECT COUNT(*) FROM models WHERE id IN (SELECT model_id FROM versions)")?
                as u64,
            versions: q("SELECT COUNT(*) FROM versions")? as u64,
            logical_bytes: logical,
            stored_bytes: stored,
            chunks: q("SELECT COUNT(*) FROM chunks")? as u64,
            dedup_ratio: if stored == 0 {
                1.0
            } else {
                logical as f64 / stored as f64
            },
        })
    }

    /// The newest audit entries, newest first.
    pub fn audit_log(&self, who: &Principal, limit: u32) -> Result<Vec<AuditEntry>> {
        who.require(Role::Promoter, "reading the audit log")?;
        let mut st = self.db.prepare(
            "SELECT id, ts, actor, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = st.query_map([limit], |r| {
            Ok(AuditEntry {
                id: r.get(0)?,
                ts: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                target: r.get(4)?,
                detail: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    // ---- stages, aliases, tags ------------------------------------------------------

    /// Moves a version to `stage`. Production needs the promoter role and is held by one
    /// version per model: the previous production version becomes `archived`.
    pub fn promote(&self, who: &Principal, reference: &str, stage: &str) -> Result<VersionInfo> {
        names::validate_label(stage)?;
        let r: ModelRef = reference.parse()?;
        let row = self.find(&r)?;
        let touches_production = stage == PRODUCTION || row.stage.as_deref() == Some(PRODUCTION);
        if touches_production {
            who.require(Role::Promoter, "moving a version into or out of production")?;
        } else {
            who.require(Role::Writer, "changing a version's stage")?;
        }
        let tx = self.db.unchecked_transaction()?;
        let mut displaced = None;
        if stage == PRODUCTION {
            displaced = tx
                .query_row(
                    "SELECT number FROM versions WHERE model_id = ?1 AND stage = 'production' AND id != ?2",
                    params![row.model_id, row.id],
                    |r| r.get::<_, u32>(0),
                )
                .optional()?;
            tx.execute(
                "UPDATE versions SET stage = ?1 WHERE model_id = ?2 AND stage = 'production' AND id != ?3",
                params![ARCHIVED, row.model_id, row.id],
            )?;
        }
        tx.execute(
            "UPDATE versions SET stage = ?1 WHERE id = ?2",
            params![stage, row.id],
        )?;
        db::audit(
            &tx,
            &who.name,
            "promote",
            &format!("{}@{}", row.name, row.number),
            &json!({"from": row.stage, "to": stage, "archived": displaced}),
        )?;
        tx.commit()?;
        self.show(who, &format!("{}@{}", row.name, row.number))
    }

    /// Moves a version out of its stage, to `to` (default `archived`).
    pub fn demote(
        &self,
        who: &Principal,
        reference: &str,
        to: Option<&str>,
    ) -> Result<VersionInfo> {
        let to = to.unwrap_or(ARCHIVED);
        if to == PRODUCTION {
            return Err(RegistryError::Invalid(
                "use promote to move a version to production".into(),
            ));
        }
        self.promote(who, reference, to)
    }

    /// Points `alias` at a version (moving it if it pointed elsewhere).
    pub fn set_alias(&self, who: &Principal, reference: &str, alias: &str) -> Result<()> {
        who.require(Role::Writer, "setting an alias")?;
        names::validate_label(alias)?;
        if [PRODUCTION, names::STAGING, ARCHIVED].contains(&alias) {
            return Err(RegistryError::Invalid(format!(
                "{alias:?} is a stage; use promote/demote for stages"
            )));
        }
        let row = self.find(&reference.parse()?)?;
        let tx = self.db.unchecked_transaction()?;
        tx.execute(
            "INSERT INTO aliases(model_id, alias, version_id) VALUES(?1, ?2, ?3)
             ON CONFLICT(model_id, alias) DO UPDATE SET version_id = excluded.version_id",
            params![row.model_id, alias, row.id],
        )?;
        db::audit(
            &tx,
            &who.name,
            "alias.set",
            &format!("{}@{}", row.name, row.number),
            &json!({"alias": alias}),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Removes an alias of model `name`.
    pub fn remove_alias(&self, who: &Principal, name: &str, alias: &str) -> Result<()> {
        who.require(Role::Writer, "removing an alias")?;
        let model_id = self
            .model_id(name)?
            .ok_or_else(|| RegistryError::NotFound(format!("model {name:?}")))?;
        let tx = self.db.unchecked_transaction()?;
        if tx.execute(
            "DELETE FROM aliases WHERE model_id = ?1 AND alias = ?2",
            params![model_id, alias],
        )? == 0
        {
            return Err(RegistryError::NotFound(format!("alias {name}@{alias}")));
        }
        db::audit(
            &tx,
            &who.name,
            "alias.remove",
            name,
            &json!({"alias": alias}),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Adds (or with `remove`, removes) tags on a version.
    pub fn tag(
        &self,
        who: &Principal,
        reference: &str,
        tags: &[String],
        remove: bool,
    ) -> Result<()> {
        who.require(Role::Writer, "tagging")?;
        let row = self.find(&reference.parse()?)?;
        let tx = self.db.unchecked_transaction()?;
        for t in tags {
            names::validate_label(t)?;
            if remove {
                tx.execute(
                    "DELETE FROM tags WHERE version_id = ?1 AND tag = ?2",
                    params![row.id, t],
                )?;
            } else {
                tx.execute(
                    "INSERT OR IGNORE INTO tags(version_id, tag) VALUES(?1, ?2)",
                    params![row.id, t],
                )?;
            }
        }
        db::audit(
            &tx,
            &who.name,
            if remove { "tag.remove" } else { "tag.add" },
            &format!("{}@{}", row.name, row.number),
            &json!({"tags": tags}),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes one version. A production version is refused unless `force` (admin).
    /// Its chunks stay until `gc`.
    pub fn delete(&self, who: &Principal, reference: &str, force: bool) -> Result<()> {
        let r: ModelRef = reference.parse()?;
        if !matches!(r.selector, Selector::Version(_)) {
            return Err(RegistryError::Invalid(format!(
                "delete takes an explicit version ({}@N)",
                r.name
            )));
        }
        let row = self.find(&r)?;
        if row.stage.as_deref() == Some(PRODUCTION) {
            if !force {
                return Err(RegistryError::Conflict(format!(
                    "{}@{} is in production; promote another version first, or pass --force (admin)",
                    row.name, row.number
                )));
            }
            who.require(Role::Admin, "deleting a production version")?;
        } else {
            who.require(Role::Writer, "deleting a version")?;
        }
        let tx = self.db.unchecked_transaction()?;
        tx.execute("DELETE FROM versions WHERE id = ?1", [row.id])?;
        db::audit(
            &tx,
            &who.name,
            "delete",
            &format!("{}@{}", row.name, row.number),
            &json!({"stage": row.stage, "force": force}),
        )?;
        tx.commit()?;
        let _ = std::fs::remove_dir_all(self.cache_dir(&row.name, row.number));
        Ok(())
    }

    pub(crate) fn cache_dir(&self, name: &str, version: u32) -> PathBuf {
        self.root
            .join("cache")
            .join(name)
            .join(format!("v{version}"))
    }
}
