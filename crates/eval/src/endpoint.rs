//! The remote backend of [`Scorer`]: any OpenAI-compatible server (`hangar serve`,
//! llama-server, vLLM). Log-likelihoods come from `/v1/completions` with `echo: true,
//! logprobs: 1, max_tokens: 0` (the prompt's own token logprobs, as lm-eval's
//! `local-completions` asks); the continuation is the tokens whose `text_offset` lies
//! at or after the end of the context. Generation is a plain greedy completion.
//!
//! Owns the HTTP calls and their parsing; a few requests run concurrently.

use crate::error::{EvalError, Result};
use crate::scorer::{split_whitespace, GenQuery, Loglik, LoglikQuery, Scorer};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Requests in flight at once.
const CONCURRENCY: usize = 8;

/// An OpenAI-compatible server as a [`Scorer`].
pub struct EndpointScorer {
    base: String,
    model: Option<String>,
    api_key: Option<String>,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl EndpointScorer {
    /// `url` is the server's base (`http://host:port`, with or without `/v1`).
    pub fn new(url: &str, model: Option<String>, api_key: Option<String>) -> Result<Self> {
        let base = url
            .trim_end_matches('/')
            .trim_end_matches("/v1")
            .to_string();
        let bad = |m: String| EvalError::Endpoint {
            url: url.to_string(),
            message: m,
        };
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(bad("the endpoint must be an http:// or https:// URL".into()));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| bad(format!("cannot start the HTTP runtime: {e}")))?;
        Ok(EndpointScorer {
            base,
            model,
            api_key,
            client,
            rt,
        })
    }

    /// Posts `/v1/completions` bodies, several at once; answers in order.
    fn complete_all(&self, bodies: Vec<Value>) -> Result<Vec<Value>> {
        self.post_all("/v1/completions", bodies)
    }

    /// Posts JSON bodies to `path` (model added), several at once; answers in order.
    pub(crate) fn post_all(&self, path: &str, bodies: Vec<Value>) -> Result<Vec<Value>> {
        let bodies: Vec<Value> = bodies.into_iter().map(|b| self.body(b)).collect();
        let url = format!("{}{path}", self.base);
        let client = self.client.clone();
        let key = self.api_key.clone();
        let base = self.base.clone();
        self.rt.block_on(async move {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
            let mut tasks = Vec::with_capacity(bodies.len());
            for body in bodies {
                let (client, url, key, sem) =
                    (client.clone(), url.clone(), key.clone(), sem.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
                    let mut req = client.post(&url).json(&body);
                    if let Some(k) = key {
                        req = req.bearer_auth(k);
                    }
                    let resp = req.send().await.map_err(|e| e.to_string())?;
                    let status = resp.status();
                    let text = resp.text().await.map_err(|e| e.to_string())?;
                    if !status.is_success() {
                        return Err(format!(
                            "HTTP {status}: {}",
                            text.chars().take(500).collect::<String>()
                        ));
                    }
                    serde_json::from_str::<Value>(&text)
                        .map_err(|e| format!("the answer is not JSON: {e}"))
                }));
            }
            let mut out = Vec::with_capacity(tasks.len());
            for t in tasks {
                let r = t.await.map_err(|e| e.to_string()).and_then(|r| r);
                out.push(r.map_err(|message| EvalError::Endpoint {
                    url: base.clone(),
                    message,
                })?);
            }
            Ok(out)
        })
    }

    fn body(&self, mut v: Value) -> Value {
        if let (Some(m), Some(o)) = (&self.model, v.as_object_mut()) {
            o.insert("model".into(), Value::String(m.clone()));
        }
        v
    }

    fn err(&self, m: impl Into<String>) -> EvalError {
        EvalError::Endpoint {
            url: self.base.clone(),
            message: m.into(),
        }
    }
}

/// The prompt tokens' logprobs of an echoed completion: `(text_offset, logprob,
/// is_top)` per token, in order (the first token's logprob is null: `None`).
pub fn echoed_tokens(answer: &Value) -> Option<Vec<(usize, Option<f64>, bool)>> {
    let lp = answer.get("choices")?.get(0)?.get("logprobs")?;
    let tokens = lp.get("tokens")?.as_array()?;
    let lps = lp.get("token_logprobs")?.as_array()?;
    let offs = lp.get("text_offset")?.as_array()?;
    let tops = lp.get("top_logprobs").and_then(Value::as_array);
    if lps.len() != tokens.len() || offs.len() != tokens.len() {
        return None;
    }
    let mut out = Vec::with_capacity(tokens.len());
    for i in 0..tokens.len() {
        let tok = tokens[i].as_str().unwrap_or_default();
        let lp = lps[i].as_f64();
        let is_top = match tops.and_then(|t| t.get(i)).and_then(Value::as_object) {
            Some(m) if !m.is_empty() => {
                let best = m
                    .iter()
                    .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
                    .fold(None::<(&String, f64)>, |b, (k, v)| match b {
                        Some((_, bv)) if bv >= v => b,
                        _ => Some((k, v)),
                    });
                best.is_some_and(|(k, v)| k == tok || lp.is_some_and(|l| l >= v))
            }
            _ => false,
        };
        out.push((offs[i].as_u64()? as usize, lp, is_top));
    }
    Some(out)
}

impl Scorer for EndpointScorer {
    fn describe(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::new();
        p.insert("backend".into(), "endpoint".into());
        p.insert("endpoint".into(), self.base.clone());
        if let Some(m) = &self.model {
            p.insert("model".into(), m.clone());
        }
        p
    }

    fn loglikelihood(&mut self, queries: &[LoglikQuery]) -> Result<Vec<Vec<Loglik>>> {
        let mut bodies = Vec::new();
        let mut spans = Vec::new();
        for q in queries {
            for c in &q.continuations {
                let (ctx, cont) = split_whitespace(&q.context, c);
                let prompt = format!("{ctx}{cont}");
                spans.push((ctx.chars().count(), prompt.chars().count()));
                bodies.push(json!({
                    "prompt": prompt,
                    "echo": true,
                    "logprobs": 1,
                    "max_tokens": 0,
                    "temperature": 0.0,
                }));
            }
        }
        let answers = self.complete_all(bodies)?;
        let mut flat = answers.iter().zip(&spans).map(|(a, &(start, end))| {
            let toks = echoed_tokens(a).ok_or_else(|| {
                self.err("the answer has no echoed prompt logprobs (choices[0].logprobs with tokens, token_logprobs, text_offset); does the server support echo with logprobs?")
            })?;
            let (mut lp, mut greedy, mut n) = (0.0, true, 0);
            for (off, l, top) in toks {
                if off >= start && off < end {
                    lp += l.ok_or_else(|| self.err("a continuation token has a null logprob"))?;
                    greedy &= top;
                    n += 1;
                }
            }
            Ok(Loglik {
                logprob: lp,
                greedy,
                tokens: n,
            })
        });
        queries
            .iter()
            .map(|q| {
                q.continuations
                    .iter()
                    .map(|_| {
                        flat.next()
                            .unwrap_or_else(|| Err(self.err("missing answer")))
                    })
                    .collect()
            })
            .collect()
    }

    fn loglikelihood_rolling(&mut self, texts: &[String]) -> Result<Vec<f64>> {
        let bodies = texts
            .iter()
            .map(|t| json!({"prompt": t, "echo": true, "logprobs": 1, "max_tokens": 0, "temperature": 0.0}))
            .collect();
        let answers = self.complete_all(bodies)?;
        answers
            .iter()
            .map(|a| {
                let toks = echoed_tokens(a)
                    .ok_or_else(|| self.err("the answer has no echoed prompt logprobs"))?;
                Ok(toks.iter().filter_map(|t| t.1).sum())
            })
            .collect()
    }

    fn generate(&mut self, queries: &[GenQuery]) -> Result<Vec<String>> {
        let bodies = queries
            .iter()
            .map(|q| {
                let mut b = json!({
                    "prompt": q.prompt, "max_tokens": q.max_tokens, "temperature": 0.0,
                });
                if !q.stop.is_empty() {
                    b["stop"] = json!(q.stop);
                }
                b
            })
            .collect();
        let answers = self.complete_all(bodies)?;
        answers
            .iter()
            .map(|a| {
                a.pointer("/choices/0/text")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| self.err("the answer has no choices[0].text"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_tokens_read_the_legacy_logprobs_object() {
        let a = json!({"choices": [{"text": "Hi there", "logprobs": {
            "tokens": ["Hi", " there"],
            "token_logprobs": [null, -1.5],
            "top_logprobs": [null, {" there": -1.5, " you": -2.0}],
            "text_offset": [0, 2]
        }}]});
        let t = echoed_tokens(&a).unwrap();
        assert_eq!(t, vec![(0, None, false), (2, Some(-1.5), true)]);
        assert!(echoed_tokens(&json!({"choices": []})).is_none());
    }
}
