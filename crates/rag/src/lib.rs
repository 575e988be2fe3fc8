//! hangar-rag: retrieval-augmented generation over Hangar's vector database. Documents
//! (text, Markdown, HTML) are chunked by the embedding model's tokens with overlap,
//! embedded and upserted with their source and byte offsets; questions retrieve the
//! nearest chunks (with Qdrant-style payload filters); a versioned prompt template turns
//! question and passages into the message the model answers, citing sources as [1], [2].
//! Used by `hangar ingest`, `hangar rag`, `hangar eval rag` and `POST /v1/rag/chat`;
//! knows nothing of HTTP or of how the answer is generated.
//!
//! * [`chunk_document`] / [`ChunkOptions`]: text extraction ([`extract`]) and chunking.
//! * [`Ingestor`]: ingest and re-ingest (unchanged documents skipped, changed ones
//!   replaced, missing ones pruned), giving an [`IngestReport`].
//! * [`retrieve_blocking`] / [`search`]: retrieval into [`Passage`]s.
//! * [`PromptTemplate`]: name, version and Jinja text; [`PromptTemplate::builtin`].
//! * [`eval`]: hit rate@k over a question set, faithfulness through the judge.
//!
//! ```no_run
//! use hangar_rag::{Ingestor, IngestOptions, PromptTemplate, RetrievalOptions};
//! # fn demo(embedder: &hangar_engine::Embedder) -> hangar_rag::Result<()> {
//! let db = hangar_vector::VectorDb::open("/tmp/vectors")?;
//! let mut ing = Ingestor::open(&db, "docs", embedder, IngestOptions::default())?;
//! ing.add("notes.md", hangar_rag::DocFormat::Markdown, "# Notes\n\nThe sky is blue.")?;
//! println!("{:?}", ing.finish()?);
//! let passages = hangar_rag::retrieve_blocking(&db, "docs", embedder, "What colour is the sky?",
//!     &RetrievalOptions::default())?;
//! let prompt = PromptTemplate::builtin().render("What colour is the sky?", &passages)?;
//! # Ok(()) }
//! ```

mod chunk;
mod error;
pub mod eval;
pub mod extract;
mod ingest;
mod prompt;
mod retrieve;

pub use chunk::{chunk_document, Chunk, ChunkOptions, TokenCounter};
pub use error::{RagError, Result};
pub use extract::DocFormat;
pub use ingest::{
    chunk_id, collect_files, source_filter, DocOutcome, IngestOptions, IngestReport, Ingestor,
    SourceFile,
};
pub use prompt::PromptTemplate;
pub use retrieve::{
    check, name_model, query_request, retrieve_blocking, search, Passage, RetrievalOptions,
    MAX_TOP_K,
};
