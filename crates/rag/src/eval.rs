//! RAG evaluation over a shipped corpus: a hand-written question set (each question
//! with the file and the exact passage that answers it), scored as retrieval hit rate@k
//! (a hit: a retrieved chunk of the right file overlapping the passage's bytes) and
//! mean reciprocal rank; optionally answer faithfulness, rated 1–10 by the judge
//! (`hangar-eval`'s [`JudgeModel`]) against the retrieved sources. Results are
//! `hangar-eval` [`EvalResult`]s, so they log as tracking runs like every evaluation.

use crate::error::{RagError, Result};
use crate::prompt::PromptTemplate;
use crate::retrieve::Passage;
use hangar_eval::judge::{parse_rating, CachedJudge, JudgeCall, JudgeModel};
use hangar_eval::metrics::{bootstrap_ci, mean};
use hangar_eval::EvalResult;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;

/// One question of the set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RagQuestion {
    pub question: String,
    /// The answering file, relative to the corpus folder.
    pub source: String,
    /// Text copied verbatim from that file that answers the question.
    pub passage: String,
    /// Where `passage` is in the file (filled by [`load_questions`]).
    #[serde(skip)]
    pub span: (usize, usize),
}

/// Reads a question set (JSON lines `{question, source, passage}`) and locates every
/// passage in `corpus`; a passage not found verbatim is an error naming the line.
pub fn load_questions(path: &Path, corpus: &Path) -> Result<Vec<RagQuestion>> {
    let text = std::fs::read_to_string(path).map_err(|e| RagError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad =
            |why: String| RagError::Invalid(format!("{} line {}: {why}", path.display(), i + 1));
        let mut q: RagQuestion = serde_json::from_str(line)
            .map_err(|e| bad(format!("expected {{question, source, passage}} ({e})")))?;
        let file = corpus.join(&q.source);
        let doc = std::fs::read_to_string(&file).map_err(|e| RagError::io(&file, e))?;
        let at = doc.find(&q.passage).ok_or_else(|| {
            bad(format!(
                "the passage is not in {} verbatim; copy it from the file",
                file.display()
            ))
        })?;
        q.span = (at, at + q.passage.len());
        out.push(q);
    }
    if out.is_empty() {
        return Err(RagError::Invalid(format!(
            "{}: no questions",
            path.display()
        )));
    }
    Ok(out)
}

/// The 1-based rank of the first passage that answers `q`, if any.
pub fn hit_rank(q: &RagQuestion, passages: &[Passage]) -> Option<usize> {
    passages
        .iter()
        .position(|p| p.source == q.source && p.start < q.span.1 && q.span.0 < p.end)
        .map(|i| i + 1)
}

/// Retrieval metrics: `hit_rate_at_k` (a chunk overlapping the passage in the top k)
/// and `source_hit_rate_at_k` (any chunk of the right file) for each k, `mrr` (over
/// the passages given), per question rows with the rank and the retrieved sources.
pub fn retrieval_result(
    questions: &[RagQuestion],
    retrieved: &[Vec<Passage>],
    ks: &[usize],
    params: BTreeMap<String, String>,
) -> EvalResult {
    let ranks: Vec<Option<usize>> = questions
        .iter()
        .zip(retrieved)
        .map(|(q, ps)| hit_rank(q, ps))
        .collect();
    let mut metrics = BTreeMap::new();
    for &k in ks {
        let hits: Vec<f64> = ranks
            .iter()
            .map(|r| f64::from(u8::from(r.is_some_and(|r| r <= k))))
            .collect();
        metrics.insert(format!("hit_rate_at_{k}"), mean(&hits));
        let file_hits: Vec<f64> = questions
            .iter()
            .zip(retrieved)
            .map(|(q, ps)| f64::from(u8::from(ps.iter().take(k).any(|p| p.source == q.source))))
            .collect();
        metrics.insert(format!("source_hit_rate_at_{k}"), mean(&file_hits));
    }
    let rr: Vec<f64> = ranks
        .iter()
        .map(|r| r.map_or(0.0, |r| 1.0 / r as f64))
        .collect();
    metrics.insert("mrr".into(), mean(&rr));
    metrics.insert("items".into(), questions.len() as f64);
    let items = questions
        .iter()
        .zip(retrieved)
        .zip(&ranks)
        .enumerate()
        .map(|(i, ((q, ps), r))| {
            json!({
                "index": i, "question": q.question, "source": q.source, "rank": r,
                "retrieved": ps.iter().map(|p| json!({
                    "source": p.source, "chunk": p.chunk, "score": p.score,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    EvalResult {
        task: "rag".into(),
        kind: "rag_retrieval".into(),
        params,
        metrics,
        items,
    }
}

const FAITHFULNESS_SYSTEM: &str = "You are a careful and impartial reviewer. You are given \
numbered sources, a question, and an AI assistant's answer that should be based only on those \
sources. Judge faithfulness: is every claim in the answer supported by the sources, without \
invented facts? An answer that says the sources do not contain the answer is faithful when \
that is true. Begin with a short, objective explanation. Then give a score from 1 (mostly \
unsupported) to 10 (fully supported), written exactly in this form: \"Rating: [[7]]\".";

const ANSWER_SYSTEM: &str = "You are a helpful assistant that answers from the sources given.";

/// Options of the faithfulness pass.
#[derive(Debug, Clone)]
pub struct FaithfulnessOptions {
    /// Tokens of each generated answer.
    pub answer_tokens: usize,
    /// Tokens of each judgement.
    pub judge_tokens: usize,
    /// Where answers and judgements are cached (`None`: not cached).
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for FaithfulnessOptions {
    fn default() -> Self {
        FaithfulnessOptions {
            answer_tokens: 128,
            judge_tokens: 256,
            cache_dir: None,
        }
    }
}

/// Sources as the judge reads them.
fn numbered(passages: &[Passage]) -> String {
    passages
        .iter()
        .enumerate()
        .map(|(i, p)| format!("[{}] {}\n{}", i + 1, p.source, p.text))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Whether an answer starts by copying the prompt (a small model's failure mode): its
/// first 60 characters appear verbatim in `prompt`.
pub fn echoes(answer: &str, prompt: &str) -> bool {
    let head: String = answer.trim().chars().take(60).collect();
    head.chars().count() >= 20 && prompt.contains(&head)
}

/// Whether an answer cites a source as `[n]` with `1 <= n <= sources`.
pub fn cites(answer: &str, sources: usize) -> bool {
    (1..=sources).any(|n| answer.contains(&format!("[{n}]")))
}

/// Generates an answer per question with `generator` from the template and the
/// retrieved passages, has `judge` (`None`: the generator itself) rate its
/// faithfulness to them, and adds
/// `faithfulness_mean_rating` (1–10, with a bootstrap interval), `faithful_share`
/// (rated 7 or more), `echoed_share` (answers that begin by copying the prompt),
/// `cited_share` (answers, not echoes, citing a source as `[n]`),
/// `faithfulness_unparseable` and per-row `answer`, `faithfulness` to `result`.
pub fn add_faithfulness<'a>(
    result: &mut EvalResult,
    questions: &[RagQuestion],
    retrieved: &[Vec<Passage>],
    template: &PromptTemplate,
    generator: &'a mut dyn JudgeModel,
    judge: Option<&'a mut dyn JudgeModel>,
    opts: &FaithfulnessOptions,
) -> Result<()> {
    let mut calls = Vec::with_capacity(questions.len());
    for (q, ps) in questions.iter().zip(retrieved) {
        calls.push(JudgeCall {
            system: ANSWER_SYSTEM.into(),
            user: template.render(&q.question, ps)?,
            max_tokens: opts.answer_tokens,
            top_logprobs: 0,
        });
    }
    let generator_name = generator.name();
    let answers = CachedJudge::new(generator, opts.cache_dir.clone()).complete(&calls)?;
    let judge_calls: Vec<JudgeCall> = questions
        .iter()
        .zip(retrieved)
        .zip(&answers)
        .map(|((q, ps), a)| JudgeCall {
            system: FAITHFULNESS_SYSTEM.into(),
            user: format!(
                "[Sources]\n{}\n\n[Question]\n{}\n\n[The Start of the Assistant's Answer]\n{}\n[The End of the Assistant's Answer]",
                numbered(ps),
                q.question,
                a.text.trim()
            ),
            max_tokens: opts.judge_tokens,
            top_logprobs: 0,
        })
        .collect();
    let judge = match judge {
        Some(j) => j,
        None => generator,
    };
    let judge_name = judge.name();
    let verdicts = CachedJudge::new(judge, opts.cache_dir.clone()).complete(&judge_calls)?;
    let mut ratings = Vec::new();
    let mut cited = Vec::new();
    let mut echoed = Vec::new();
    for (i, (((a, v), ps), call)) in answers
        .iter()
        .zip(&verdicts)
        .zip(retrieved)
        .zip(&calls)
        .enumerate()
    {
        let r = parse_rating(&v.text);
        ratings.extend(r);
        let echo = echoes(&a.text, &call.user) || echoes(&a.text, &call.system);
        echoed.push(f64::from(u8::from(echo)));
        cited.push(f64::from(u8::from(!echo && cites(&a.text, ps.len()))));
        if let Some(row) = result.items.get_mut(i) {
            row["answer"] = json!(a.text.trim());
            row["faithfulness"] = json!(r);
            row["judgement"] = json!(v.text);
        }
    }
    let (lo, hi) = bootstrap_ci(&ratings, 1000, 17);
    let m = &mut result.metrics;
    m.insert("faithfulness_mean_rating".into(), mean(&ratings));
    m.insert("faithfulness_ci_low".into(), lo);
    m.insert("faithfulness_ci_high".into(), hi);
    let faithful: Vec<f64> = ratings
        .iter()
        .map(|r| f64::from(u8::from(*r >= 7.0)))
        .collect();
    m.insert("faithful_share".into(), mean(&faithful));
    m.insert("cited_share".into(), mean(&cited));
    m.insert("echoed_share".into(), mean(&echoed));
    m.insert(
        "faithfulness_unparseable".into(),
        (questions.len() - ratings.len()) as f64,
    );
    result.params.insert("generator".into(), generator_name);
    result.params.insert("judge".into(), judge_name);
    result
        .params
        .insert("prompt_template".into(), template.id());
    result.kind = "rag_retrieval_faithfulness".into();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_vector::PointId;

    fn p(source: &str, start: usize, end: usize) -> Passage {
        Passage {
            id: PointId::Num(0),
            source: source.into(),
            chunk: 0,
            start,
            end,
            score: 0.0,
            text: String::new(),
        }
    }

    #[test]
    fn a_hit_is_the_right_file_overlapping_the_passage() {
        let q = RagQuestion {
            question: "q".into(),
            source: "a.md".into(),
            passage: "x".into(),
            span: (100, 150),
        };
        assert_eq!(
            hit_rank(&q, &[p("b.md", 100, 150), p("a.md", 140, 400)]),
            Some(2)
        );
        assert_eq!(
            hit_rank(&q, &[p("a.md", 0, 100), p("a.md", 150, 200)]),
            None
        );
        let r = retrieval_result(
            &[q.clone(), q],
            &[
                vec![p("a.md", 0, 120)],
                vec![p("b.md", 0, 1), p("a.md", 0, 120)],
            ],
            &[1, 3],
            BTreeMap::new(),
        );
        assert_eq!(r.metrics["hit_rate_at_1"], 0.5);
        assert_eq!(r.metrics["hit_rate_at_3"], 1.0);
        assert_eq!(r.metrics["mrr"], 0.75);
        assert_eq!(r.metrics["source_hit_rate_at_1"], 0.5);
    }

    #[test]
    fn echoes_are_answers_that_copy_the_prompt() {
        let prompt = "Answer the question using only the numbered sources below.";
        assert!(echoes(
            "Answer the question using only the numbered sources",
            prompt
        ));
        assert!(!echoes("The roles are reader and admin [1].", prompt));
        assert!(!echoes("Answer", prompt));
    }

    #[test]
    fn citations_are_bracketed_source_numbers() {
        assert!(cites("It is red [2].", 3));
        assert!(!cites("It is red [4].", 3));
        assert!(!cites("It is red.", 3));
    }
}
