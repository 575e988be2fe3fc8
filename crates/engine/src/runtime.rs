//! A model ready to run: weights, tokenizer and the kernel thread pool, loaded once.

use crate::EngineError;
use hangar_formats::GgufFile;
use hangar_kernels::ThreadPool;
use hangar_models::{Model, Numerics};
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
    /// Loads a GGUF model with `threads` kernel threads (0 = one per core).
    pub fn load(path: impl AsRef<Path>, threads: usize) -> Result<Self, EngineError> {
        Self::load_with(path, threads, Numerics::from_env())
    }

    /// As [`LoadedModel::load`], with the arithmetic chosen explicitly: `Fast` (our
    /// packed kernels) or `Ggml` (llama.cpp's exact float order: identical tokens).
    pub fn load_with(
        path: impl AsRef<Path>,
        threads: usize,
        numerics: Numerics,
    ) -> Result<Self, EngineError> {
        let file = Arc::new(GgufFile::open(path).map_err(hangar_models::ModelError::from)?);
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let mut model = Model::from_gguf(file)?;
        model.set_numerics(numerics);
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
        if numerics == Numerics::Fast {
            model.pack_weights(&pool);
        }
        Ok(LoadedModel {
            model,
            tokenizer,
            pool,
        })
    }
}
