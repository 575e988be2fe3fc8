//! API keys of tenants: named keys with a role and per-key limits, stored (as SHA-256
//! digests) in the registry's database, and their daily usage. Knows nothing about
//! HTTP or rate windows; `hangar-serve` enforces the limits and `hangar keys` manages.
//!
//! Secrets are 32 random bytes, so one SHA-256 is enough at rest: a slow password hash
//! (argon2) defends low-entropy secrets against guessing, and these have 256 bits.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db;
use crate::error::{RegistryError, Result};

/// What a key may do beyond inference. Every role may call the inference APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Inference, and the registry as a reader.
    User,
    /// Also moves versions between stages, reads the request log.
    Promoter,
    /// Also sees every key's usage, and has the registry's admin rights.
    Admin,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::User => "user",
            KeyRole::Promoter => "promoter",
            KeyRole::Admin => "admin",
        }
    }

    /// The registry role the key acts with.
    pub fn registry_role(self) -> crate::Role {
        match self {
            KeyRole::User => crate::Role::Reader,
            KeyRole::Promoter => crate::Role::Promoter,
            KeyRole::Admin => crate::Role::Admin,
        }
    }
}

impl std::fmt::Display for KeyRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for KeyRole {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "user" => KeyRole::User,
            "promoter" => KeyRole::Promoter,
            "admin" => KeyRole::Admin,
            _ => {
                return Err(RegistryError::Invalid(format!(
                    "unknown key role {s:?}: use user, promoter or admin"
                )))
            }
        })
    }
}

/// Per-key limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests per minute (sliding 60 s window).
    pub rpm: Option<u64>,
    /// Prompt + completion tokens per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u64>,
    /// Prompt + completion tokens per UTC day.
    pub daily_tokens: Option<u64>,
    /// Share of the engine's running slots relative to other keys (at least 1).
    pub weight: u32,
}

impl Default for KeyLimits {
    fn default() -> Self {
        KeyLimits {
            rpm: None,
            tpm: None,
            max_concurrent: None,
            daily_tokens: None,
            weight: 1,
        }
    }
}

/// A key as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeyInfo {
    pub id: i64,
    pub name: String,
    pub role: KeyRole,
    pub limits: KeyLimits,
    /// The first characters of the secret, to tell keys apart.
    pub prefix: String,
    pub created_at: i64,
}

/// An active key with the digest its secret must match.
#[derive(Debug, Clone)]
pub struct ActiveKey {
    pub digest: [u8; 32],
    pub info: ApiKeyInfo,
}

/// Requests and tokens of one key, over one day or in total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyUsage {
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost: f64,
}

impl KeyUsage {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
    pub fn add(&mut self, other: &KeyUsage) {
        self.requests += other.requests;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.cost += other.cost;
    }
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS api_keys(
    id INTEGER PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    role TEXT NOT NULL,
    prefix TEXT NOT NULL,
    limits TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_key_usage(
    key_id INTEGER NOT NULL,
    day TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cost REAL NOT NULL DEFAULT 0,
    PRIMARY KEY(key_id, day)
) WITHOUT ROWID;
"#;

/// Prefix of every key secret, so leaked keys are recognisable in logs and scanners.
pub const KEY_PREFIX: &str = "hk_";

/// The SHA-256 digest a key is stored under.
pub fn key_digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Constant-time equality of two digests (no early exit on the first difference).
pub fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The UTC day of a Unix time, `YYYY-MM-DD` (civil-from-days, proleptic Gregorian).
pub fn utc_day(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The key table of a registry database.
pub struct KeyStore {
    db: Connection,
}

impl KeyStore {
    /// Opens the key tables of the registry under `home` (default: the registry's).
    pub fn open(home: Option<std::path::PathBuf>) -> Result<Self> {
        let home = home.unwrap_or_else(crate::default_home);
        let root = home.join("registry");
        std::fs::create_dir_all(&root)
            .map_err(crate::error::io_ctx(format!("create {}", root.display())))?;
        Self::open_path(&root.join("registry.db"))
    }

    /// Opens the key tables in the database file at `path`.
    pub fn open_path(path: &Path) -> Result<Self> {
        let db = db::open(path)?;
        db.execute_batch(SCHEMA)?;
        Ok(KeyStore { db })
    }

    /// Creates a key and returns it with its secret (shown once, stored only hashed).
    pub fn create(
        &self,
        who: &crate::Principal,
        name: &str,
        role: KeyRole,
        limits: KeyLimits,
    ) -> Result<(ApiKeyInfo, String)> {
        who.require(crate::Role::Admin, "creating an API key")?;
        crate::names::validate_label(name)?;
        for (what, v) in [
            ("--rpm", limits.rpm),
            ("--tpm", limits.tpm),
            ("--max-concurrent", limits.max_concurrent),
            ("--daily-tokens", limits.daily_tokens),
        ] {
            if v == Some(0) {
                return Err(RegistryError::Invalid(format!(
                    "{what} 0 would refuse every request; give a positive number or leave it out for no limit"
                )));
            }
        }
        if limits.weight == 0 {
            return Err(RegistryError::Invalid("--weight must be at least 1".into()));
        }
        let secret = format!(
            "{KEY_PREFIX}{}",
            crate::auth::new_token()?.trim_start_matches("hgr_")
        );
        let prefix: String = secret.chars().take(KEY_PREFIX.len() + 6).collect();
        let limits_json =
            serde_json::to_string(&limits).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let created_at = db::now();
        self.db
            .execute(
                "INSERT INTO api_keys(digest, name, role, prefix, limits, created_at)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    hex::encode(key_digest(&secret)),
                    name,
                    role.as_str(),
                    prefix,
                    limits_json,
                    created_at
                ],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _)
                    if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                {
                    RegistryError::Conflict(format!(
                        "an API key named {name:?} already exists; pick another name or revoke it first"
                    ))
                }
                e => e.into(),
            })?;
        let id = self.db.last_insert_rowid();
        db::audit(
            &self.db,
            &who.name,
            "key.create",
            name,
            &serde_json::json!({"role": role, "limits": limits}),
        )?;
        let info = ApiKeyInfo {
            id,
            name: name.to_string(),
            role,
            limits,
            prefix,
            created_at,
        };
        Ok((info, secret))
    }

    /// Every active key, by name, with its digest.
    pub fn active(&self) -> Result<Vec<ActiveKey>> {
        let mut st = self.db.prepare(
            "SELECT id, digest, name, role, prefix, limits, created_at FROM api_keys ORDER BY name",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, digest_hex, name, role, prefix, limits, created_at) = row?;
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&digest_hex, &mut digest).map_err(|_| {
                RegistryError::Integrity(format!("API key {name:?} has a malformed digest"))
            })?;
            let limits: KeyLimits = serde_json::from_str(&limits).map_err(|e| {
                RegistryError::Integrity(format!("API key {name:?} has malformed limits: {e}"))
            })?;
            out.push(ActiveKey {
                digest,
                info: ApiKeyInfo {
                    id,
                    name,
                    role: role.parse()?,
                    limits,
                    prefix,
                    created_at,
                },
            });
        }
        Ok(out)
    }

    /// Every active key, without digests.
    pub fn list(&self) -> Result<Vec<ApiKeyInfo>> {
        Ok(self.active()?.into_iter().map(|k| k.info).collect())
    }

    /// The key a secret belongs to, compared in constant time against every digest.
    pub fn verify(&self, secret: &str) -> Result<Option<ApiKeyInfo>> {
        let d = key_digest(secret);
        let mut found = None;
        for k in self.active()? {
            if same_digest(&k.digest, &d) {
                found = Some(k.info);
            }
        }
        Ok(found)
    }

    /// Revokes a key by name or numeric id; returns it. Its usage history is kept.
    pub fn revoke(&self, who: &crate::Principal, name_or_id: &str) -> Result<ApiKeyInfo> {
        who.require(crate::Role::Admin, "revoking an API key")?;
        let key = self
            .list()?
            .into_iter()
            .find(|k| k.name == name_or_id || k.id.to_string() == name_or_id)
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "API key {name_or_id:?}; `hangar keys list` shows names and ids"
                ))
            })?;
        self.db
            .execute("DELETE FROM api_keys WHERE id = ?1", [key.id])?;
        db::audit(
            &self.db,
            &who.name,
            "key.revoke",
            &key.name,
            &serde_json::json!({"id": key.id}),
        )?;
        Ok(key)
    }

    /// Adds usage deltas (key id, UTC day, usage) in one transaction.
    pub fn add_usage(&mut self, deltas: &[(i64, String, KeyUsage)]) -> Result<()> {
        let tx = self.db.transaction()?;
        for (id, day, u) in deltas {
            tx.execute(
                "INSERT INTO api_key_usage(key_id, day, requests, prompt_tokens, completion_tokens, cost)
                 VALUES(?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(key_id, day) DO UPDATE SET
                   requests = requests + excluded.requests,
                   prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                   completion_tokens = completion_tokens + excluded.completion_tokens,
                   cost = cost + excluded.cost",
                params![
                    id,
                    day,
                    u.requests as i64,
                    u.prompt_tokens as i64,
                    u.completion_tokens as i64,
                    u.cost
                ],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A key's usage on `day` and over all days.
    pub fn usage(&self, key_id: i64, day: &str) -> Result<(KeyUsage, KeyUsage)> {
        let read = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<KeyUsage> {
            Ok(self
                .db
                .query_row(sql, p, |r| {
                    Ok(KeyUsage {
                        requests: r.get::<_, Option<i64>>(0)?.unwrap_or(0) as u64,
                        prompt_tokens: r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                        completion_tokens: r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                        cost: r.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                    })
                })
                .optional()?
                .unwrap_or_default())
        };
        let today = read(
            "SELECT SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost)
             FROM api_key_usage WHERE key_id = ?1 AND day = ?2",
            &[&key_id, &day],
        )?;
        let total = read(
            "SELECT SUM(requests), SUM(prompt_tokens), SUM(completion_tokens), SUM(cost)
             FROM api_key_usage WHERE key_id = ?1",
            &[&key_id],
        )?;
        Ok((today, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> crate::Principal {
        crate::Principal::local_admin()
    }

    fn store() -> (tempfile::TempDir, KeyStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = KeyStore::open(Some(dir.path().to_path_buf())).unwrap();
        (dir, s)
    }

    #[test]
    fn secrets_are_stored_only_as_digests_and_verify() {
        let (dir, s) = store();
        let (info, secret) = s
            .create(&admin(), "alice", KeyRole::User, KeyLimits::default())
            .unwrap();
        assert!(secret.starts_with(KEY_PREFIX) && secret.len() == KEY_PREFIX.len() + 64);
        assert!(secret.starts_with(&info.prefix));
        assert_eq!(s.verify(&secret).unwrap().unwrap().name, "alice");
        assert!(s.verify("hk_wrong").unwrap().is_none());
        // The database file holds the digest, never the secret.
        drop(s);
        let raw = std::fs::read(dir.path().join("registry/registry.db")).unwrap();
        let hay = String::from_utf8_lossy(&raw);
        assert!(!hay.contains(&secret));
    }

    #[test]
    fn revoked_keys_stop_verifying_by_name_or_id() {
        let (_d, s) = store();
        let (a, sa) = s
            .create(&admin(), "a", KeyRole::User, KeyLimits::default())
            .unwrap();
        let (_, sb) = s
            .create(&admin(), "b", KeyRole::Admin, KeyLimits::default())
            .unwrap();
        assert_eq!(s.revoke(&admin(), "a").unwrap().id, a.id);
        assert!(s.verify(&sa).unwrap().is_none());
        let b = s.list().unwrap().pop().unwrap();
        s.revoke(&admin(), &b.id.to_string()).unwrap();
        assert!(s.verify(&sb).unwrap().is_none());
        assert!(matches!(
            s.revoke(&admin(), "a"),
            Err(RegistryError::NotFound(_))
        ));
    }

    #[test]
    fn names_are_unique_and_zero_limits_are_refused() {
        let (_d, s) = store();
        s.create(&admin(), "a", KeyRole::User, KeyLimits::default())
            .unwrap();
        assert!(matches!(
            s.create(&admin(), "a", KeyRole::User, KeyLimits::default()),
            Err(RegistryError::Conflict(_))
        ));
        let zero = KeyLimits {
            rpm: Some(0),
            ..Default::default()
        };
        let e = s
            .create(&admin(), "z", KeyRole::User, zero)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--rpm 0"), "{e}");
        assert!(s
            .create(&admin(), "Bad Name", KeyRole::User, KeyLimits::default())
            .is_err());
    }

    #[test]
    fn limits_and_roles_round_trip() {
        let (_d, s) = store();
        let l = KeyLimits {
            rpm: Some(5),
            tpm: Some(1000),
            max_concurrent: Some(2),
            daily_tokens: Some(10_000),
            weight: 3,
        };
        s.create(&admin(), "p", KeyRole::Promoter, l).unwrap();
        let k = &s.list().unwrap()[0];
        assert_eq!((k.role, k.limits), (KeyRole::Promoter, l));
        assert_eq!(k.role.registry_role(), crate::Role::Promoter);
        assert!("owner".parse::<KeyRole>().is_err());
    }

    #[test]
    fn usage_accumulates_per_day_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = KeyStore::open(Some(dir.path().to_path_buf())).unwrap();
        let (k, _) = s
            .create(&admin(), "a", KeyRole::User, KeyLimits::default())
            .unwrap();
        let u = KeyUsage {
            requests: 1,
            prompt_tokens: 10,
            completion_tokens: 5,
            cost: 0.5,
        };
        s.add_usage(&[
            (k.id, "2026-12-02".into(), u),
            (k.id, "2026-12-03".into(), u),
        ])
        .unwrap();
        s.add_usage(&[(k.id, "2026-12-03".into(), u)]).unwrap();
        drop(s);
        let s = KeyStore::open(Some(dir.path().to_path_buf())).unwrap();
        let (today, total) = s.usage(k.id, "2026-12-03").unwrap();
        assert_eq!((today.requests, today.tokens()), (2, 30));
        assert_eq!((total.requests, total.tokens(), total.cost), (3, 45, 1.5));
    }

    #[test]
    fn utc_days_follow_the_calendar() {
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(utc_day(86_399), "1970-01-01");
        assert_eq!(utc_day(86_400), "1970-01-02");
        assert_eq!(utc_day(951_782_400), "2000-02-29");
        assert_eq!(utc_day(1_796_256_000), "2026-12-03");
    }

    #[test]
    fn digests_compare_whole() {
        let a = key_digest("x");
        let mut b = a;
        assert!(same_digest(&a, &b));
        b[31] ^= 1;
        assert!(!same_digest(&a, &b));
    }
}
