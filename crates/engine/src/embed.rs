//! Embeddings: an [`EmbeddingModel`] (WordPiece tokenizer + BERT encoder + pooling
//! settings, from a Hugging Face folder) and the [`Embedder`] handle, whose one thread
//! owns the queue, gathers requests into batches under a token budget, runs the encoder
//! and answers through channels. Knows nothing about HTTP or the registry.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use hangar_kernels::ThreadPool;
use hangar_models::{Encoder, EncoderWorkspace, ModelError, Pooling, SentenceConfig};
use hangar_tokenizer::{TokenizerError, WordPieceTokenizer};
use tokio::sync::oneshot;

/// What can go wrong embedding; `TooLong`, `BadToken` and `Invalid` are the caller's
/// input (a 4xx at an API edge), the rest are the server's.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "input {index} has {tokens} tokens but the model takes at most {max}: shorten it or \
         ask for truncation"
    )]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("input {index}: token id {id} is outside the vocabulary (size {vocab})")]
    BadToken { index: usize, id: u32, vocab: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("loading the embedding model: {0}")]
    Load(String),
    #[error("the encoder failed: {0}")]
    Model(String),
    #[error("the embedder has stopped")]
    Closed,
}

impl From<ModelError> for EmbedError {
    fn from(e: ModelError) -> Self {
        EmbedError::Load(e.to_string())
    }
}

impl From<TokenizerError> for EmbedError {
    fn from(e: TokenizerError) -> Self {
        EmbedError::Load(e.to_string())
    }
}

impl EmbedError {
    /// True when the request was at fault (map to a 4xx).
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            EmbedError::TooLong { .. } | EmbedError::BadToken { .. } | EmbedError::Invalid(_)
        )
    }
}

/// Which named prompt (prefix) a text gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputKind {
    /// A search query: the model's `query` prompt, if any.
    Query,
    /// A document/passage: the model's `document`/`passage` prompt, if any.
    #[default]
    Document,
}

/// A loaded embedding model: tokenizer, encoder and sentence-transformers settings.
pub struct EmbeddingModel {
    name: String,
    tokenizer: WordPieceTokenizer,
    encoder: Encoder,
    sentence: SentenceConfig,
    max_tokens: usize,
}

impl std::fmt::Debug for EmbeddingModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingModel")
            .field("name", &self.name)
            .field("dim", &self.dim())
            .field("max_tokens", &self.max_tokens)
            .field("sentence", &self.sentence)
            .finish()
    }
}

impl EmbeddingModel {
    /// Loads a Hugging Face folder: `config.json`, `model.safetensors`, `tokenizer.json`
    /// and, when present, sentence-transformers' `modules.json`, pooling config,
    /// `sentence_bert_config.json` and `config_sentence_transformers.json`.
    pub fn load(dir: &Path, name: impl Into<String>) -> Result<Self, EmbedError> {
        let encoder = Encoder::load(dir)?;
        let sentence = SentenceConfig::load(dir)?;
        let tokenizer = WordPieceTokenizer::from_file(dir.join("tokenizer.json"))?;
        if tokenizer.vocab_size() > encoder.cfg.vocab_size {
            return Err(EmbedError::Load(format!(
                "tokenizer.json has {} tokens but the encoder's vocabulary has {}",
                tokenizer.vocab_size(),
                encoder.cfg.vocab_size
            )));
        }
        let max_tokens = sentence
            .max_seq_length
            .unwrap_or(encoder.cfg.max_position_embeddings)
            .clamp(
                tokenizer.num_special_tokens() + 1,
                encoder.cfg.max_position_embeddings,
            );
        Ok(Self {
            name: name.into(),
            tokenizer,
            encoder,
            sentence,
            max_tokens,
        })
    }

    /// The name the model answers to (`model` in API responses).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Vector length.
    pub fn dim(&self) -> usize {
        self.encoder.cfg.hidden_size
    }
    /// The most tokens (special tokens included) one input may have.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
    /// Whether vectors are unit length unless asked otherwise.
    pub fn normalizes(&self) -> bool {
        self.sentence.normalize
    }
    /// Pooling, normalisation and prompts.
    pub fn sentence_config(&self) -> &SentenceConfig {
        &self.sentence
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &WordPieceTokenizer {
        &self.tokenizer
    }

    /// Token ids of one input text (its prompt prefixed, special tokens added); longer
    /// than [`Self::max_tokens`] is `TooLong` unless `truncate`.
    pub fn tokenize(
        &self,
        index: usize,
        text: &str,
        kind: InputKind,
        truncate: bool,
    ) -> Result<Vec<u32>, EmbedError> {
        let prompt = match kind {
            InputKind::Query => self.sentence.query_prompt(),
            InputKind::Document => self.sentence.document_prompt(),
        };
        let full;
        let text = match prompt {
            Some(p) => {
                full = format!("{p}{text}");
                full.as_str()
            }
            None => text,
        };
        let ids = if truncate {
            self.tokenizer.encode_truncated(text, self.max_tokens)
        } else {
            self.tokenizer.encode(text, true)
        };
        self.check_ids(index, ids, truncate)
    }

    /// Checks pre-tokenized input (ids as given, nothing added).
    pub fn check_ids(
        &self,
        index: usize,
        mut ids: Vec<u32>,
        truncate: bool,
    ) -> Result<Vec<u32>, EmbedError> {
        if ids.is_empty() {
            return Err(EmbedError::Invalid(format!("input {index} has no tokens")));
        }
        if let Some(&id) = ids
            .iter()
            .find(|&&i| i as usize >= self.encoder.cfg.vocab_size)
        {
            return Err(EmbedError::BadToken {
                index,
                id,
                vocab: self.encoder.cfg.vocab_size,
            });
        }
        if ids.len() > self.max_tokens {
            if !truncate {
                return Err(EmbedError::TooLong {
                    index,
                    tokens: ids.len(),
                    max: self.max_tokens,
                });
            }
            ids.truncate(self.max_tokens);
        }
        Ok(ids)
    }

    /// Vectors of a batch of tokenized inputs, run now on `pool` (no queue).
    pub fn embed_ids(
        &self,
        pool: &ThreadPool,
        batch: &[&[u32]],
        normalize: bool,
        ws: &mut EncoderWorkspace,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut flat = Vec::new();
        self.encoder
            .embed(pool, batch, self.pooling(), normalize, ws, &mut flat)
            .map_err(|e| EmbedError::Model(e.to_string()))?;
        Ok(flat.chunks(self.dim()).map(<[f32]>::to_vec).collect())
    }

    fn pooling(&self) -> Pooling {
        self.sentence.pooling
    }
}

/// How the [`Embedder`] batches.
#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// Threads of the encoder's pool.
    pub threads: usize,
    /// Most tokens in one encoder call (one input over it still runs alone).
    pub max_batch_tokens: usize,
    /// Most inputs in one encoder call.
    pub max_batch_inputs: usize,
}

impl Default for EmbedderConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_batch_tokens: 16_384,
            max_batch_inputs: 64,
        }
    }
}

/// One request to the [`Embedder`].
#[derive(Debug, Clone)]
pub enum EmbedInput {
    Text(String),
    /// Token ids, used as given.
    Ids(Vec<u32>),
}

/// A request: inputs plus options.
#[derive(Debug, Clone, Default)]
pub struct EmbedRequest {
    pub inputs: Vec<EmbedInput>,
    /// `None`: the model's own setting.
    pub normalize: Option<bool>,
    pub truncate: bool,
    pub kind: InputKind,
}

/// The answer: one vector per input, in order, and the tokens they took.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

struct Job {
    ids: Vec<Vec<u32>>,
    normalize: bool,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
}

/// A cheap, cloneable handle to the embedding queue. The queue thread stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Embedder {
    model: Arc<EmbeddingModel>,
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.model)
            .finish()
    }
}

impl Embedder {
    /// Starts the queue thread.
    pub fn start(model: EmbeddingModel, cfg: EmbedderConfig) -> Self {
        let model = Arc::new(model);
        let (tx, rx) = mpsc::channel();
        let m = model.clone();
        std::thread::Builder::new()
            .name("hangar-embed".into())
            .spawn(move || run_queue(&m, cfg, rx))
            .expect("spawn the embedding thread");
        Self { model, tx }
    }

    /// The model behind the queue.
    pub fn model(&self) -> &EmbeddingModel {
        &self.model
    }

    /// Tokenizes and validates a request (in the caller's thread) into token ids.
    pub fn prepare(&self, req: &EmbedRequest) -> Result<Vec<Vec<u32>>, EmbedError> {
        if req.inputs.is_empty() {
            return Err(EmbedError::Invalid("no inputs to embed".into()));
        }
        req.inputs
            .iter()
            .enumerate()
            .map(|(i, inp)| match inp {
                EmbedInput::Text(t) => self.model.tokenize(i, t, req.kind, req.truncate),
                EmbedInput::Ids(ids) => self.model.check_ids(i, ids.clone(), req.truncate),
            })
            .collect()
    }

    /// Embeds a request through the queue.
    pub async fn embed(&self, req: EmbedRequest) -> Result<Embeddings, EmbedError> {
        let ids = self.prepare(&req)?;
        let prompt_tokens = ids.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        let normalize = req.normalize.unwrap_or(self.model.normalizes());
        self.tx
            .send(Job {
                ids,
                normalize,
                reply,
            })
            .map_err(|_| EmbedError::Closed)?;
        let vectors = rx.await.map_err(|_| EmbedError::Closed)??;
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }

    /// [`Self::embed`] for synchronous callers (the CLI).
    pub fn embed_blocking(&self, req: EmbedRequest) -> Result<Embeddings, EmbedError> {
        let ids = self.prepare(&req)?;
        let prompt_tokens = ids.iter().map(Vec::len).sum();
        let (reply, rx) = oneshot::channel();
        let normalize = req.normalize.unwrap_or(self.model.normalizes());
        self.tx
            .send(Job {
                ids,
                normalize,
                reply,
            })
            .map_err(|_| EmbedError::Closed)?;
        let vectors = rx.blocking_recv().map_err(|_| EmbedError::Closed)??;
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }
}

struct Active {
    results: Vec<Option<Vec<f32>>>,
    remaining: usize,
    normalize: bool,
    reply: oneshot::Sender<Result<Vec<Vec<f32>>, EmbedError>>,
    ids: Vec<Vec<u32>>,
}

/// The queue thread: admit jobs, drop the ones whose caller left, take inputs in
/// arrival order up to the budget, run one encoder call, hand back finished jobs.
fn run_queue(model: &EmbeddingModel, cfg: EmbedderConfig, rx: mpsc::Receiver<Job>) {
    let pool = ThreadPool::new(cfg.threads.max(1));
    let mut ws = EncoderWorkspace::default();
    let mut active: HashMap<u64, Active> = HashMap::new();
    let mut pending: VecDeque<(u64, usize)> = VecDeque::new();
    let mut next_id = 0u64;
    let mut admit =
        |job: Job, active: &mut HashMap<u64, Active>, pending: &mut VecDeque<(u64, usize)>| {
            let n = job.ids.len();
            pending.extend((0..n).map(|i| (next_id, i)));
            active.insert(
                next_id,
                Active {
                    results: vec![None; n],
                    remaining: n,
                    normalize: job.normalize,
                    reply: job.reply,
                    ids: job.ids,
                },
            );
            next_id += 1;
        };
    loop {
        if pending.is_empty() {
            match rx.recv() {
                Ok(job) => admit(job, &mut active, &mut pending),
                Err(_) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            admit(job, &mut active, &mut pending);
        }
        active.retain(|_, a| !a.reply.is_closed());
        pending.retain(|(j, _)| active.contains_key(j));
        let mut batch: Vec<(u64, usize)> = Vec::new();
        let mut tokens = 0;
        while let Some(&(j, i)) = pending.front() {
            let len = active[&j].ids[i].len();
            if !batch.is_empty()
                && (tokens + len > cfg.max_batch_tokens || batch.len() >= cfg.max_batch_inputs)
            {
                break;
            }
            tokens += len;
            batch.push((j, i));
            pending.pop_front();
        }
        if batch.is_empty() {
            continue;
        }
        let seqs: Vec<&[u32]> = batch
            .iter()
            .map(|(j, i)| active[j].ids[*i].as_slice())
            .collect();
        match model.embed_ids(&pool, &seqs, false, &mut ws) {
            Ok(vectors) => {
                for ((j, i), mut v) in batch.into_iter().zip(vectors) {
                    let a = active.get_mut(&j).expect("retained above");
                    if a.normalize {
                        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                        v.iter_mut().for_each(|x| *x /= n);
                    }
                    a.results[i] = Some(v);
                    a.remaining -= 1;
                    if a.remaining == 0 {
                        let a = active.remove(&j).expect("present");
                        let _ = a.reply.send(Ok(a.results.into_iter().flatten().collect()));
                    }
                }
            }
            Err(e) => {
                let jobs: std::collections::BTreeSet<u64> = batch.iter().map(|(j, _)| *j).collect();
                for j in jobs {
                    if let Some(a) = active.remove(&j) {
                        let _ = a.reply.send(Err(e.clone()));
                    }
                }
                pending.retain(|(j, _)| active.contains_key(j));
            }
        }
    }
}
