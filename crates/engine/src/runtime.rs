//! A model ready to run: weights, tokenizer and the kernel thread pool, loaded once.

use crate::EngineError;
use hangar_formats::GgufFile;
use hangar_kernels::ThreadPool;
use hangar_models::{LoadOptions, Model, Numerics};
use hangar_tokenizer::Tokenizer;
use std::path::Path;
use std::sync::Arc;

/// Model + tokenizer + thread pool.
pub struct LoadedModel {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub pool: ThreadPool,
}

impl LoadedModel {
    /// Loads a GGUF model with `threads` kernel threads (0 = one per core) and the
    /// default [`LoadOptions`] (fast numerics).
    pub fn load(path: impl AsRef<Path>, threads: usize) -> Result<Self, EngineError> {
        Self::load_with(path, threads, LoadOptions::default())
    }

    /// As [`LoadedModel::load`], with the options chosen explicitly: the arithmetic,
    /// `Fast` (our packed kernels) or `Ggml` (llama.cpp's exact float order: identical
    /// tokens), and which weights the fast kernels repack.
    pub fn load_with(
        path: impl AsRef<Path>,
        threads: usize,
        opts: LoadOptions,
    ) -> Result<Self, EngineError> {
        let file = Arc::new(GgufFile::open(path).map_err(hangar_models::ModelError::from)?);
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let model = Model::from_gguf_with(file, opts)?;
        if tokenizer.vocab_size() > model.cfg.vocab_size {
            return Err(EngineError::Invalid(format!(
                "tokenizer has {} tokens but the embedding has {} rows",
                tokenizer.vocab_size(),
                model.cfg.vocab_size
            )));
        }
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let pool = ThreadPool::new(threads);
        if opts.numerics == Numerics::Fast {
            model.pack_weights(&pool);
        }
        Ok(LoadedModel {
            model,
            tokenizer,
            pool,
        })
    }
}
