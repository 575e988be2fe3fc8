//! `hangar lora ...` (init, merge, extract, convert, info, register, list) and the
//! adapter loader `hangar serve` uses for `--lora` and `/v1/load_lora_adapter`. Only
//! wiring: formats and algorithms live in `hangar-lora`, storage in the registry.

use anyhow::{bail, Context, Result};
use hangar_lora::{Format, LoraAdapter, LoraFileError, LoraShape, LoraTarget};
use hangar_registry::{ImportKind, ImportRequest, LineageSpec};
use std::path::{Path, PathBuf};

/// `hangar lora` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum LoraCmd {
    /// Write a random adapter (tests, benchmarks): A and B both nonzero, each delta's
    /// RMS a set fraction (--strength) of its weight's.
    Init {
        /// The base model (GGUF file or registry reference).
        #[arg(long, short = 'm')]
        model: Option<String>,
        #[arg(long, default_value_t = 16)]
        rank: usize,
        /// Scale = alpha / rank (default alpha = rank: scale 1).
        #[arg(long)]
        alpha: Option<f32>,
        /// Projections to adapt: q,k,v,o,gate,up,down (or HF/GGUF names).
        #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down", value_parser = parse_target)]
        targets: Vec<LoraTarget>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// RMS of each delta as a fraction of its weight's RMS (0: B = 0, the training
        /// initialisation, which changes nothing).
        #[arg(long, default_value_t = 0.1)]
        strength: f32,
        /// gguf (llama.cpp adapter file) or peft (folder).
        #[arg(long, default_value = "gguf")]
        format: Format,
        /// Values of a GGUF adapter: f32, or f16 (llama.cpp's converter writes f16;
        /// half the bytes to load and to stream at every step). PEFT folders: f32.
        #[arg(long, default_value = "f32")]
        dtype: AdapterDtype,
        #[arg(long)]
        out: PathBuf,
    },
    /// Merge an adapter into its base model: a new GGUF with W + scale·B·A.
    Merge {
        #[arg(long, short = 'm')]
        model: Option<String>,
        /// The adapter: GGUF file, PEFT folder, or registry reference.
        #[arg(long)]
        lora: String,
        #[arg(long)]
        out: PathBuf,
        /// Type of the adapted tensors: f16 (default), f32 (exact), or same (requantized
        /// to the base tensor's type: same size, but small deltas can be rounded away).
        #[arg(long = "type", default_value = "f16")]
        ty: hangar_lora::merge::MergeType,
    },
    /// Extract an adapter from two checkpoints of one model: tuned − base per
    /// projection, truncated SVD to --rank.
    Extract {
        #[arg(long)]
        base: String,
        #[arg(long)]
        tuned: String,
        #[arg(long)]
        rank: usize,
        #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down", value_parser = parse_target)]
        targets: Vec<LoraTarget>,
        #[arg(long, default_value = "gguf")]
        format: Format,
        /// Values of a GGUF adapter: f32, or f16 (llama.cpp's converter writes f16;
        /// half the bytes to load and to stream at every step). PEFT folders: f32.
        #[arg(long, default_value = "f32")]
        dtype: AdapterDtype,
        /// Threads for the factorisations (0 = one per core).
        #[arg(long, short = 't', default_value_t = 0)]
        threads: usize,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Convert an adapter between GGUF and PEFT (the base model gives the shape and
    /// the llama Q/K layout).
    Convert {
        #[arg(long, short = 'm')]
        model: Option<String>,
        #[arg(long)]
        lora: String,
        #[arg(long)]
        to: Format,
        /// Values of a GGUF adapter: f32, or f16 (llama.cpp's converter writes f16;
        /// half the bytes to load and to stream at every step). PEFT folders: f32.
        #[arg(long, default_value = "f32")]
        dtype: AdapterDtype,
        #[arg(long)]
        out: PathBuf,
    },
    /// Check an adapter against a model and list what it changes.
    Info {
        #[arg(long, short = 'm')]
        model: Option<String>,
        #[arg(long)]
        lora: String,
        #[arg(long)]
        json: bool,
    },
    /// Register an adapter in the registry (kind `adapter`, lineage to its base model
    /// version), after checking that it fits that model.
    Register {
        /// GGUF adapter file or PEFT folder.
        path: PathBuf,
        #[arg(long)]
        name: String,
        /// The base model version (name@N or another reference).
        #[arg(long)]
        base: String,
        #[arg(long = "meta", value_parser = parse_kv)]
        meta: Vec<(String, String)>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// The run that trained it.
        #[arg(long)]
        run: Option<String>,
        #[command(flatten)]
        opts: crate::cmd_registry::RegistryOpts,
    },
    /// List the adapters in the registry with their base models.
    List {
        #[command(flatten)]
        opts: crate::cmd_registry::RegistryOpts,
    },
}

fn parse_target(s: &str) -> std::result::Result<LoraTarget, String> {
    LoraTarget::parse(s.trim())
        .ok_or_else(|| format!("{s:?}: expected one of q, k, v, o, gate, up, down"))
}

fn parse_kv(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected key=value"))
}

/// The LoRA shape of the model in a GGUF file (metadata only).
pub(crate) fn shape_of(path: &Path) -> Result<LoraShape> {
    let f = hangar_formats::GgufFile::open(path)
        .with_context(|| format!("opening the model {}", path.display()))?;
    let cfg = hangar_models::ModelConfig::from_gguf(&f)
        .with_context(|| format!("reading the model configuration of {}", path.display()))?;
    Ok(LoraShape::of(&cfg))
}

/// Where an adapter reference points: a file or folder, else a registry adapter
/// (with the base model version it was registered against).
pub(crate) fn adapter_path(
    source: &str,
    home: Option<PathBuf>,
) -> std::result::Result<(PathBuf, Option<String>), hangar_serve::lora_api::AdapterError> {
    use hangar_serve::lora_api::AdapterError;
    let p = Path::new(source);
    if p.exists() {
        return Ok((p.to_path_buf(), None));
    }
    let looks_like_path = source.contains('/')
        || source.contains('\\')
        || [".gguf", ".safetensors", ".json"]
            .iter()
            .any(|e| source.ends_with(e));
    if looks_like_path {
        return Err(AdapterError::NotFound(format!(
            "{source}: no adapter found: no such file or folder"
        )));
    }
    let reg = hangar_registry::Registry::open(home).map_err(|e| {
        AdapterError::NotFound(format!(
            "{source}: not a file, and the registry cannot be opened: {e}"
        ))
    })?;
    let who = reg
        .principal(std::env::var("HANGAR_TOKEN").ok().as_deref())
        .map_err(|e| AdapterError::Invalid(format!("{source}: {e}")))?;
    match reg.resolve_adapter(&who, source) {
        Ok(r) => {
            let files = r.files;
            let path = files
                .files
                .iter()
                .find(|f| f.extension().is_some_and(|e| e == "gguf"))
                .cloned()
                .unwrap_or(files.dir);
            Ok((path, r.base))
        }
        Err(hangar_registry::RegistryError::NotFound(m)) => Err(AdapterError::NotFound(format!(
            "{source}: no adapter found: not a file or folder, and the registry has no {m}"
        ))),
        Err(e) => Err(AdapterError::Invalid(format!("{source}: {e}"))),
    }
}

/// Reads an adapter reference for a model of `shape`.
pub(crate) fn load_adapter(
    source: &str,
    shape: &LoraShape,
    home: Option<PathBuf>,
) -> std::result::Result<(LoraAdapter, Option<String>), hangar_serve::lora_api::AdapterError> {
    use hangar_serve::lora_api::AdapterError;
    let (path, base) = adapter_path(source, home)?;
    match hangar_lora::load(&path, shape) {
        Ok(a) => Ok((a, base)),
        Err(e @ LoraFileError::NotFound { .. }) => Err(AdapterError::NotFound(e.to_string())),
        Err(e) => Err(AdapterError::Invalid(e.to_string())),
    }
}

/// The loader behind `hangar serve --lora` and `POST /v1/load_lora_adapter`: a path or
/// a registry reference. Warns when a registered adapter's base is another model.
pub struct AdapterFiles {
    pub home: Option<PathBuf>,
    /// The registry name of the served model, when it came from the registry.
    pub served: Option<String>,
}

impl hangar_serve::lora_api::AdapterLoader for AdapterFiles {
    fn load(
        &self,
        source: &str,
        shape: &LoraShape,
    ) -> std::result::Result<LoraAdapter, hangar_serve::lora_api::AdapterError> {
        let (adapter, base) = load_adapter(source, shape, self.home.clone())?;
        if let (Some(base), Some(served)) = (&base, &self.served) {
            let base_name = base.split('@').next().unwrap_or(base);
            if base_name != served {
                tracing::warn!(
                    "LoRA adapter {source} was registered for {base}; the served model is {served} (it has the same shape, so it runs)"
                );
            }
        }
        Ok(adapter)
    }
}

fn load_cli(source: &str, shape: &LoraShape, home: Option<PathBuf>) -> Result<LoraAdapter> {
    load_adapter(source, shape, home)
        .map(|(a, _)| a)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// The value type of a written GGUF adapter.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AdapterDtype {
    F32,
    F16,
}

fn save(
    adapter: &LoraAdapter,
    format: Format,
    dtype: AdapterDtype,
    out: &Path,
    base: &Path,
) -> Result<()> {
    let ty = match dtype {
        AdapterDtype::F32 => hangar_formats::GgmlType::F32,
        AdapterDtype::F16 => hangar_formats::GgmlType::F16,
    };
    if matches!((format, dtype), (Format::Peft, AdapterDtype::F16)) {
        bail!(
            "PEFT folders are written in f32; use --dtype f32, or --format gguf for an f16 adapter"
        );
    }
    match format {
        Format::Gguf => hangar_lora::gguf::write(adapter, out, ty)?,
        Format::Peft => hangar_lora::peft::write(adapter, out, base.to_str())?,
    }
    Ok(())
}

fn summary(a: &LoraAdapter) -> String {
    format!(
        "{} matrices over {} layers, rank {}, targets {}, {:.1} MB",
        a.n_matrices(),
        a.matrices()
            .map(|(l, _, _)| l)
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        a.max_rank(),
        a.targets()
            .iter()
            .map(|t| t.short_name())
            .collect::<Vec<_>>()
            .join(","),
        a.bytes() as f64 / 1e6
    )
}

/// Runs one `hangar lora` subcommand; `home` is the registry's.
pub fn run_lora(cmd: LoraCmd, home: Option<PathBuf>) -> Result<()> {
    match cmd {
        LoraCmd::Init {
            model,
            rank,
            alpha,
            targets,
            seed,
            strength,
            format,
            dtype,
            out,
        } => {
            let base = crate::model_path::resolve(model.as_deref(), home)?;
            let shape = shape_of(&base)?;
            let opts = hangar_lora::init::InitOptions {
                rank,
                alpha,
                targets,
                seed,
                strength,
            };
            let a = hangar_lora::init::random(&base, &shape, &opts)?;
            save(&a, format, dtype, &out, &base)?;
            eprintln!(
                "hangar lora init: wrote {} ({})",
                out.display(),
                summary(&a)
            );
        }
        LoraCmd::Merge {
            model,
            lora,
            out,
            ty,
        } => {
            let base = crate::model_path::resolve(model.as_deref(), home.clone())?;
            let shape = shape_of(&base)?;
            let a = load_cli(&lora, &shape, home)?;
            let r = hangar_lora::merge::merge(&base, &a, &out, ty)?;
            eprintln!(
                "hangar lora merge: wrote {} ({} adapted tensors as {ty:?}, {:.1} MB)",
                out.display(),
                r.adapted,
                r.bytes as f64 / 1e6
            );
        }
        LoraCmd::Extract {
            base,
            tuned,
            rank,
            targets,
            format,
            dtype,
            threads,
            out,
            json,
        } => {
            let base = crate::model_path::resolve(Some(&base), home.clone())?;
            let tuned = crate::model_path::resolve(Some(&tuned), home)?;
            let shape = shape_of(&base)?;
            if shape_of(&tuned)? != shape {
                bail!(
                    "{} and {} are not the same model shape",
                    base.display(),
                    tuned.display()
                );
            }
            let threads = if threads == 0 {
                std::thread::available_parallelism().map_or(1, |n| n.get())
            } else {
                threads
            };
            let (a, report) =
                hangar_lora::extract::extract(&base, &tuned, &shape, rank, &targets, threads)?;
            save(&a, format, dtype, &out, &base)?;
            if json {
                let rows: Vec<_> = report
                    .tensors
                    .iter()
                    .map(|t| serde_json::json!({"name": t.name, "rank": t.rank, "energy_kept": t.energy_kept, "rel_err": t.rel_err}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"out": out, "tensors": rows, "unchanged": report.unchanged})
                    )?
                );
            } else {
                let worst = report
                    .tensors
                    .iter()
                    .map(|t| t.rel_err)
                    .fold(0.0f64, f64::max);
                eprintln!(
                    "hangar lora extract: wrote {} ({}); worst relative error of a delta {:.2e}, {} projections unchanged",
                    out.display(),
                    summary(&a),
                    worst,
                    report.unchanged
                );
            }
        }
        LoraCmd::Convert {
            model,
            lora,
            to,
            dtype,
            out,
        } => {
            let base = crate::model_path::resolve(model.as_deref(), home.clone())?;
            let a = load_cli(&lora, &shape_of(&base)?, home)?;
            save(&a, to, dtype, &out, &base)?;
            eprintln!("hangar lora convert: wrote {} ({:?})", out.display(), to);
        }
        LoraCmd::Info { model, lora, json } => {
            let base = crate::model_path::resolve(model.as_deref(), home.clone())?;
            let a = load_cli(&lora, &shape_of(&base)?, home)?;
            if json {
                let m: Vec<_> = a
                    .matrices()
                    .map(|(l, t, m)| serde_json::json!({"layer": l, "target": t.gguf_name(), "rank": m.rank(), "scale": m.scale(), "out": m.rows(), "in": m.cols()}))
                    .collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"source": a.description, "matrices": m, "bytes": a.bytes()})
                    )?
                );
            } else {
                println!(
                    "{}\n{}; fits {}",
                    a.description,
                    summary(&a),
                    base.display()
                );
            }
        }
        LoraCmd::Register {
            path,
            name,
            base,
            meta,
            tags,
            run,
            opts,
        } => {
            let base_path = crate::model_path::resolve(Some(&base), home.clone())
                .with_context(|| format!("resolving the base model {base}"))?;
            let a = hangar_lora::load(&path, &shape_of(&base_path)?)
                .with_context(|| format!("{} does not fit {base}", path.display()))?;
            let (mut reg, who) = crate::cmd_registry::open_registry(home, &opts)?;
            let mut metadata: std::collections::BTreeMap<String, String> =
                meta.into_iter().collect();
            metadata
                .entry("lora.rank".into())
                .or_insert_with(|| a.max_rank().to_string());
            metadata.entry("lora.targets".into()).or_insert_with(|| {
                a.targets()
                    .iter()
                    .map(|t| t.short_name())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let out = reg.import(
                &who,
                &ImportRequest {
                    path: path.clone(),
                    name,
                    kind: ImportKind::Adapter,
                    metadata,
                    tags,
                    lineage: Some(LineageSpec {
                        base,
                        derivation: "lora".into(),
                        run,
                    }),
                    progress: !opts.json,
                    ..Default::default()
                },
            )?;
            let info = reg.show_version(&who, &out.name, out.version)?;
            crate::cmd_registry::print(opts.json, &info, || {
                format!(
                    "registered {}@{} (LoRA adapter of {}){}",
                    out.name,
                    out.version,
                    info.lineage
                        .as_ref()
                        .map(|l| format!("{}@{}", l.base_model, l.base_version))
                        .unwrap_or_default(),
                    if out.already_present {
                        ", already present"
                    } else {
                        ""
                    }
                )
            })?;
        }
        LoraCmd::List { opts } => {
            let (reg, who) = crate::cmd_registry::open_registry(home, &opts)?;
            let list = reg.list_adapters(&who)?;
            crate::cmd_registry::print(opts.json, &list, || {
                if list.is_empty() {
                    return "no adapters registered (hangar lora register PATH --name N --base MODEL@V)".into();
                }
                list.iter()
                    .map(|a| {
                        format!(
                            "{:<32} v{:<4} base {:<24} {:.1} MB",
                            a.name,
                            a.latest,
                            a.base.as_deref().unwrap_or("-"),
                            a.total_size as f64 / 1e6
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })?;
        }
    }
    Ok(())
}
