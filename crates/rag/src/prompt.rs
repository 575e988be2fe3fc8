//! The RAG prompt: a versioned template (name, version, Jinja text) rendered with the
//! question and the numbered retrieved passages into the user message the model sees.
//! A small value passed in, so a prompt registry can supply it; no storage here.

use crate::error::{RagError, Result};
use crate::retrieve::Passage;
use serde::Serialize;

/// A prompt template, identified by name and version. Variables: `question` (string)
/// and `passages` (list of `{n, source, chunk, score, text}`, `n` counting from 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PromptTemplate {
    pub name: String,
    pub version: u32,
    pub text: String,
}

/// The built-in template's text.
const BUILTIN_TEXT: &str = "\
Answer the question using only the numbered sources below. Cite the sources you use \
as [1], [2] and so on, right after the facts they support. If the sources do not \
contain the answer, say that you do not know.

{% for p in passages %}[{{ p.n }}] (from {{ p.source }})
{{ p.text }}

{% endfor %}Question: {{ question }}";

#[derive(Serialize)]
struct PassageVars<'a> {
    n: usize,
    source: &'a str,
    chunk: u64,
    score: f32,
    text: &'a str,
}

impl PromptTemplate {
    /// Name of the built-in template.
    pub const BUILTIN_NAME: &'static str = "hangar-rag";
    /// Version of the built-in template.
    pub const BUILTIN_VERSION: u32 = 1;

    /// The built-in template, `hangar-rag@1`.
    pub fn builtin() -> PromptTemplate {
        PromptTemplate {
            name: Self::BUILTIN_NAME.into(),
            version: Self::BUILTIN_VERSION,
            text: BUILTIN_TEXT.into(),
        }
    }

    /// `name@version`, as logged with answers.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    /// Renders the user message for a question and its passages (numbered in order).
    pub fn render(&self, question: &str, passages: &[Passage]) -> Result<String> {
        let fail = |e: minijinja::Error| RagError::Template {
            name: self.name.clone(),
            version: self.version,
            why: e.to_string(),
        };
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(1_000_000));
        env.add_template("rag", &self.text).map_err(fail)?;
        let vars: Vec<PassageVars> = passages
            .iter()
            .enumerate()
            .map(|(i, p)| PassageVars {
                n: i + 1,
                source: &p.source,
                chunk: p.chunk,
                score: p.score,
                text: &p.text,
            })
            .collect();
        env.get_template("rag")
            .map_err(fail)?
            .render(minijinja::context! { question => question, passages => minijinja::Value::from(minijinja::value::Serde(&vars)) })
            .map_err(fail)
    }
}

impl Default for PromptTemplate {
    fn default() -> Self {
        Self::builtin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_vector::PointId;

    fn passage(source: &str, text: &str) -> Passage {
        Passage {
            id: PointId::Num(1),
            source: source.into(),
            chunk: 0,
            start: 0,
            end: text.len(),
            score: 0.5,
            text: text.into(),
        }
    }

    #[test]
    fn builtin_numbers_sources_and_asks_for_citations() {
        let t = PromptTemplate::builtin();
        assert_eq!(t.id(), "hangar-rag@1");
        let p = t
            .render(
                "What is X?",
                &[passage("a.md", "X is one."), passage("b.md", "Y is two.")],
            )
            .unwrap();
        assert!(p.contains("[1] (from a.md)\nX is one."), "{p}");
        assert!(p.contains("[2] (from b.md)\nY is two."), "{p}");
        assert!(p.contains("as [1], [2]"), "{p}");
        assert!(p.ends_with("Question: What is X?"), "{p}");
    }

    #[test]
    fn broken_templates_name_themselves() {
        let t = PromptTemplate {
            name: "mine".into(),
            version: 3,
            text: "{% for %}".into(),
        };
        let e = t.render("q", &[]).unwrap_err().to_string();
        assert!(e.starts_with("prompt template mine@3:"), "{e}");
    }
}
