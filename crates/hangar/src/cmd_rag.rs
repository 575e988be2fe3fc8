//! `hangar ingest` (files chunked, embedded and upserted into a collection of the local
//! vector store) and `hangar rag` (a question answered from a collection, with numbered
//! citations; a local model and embedder, or a running `hangar serve`). Wiring only; the
//! work is hangar-rag's.

use crate::cmd_embed::start_embedder;
use crate::model_path;
use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_compress::progress;
use hangar_rag::{
    ChunkOptions, IngestOptions, Ingestor, Passage, PromptTemplate, RetrievalOptions,
};
use hangar_vector::{Filter, VectorDb};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Files (.txt, .md, .html) and directories (walked recursively; hidden entries
    /// skipped). Sources are recorded as the paths given.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Collection to write (created with the embedding model's dimension and cosine).
    #[arg(long, short = 'c')]
    pub collection: String,
    /// Embedding model: a registry name or a Hugging Face folder.
    #[arg(long, default_value = hangar_registry::DEFAULT_EMBEDDER)]
    pub embedding_model: String,
    /// Most tokens (of the embedding model's tokenizer) per chunk.
    #[arg(long, default_value_t = ChunkOptions::default().chunk_tokens)]
    pub chunk_tokens: usize,
    /// Tokens consecutive chunks share.
    #[arg(long, default_value_t = ChunkOptions::default().overlap)]
    pub overlap: usize,
    /// Keep documents under the given paths that no longer exist (default: remove
    /// their chunks).
    #[arg(long)]
    pub keep_missing: bool,
    /// Chunks per embedding call.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Kernel threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(skip)]
    pub home: Option<PathBuf>,
}

pub fn run_ingest(a: IngestArgs) -> Result<()> {
    let home = a.home.clone().unwrap_or_else(hangar_registry::default_home);
    let (files, scopes) = hangar_rag::collect_files(&a.paths, None)?;
    if files.is_empty() && a.keep_missing {
        bail!("no .txt, .md or .html files under the paths given");
    }
    let embedder = start_embedder(&a.embedding_model, a.home.clone(), a.threads, a.batch)?;
    let db = VectorDb::open_in_home(&home).context("opening the vector store")?;
    let opts = IngestOptions {
        chunking: ChunkOptions {
            chunk_tokens: a.chunk_tokens,
            overlap: a.overlap,
        },
        batch: a.batch,
    };
    let t0 = std::time::Instant::now();
    let prune = (!a.keep_missing).then_some(&scopes[..]);
    let report = ingest_files(&db, &a.collection, &embedder, opts, &files, prune)?;
    let secs = t0.elapsed().as_secs_f64();
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["files"] = json!(files.len());
        v["embedding_model"] = json!(embedder.model().name());
        v["seconds"] = json!(secs);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {} added, {} updated, {} unchanged, {} removed ({} chunks, {} tokens embedded in {secs:.1}s)",
            report.collection,
            report.added,
            report.updated,
            report.unchanged,
            report.removed,
            report.chunks,
            report.tokens
        );
        for (s, why) in &report.skipped {
            println!("skipped {s}: {why}");
        }
    }
    Ok(())
}

/// Ingests files with a progress bar (on stderr when it is a terminal); `prune`: the
/// scopes whose missing documents are removed.
pub fn ingest_files(
    db: &VectorDb,
    collection: &str,
    embedder: &hangar_engine::Embedder,
    opts: IngestOptions,
    files: &[hangar_rag::SourceFile],
    prune: Option<&[String]>,
) -> Result<hangar_rag::IngestReport> {
    let mut ing = Ingestor::open(db, collection, embedder, opts)?;
    let pb = progress::bar(files.len() as u64, "ingest");
    for f in files {
        pb.set_message(f.source.clone());
        ing.add_file(f)
            .with_context(|| format!("ingesting {}", f.path.display()))?;
        pb.inc(1);
    }
    pb.finish_and_clear();
    if let Some(scopes) = prune {
        ing.prune(scopes)?;
    }
    Ok(ing.finish()?)
}

#[derive(Args, Debug)]
pub struct RagArgs {
    /// The question.
    pub question: String,
    /// Collection to retrieve from.
    #[arg(long, short = 'c')]
    pub collection: String,
    /// Passages to retrieve.
    #[arg(long, default_value_t = 4)]
    pub top_k: usize,
    /// A Qdrant filter as JSON, e.g. '{"must": [{"key": "source", "match": {"value": "docs/EVALUATION.md"}}]}'.
    #[arg(long)]
    pub filter: Option<String>,
    /// Lowest cosine similarity kept.
    #[arg(long)]
    pub score_threshold: Option<f32>,
    /// Ask a running `hangar serve` (POST /v1/rag/chat) instead of local models.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Bearer token for the endpoint.
    #[arg(long, env = "HANGAR_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Generation model (local): GGUF file or registry reference.
    #[arg(long, short = 'm', conflicts_with = "endpoint")]
    pub model: Option<String>,
    /// Embedding model (local): a registry name or a Hugging Face folder.
    #[arg(long, default_value = hangar_registry::DEFAULT_EMBEDDER, conflicts_with = "endpoint")]
    pub embedding_model: String,
    /// Most tokens of the answer.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Kernel threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
    /// Print {answer, citations, prompt_template} as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(skip)]
    pub home: Option<PathBuf>,
}

pub fn run_rag(a: RagArgs) -> Result<()> {
    if let Some(url) = &a.endpoint {
        return rag_endpoint(&a, url);
    }
    let home = a.home.clone().unwrap_or_else(hangar_registry::default_home);
    let db = VectorDb::open_in_home(&home).context("opening the vector store")?;
    if !db.exists(&a.collection) {
        bail!(
            "collection {:?} does not exist in {}; ingest documents first: `hangar ingest PATH --collection {}`",
            a.collection,
            db.root().display(),
            a.collection
        );
    }
    let opts = retrieval_options(&a)?;
    let embedder = start_embedder(&a.embedding_model, a.home.clone(), a.threads, 32)?;
    let passages =
        hangar_rag::retrieve_blocking(&db, &a.collection, &embedder, &a.question, &opts)?;
    let template = PromptTemplate::builtin();
    let prompt = template.render(&a.question, &passages)?;
    let path = model_path::resolve(a.model.as_deref(), a.home.clone())?;
    let lopts = crate::cmd_model::load_options(None, hangar_models::Numerics::Fast);
    let lm = hangar_engine::LoadedModel::load_with(&path, a.threads, lopts)
        .with_context(|| format!("loading {}", path.display()))?;
    let engine = hangar_engine::Engine::start(lm, hangar_engine::EngineConfig::default())?;
    let ids = engine
        .encode_chat(&[hangar_engine::chat::ChatMessage::new("user", &prompt)])
        .map_err(|e| anyhow::anyhow!("rendering the chat prompt: {e}"))?;
    let room = engine.info().max_model_len.saturating_sub(ids.len() + 1);
    if room == 0 {
        bail!("the retrieved passages fill the model's context; use a smaller --top-k");
    }
    let req = hangar_engine::GenerateRequest::greedy(ids, a.max_tokens.min(room));
    let mut rx = engine.submit(req)?.1;
    let mut answer = String::new();
    let mut out = std::io::stdout().lock();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            hangar_engine::TokenEvent::Token(t) => {
                if !a.json {
                    write!(out, "{}", t.text)?;
                    out.flush()?;
                }
                answer.push_str(&t.text);
            }
            hangar_engine::TokenEvent::Done { text, .. } => {
                if !a.json {
                    write!(out, "{text}")?;
                }
                answer.push_str(&text);
                break;
            }
            hangar_engine::TokenEvent::Error(e) => bail!("generation failed: {e}"),
            hangar_engine::TokenEvent::PromptLogprobs(_) => {}
        }
    }
    let citations: Vec<serde_json::Value> = passages
        .iter()
        .enumerate()
        .map(|(i, p)| citation_json(i + 1, p))
        .collect();
    if a.json {
        let v = json!({
            "answer": answer.trim(), "citations": citations, "prompt_template": template.id(),
            "collection": a.collection,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        writeln!(out)?;
        print_citations(&mut out, &citations)?;
    }
    Ok(())
}

fn retrieval_options(a: &RagArgs) -> Result<RetrievalOptions> {
    let filter = match &a.filter {
        None => None,
        Some(f) => {
            let v: serde_json::Value =
                serde_json::from_str(f).context("--filter is not valid JSON")?;
            Some(Filter::from_json(&v).context("--filter")?)
        }
    };
    Ok(RetrievalOptions {
        top_k: a.top_k,
        filter,
        score_threshold: a.score_threshold,
    })
}

fn citation_json(n: usize, p: &Passage) -> serde_json::Value {
    json!({
        "index": n, "id": p.id, "source": p.source, "chunk": p.chunk, "start": p.start,
        "end": p.end, "score": p.score, "text": p.text,
    })
}

fn print_citations(out: &mut dyn Write, citations: &[serde_json::Value]) -> Result<()> {
    writeln!(out, "\nSources:")?;
    for c in citations {
        writeln!(
            out,
            "[{}] {} (chunk {}, bytes {}-{}, score {:.3})",
            c["index"],
            c["source"].as_str().unwrap_or_default(),
            c["chunk"],
            c["start"],
            c["end"],
            c["score"].as_f64().unwrap_or(0.0)
        )?;
    }
    Ok(())
}

/// `hangar rag --endpoint URL`: POST /v1/rag/chat on a running server.
fn rag_endpoint(a: &RagArgs, url: &str) -> Result<()> {
    let mut retrieval = json!({"collection": a.collection, "top_k": a.top_k});
    if let Some(f) = &a.filter {
        retrieval["filter"] = serde_json::from_str(f).context("--filter is not valid JSON")?;
    }
    if let Some(t) = a.score_threshold {
        retrieval["score_threshold"] = json!(t);
    }
    let body = json!({
        "messages": [{"role": "user", "content": a.question}],
        "max_tokens": a.max_tokens, "temperature": 0, "retrieval": retrieval,
    });
    let endpoint = format!("{}/v1/rag/chat", url.trim_end_matches('/'));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (status, v): (u16, serde_json::Value) = rt.block_on(async {
        let mut req = reqwest::Client::new().post(&endpoint).json(&body);
        if let Some(k) = &a.api_key {
            req = req.bearer_auth(k);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {endpoint}"))?;
        let status = resp.status().as_u16();
        let v = resp
            .json()
            .await
            .with_context(|| format!("reading the answer of {endpoint}"))?;
        anyhow::Ok((status, v))
    })?;
    if status != 200 {
        let msg = v["error"]["message"].as_str().unwrap_or("(no message)");
        bail!("{endpoint} answered {status}: {msg}");
    }
    let answer = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string();
    let citations = v["citations"].as_array().cloned().unwrap_or_default();
    if a.json {
        let v = json!({"answer": answer, "citations": citations, "collection": a.collection});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{answer}")?;
        print_citations(&mut out, &citations)?;
    }
    Ok(())
}

/// `hangar eval rag` arguments.
#[derive(Args, Debug)]
pub struct EvalRagArgs {
    /// Question set: JSON lines `{question, source, passage}` (`source` relative to
    /// --corpus; `passage` copied verbatim from it).
    #[arg(long, default_value = "tests/data/rag/questions.jsonl")]
    pub questions: PathBuf,
    /// The corpus folder, ingested (unchanged files skipped) before the questions.
    #[arg(long, default_value = "tests/data/rag/corpus")]
    pub corpus: PathBuf,
    /// Collection the corpus goes into (in the Hangar home's vector store).
    #[arg(long, short = 'c', default_value = "hangar-rag-eval")]
    pub collection: String,
    /// Embedding model: a registry name or a Hugging Face folder.
    #[arg(long, default_value = hangar_registry::DEFAULT_EMBEDDER)]
    pub embedding_model: String,
    /// Most tokens per chunk.
    #[arg(long, default_value_t = ChunkOptions::default().chunk_tokens)]
    pub chunk_tokens: usize,
    /// Tokens consecutive chunks share.
    #[arg(long, default_value_t = ChunkOptions::default().overlap)]
    pub overlap: usize,
    /// Cut-offs of the hit rate, comma-separated (passages retrieved: the largest).
    #[arg(long, value_delimiter = ',', default_value = "1,3,5")]
    pub k: Vec<usize>,
    /// Also generate answers with --model from the top passages and rate their
    /// faithfulness to them with the judge (1-10).
    #[arg(long)]
    pub judge: bool,
    /// Generation model for --judge: GGUF file or registry reference.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Passages given to the generator with --judge.
    #[arg(long, default_value_t = 4)]
    pub context_k: usize,
    /// Judge through an OpenAI-compatible server instead of the generation model.
    #[arg(long, value_name = "URL")]
    pub judge_endpoint: Option<String>,
    /// Model name to send to the judge endpoint.
    #[arg(long, requires = "judge_endpoint")]
    pub judge_endpoint_model: Option<String>,
    /// Bearer token for the judge endpoint.
    #[arg(long, env = "HANGAR_EVAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Where answers and judgements are cached (default ~/.cache/hangar).
    #[arg(long, env = "HANGAR_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Write one JSON object per question to this file.
    #[arg(long, value_name = "items.jsonl")]
    pub out: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
    /// Do not log this evaluation as a tracking run.
    #[arg(long)]
    pub no_track: bool,
    /// Kernel threads (0 = one per core).
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

pub fn run_eval_rag(a: &EvalRagArgs, home: Option<PathBuf>) -> Result<()> {
    use std::collections::BTreeMap;
    let ks: Vec<usize> = a.k.iter().copied().filter(|k| *k > 0).collect();
    let Some(&max_k) = ks.iter().max() else {
        bail!("--k needs at least one cut-off of 1 or more, e.g. --k 1,3,5");
    };
    let questions = hangar_rag::eval::load_questions(&a.questions, &a.corpus)?;
    let home_dir = home.clone().unwrap_or_else(hangar_registry::default_home);
    let db = VectorDb::open_in_home(&home_dir).context("opening the vector store")?;
    let embedder = start_embedder(&a.embedding_model, home.clone(), a.threads, 32)?;
    let (files, _) = hangar_rag::collect_files(std::slice::from_ref(&a.corpus), Some(&a.corpus))?;
    let opts = IngestOptions {
        chunking: ChunkOptions {
            chunk_tokens: a.chunk_tokens,
            overlap: a.overlap,
        },
        batch: 32,
    };
    // Chunking options change the chunks but not the files: start from empty.
    if db.exists(&a.collection) {
        db.delete(&a.collection)?;
    }
    let report = ingest_files(
        &db,
        &a.collection,
        &embedder,
        opts,
        &files,
        Some(&[String::new()]),
    )?;
    eprintln!(
        "{}: {} files, {} chunks",
        a.collection,
        files.len(),
        report.chunks
    );
    let pb = progress::bar(questions.len() as u64, "retrieve");
    let mut retrieved = Vec::with_capacity(questions.len());
    for q in &questions {
        let opts = RetrievalOptions {
            top_k: max_k,
            ..RetrievalOptions::default()
        };
        retrieved.push(hangar_rag::retrieve_blocking(
            &db,
            &a.collection,
            &embedder,
            &q.question,
            &opts,
        )?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let mut params = BTreeMap::new();
    params.insert("collection".into(), a.collection.clone());
    params.insert(
        "embedding_model".into(),
        embedder.model().name().to_string(),
    );
    params.insert("chunk_tokens".into(), a.chunk_tokens.to_string());
    params.insert("overlap".into(), a.overlap.to_string());
    params.insert("questions".into(), a.questions.display().to_string());
    params.insert("corpus".into(), a.corpus.display().to_string());
    params.insert("chunks".into(), report.chunks.to_string());
    let mut result = hangar_rag::eval::retrieval_result(&questions, &retrieved, &ks, params);
    if a.judge {
        use hangar_eval::judge::{EndpointJudge, JudgeModel, LocalJudge};
        let path = model_path::resolve(a.model.as_deref(), home.clone())?;
        let lopts = crate::cmd_model::load_options(None, hangar_models::Numerics::Fast);
        let lm = hangar_engine::LoadedModel::load_with(&path, a.threads, lopts)
            .with_context(|| format!("loading {}", path.display()))?;
        let name = a.model.clone().unwrap_or_else(|| {
            path.file_name().map_or_else(
                || path.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        });
        let mut generator = LocalJudge::new(lm, name)?;
        let mut endpoint = match &a.judge_endpoint {
            Some(url) => Some(EndpointJudge::new(
                url,
                a.judge_endpoint_model.clone(),
                a.api_key.clone(),
            )?),
            None => None,
        };
        let context: Vec<Vec<Passage>> = retrieved
            .iter()
            .map(|ps| ps.iter().take(a.context_k.max(1)).cloned().collect())
            .collect();
        let cache = crate::cmd_eval::eval_cache(a.cache_dir.as_deref())?.join("judge");
        let fopts = hangar_rag::eval::FaithfulnessOptions {
            cache_dir: Some(cache),
            ..Default::default()
        };
        eprintln!(
            "answering {} questions and judging the answers...",
            questions.len()
        );
        hangar_rag::eval::add_faithfulness(
            &mut result,
            &questions,
            &context,
            &PromptTemplate::builtin(),
            &mut generator,
            endpoint.as_mut().map(|e| e as &mut dyn JudgeModel),
            &fopts,
        )?;
        result
            .params
            .insert("context_k".into(), a.context_k.to_string());
    }
    let run_id = if a.no_track {
        None
    } else {
        Some(crate::cmd_eval::log_run(&result.to_tracking_run(), home)?)
    };
    if let Some(out) = &a.out {
        std::fs::write(out, result.items_jsonl())
            .with_context(|| format!("writing {}", out.display()))?;
    }
    if a.json {
        let v = json!({
            "task": result.task, "kind": result.kind, "params": result.params,
            "metrics": result.metrics, "run_id": run_id,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "task   rag ({}, {} questions)",
        result.kind,
        questions.len()
    );
    for (k, v) in &result.params {
        println!("param  {k:<16} {v}");
    }
    for (k, v) in &result.metrics {
        println!("metric {k:<24} {v:.4}");
    }
    Ok(())
}
