//! The local backend of [`Scorer`]: a GGUF model run in this process. Log-likelihoods
//! go through the engine's [`LoglikScorer`] (shared contexts computed once, many
//! questions per forward pass); generation through the engine's single-sequence
//! `generate`.
//!
//! Owns tokenization of scoring requests; loads nothing by itself.

use crate::error::Result;
use crate::scorer::{split_whitespace, GenQuery, Loglik, LoglikQuery, Scorer};
use hangar_engine::sampler::SamplingParams;
use hangar_engine::{GenerateOptions, LoadedModel, LoglikRequest, LoglikScorer, ModelRunner};
use std::collections::BTreeMap;

/// Logit rows per forward pass: bounds the logits buffer (rows × vocabulary floats).
const ROWS_PER_PASS: usize = 256;

/// A loaded model as a [`Scorer`].
pub struct LocalScorer {
    lm: LoadedModel,
    /// Another backend for the forward passes (the GPU); `None`: the CPU on `lm`.
    runner: Option<Box<dyn ModelRunner>>,
    scorer: LoglikScorer,
    params: BTreeMap<String, String>,
    /// Window of rolling log-likelihood, in tokens.
    pub rolling_window: usize,
}

impl LocalScorer {
    /// `params` describe the model for tracking (path, digest, reference, ...).
    pub fn new(lm: LoadedModel, params: BTreeMap<String, String>) -> Self {
        LocalScorer {
            lm,
            runner: None,
            scorer: LoglikScorer::new(),
            params,
            rolling_window: 1024,
        }
    }

    /// Runs the forward passes on `runner` (`hangar eval --device cuda`) instead of
    /// the CPU; `lm` still gives the tokenizer. `device` names it for tracking.
    pub fn with_runner(mut self, runner: Box<dyn ModelRunner>, device: &str) -> Self {
        self.runner = Some(runner);
        self.params.insert("device".into(), device.to_string());
        self
    }

    pub fn model(&self) -> &LoadedModel {
        &self.lm
    }

    /// Context (BOS first) and continuation tokens of one choice, split as lm-eval does:
    /// the continuation is what encoding the whole adds after the context's tokens.
    pub fn encode_pair(&self, context: &str, continuation: &str) -> (Vec<u32>, Vec<u32>) {
        let tk = &self.lm.tokenizer;
        let (ctx, cont) = split_whitespace(context, continuation);
        let c = tk.encode(&ctx, true, false);
        let whole = tk.encode(&format!("{ctx}{cont}"), true, false);
        let mut ctx_ids = c;
        if ctx_ids.is_empty() {
            ctx_ids = tk.bos_id().into_iter().collect();
        }
        let cont_ids = if whole.starts_with(&ctx_ids) {
            whole[ctx_ids.len()..].to_vec()
        } else {
            tk.encode(&cont, false, false)
        };
        (ctx_ids, cont_ids)
    }
}

impl Scorer for LocalScorer {
    fn count_tokens(&self, text: &str) -> Option<usize> {
        Some(self.lm.tokenizer.encode(text, true, false).len())
    }

    fn token_ids(&self, context: &str, continuation: &str) -> Option<(Vec<u32>, Vec<u32>)> {
        Some(self.encode_pair(context, continuation))
    }

    fn describe(&self) -> BTreeMap<String, String> {
        let mut p = self.params.clone();
        p.insert("backend".into(), "local".into());
        p.insert("arch".into(), self.lm.model.cfg.arch_name.clone());
        p
    }

    fn loglikelihood(&mut self, queries: &[LoglikQuery]) -> Result<Vec<Vec<Loglik>>> {
        // One request per (query, context split): choices whose split context differs
        // (trailing whitespace) cannot share a prefix, so they become their own request.
        let mut reqs: Vec<LoglikRequest> = Vec::new();
        let mut index: Vec<Vec<(usize, usize)>> = Vec::with_capacity(queries.len());
        for q in queries {
            let mut idx = Vec::with_capacity(q.continuations.len());
            let first = reqs.len();
            for cont in &q.continuations {
                let (ctx, cont) = self.encode_pair(&q.context, cont);
                let at = reqs[first..]
                    .iter()
                    .position(|r| r.context == ctx)
                    .map(|p| first + p);
                let r = match at {
                    Some(r) => r,
                    None => {
                        reqs.push(LoglikRequest {
                            context: ctx,
                            continuations: Vec::new(),
                        });
                        reqs.len() - 1
                    }
                };
                reqs[r].continuations.push(cont);
                idx.push((r, reqs[r].continuations.len() - 1));
            }
            index.push(idx);
        }
        // Passes of bounded size.
        let mut scores = Vec::with_capacity(reqs.len());
        let mut start = 0;
        while start < reqs.len() {
            let mut end = start;
            let mut rows = 0;
            while end < reqs.len() {
                let r = &reqs[end];
                let tail = (r.context.len() - 1) % LoglikScorer::BLOCK + 1;
                let n: usize = r.continuations.iter().map(|c| tail + c.len()).sum();
                if end > start && rows + n > ROWS_PER_PASS {
                    break;
                }
                rows += n;
                end += 1;
            }
            let batch = &reqs[start..end];
            scores.extend(match &mut self.runner {
                Some(r) => self.scorer.score_on(r.as_mut(), batch)?,
                None => self.scorer.score(&self.lm.model, &self.lm.pool, batch)?,
            });
            start = end;
        }
        Ok(index
            .into_iter()
            .map(|idx| {
                idx.into_iter()
                    .map(|(r, c)| {
                        let s = scores[r][c];
                        Loglik {
                            logprob: s.logprob,
                            greedy: s.greedy,
                            tokens: s.tokens,
                        }
                    })
                    .collect()
            })
            .collect())
    }

    fn loglikelihood_rolling(&mut self, texts: &[String]) -> Result<Vec<f64>> {
        let bos = self.lm.tokenizer.bos_id().unwrap_or(0);
        texts
            .iter()
            .map(|t| {
                let toks = self.lm.tokenizer.encode(t, false, false);
                Ok(match &mut self.runner {
                    Some(r) => {
                        self.scorer
                            .rolling_on(r.as_mut(), bos, &toks, self.rolling_window)?
                    }
                    None => self.scorer.rolling(
                        &self.lm.model,
                        &self.lm.pool,
                        bos,
                        &toks,
                        self.rolling_window,
                    )?,
                })
            })
            .collect()
    }

    fn generate(&mut self, queries: &[GenQuery]) -> Result<Vec<String>> {
        queries
            .iter()
            .map(|q| {
                let prompt = self.lm.tokenizer.encode(&q.prompt, true, false);
                let opts = GenerateOptions {
                    max_tokens: q.max_tokens,
                    sampling: SamplingParams::greedy(),
                    stop: q.stop.clone(),
                    context: prompt.len() + q.max_tokens + 1,
                    ..Default::default()
                };
                let text = match &mut self.runner {
                    Some(r) => {
                        let g = hangar_engine::generate_on(
                            r.as_mut(),
                            &self.lm.tokenizer,
                            &prompt,
                            &opts,
                            |_| true,
                        );
                        // Generation reallocated the runner's KV storage.
                        self.scorer.runner_kv_reset();
                        g?.text
                    }
                    None => hangar_engine::generate(&self.lm, &prompt, &opts, |_| true)?.text,
                };
                Ok(text)
            })
            .collect()
    }
}
