//! Access control: roles, tokens and the principal an action runs as. Tokens are
//! stored only as sha256 digests; this module never sees the database directly.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Roles, each including the rights of the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// list, show, export, resolve, verify.
    Reader,
    /// import, tag, alias, stages other than production, delete of non-production versions.
    Writer,
    /// move a version into or out of production; read the audit log.
    Promoter,
    /// tokens, gc, forced delete of a production version.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Promoter => "promoter",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = crate::RegistryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "reader" => Role::Reader,
            "writer" => Role::Writer,
            "promoter" => Role::Promoter,
            "admin" => Role::Admin,
            _ => {
                return Err(crate::RegistryError::Invalid(format!(
                    "unknown role {s:?}: use reader, writer, promoter or admin"
                )))
            }
        })
    }
}

/// Who performs an action: a token's name and role. Written into the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The local user of a registry that has no tokens yet (bootstrap mode).
    pub fn local_admin() -> Self {
        Principal {
            name: "local".into(),
            role: Role::Admin,
        }
    }

    /// Fails with `Forbidden` unless this principal has at least `needed`.
    pub fn require(&self, needed: Role, action: &str) -> crate::Result<()> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(crate::RegistryError::Forbidden {
                action: action.to_string(),
                needed,
                who: self.name.clone(),
                has: self.role,
            })
        }
    }
}

/// The digest under which a token is stored.
pub(crate) fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A fresh random token: `hgr_` and 32 bytes of OS randomness in hex.
pub(crate) fn new_token() -> crate::Result<String> {
    use std::io::Read;
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(crate::error::io_ctx("read /dev/urandom"))?;
    Ok(format!("hgr_{}", hex::encode(b)))
}
