//! MLflow's search grammar, parsed into plain clauses: filter strings
//! (`metrics.acc > 0.5 and params.lr = '0.1' and tags.`my tag` LIKE '%x%'`) and
//! order-by clauses (`metrics.acc DESC`). Knows no SQL; `search.rs` turns clauses
//! into queries.
//!
//! Grammar: `clause (AND clause)*`; a clause is `key comparator value` where key is
//! `[entity.]name` (entity `metric(s)`, `param(s)`/`parameter(s)`, `tag(s)`,
//! `attribute(s)`/`attr`/`run`; no entity = attribute), the name bare or quoted with
//! backticks or double quotes; comparators `= != <> < <= > >= LIKE ILIKE IN NOT IN`;
//! values are numbers, 'single' or "double" quoted strings, or `('a', 'b')` lists.

use crate::error::{invalid, Result};

/// What a key refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Metric,
    Param,
    Tag,
    Attribute,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Like,
    ILike,
    In,
    NotIn,
}

impl Comparator {
    pub fn is_numeric(self) -> bool {
        matches!(
            self,
            Comparator::Eq
                | Comparator::Ne
                | Comparator::Lt
                | Comparator::Le
                | Comparator::Gt
                | Comparator::Ge
        )
    }
    pub fn sql(self) -> &'static str {
        match self {
            Comparator::Eq => "=",
            Comparator::Ne => "!=",
            Comparator::Lt => "<",
            Comparator::Le => "<=",
            Comparator::Gt => ">",
            Comparator::Ge => ">=",
            Comparator::Like => "LIKE",
            Comparator::ILike => "LIKE",
            Comparator::In => "IN",
            Comparator::NotIn => "NOT IN",
        }
    }
}

/// A literal on the right of a comparator.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Number(f64),
    Str(String),
    List(Vec<String>),
}

/// One `key comparator value` clause.
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub entity: Entity,
    pub key: String,
    pub comparator: Comparator,
    pub value: Value,
}

/// One order-by term.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderBy {
    pub entity: Entity,
    pub key: String,
    pub ascending: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word, possibly `entity.name` or ending in `.` before a quoted name.
    Word(String),
    /// `'..'` or `".."`.
    Str(String),
    /// `` `..` ``
    Quoted(String),
    Num(f64),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn lex(s: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1
            }
            '\'' | '"' | '`' => {
                let mut j = i + 1;
                let mut text = String::new();
                loop {
                    if j >= chars.len() {
                        return Err(invalid(format!(
                            "invalid filter {s:?}: unterminated {c}quoted{c} string"
                        )));
                    }
                    if chars[j] == c {
                        // A doubled quote inside a string is one quote.
                        if c != '`' && j + 1 < chars.len() && chars[j + 1] == c {
                            text.push(c);
                            j += 2;
                            continue;
                        }
                        break;
                    }
                    text.push(chars[j]);
                    j += 1;
                }
                out.push(if c == '`' {
                    Tok::Quoted(text)
                } else {
                    Tok::Str(text)
                });
                i = j + 1;
            }
            '=' => {
                out.push(Tok::Op("="));
                i += if chars.get(i + 1) == Some(&'=') { 2 } else { 1 };
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Tok::Op("!="));
                i += 2
            }
            '<' | '>' => {
                let next = chars.get(i + 1).copied();
                let op = match (c, next) {
                    ('<', Some('=')) => "<=",
                    ('<', Some('>')) => "!=",
                    ('>', Some('=')) => ">=",
                    ('<', _) => "<",
                    _ => ">",
                };
                out.push(Tok::Op(op));
                i += op.len(); // `<>` and "!=" are both two characters
            }
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+' || c == '.')
                    && chars
                        .get(i + 1)
                        .is_some_and(|d| d.is_ascii_digit() || *d == '.')) =>
            {
                let mut j = i + 1;
                while j < chars.len()
                    && (chars[j].is_ascii_alphanumeric()
                        || chars[j] == '.'
                        || ((chars[j] == '-' || chars[j] == '+')
                            && matches!(chars[j - 1], 'e' | 'E')))
                {
                    j += 1;
                }
                let text: String = chars[i..j].iter().collect();
                let v = text.parse::<f64>().map_err(|_| {
                    invalid(format!("invalid filter {s:?}: {text:?} is not a number"))
                })?;
                out.push(Tok::Num(v));
                i = j;
            }
            c if c.is_alphanumeric() || c == '_' => {
                let mut j = i;
                while j < chars.len()
                    && (chars[j].is_alphanumeric()
                        || matches!(chars[j], '_' | '.' | '-' | '/' | ':'))
                {
                    j += 1;
                }
                out.push(Tok::Word(chars[i..j].iter().collect()));
                i = j;
            }
            other => {
                return Err(invalid(format!(
                    "invalid filter {s:?}: unexpected character {other:?} at position {i}"
                )))
            }
        }
    }
    Ok(out)
}

fn entity_of(prefix: &str) -> Option<Entity> {
    Some(match prefix.to_ascii_lowercase().as_str() {
        "metric" | "metrics" => Entity::Metric,
        "param" | "params" | "parameter" | "parameters" => Entity::Param,
        "tag" | "tags" => Entity::Tag,
        "attribute" | "attributes" | "attr" | "run" => Entity::Attribute,
        _ => return None,
    })
}

/// Attributes a run can be filtered and ordered on; numeric ones compare as numbers.
pub const STRING_ATTRIBUTES: &[&str] = &[
    "run_id",
    "run_name",
    "status",
    "user_id",
    "artifact_uri",
    "lifecycle_stage",
];
pub const NUMERIC_ATTRIBUTES: &[&str] = &["start_time", "end_time", "created"];

struct Parser<'a> {
    toks: Vec<Tok>,
    pos: usize,
    src: &'a str,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn err(&self, what: &str) -> crate::TrackError {
        invalid(format!("invalid filter {:?}: {what}", self.src))
    }
    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    /// `[entity.]name`, `` entity.`name` ``, `` `name` ``.
    fn key(&mut self) -> Result<(Entity, String)> {
        match self.next() {
            Some(Tok::Word(w)) => {
                if let Some((prefix, rest)) = w.split_once('.') {
                    let Some(entity) = entity_of(prefix) else {
                        if prefix.eq_ignore_ascii_case("dataset")
                            || prefix.eq_ignore_ascii_case("datasets")
                        {
                            return Err(self.err("dataset filters are not supported"));
                        }
                        return Err(self.err(&format!(
                            "unknown entity {prefix:?} in {w:?}; use metrics., params., tags. or attributes."
                        )));
                    };
                    if rest.is_empty() {
                        return match self.next() {
                            Some(Tok::Quoted(k)) | Some(Tok::Str(k)) => Ok((entity, k)),
                            _ => Err(self.err(&format!("expected a key name after {w:?}"))),
                        };
                    }
                    Ok((entity, rest.to_string()))
                } else {
                    Ok((Entity::Attribute, w))
                }
            }
            Some(Tok::Quoted(k)) => Ok((Entity::Attribute, k)),
            other => Err(self.err(&format!("expected a key, found {other:?}"))),
        }
    }

    fn comparator(&mut self) -> Result<Comparator> {
        let c = match self.next() {
            Some(Tok::Op(op)) => match op {
                "=" => Comparator::Eq,
                "!=" => Comparator::Ne,
                "<" => Comparator::Lt,
                "<=" => Comparator::Le,
                ">" => Comparator::Gt,
                _ => Comparator::Ge,
            },
            Some(Tok::Word(w)) => match w.to_ascii_uppercase().as_str() {
                "LIKE" => Comparator::Like,
                "ILIKE" => Comparator::ILike,
                "IN" => Comparator::In,
                "NOT" if self.is_word("IN") => {
                    self.pos += 1;
                    Comparator::NotIn
                }
                _ => return Err(self.err(&format!("expected a comparator, found {w:?}"))),
            },
            other => return Err(self.err(&format!("expected a comparator, found {other:?}"))),
        };
        Ok(c)
    }

    fn value(&mut self, list: bool) -> Result<Value> {
        if list {
            if self.next() != Some(Tok::LParen) {
                return Err(self.err("IN needs a parenthesised list, e.g. ('a', 'b')"));
            }
            let mut items = Vec::new();
            loop {
                match self.next() {
                    Some(Tok::Str(s)) => items.push(s),
                    other => {
                        return Err(
                            self.err(&format!("IN lists hold quoted strings; found {other:?}"))
                        )
                    }
                }
                match self.next() {
                    Some(Tok::Comma) => continue,
                    Some(Tok::RParen) => break,
                    _ => return Err(self.err("unterminated IN list; close it with ')'")),
                }
            }
            return Ok(Value::List(items));
        }
        match self.next() {
            Some(Tok::Num(n)) => Ok(Value::Number(n)),
            Some(Tok::Str(s)) => Ok(Value::Str(s)),
            other => Err(self.err(&format!(
                "expected a number or a quoted string, found {other:?}"
            ))),
        }
    }
}

/// Checks that a clause makes sense for its entity (metrics compare numbers, params
/// and tags compare strings, attributes by their kind).
fn check(clause: &Clause, src: &str, strings: &[&str], numbers: &[&str]) -> Result<()> {
    let bad = |why: String| Err(invalid(format!("invalid filter {src:?}: {why}")));
    let c = clause.comparator;
    let numeric_value = matches!(clause.value, Value::Number(_));
    match clause.entity {
        Entity::Metric => {
            if !c.is_numeric() || !numeric_value {
                return bad(format!(
                    "metric {:?} compares with = != < <= > >= against a number",
                    clause.key
                ));
            }
        }
        Entity::Param | Entity::Tag => {
            if numeric_value
                || matches!(
                    c,
                    Comparator::Lt | Comparator::Le | Comparator::Gt | Comparator::Ge
                )
            {
                return bad(format!(
                    "{:?} compares with = != LIKE ILIKE IN NOT IN against a quoted string",
                    clause.key
                ));
            }
        }
        Entity::Attribute => {
            let key = clause.key.as_str();
            if numbers.contains(&key) {
                if !c.is_numeric() || !numeric_value {
                    return bad(format!(
                        "attribute {key:?} compares with = != < <= > >= against a number"
                    ));
                }
            } else if strings.contains(&key) {
                if numeric_value
                    || matches!(
                        c,
                        Comparator::Lt | Comparator::Le | Comparator::Gt | Comparator::Ge
                    )
                {
                    return bad(format!(
                        "attribute {key:?} compares with = != LIKE ILIKE IN NOT IN against a quoted string"
                    ));
                }
            } else {
                return bad(format!(
                    "unknown attribute {key:?}; use one of {} (or prefix metrics., params., tags.)",
                    [strings, numbers].concat().join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Parses a run filter string; the empty string is no filter.
pub fn parse_filter(src: &str) -> Result<Vec<Clause>> {
    parse_filter_with(src, STRING_ATTRIBUTES, NUMERIC_ATTRIBUTES)
}

/// Parses a filter whose attributes are `strings` (compared as text) and `numbers`.
pub fn parse_filter_with(src: &str, strings: &[&str], numbers: &[&str]) -> Result<Vec<Clause>> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, src };
    let mut out = Vec::new();
    if p.peek().is_none() {
        return Ok(out);
    }
    loop {
        let (entity, key) = p.key()?;
        let comparator = p.comparator()?;
        let value = p.value(matches!(comparator, Comparator::In | Comparator::NotIn))?;
        let clause = Clause {
            entity,
            key,
            comparator,
            value,
        };
        check(&clause, src, strings, numbers)?;
        out.push(clause);
        match p.next() {
            None => return Ok(out),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => continue,
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("or") => {
                return Err(p.err("OR is not supported; combine clauses with AND"))
            }
            Some(t) => return Err(p.err(&format!("expected AND or the end, found {t:?}"))),
        }
    }
}

/// Parses one order-by term: `[entity.]key [ASC|DESC]`.
pub fn parse_order_by(src: &str) -> Result<OrderBy> {
    let toks = lex(src)?;
    let mut p = Parser { toks, pos: 0, src };
    let (entity, key) = p
        .key()
        .map_err(|_| invalid(format!("invalid order_by {src:?}: expected `[metrics.|params.|tags.|attributes.]key [ASC|DESC]`")))?;
    let ascending = match p.next() {
        None => true,
        Some(Tok::Word(w)) if w.eq_ignore_ascii_case("asc") => true,
        Some(Tok::Word(w)) if w.eq_ignore_ascii_case("desc") => false,
        Some(t) => {
            return Err(invalid(format!(
                "invalid order_by {src:?}: expected ASC or DESC, found {t:?}"
            )))
        }
    };
    if p.peek().is_some() {
        return Err(invalid(format!(
            "invalid order_by {src:?}: one key and a direction per clause"
        )));
    }
    if entity == Entity::Attribute
        && !STRING_ATTRIBUTES.contains(&key.as_str())
        && !NUMERIC_ATTRIBUTES.contains(&key.as_str())
    {
        return Err(invalid(format!(
            "invalid order_by {src:?}: unknown attribute {key:?}"
        )));
    }
    Ok(OrderBy {
        entity,
        key,
        ascending,
    })
}

/// SQL `LIKE` matching of `text` against `pattern` (`%` any run, `_` one character),
/// case-insensitive for ILIKE; for filters evaluated outside SQL.
pub fn like_match(pattern: &str, text: &str, case_insensitive: bool) -> bool {
    let norm = |s: &str| {
        if case_insensitive {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let p: Vec<char> = norm(pattern).chars().collect();
    let t: Vec<char> = norm(text).chars().collect();
    // dp[j]: pattern[..i] matches text[..j]
    let mut dp = vec![false; t.len() + 1];
    dp[0] = true;
    for &pc in &p {
        let mut next = vec![false; t.len() + 1];
        if pc == '%' {
            let mut any = false;
            for j in 0..=t.len() {
                any |= dp[j];
                next[j] = any;
            }
        } else {
            for j in 1..=t.len() {
                next[j] = dp[j - 1] && (pc == '_' || pc == t[j - 1]);
            }
        }
        dp = next;
    }
    dp[t.len()]
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_matches_sql_semantics() {
        assert!(like_match("a%", "abc", false));
        assert!(like_match("%b%", "abc", false));
        assert!(like_match("a_c", "abc", false));
        assert!(!like_match("A%", "abc", false));
        assert!(like_match("A%", "abc", true));
        assert!(!like_match("a_", "abc", false));
        assert!(like_match("%", "", false));
    }

    use super::*;

    fn one(s: &str) -> Clause {
        let mut c = parse_filter(s).unwrap();
        assert_eq!(c.len(), 1, "{s}");
        c.remove(0)
    }

    #[test]
    fn parses_every_entity_and_comparator() {
        let c = parse_filter(
            "metrics.acc > 0.5 and params.p = 'a' AND tags.t LIKE '%x%' and attributes.status = 'FINISHED'",
        )
        .unwrap();
        assert_eq!(c.len(), 4);
        assert_eq!(
            (c[0].entity, c[0].key.as_str(), c[0].comparator),
            (Entity::Metric, "acc", Comparator::Gt)
        );
        assert_eq!(c[0].value, Value::Number(0.5));
        assert_eq!(
            (c[1].entity, c[1].value.clone()),
            (Entity::Param, Value::Str("a".into()))
        );
        assert_eq!(
            (c[2].entity, c[2].comparator),
            (Entity::Tag, Comparator::Like)
        );
        assert_eq!(
            (c[3].entity, c[3].key.as_str()),
            (Entity::Attribute, "status")
        );
        assert_eq!(one("run_name ILIKE 'x%'").comparator, Comparator::ILike);
        assert_eq!(one("metrics.loss <= -1e-3").value, Value::Number(-1e-3));
        assert_eq!(one("metric.loss != 2").comparator, Comparator::Ne);
        assert_eq!(one("metric.loss <> 2").comparator, Comparator::Ne);
        assert_eq!(
            one("attributes.start_time >= 1700000000000").value,
            Value::Number(1.7e12)
        );
        assert_eq!(
            one("params.opt IN ('adam', \"sgd\")").value,
            Value::List(vec!["adam".into(), "sgd".into()])
        );
        assert_eq!(one("tags.t NOT IN ('a')").comparator, Comparator::NotIn);
    }

    #[test]
    fn quoted_keys_may_hold_spaces_and_dots() {
        let c = one("metrics.`my metric.v2` >= 3");
        assert_eq!((c.entity, c.key.as_str()), (Entity::Metric, "my metric.v2"));
        let c = one("tags.\"mlflow.runName\" = 'x'");
        assert_eq!((c.entity, c.key.as_str()), (Entity::Tag, "mlflow.runName"));
        assert_eq!(one("`run_name` = 'a'").entity, Entity::Attribute);
        assert_eq!(one("tags.mlflow.user = 'me'").key, "mlflow.user");
        assert_eq!(one("params.p = 'it''s'").value, Value::Str("it's".into()));
    }

    #[test]
    fn rejects_malformed_filters_with_a_reason() {
        for bad in [
            "metrics.acc >",
            "metrics.acc > 'x'",
            "params.p > 'a'",
            "metrics.acc > 1 or metrics.b > 2",
            "foo.bar = 'a'",
            "attributes.colour = 'red'",
            "params.p = 'unterminated",
            "params.p IN 'a'",
            "params.p = 'a' metrics.b > 1",
            "metrics.acc ~ 1",
            "datasets.name = 'x'",
        ] {
            let e = parse_filter(bad).unwrap_err();
            assert!(e.to_string().contains("invalid filter"), "{bad}: {e}");
        }
        assert!(parse_filter("").unwrap().is_empty());
        assert!(parse_filter("   ").unwrap().is_empty());
    }

    #[test]
    fn parses_order_by_terms() {
        let o = parse_order_by("metrics.acc DESC").unwrap();
        assert_eq!(
            (o.entity, o.key.as_str(), o.ascending),
            (Entity::Metric, "acc", false)
        );
        let o = parse_order_by("attributes.start_time").unwrap();
        assert_eq!((o.entity, o.ascending), (Entity::Attribute, true));
        let o = parse_order_by("params.`learning rate` asc").unwrap();
        assert_eq!(o.key, "learning rate");
        assert!(parse_order_by("metrics.acc sideways").is_err());
        assert!(parse_order_by("attributes.nope").is_err());
        assert!(parse_order_by("").is_err());
    }
}
