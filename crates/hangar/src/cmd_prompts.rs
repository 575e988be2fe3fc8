//! `hangar prompts ...`: versioned prompt templates in the registry (create, list,
//! show, alias, render). Argument parsing and printing only; `hangar_registry::prompts`
//! decides everything.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use hangar_registry::{NewPrompt, Principal, PromptVersion, Registry};

use crate::cmd_registry::{open_registry, print, RegistryOpts};

const PROMPTS_HELP: &str = "\
A prompt is a minijinja template with an optional system part and a user part:
  hangar prompts create qa --system 'Answer in {{ language }}.' --text 'Q: {{ question }}'
  hangar prompts create qa --file qa.txt            (the user part from a file)
  hangar prompts create qa --file qa.json           ({\"system\": ..., \"user\": ...})
Its variables are read from the template; rendering without one of them is an error.
References: qa (production, else newest), qa@3, qa@latest, qa@production, qa@ALIAS.
Chat requests to `hangar serve` use one with \"prompt\": \"qa@production\" and
\"variables\": {...}; `hangar judge --prompt` and `hangar eval --prompt` too.";

/// `hangar prompts` subcommands.
#[derive(clap::Subcommand, Debug)]
#[command(after_help = PROMPTS_HELP)]
pub enum PromptsCmd {
    /// Store a template as the next version of prompt NAME (created on first use).
    Create {
        name: String,
        /// The user part, inline.
        #[arg(long, conflicts_with = "file")]
        text: Option<String>,
        /// The user part from a file, or both parts from a `.json` file
        /// (`{"system": ..., "user": ...}`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The system part, inline.
        #[arg(long, conflicts_with = "system_file")]
        system: Option<String>,
        /// The system part from a file.
        #[arg(long)]
        system_file: Option<PathBuf>,
        /// What the prompt is for.
        #[arg(long)]
        description: Option<String>,
        /// Tags, repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Point this alias (or stage: production, staging) at the new version.
        #[arg(long)]
        alias: Option<String>,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// List prompts, or the versions of prompt NAME.
    List {
        name: Option<String>,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Show a prompt version (NAME, NAME@3, NAME@ALIAS) with its template and variables.
    Show {
        reference: String,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Point an alias at a version (production/staging/archived move its stage), or
    /// remove the alias with --remove.
    Alias {
        /// The version: NAME@3, NAME@ALIAS ...
        reference: String,
        alias: String,
        #[arg(long)]
        remove: bool,
        #[command(flatten)]
        opts: RegistryOpts,
    },
    /// Render a prompt version with variables (what a chat request would send).
    Render {
        reference: String,
        /// A variable, repeatable: --var question='Why?'
        #[arg(long = "var", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Variables as a JSON object (merged under --var).
        #[arg(long, value_name = "JSON")]
        vars_json: Option<String>,
        #[command(flatten)]
        opts: RegistryOpts,
    },
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The (system, user) parts the flags give.
fn parts(
    text: Option<String>,
    file: Option<PathBuf>,
    system: Option<String>,
    system_file: Option<PathBuf>,
) -> Result<(Option<String>, String)> {
    let mut sys = match (system, system_file) {
        (Some(s), _) => Some(s),
        (None, Some(p)) => Some(read(&p)?),
        (None, None) => None,
    };
    let user = match (text, file) {
        (Some(t), _) => t,
        (None, Some(p)) if p.extension().is_some_and(|e| e == "json") => {
            #[derive(serde::Deserialize)]
            struct Parts {
                system: Option<String>,
                user: String,
            }
            let v: Parts = serde_json::from_str(&read(&p)?).with_context(|| {
                format!(
                    "{}: expected {{\"system\": str (optional), \"user\": str}}",
                    p.display()
                )
            })?;
            if sys.is_some() && v.system.is_some() {
                bail!(
                    "{} has a system part and --system gives another; keep one",
                    p.display()
                );
            }
            sys = sys.or(v.system);
            v.user
        }
        (None, Some(p)) => read(&p)?,
        (None, None) => bail!("give the template: --text TEXT or --file FILE"),
    };
    Ok((sys, user))
}

fn version_text(p: &PromptVersion) -> String {
    let mut s = p.reference.clone();
    if let Some(st) = &p.stage {
        s.push_str(&format!("  stage {st}"));
    }
    if !p.aliases.is_empty() {
        s.push_str(&format!("  aliases {}", p.aliases.join(",")));
    }
    s.push_str(&format!("\nvariables: {}", p.variables.join(", ")));
    if let Some(d) = &p.description {
        s.push_str(&format!("\ndescription: {d}"));
    }
    if let Some(sys) = &p.template.system {
        s.push_str(&format!("\n--- system\n{sys}"));
    }
    s.push_str(&format!("\n--- user\n{}", p.template.user));
    s
}

fn open(home: Option<PathBuf>, opts: &RegistryOpts) -> Result<(Registry, Principal)> {
    open_registry(home, opts)
}

pub fn run_prompts(cmd: PromptsCmd, home: Option<PathBuf>) -> Result<()> {
    match cmd {
        PromptsCmd::Create {
            name,
            text,
            file,
            system,
            system_file,
            description,
            tags,
            alias,
            opts,
        } => {
            let (system, user) = parts(text, file, system, system_file)?;
            let (mut reg, who) = open(home, &opts)?;
            let mut out = reg.create_prompt(
                &who,
                &NewPrompt {
                    name,
                    system,
                    user,
                    description,
                    tags,
                    ..Default::default()
                },
            )?;
            if let Some(a) = alias {
                let present = out.already_present;
                out = reg.set_prompt_alias(&who, &out.reference, &a)?;
                out.already_present = present;
            }
            print(opts.json, &out, || {
                format!(
                    "{} {} (variables: {})",
                    if out.already_present {
                        "already present:"
                    } else {
                        "created"
                    },
                    out.reference,
                    out.variables.join(", ")
                )
            })
        }
        PromptsCmd::List { name, opts } => {
            let (reg, who) = open(home, &opts)?;
            match name {
                None => {
                    let list = reg.list_prompts(&who)?;
                    print(opts.json, &serde_json::json!({"prompts": list}), || {
                        if list.is_empty() {
                            return "no prompts; create one with `hangar prompts create NAME --text ...`"
                                .into();
                        }
                        let mut s = format!(
                            "{:<28} {:>8} {:>7} {:>10}  aliases",
                            "NAME", "VERSIONS", "LATEST", "PRODUCTION"
                        );
                        for p in &list {
                            let aliases: Vec<String> =
                                p.aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
                            s.push_str(&format!(
                                "\n{:<28} {:>8} {:>7} {:>10}  {}",
                                p.name,
                                p.versions,
                                p.latest,
                                p.production.map_or("-".into(), |v| v.to_string()),
                                aliases.join(",")
                            ));
                        }
                        s
                    })
                }
                Some(n) => {
                    let versions = reg.prompt_versions(&who, &n)?;
                    print(
                        opts.json,
                        &serde_json::json!({"versions": versions}),
                        || {
                            versions
                                .iter()
                                .map(|v| {
                                    format!(
                                        "{:<24} {:<10} {:<20} variables: {}",
                                        v.reference,
                                        v.stage.as_deref().unwrap_or("-"),
                                        v.aliases.join(","),
                                        v.variables.join(", ")
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join("\n")
                        },
                    )
                }
            }
        }
        PromptsCmd::Show { reference, opts } => {
            let (reg, who) = open(home, &opts)?;
            let p = reg.prompt(&who, &reference)?;
            print(opts.json, &p, || version_text(&p))
        }
        PromptsCmd::Alias {
            reference,
            alias,
            remove,
            opts,
        } => {
            let (reg, who) = open(home, &opts)?;
            if remove {
                let p = reg.prompt(&who, &reference)?;
                reg.remove_alias(&who, &p.name, &alias)?;
                let p = reg.prompt(&who, &p.reference)?;
                return print(opts.json, &p, || {
                    format!("removed alias {}@{alias}", p.name)
                });
            }
            let p = reg.set_prompt_alias(&who, &reference, &alias)?;
            print(opts.json, &p, || {
                format!("{}@{alias} -> {}", p.name, p.reference)
            })
        }
        PromptsCmd::Render {
            reference,
            vars,
            vars_json,
            opts,
        } => {
            let mut map = match vars_json {
                Some(j) => match serde_json::from_str::<serde_json::Value>(&j)
                    .context("--vars-json is not JSON")?
                {
                    serde_json::Value::Object(m) => m,
                    _ => bail!("--vars-json must be a JSON object: {{\"name\": value, ...}}"),
                },
                None => serde_json::Map::new(),
            };
            for (k, v) in vars {
                map.insert(k, serde_json::Value::String(v));
            }
            let (reg, who) = open(home, &opts)?;
            let (p, r) = reg.render_prompt(&who, &reference, &map)?;
            let unknown = p.template.unknown_variables(&map);
            if !unknown.is_empty() {
                bail!(
                    "{} does not use the variable(s) {}; it uses {}",
                    p.reference,
                    unknown.join(", "),
                    p.variables.join(", ")
                );
            }
            let v = serde_json::json!({"prompt": p.reference, "system": r.system, "user": r.user});
            print(opts.json, &v, || r.to_text())
        }
    }
}
