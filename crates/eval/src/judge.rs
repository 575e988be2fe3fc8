//! LLM-as-judge, as MT-Bench does it: absolute grading on a 1–10 rubric ("Rating:
//! [[x]]") and pairwise comparison ("[[A]]" / "[[B]]" / "[[C]]"), each pair judged in
//! both orders (an inconsistent pair is a tie); a G-Eval-style probability-weighted
//! score when the judge returns top logprobs. Calls are cached on disk by (prompt,
//! model, parameters); unparseable answers are counted, never fatal.
//!
//! Owns the prompts (written for Hangar), parsing, caching and the report; the judge
//! itself is any [`JudgeModel`] (an OpenAI-compatible endpoint, or a local engine).

use crate::error::{EvalError, Result};
use crate::harness::EvalResult;
use crate::metrics::{bootstrap_ci, mean};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ABSOLUTE_SYSTEM: &str = "You are a careful and impartial reviewer. Read the user's \
question and the AI assistant's answer below, and judge how well the answer serves the user: \
is it helpful, relevant, correct, sufficiently detailed and clear? Begin with a short, \
objective explanation. Then give a score from 1 (useless) to 10 (excellent), written exactly \
in this form: \"Rating: [[7]]\".";

const PAIRWISE_SYSTEM: &str = "You are a careful and impartial reviewer. Two AI assistants \
answered the same user question. Decide which answer serves the user better, weighing \
helpfulness, relevance, correctness, detail and clarity. The order in which the answers appear, \
their length and the assistants' names must not influence you. Begin with a short comparison, \
then give your verdict in exactly this form: \"[[A]]\" if assistant A's answer is better, \
\"[[B]]\" if assistant B's answer is better, or \"[[C]]\" if they are equally good.";

/// One line of a judge input file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum JudgeItem {
    Pairwise {
        question: String,
        answer_a: String,
        answer_b: String,
    },
    Absolute {
        question: String,
        answer: String,
    },
}

/// Reads a judge input file: `{question, answer}` or `{question, answer_a, answer_b}`
/// lines (all of one kind).
pub fn load_items(path: &Path) -> Result<Vec<JudgeItem>> {
    let text = std::fs::read_to_string(path).map_err(EvalError::io(path))?;
    let mut out: Vec<JudgeItem> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let it: JudgeItem = serde_json::from_str(line).map_err(|e| {
            EvalError::bad(
                path,
                format!("line {}: expected {{question, answer}} or {{question, answer_a, answer_b}} ({e})", i + 1),
            )
        })?;
        if let Some(first) = out.first() {
            if std::mem::discriminant(first) != std::mem::discriminant(&it) {
                return Err(EvalError::bad(
                    path,
                    format!(
                        "line {}: mixes absolute and pairwise items; use one kind per file",
                        i + 1
                    ),
                ));
            }
        }
        out.push(it);
    }
    if out.is_empty() {
        return Err(EvalError::bad(path, "no items"));
    }
    Ok(out)
}

/// What the judge is asked: chat messages plus generation parameters.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgeCall {
    pub system: String,
    pub user: String,
    pub max_tokens: usize,
    /// Alternatives per generated token to ask for (G-Eval weighting); 0 = none.
    pub top_logprobs: usize,
}

/// The judge's answer: its text and, per generated token, the token and its top
/// alternatives with their log-probabilities (empty when the judge gives none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeReply {
    pub text: String,
    #[serde(default)]
    pub tokens: Vec<(String, Vec<(String, f64)>)>,
}

/// A model that answers judge calls.
pub trait JudgeModel {
    /// Identifies the judge in cache keys and reports.
    fn name(&self) -> String;
    fn complete(&mut self, calls: &[JudgeCall]) -> Result<Vec<JudgeReply>>;
}

/// `"Rating: [[x]]"` → x in 1..=10 (the last such mark counts).
pub fn parse_rating(text: &str) -> Option<f64> {
    let mut found = None;
    let mut rest = text;
    while let Some(i) = rest.find("[[") {
        let after = &rest[i + 2..];
        if let Some(j) = after.find("]]") {
            if let Ok(v) = after[..j].trim().parse::<f64>() {
                if (1.0..=10.0).contains(&v) {
                    found = Some(v);
                }
            }
        }
        rest = after;
    }
    found
}

/// A pairwise verdict in the order shown to the judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    A,
    B,
    Tie,
}

/// `[[A]]`, `[[B]]` or `[[C]]`; `None` when none or more than one kind appears.
pub fn parse_verdict(text: &str) -> Option<Verdict> {
    let marks = [
        ("[[A]]", Verdict::A),
        ("[[B]]", Verdict::B),
        ("[[C]]", Verdict::Tie),
    ];
    let found: Vec<Verdict> = marks
        .iter()
        .filter(|(m, _)| text.contains(m))
        .map(|&(_, v)| v)
        .collect();
    match found.as_slice() {
        [v] => Some(*v),
        _ => None,
    }
}

/// G-Eval's expected score: at the token that carries the rating (the first one
/// after `[[`), the probability-weighted mean of the alternatives that are ratings.
pub fn weighted_rating(reply: &JudgeReply) -> Option<f64> {
    let mut text = String::new();
    for (tok, alts) in &reply.tokens {
        if text.trim_end().ends_with("[[") {
            let (mut num, mut den) = (0.0, 0.0);
            for (alt, lp) in alts {
                if let Ok(v) = alt.trim().parse::<u32>() {
                    if (1..=10).contains(&v) {
                        let p = lp.exp();
                        num += p * f64::from(v);
                        den += p;
                    }
                }
            }
            return (den > 0.0).then(|| num / den);
        }
        text.push_str(tok);
    }
    None
}

/// Judge calls cached on disk, one JSON file per key (temp file + rename).
pub struct CachedJudge<'a> {
    inner: &'a mut dyn JudgeModel,
    dir: Option<PathBuf>,
    pub hits: usize,
    pub misses: usize,
}

impl<'a> CachedJudge<'a> {
    pub fn new(inner: &'a mut dyn JudgeModel, dir: Option<PathBuf>) -> Self {
        CachedJudge {
            inner,
            dir,
            hits: 0,
            misses: 0,
        }
    }

    /// The cache key of a call: sha256 of (prompt, model, parameters).
    pub fn key(model: &str, call: &JudgeCall) -> String {
        let v = json!({"model": model, "call": call});
        hex::encode(Sha256::digest(v.to_string().as_bytes()))
    }

    pub fn complete(&mut self, calls: &[JudgeCall]) -> Result<Vec<JudgeReply>> {
        let model = self.inner.name();
        let keys: Vec<String> = calls.iter().map(|c| Self::key(&model, c)).collect();
        let mut out: Vec<Option<JudgeReply>> = keys
            .iter()
            .map(|k| {
                let p = self.dir.as_ref()?.join(format!("{k}.json"));
                serde_json::from_slice(&std::fs::read(p).ok()?).ok()
            })
            .collect();
        let missing: Vec<usize> = (0..calls.len()).filter(|&i| out[i].is_none()).collect();
        self.hits += calls.len() - missing.len();
        self.misses += missing.len();
        if !missing.is_empty() {
            let todo: Vec<JudgeCall> = missing.iter().map(|&i| calls[i].clone()).collect();
            let replies = self.inner.complete(&todo)?;
            for (&i, r) in missing.iter().zip(replies) {
                if let Some(dir) = &self.dir {
                    std::fs::create_dir_all(dir).map_err(EvalError::io(dir))?;
                    let p = dir.join(format!("{}.json", keys[i]));
                    let tmp = dir.join(format!(".{}.tmp", keys[i]));
                    let bytes =
                        serde_json::to_vec(&r).map_err(|e| EvalError::Invalid(e.to_string()))?;
                    std::fs::write(&tmp, bytes).map_err(EvalError::io(&tmp))?;
                    std::fs::rename(&tmp, &p).map_err(EvalError::io(&p))?;
                }
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|r| {
                r.ok_or_else(|| EvalError::Invalid("the judge returned too few answers".into()))
            })
            .collect()
    }
}

/// Renders a grading prompt's (system, user) from an item's fields, or says why not.
pub type RenderGrading =
    dyn Fn(&BTreeMap<&str, &str>) -> std::result::Result<(String, String), String> + Send + Sync;

/// A grading prompt in place of the built-in ones (e.g. a stored prompt from the
/// registry): rendered from `question` and `answer` (absolute) or `question`,
/// `answer_a`, `answer_b` (pairwise). It must still ask for the same verdict format
/// ("Rating: [[x]]" or "[[A]]"/"[[B]]"/"[[C]]"). An empty system part sends none.
#[derive(Clone)]
pub struct GradingPrompt {
    /// Recorded as the run's `prompt` parameter (`name@version`).
    pub reference: String,
    pub render: std::sync::Arc<RenderGrading>,
}

impl std::fmt::Debug for GradingPrompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradingPrompt")
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// Options of a judging run.
#[derive(Debug, Clone)]
pub struct JudgeOptions {
    /// The grading prompt; `None` = the built-in MT-Bench-style prompts.
    pub prompt: Option<GradingPrompt>,
    pub max_tokens: usize,
    /// Ask for this many top logprobs per token (G-Eval weighting); 0 = off.
    pub top_logprobs: usize,
    pub cache_dir: Option<PathBuf>,
    pub bootstrap: usize,
}

impl Default for JudgeOptions {
    fn default() -> Self {
        JudgeOptions {
            prompt: None,
            max_tokens: 512,
            top_logprobs: 5,
            cache_dir: None,
            bootstrap: 1000,
        }
    }
}

/// The call from the grading prompt, when one is set.
fn custom_call(o: &JudgeOptions, fields: &[(&str, &str)]) -> Option<Result<JudgeCall>> {
    let p = o.prompt.as_ref()?;
    let vars: BTreeMap<&str, &str> = fields.iter().copied().collect();
    Some(
        (p.render)(&vars)
            .map(|(system, user)| JudgeCall {
                system,
                user,
                max_tokens: o.max_tokens,
                top_logprobs: o.top_logprobs,
            })
            .map_err(|e| EvalError::Invalid(format!("grading prompt {}: {e}", p.reference))),
    )
}

fn absolute_call(q: &str, a: &str, o: &JudgeOptions) -> Result<JudgeCall> {
    if let Some(c) = custom_call(o, &[("question", q), ("answer", a)]) {
        return c;
    }
    Ok(JudgeCall {
        system: ABSOLUTE_SYSTEM.into(),
        user: format!(
            "[Question]\n{q}\n\n[The Start of the Assistant's Answer]\n{a}\n[The End of the Assistant's Answer]"
        ),
        max_tokens: o.max_tokens,
        top_logprobs: o.top_logprobs,
     })
}

fn pairwise_call(q: &str, a: &str, b: &str, o: &JudgeOptions) -> Result<JudgeCall> {
    if let Some(c) = custom_call(o, &[("question", q), ("answer_a", a), ("answer_b", b)]) {
        return c;
    }
    Ok(JudgeCall {
        system: PAIRWISE_SYSTEM.into(),
        user: format!(
            "[User Question]\n{q}\n\n[The Start of Assistant A's Answer]\n{a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{b}\n[The End of Assistant B's Answer]"
        ),
        max_tokens: o.max_tokens,
        top_logprobs: o.top_logprobs,
     })
}

/// Judges every item; the result has params, metrics and one row per item.
pub fn judge(
    model: &mut dyn JudgeModel,
    items: &[JudgeItem],
    opts: &JudgeOptions,
) -> Result<(EvalResult, usize, usize)> {
    let name = model.name();
    let mut cj = CachedJudge::new(model, opts.cache_dir.clone());
    let mut metrics = BTreeMap::new();
    let mut rows = Vec::with_capacity(items.len());
    let pairwise = matches!(items.first(), Some(JudgeItem::Pairwise { .. }));
    if !pairwise {
        let calls: Vec<JudgeCall> = items
            .iter()
            .filter_map(|it| match it {
                JudgeItem::Absolute { question, answer } => {
                    Some(absolute_call(question, answer, opts))
                }
                JudgeItem::Pairwise { .. } => None,
            })
            .collect::<Result<_>>()?;
        let replies = cj.complete(&calls)?;
        let (mut scores, mut weighted) = (Vec::new(), Vec::new());
        for (i, r) in replies.iter().enumerate() {
            let s = parse_rating(&r.text);
            let w = weighted_rating(r);
            scores.extend(s);
            weighted.extend(w);
            rows.push(json!({"index": i, "rating": s, "weighted_rating": w, "judgement": r.text}));
        }
        let (lo, hi) = bootstrap_ci(&scores, opts.bootstrap, 11);
        metrics.insert("mean_rating".into(), mean(&scores));
        metrics.insert("mean_rating_ci_low".into(), lo);
        metrics.insert("mean_rating_ci_high".into(), hi);
        metrics.insert("rated".into(), scores.len() as f64);
        metrics.insert("unparseable".into(), (items.len() - scores.len()) as f64);
        if !weighted.is_empty() {
            metrics.insert("mean_weighted_rating".into(), mean(&weighted));
        }
    } else {
        let mut calls = Vec::with_capacity(items.len() * 2);
        for it in items {
            if let JudgeItem::Pairwise {
                question,
                answer_a,
                answer_b,
            } = it
            {
                calls.push(pairwise_call(question, answer_a, answer_b, opts)?);
                calls.push(pairwise_call(question, answer_b, answer_a, opts)?);
            }
        }
        let replies = cj.complete(&calls)?;
        let (mut wins_a, mut wins_b, mut ties, mut inconsistent, mut unparseable) = (0, 0, 0, 0, 0);
        let mut per_item = Vec::new();
        for (i, pair) in replies.chunks(2).enumerate() {
            let first = parse_verdict(&pair[0].text);
            // In the swapped call, "A" is answer_b.
            let second = parse_verdict(&pair[1].text).map(|v| match v {
                Verdict::A => Verdict::B,
                Verdict::B => Verdict::A,
                Verdict::Tie => Verdict::Tie,
            });
            let outcome = match (first, second) {
                (Some(x), Some(y)) if x == y => Some((x, false)),
                (Some(_), Some(_)) => Some((Verdict::Tie, true)),
                _ => None,
            };
            let score = match outcome {
                Some((Verdict::A, _)) => {
                    wins_a += 1;
                    Some(1.0)
                }
                Some((Verdict::B, _)) => {
                    wins_b += 1;
                    Some(0.0)
                }
                Some((Verdict::Tie, inc)) => {
                    ties += 1;
                    inconsistent += usize::from(inc);
                    Some(0.5)
                }
                None => {
                    unparseable += 1;
                    None
                }
            };
            per_item.extend(score);
            rows.push(json!({
                "index": i, "verdict_ab": first, "verdict_ba": second,
                "winner": outcome.map(|o| o.0), "inconsistent": outcome.is_some_and(|o| o.1),
                "judgement_ab": pair[0].text, "judgement_ba": pair[1].text,
            }));
        }
        let (lo, hi) = bootstrap_ci(&per_item, opts.bootstrap, 13);
        metrics.insert("win_rate_a".into(), mean(&per_item));
        metrics.insert("win_rate_a_ci_low".into(), lo);
        metrics.insert("win_rate_a_ci_high".into(), hi);
        metrics.insert("wins_a".into(), wins_a as f64);
        metrics.insert("wins_b".into(), wins_b as f64);
        metrics.insert("ties".into(), ties as f64);
        metrics.insert("inconsistent".into(), inconsistent as f64);
        metrics.insert("unparseable".into(), unparseable as f64);
    }
    metrics.insert("items".into(), items.len() as f64);
    let (hits, misses) = (cj.hits, cj.misses);
    let mut params = BTreeMap::new();
    params.insert("judge".into(), name);
    params.insert(
        "mode".into(),
        if pairwise { "pairwise" } else { "absolute" }.into(),
    );
    params.insert("max_tokens".into(), opts.max_tokens.to_string());
    params.insert(
        "prompt".into(),
        opts.prompt
            .as_ref()
            .map_or_else(|| "built-in".into(), |p| p.reference.clone()),
    );
    Ok((
        EvalResult {
            task: "judge".into(),
            kind: if pairwise {
                "judge_pairwise"
            } else {
                "judge_absolute"
            }
            .into(),
            params,
            metrics,
            items: rows,
        },
        hits,
        misses,
    ))
}

/// LLM-as-judge as an eval metric: rates each generated output of `result` (a
/// generation run over `prompts`, in order) on the absolute rubric, adding
/// `judge_rating` to its rows and `judge_mean_rating` / `judge_unparseable` to its
/// metrics.
pub fn add_judge_metric(
    result: &mut EvalResult,
    prompts: &[String],
    model: &mut dyn JudgeModel,
    opts: &JudgeOptions,
) -> Result<()> {
    let items: Vec<JudgeItem> = result
        .items
        .iter()
        .zip(prompts)
        .map(|(row, p)| JudgeItem::Absolute {
            question: p.clone(),
            answer: row["output"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    if items.is_empty() {
        return Err(EvalError::Invalid(
            "the judge metric needs generation results".into(),
        ));
    }
    let (j, _, _) = judge(model, &items, opts)?;
    for (row, jr) in result.items.iter_mut().zip(&j.items) {
        row["judge_rating"] = jr["rating"].clone();
    }
    for (k, v) in [
        ("mean_rating", "judge_mean_rating"),
        ("unparseable", "judge_unparseable"),
    ] {
        if let Some(x) = j.metrics.get(k) {
            result.metrics.insert(v.into(), *x);
        }
    }
    if let Some(n) = j.params.get("judge") {
        result.params.insert("judge".into(), n.clone());
    }
    Ok(())
}

/// A judge behind an OpenAI-compatible `/v1/chat/completions` (greedy, with logprobs
/// when asked).
pub struct EndpointJudge {
    scorer: crate::EndpointScorer,
    name: String,
}

impl EndpointJudge {
    pub fn new(url: &str, model: Option<String>, api_key: Option<String>) -> Result<Self> {
        let name = model.clone().unwrap_or_else(|| url.to_string());
        Ok(EndpointJudge {
            scorer: crate::EndpointScorer::new(url, model, api_key)?,
            name,
        })
    }
}

/// Reads an OpenAI chat answer into a [`JudgeReply`].
pub fn chat_reply(v: &Value) -> Option<JudgeReply> {
    let c = v.get("choices")?.get(0)?;
    let text = c.pointer("/message/content")?.as_str()?.to_string();
    let tokens = c
        .pointer("/logprobs/content")
        .and_then(Value::as_array)
        .map(|toks| {
            toks.iter()
                .map(|t| {
                    let tok = t
                        .get("token")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    let alts = t
                        .get("top_logprobs")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| {
                                    Some((
                                        x.get("token")?.as_str()?.to_string(),
                                        x.get("logprob")?.as_f64()?,
                                    ))
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (tok, alts)
                })
                .collect()
        })
        .unwrap_or_default();
    Some(JudgeReply { text, tokens })
}

impl JudgeModel for EndpointJudge {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn complete(&mut self, calls: &[JudgeCall]) -> Result<Vec<JudgeReply>> {
        let bodies = calls
            .iter()
            .map(|c| {
                let mut messages = vec![json!({"role": "user", "content": c.user})];
                if !c.system.is_empty() {
                    messages.insert(0, json!({"role": "system", "content": c.system}));
                }
                let mut b = json!({
                    "messages": messages,
                    "max_tokens": c.max_tokens, "temperature": 0.0,
                });
                if c.top_logprobs > 0 {
                    b["logprobs"] = json!(true);
                    b["top_logprobs"] = json!(c.top_logprobs);
                }
                b
            })
            .collect();
        let answers = self.scorer.post_all("/v1/chat/completions", bodies)?;
        answers
            .iter()
            .map(|a| {
                chat_reply(a).ok_or_else(|| EvalError::Endpoint {
                    url: self.name.clone(),
                    message: "the answer has no choices[0].message.content".into(),
                })
            })
            .collect()
    }
}

/// A judge running in this process: the engine batches the calls (chat template of
/// the model, greedy, logprobs when asked).
pub struct LocalJudge {
    engine: hangar_engine::Engine,
    name: String,
}

impl LocalJudge {
    pub fn new(lm: hangar_engine::LoadedModel, name: String) -> Result<Self> {
        let engine = hangar_engine::Engine::start(lm, hangar_engine::EngineConfig::default())?;
        Ok(LocalJudge { engine, name })
    }
}

impl JudgeModel for LocalJudge {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn complete(&mut self, calls: &[JudgeCall]) -> Result<Vec<JudgeReply>> {
        use hangar_engine::chat::ChatMessage;
        use hangar_engine::{GenerateRequest, TokenEvent};
        let max_len = self.engine.info().max_model_len;
        let mut rxs = Vec::with_capacity(calls.len());
        for c in calls {
            let mut msgs = vec![ChatMessage::new("user", &c.user)];
            if !c.system.is_empty() {
                msgs.insert(0, ChatMessage::new("system", &c.system));
            }
            let prompt = self
                .engine
                .encode_chat(&msgs)
                .map_err(|e| EvalError::Invalid(format!("cannot render the judge prompt: {e}")))?;
            let room = max_len.saturating_sub(prompt.len() + 1);
            let mut req = GenerateRequest::greedy(prompt, c.max_tokens.min(room).max(1));
            if c.top_logprobs > 0 {
                req.logprobs = Some(c.top_logprobs);
            }
            rxs.push(self.engine.submit(req)?.1);
        }
        let mut out = Vec::with_capacity(rxs.len());
        for mut rx in rxs {
            let mut r = JudgeReply::default();
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    TokenEvent::Token(t) => {
                        r.text.push_str(&t.text);
                        if !t.top_logprobs.is_empty() {
                            let alts = t
                                .top_logprobs
                                .iter()
                                .map(|a| (a.token.clone(), f64::from(a.logprob)))
                                .collect();
                            r.tokens.push((t.token.clone(), alts));
                        }
                    }
                    TokenEvent::Done { text, .. } => {
                        r.text.push_str(&text);
                        break;
                    }
                    TokenEvent::Error(e) => {
                        return Err(EvalError::Invalid(format!("the judge failed: {e}")))
                    }
                    TokenEvent::PromptLogprobs(_) => {}
                }
            }
            out.push(r);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratings_and_verdicts_parse_like_mt_bench() {
        assert_eq!(parse_rating("Good answer. Rating: [[8]]"), Some(8.0));
        assert_eq!(parse_rating("Rating: [[ 7.5 ]]"), Some(7.5));
        assert_eq!(parse_rating("[[11]] is not a rating"), None);
        assert_eq!(parse_rating("no mark"), None);
        assert_eq!(parse_verdict("A is clearer. [[A]]"), Some(Verdict::A));
        assert_eq!(parse_verdict("[[C]]"), Some(Verdict::Tie));
        assert_eq!(parse_verdict("[[A]] or [[B]]?"), None);
        assert_eq!(parse_verdict("A wins"), None);
    }

    #[test]
    fn weighted_rating_reads_the_rating_token() {
        let r = JudgeReply {
            text: "Rating: [[8]]".into(),
            tokens: vec![
                ("Rating".into(), vec![]),
                (": [[".into(), vec![]),
                (
                    "8".into(),
                    vec![
                        ("8".into(), (0.5f64).ln()),
                        ("6".into(), (0.25f64).ln()),
                        ("x".into(), (0.25f64).ln()),
                    ],
                ),
                ("]]".into(), vec![]),
            ],
        };
        // 8 * 2/3 + 6 * 1/3 (the non-rating alternative is dropped).
        assert!((weighted_rating(&r).unwrap() - 22.0 / 3.0).abs() < 1e-9);
        assert_eq!(weighted_rating(&JudgeReply::default()), None);
    }

    /// A scripted judge: answers by matching the prompt, counts calls.
    struct Scripted {
        calls: usize,
    }
    impl JudgeModel for Scripted {
        fn name(&self) -> String {
            "scripted".into()
        }
        fn complete(&mut self, calls: &[JudgeCall]) -> Result<Vec<JudgeReply>> {
            self.calls += calls.len();
            Ok(calls
                .iter()
                .map(|c| {
                    let a_pos = c.user.find("Assistant A's Answer]\n").unwrap_or(0);
                    let shown_a = &c.user[a_pos..];
                    let text = if c.user.contains("garbled") {
                        "I cannot decide.".to_string()
                    } else if c.user.contains("biased")
                        || shown_a.starts_with("Assistant A's Answer]\ngood")
                    {
                        // "biased" always picks the first answer: inconsistent orders.
                        "[[A]]".to_string()
                    } else {
                        "[[B]]".to_string()
                    };
                    JudgeReply {
                        text,
                        tokens: vec![],
                    }
                })
                .collect())
        }
    }

    #[test]
    fn pairs_are_judged_in_both_orders_and_cached() {
        let items = vec![
            JudgeItem::Pairwise {
                question: "q1".into(),
                answer_a: "good".into(),
                answer_b: "bad".into(),
            },
            JudgeItem::Pairwise {
                question: "q2".into(),
                answer_a: "bad".into(),
                answer_b: "good".into(),
            },
            JudgeItem::Pairwise {
                question: "biased".into(),
                answer_a: "x".into(),
                answer_b: "y".into(),
            },
            JudgeItem::Pairwise {
                question: "garbled".into(),
                answer_a: "x".into(),
                answer_b: "y".into(),
            },
        ];
        let dir = std::env::temp_dir().join(format!("hangar-judge-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = JudgeOptions {
            cache_dir: Some(dir.clone()),
            ..Default::default()
        };
        let mut j = Scripted { calls: 0 };
        let (r, hits, misses) = judge(&mut j, &items, &opts).unwrap();
        assert_eq!((hits, misses, j.calls), (0, 8, 8));
        assert_eq!(r.metrics["wins_a"], 1.0);
        assert_eq!(r.metrics["wins_b"], 1.0);
        assert_eq!(r.metrics["ties"], 1.0);
        assert_eq!(r.metrics["inconsistent"], 1.0);
        assert_eq!(r.metrics["unparseable"], 1.0);
        assert!((r.metrics["win_rate_a"] - 0.5).abs() < 1e-12);
        // Again: every call comes from the cache.
        let (r2, hits, misses) = judge(&mut j, &items, &opts).unwrap();
        assert_eq!((hits, misses, j.calls), (8, 0, 8));
        assert_eq!(r2.metrics, r.metrics);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
