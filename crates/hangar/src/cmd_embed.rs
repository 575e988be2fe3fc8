//! `hangar embed`: text in (arguments or a file of lines), vectors out (JSON or NPY),
//! through the engine's embedding queue; and the embedding-model lookup that
//! `hangar serve --embedding-model` shares.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use hangar_engine::{
    EmbedInput, EmbedRequest, Embedder, EmbedderConfig, EmbeddingModel, InputKind,
};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct EmbedArgs {
    /// Texts to embed (one vector each).
    pub texts: Vec<String>,
    /// Embedding model: a registry name (`all-minilm-l6-v2`, `name@2`) or a Hugging Face
    /// folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long, short = 'm', default_value = hangar_registry::DEFAULT_EMBEDDER)]
    pub model: String,
    /// Also embed every line of this file (`-` for stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Output format: `json` ({"model", "dimensions", "embeddings": [[...]]}) or `npy`
    /// (float32, one row per text).
    #[arg(long, value_enum, default_value_t = EmbedFormat::Json)]
    pub format: EmbedFormat,
    /// Write here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The texts are search queries: prefix the model's query prompt (e5, bge).
    #[arg(long)]
    pub query: bool,
    /// Cut texts longer than the model's limit instead of failing.
    #[arg(long)]
    pub truncate: bool,
    /// Keep raw pooled vectors even if the model normalises.
    #[arg(long)]
    pub no_normalize: bool,
    /// Kernel threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Most texts per encoder call.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Hangar home, set from the global --home.
    #[arg(skip)]
    pub home: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum EmbedFormat {
    Json,
    Npy,
}

/// A folder (has config.json), else a registry reference.
pub fn resolve_embedding_model(
    reference: &str,
    home: Option<PathBuf>,
) -> Result<(PathBuf, String)> {
    let p = Path::new(reference);
    if p.join("config.json").is_file() {
        let name = p
            .canonicalize()
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_string_lossy().to_string()))
            .unwrap_or_else(|| "embedding-model".into());
        return Ok((p.to_path_buf(), name));
    }
    if p.is_dir() || reference.contains('/') {
        bail!("{reference} is not a Hugging Face model folder (no config.json there)");
    }
    let reg = hangar_registry::Registry::open(home).context("opening the model registry")?;
    let who = reg.principal(std::env::var("HANGAR_TOKEN").ok().as_deref())?;
    let m = reg.resolve(&who, reference).with_context(|| {
        format!(
            "resolving embedding model {reference:?} in the registry (for the default, run `hangar pull embedder`)"
        )
    })?;
    Ok((
        m.dir,
        reference.split('@').next().unwrap_or(reference).to_string(),
    ))
}

/// Loads an embedding model and starts its queue.
pub fn start_embedder(
    reference: &str,
    home: Option<PathBuf>,
    threads: usize,
    batch: usize,
) -> Result<Embedder> {
    let (dir, name) = resolve_embedding_model(reference, home)?;
    let t0 = std::time::Instant::now();
    let model =
        EmbeddingModel::load(&dir, name).with_context(|| format!("loading {}", dir.display()))?;
    eprintln!(
        "hangar: embedding model {} ({} dims, max {} tokens) loaded in {:.2}s",
        model.name(),
        model.dim(),
        model.max_tokens(),
        t0.elapsed().as_secs_f64()
    );
    let mut cfg = EmbedderConfig::default();
    if threads > 0 {
        cfg.threads = threads;
    }
    cfg.max_batch_inputs = batch.max(1);
    Ok(Embedder::start(model, cfg))
}

/// Writes a float32 matrix as NumPy's `.npy` (format 1.0, little-endian, C order).
fn write_npy(w: &mut dyn Write, rows: &[Vec<f32>], dim: usize) -> std::io::Result<()> {
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        rows.len(),
        dim
    );
    // Magic (6) + version (2) + length (2) + header + '\n', padded to 64 bytes.
    let total = (10 + header.len() + 1).div_ceil(64) * 64;
    header.push_str(&" ".repeat(total - 10 - header.len() - 1));
    header.push('\n');
    w.write_all(b"\x93NUMPY\x01\x00")?;
    w.write_all(&(header.len() as u16).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    for r in rows {
        for v in r {
            w.write_all(&v.to_le_bytes())?;
        }
    }
    Ok(())
}

pub fn run_embed(args: EmbedArgs) -> Result<()> {
    let mut texts = args.texts.clone();
    if let Some(f) = &args.file {
        let content = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        };
        texts.extend(content.lines().map(str::to_string));
    }
    if texts.is_empty() {
        bail!("nothing to embed: pass texts as arguments or --file lines.txt");
    }
    let embedder = start_embedder(&args.model, args.home.clone(), args.threads, args.batch)?;
    let out = embedder
        .embed_blocking(EmbedRequest {
            inputs: texts.into_iter().map(EmbedInput::Text).collect(),
            normalize: args.no_normalize.then_some(false),
            truncate: args.truncate,
            kind: if args.query {
                InputKind::Query
            } else {
                InputKind::Document
            },
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let dim = embedder.model().dim();
    let mut sink: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        EmbedFormat::Json => {
            let v = serde_json::json!({
                "model": embedder.model().name(),
                "dimensions": dim,
                "prompt_tokens": out.prompt_tokens,
                "embeddings": out.vectors,
            });
            serde_json::to_writer(&mut sink, &v)?;
            sink.write_all(b"\n")?;
        }
        EmbedFormat::Npy => write_npy(&mut sink, &out.vectors, dim)?,
    }
    sink.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_header_is_aligned_and_describes_the_matrix() {
        let mut b = Vec::new();
        write_npy(&mut b, &[vec![1.0, 2.0], vec![3.0, 4.0], vec![5.0, 6.0]], 2).unwrap();
        let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + hl) % 64, 0);
        let h = std::str::from_utf8(&b[10..10 + hl]).unwrap();
        assert!(h.contains("'shape': (3, 2)") && h.ends_with('\n'), "{h}");
        assert_eq!(b.len(), 10 + hl + 6 * 4);
        assert_eq!(&b[10 + hl..10 + hl + 4], &1.0f32.to_le_bytes());
    }
}
