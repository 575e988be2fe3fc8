//! `hangar keys ...`: managed API keys for `hangar serve` (create, list, revoke).
//! Argument parsing and printing only; `hangar_registry::keys` stores, `hangar-serve`
//! enforces the limits.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hangar_registry::{KeyLimits, KeyRole, KeyStore};

use crate::cmd_registry::{open_registry, print, RegistryOpts};

const KEYS_HELP: &str = "\
Keys are stored hashed in the registry's database; `create` prints the secret once.
A running `hangar serve` on the same home picks up new and revoked keys within a
second. Once a key exists, the server needs a key (or --api-key, or a registry
token) on every route but health and metrics. Limits answer 429 with Retry-After.";

/// `hangar keys` subcommands.
#[derive(clap::Subcommand, Debug)]
#[command(after_help = KEYS_HELP)]
pub enum KeysCmd {
    /// Create a key and print its secret once.
    Create {
        /// Name of the key (lowercase letters, digits, '_' and '-').
        #[arg(long)]
        name: String,
        /// user (inference, registry read), promoter (also stages, request log) or
        /// admin (also every key's usage, registry admin).
        #[arg(long, default_value = "user")]
        role: String,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Prompt + completion tokens per minute (prompt + max_tokens are reserved at
        /// admission, then settled to what was used).
        #[arg(long)]
        tpm: Option<u64>,
        /// Requests in flight at once.
        #[arg(long)]
        max_concurrent: Option<u64>,
        /// Prompt + completion tokens per UTC day.
        #[arg(long)]
        daily_tokens: Option<u64>,
        /// Share of the engine's running slots relative to other keys.
        #[arg(long, default_value_t = 1)]
        weight: u32,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// List keys (never their secrets) with today's usage.
    List {
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Revoke a key by name or id; running servers refuse it within a second.
    Revoke {
        /// Name or id of the key.
        key: String,
        #[command(flatten)]
        opts: RegistryOpts,
    },
}

fn limit(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

pub fn run_keys(cmd: KeysCmd, home: Option<PathBuf>) -> Result<()> {
    let opts = match &cmd {
        KeysCmd::Create { opts, .. } | KeysCmd::List { opts } | KeysCmd::Revoke { opts, .. } => {
            opts.clone()
        }
    };
    // Who may manage keys is the registry's decision (its admin tokens).
    let (_reg, who) = open_registry(home.clone(), &opts)?;
    let store = KeyStore::open(home).context("opening the key store")?;
    match cmd {
        KeysCmd::Create {
            name,
            role,
            rpm,
            tpm,
            max_concurrent,
            daily_tokens,
            weight,
            opts,
        } => {
            let role: KeyRole = role.parse()?;
            let limits = KeyLimits {
                rpm,
                tpm,
                max_concurrent,
                daily_tokens,
                weight,
            };
            let (info, secret) = store.create(&who, &name, role, limits)?;
            let out = serde_json::json!({"key": info, "secret": secret});
            print(opts.json, &out, || {
                format!(
                    "{secret}\n(key {name:?}, id {}; shown once: store it now)",
                    info.id
                )
            })
        }
        KeysCmd::List { opts } => {
            who.require(hangar_registry::Role::Admin, "listing API keys")?;
            let day = hangar_registry::keys::utc_day(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0),
            );
            let mut rows = Vec::new();
            for k in store.list()? {
                let (today, total) = store.usage(k.id, &day)?;
                rows.push(
                    serde_json::json!({"key": k, "day": day, "today": today, "total": total}),
                );
            }
            print(opts.json, &serde_json::json!({"keys": rows}), || {
                let mut s = format!(
                    "{:<4} {:<20} {:<9} {:<11} {:>6} {:>8} {:>5} {:>10} {:>6} {:>12}",
                    "ID",
                    "NAME",
                    "ROLE",
                    "PREFIX",
                    "RPM",
                    "TPM",
                    "CONC",
                    "DAILY",
                    "WEIGHT",
                    "TOKENS TODAY"
                );
                for k in store.list().unwrap_or_default() {
                    let today = store.usage(k.id, &day).map(|u| u.0.tokens()).unwrap_or(0);
                    s.push_str(&format!(
                        "\n{:<4} {:<20} {:<9} {:<11} {:>6} {:>8} {:>5} {:>10} {:>6} {:>12}",
                        k.id,
                        k.name,
                        k.role,
                        k.prefix,
                        limit(k.limits.rpm),
                        limit(k.limits.tpm),
                        limit(k.limits.max_concurrent),
                        limit(k.limits.daily_tokens),
                        k.limits.weight,
                        today
                    ));
                }
                s
            })
        }
        KeysCmd::Revoke { key, opts } => {
            let k = store.revoke(&who, &key)?;
            print(opts.json, &serde_json::json!({"revoked": k}), || {
                format!("revoked key {:?} (id {})", k.name, k.id)
            })
        }
    }
}
