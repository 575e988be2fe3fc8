//! Payload filters in Qdrant's JSON shape (must / should / must_not, match value / any /
//! except / text, range, values_count, is_empty, is_null, has_id, nested) and their
//! evaluation against one point. Pure: no storage, no index, no search.

use crate::error::{Result, VectorError};
use crate::point::{Payload, PointId};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A boolean combination of conditions. Empty lists impose nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub must: Vec<Condition>,
    pub should: Vec<Condition>,
    pub must_not: Vec<Condition>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Field(FieldCondition),
    IsEmpty(String),
    IsNull(String),
    HasId(Vec<PointId>),
    /// Every element of the array at `key` is tested as its own payload.
    Nested {
        key: String,
        filter: Filter,
    },
    Filter(Filter),
}

#[derive(Debug, Clone, PartialEq)]
pub struct FieldCondition {
    pub key: String,
    pub test: FieldTest,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldTest {
    Value(Value),
    Any(Vec<Value>),
    Except(Vec<Value>),
    Text(String),
    Range(Range),
    ValuesCount(Range),
}

/// Bounds; absent ones impose nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Range {
    pub gt: Option<f64>,
    pub gte: Option<f64>,
    pub lt: Option<f64>,
    pub lte: Option<f64>,
}

impl Range {
    pub fn contains(&self, v: f64) -> bool {
        self.gt.is_none_or(|b| v > b)
            && self.gte.is_none_or(|b| v >= b)
            && self.lt.is_none_or(|b| v < b)
            && self.lte.is_none_or(|b| v <= b)
    }
}

fn bad(msg: impl Into<String>) -> VectorError {
    VectorError::Invalid(msg.into())
}

/// Present and not null.
fn field<'a>(o: &'a serde_json::Map<String, Value>, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

fn conditions(v: Option<&Value>) -> Result<Vec<Condition>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(Condition::from_json).collect(),
        Some(one) => Ok(vec![Condition::from_json(one)?]),
    }
}

impl Filter {
    /// Reads Qdrant's filter JSON, with a sentence on what is wrong.
    pub fn from_json(v: &Value) -> Result<Filter> {
        let o = v
            .as_object()
            .ok_or_else(|| bad(format!("a filter must be an object, got {v}")))?;
        for k in o.keys() {
            if !matches!(k.as_str(), "must" | "should" | "must_not" | "min_should") {
                return Err(bad(format!(
                    "unknown filter field {k:?}; use must, should, must_not"
                )));
            }
        }
        if field(o, "min_should").is_some() {
            return Err(bad("min_should is not supported; use should"));
        }
        Ok(Filter {
            must: conditions(o.get("must"))?,
            should: conditions(o.get("should"))?,
            must_not: conditions(o.get("must_not"))?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.should.is_empty() && self.must_not.is_empty()
    }

    /// Whether a point with this id and payload passes.
    pub fn matches(&self, id: PointId, payload: &Payload) -> bool {
        self.must.iter().all(|c| c.matches(id, payload))
            && (self.should.is_empty() || self.should.iter().any(|c| c.matches(id, payload)))
            && !self.must_not.iter().any(|c| c.matches(id, payload))
    }
}

impl<'de> Deserialize<'de> for Filter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Filter::from_json(&v).map_err(serde::de::Error::custom)
    }
}

fn range(v: &Value, what: &str) -> Result<Range> {
    let o = v
        .as_object()
        .ok_or_else(|| bad(format!("{what} must be an object with gt/gte/lt/lte")))?;
    let mut r = Range::default();
    for (k, b) in o {
        if b.is_null() {
            continue;
        }
        let n = b
            .as_f64()
            .ok_or_else(|| bad(format!("{what}.{k} must be a number, got {b}")))?;
        match k.as_str() {
            "gt" => r.gt = Some(n),
            "gte" => r.gte = Some(n),
            "lt" => r.lt = Some(n),
            "lte" => r.lte = Some(n),
            _ => {
                return Err(bad(format!(
                    "unknown {what} bound {k:?}; use gt, gte, lt, lte"
                )))
            }
        }
    }
    Ok(r)
}

fn key_of(v: &Value, what: &str) -> Result<String> {
    v.get("key")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| bad(format!("{what} needs {{\"key\": \"field\"}}")))
}

fn match_values(v: &Value, what: &str) -> Result<Vec<Value>> {
    let a = v.as_array().ok_or_else(|| {
        bad(format!(
            "match.{what} must be a list of keywords or integers"
        ))
    })?;
    for x in a {
        check_match_value(x)?;
    }
    Ok(a.clone())
}

fn check_match_value(x: &Value) -> Result<()> {
    if x.is_string() || x.is_i64() || x.is_u64() || x.is_boolean() {
        Ok(())
    } else {
        Err(bad(format!(
            "match values must be strings, integers or booleans, got {x}; use range for floats"
        )))
    }
}

impl Condition {
    pub fn from_json(v: &Value) -> Result<Condition> {
        let o = v
            .as_object()
            .ok_or_else(|| bad(format!("a filter condition must be an object, got {v}")))?;
        if let Some(ids) = field(o, "has_id") {
            let ids: Vec<PointId> =
                serde_json::from_value(ids.clone()).map_err(|e| bad(format!("has_id: {e}")))?;
            return Ok(Condition::HasId(ids));
        }
        if let Some(e) = field(o, "is_empty") {
            return Ok(Condition::IsEmpty(key_of(e, "is_empty")?));
        }
        if let Some(e) = field(o, "is_null") {
            return Ok(Condition::IsNull(key_of(e, "is_null")?));
        }
        if let Some(n) = field(o, "nested") {
            let key = key_of(n, "nested")?;
            let f = n
                .get("filter")
                .ok_or_else(|| bad("nested needs a filter"))?;
            return Ok(Condition::Nested {
                key,
                filter: Filter::from_json(f)?,
            });
        }
        if let Some(key) = o.get("key") {
            let key = key
                .as_str()
                .ok_or_else(|| bad("a field condition's key must be a string"))?
                .to_string();
            for geo in ["geo_bounding_box", "geo_radius", "geo_polygon"] {
                if field(o, geo).is_some() {
                    return Err(bad(format!("{geo} conditions are not supported")));
                }
            }
            let test = if let Some(m) = field(o, "match") {
                let m = m.as_object().ok_or_else(|| {
                    bad("match must be an object: {value} | {any} | {except} | {text}")
                })?;
                if let Some(x) = field(m, "value") {
                    check_match_value(x)?;
                    FieldTest::Value(x.clone())
                } else if let Some(a) = field(m, "any") {
                    FieldTest::Any(match_values(a, "any")?)
                } else if let Some(a) = field(m, "except") {
                    FieldTest::Except(match_values(a, "except")?)
                } else if let Some(t) = field(m, "text") {
                    FieldTest::Text(
                        t.as_str()
                            .ok_or_else(|| bad("match.text must be a string"))?
                            .to_string(),
                    )
                } else {
                    return Err(bad("match needs one of value, any, except, text"));
                }
            } else if let Some(r) = field(o, "range") {
                FieldTest::Range(range(r, "range")?)
            } else if let Some(r) = field(o, "values_count") {
                FieldTest::ValuesCount(range(r, "values_count")?)
            } else {
                return Err(bad(format!(
                    "field condition on {key:?} needs match, range or values_count"
                )));
            };
            return Ok(Condition::Field(FieldCondition { key, test }));
        }
        if o.keys()
            .any(|k| matches!(k.as_str(), "must" | "should" | "must_not"))
        {
            return Ok(Condition::Filter(Filter::from_json(v)?));
        }
        Err(bad(format!(
            "unknown filter condition {v}; use a field condition {{key, match|range|values_count}}, is_empty, is_null, has_id, nested or a nested filter"
        )))
    }

    pub fn matches(&self, id: PointId, payload: &Payload) -> bool {
        match self {
            Condition::HasId(ids) => ids.contains(&id),
            Condition::Filter(f) => f.matches(id, payload),
            Condition::IsNull(key) => {
                values_at(payload, key, false).is_some_and(|vs| vs.iter().any(|v| v.is_null()))
            }
            Condition::IsEmpty(key) => match values_at(payload, key, false) {
                None => true,
                Some(vs) => vs
                    .iter()
                    .all(|v| v.is_null() || v.as_array().is_some_and(|a| a.is_empty())),
            },
            Condition::Nested { key, filter } => values_at(payload, key, true).is_some_and(|vs| {
                vs.iter().any(|v| {
                    v.as_object()
                        .is_some_and(|o| filter.matches(PointId::Num(u64::MAX), o))
                })
            }),
            Condition::Field(fc) => fc.matches(payload),
        }
    }
}

/// JSON equality with numbers compared by value (1 == 1.0).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

impl FieldCondition {
    pub fn matches(&self, payload: &Payload) -> bool {
        if let FieldTest::ValuesCount(r) = &self.test {
            let Some(vs) = values_at(payload, &self.key, false) else {
                return false;
            };
            let counts: Vec<f64> = vs
                .iter()
                .map(|v| match v {
                    Value::Null => 0.0,
                    Value::Array(a) => a.len() as f64,
                    Value::Object(o) => o.len() as f64,
                    _ => 1.0,
                })
                .collect();
            return counts.iter().any(|&c| r.contains(c));
        }
        let Some(vs) = values_at(payload, &self.key, true) else {
            return false;
        };
        vs.iter().any(|v| match &self.test {
            FieldTest::Value(x) => same_value(v, x),
            FieldTest::Any(xs) => xs.iter().any(|x| same_value(v, x)),
            FieldTest::Except(xs) => !xs.iter().any(|x| same_value(v, x)),
            FieldTest::Text(t) => v.as_str().is_some_and(|s| s.contains(t.as_str())),
            FieldTest::Range(r) => v.as_f64().is_some_and(|n| r.contains(n)),
            FieldTest::ValuesCount(_) => false,
        })
    }
}

/// The values at a key path (`a.b`, `a[].b`, `a[0]`); `flat` spreads a final array
/// into its elements. `None` when the path leads nowhere.
pub fn values_at<'a>(payload: &'a Payload, key: &str, flat: bool) -> Option<Vec<&'a Value>> {
    let mut cur: Vec<&Value> = Vec::new();
    let mut first = true;
    for seg in key.split('.') {
        let (name, index) = match seg.find('[') {
            Some(p) if seg.ends_with(']') => (&seg[..p], Some(&seg[p + 1..seg.len() - 1])),
            _ => (seg, None),
        };
        let mut next: Vec<&Value> = Vec::new();
        if first {
            if let Some(v) = payload.get(name) {
                next.push(v);
            }
            first = false;
        } else {
            for v in &cur {
                match v {
                    Value::Object(o) => next.extend(o.get(name)),
                    // An array in the middle of a path is looked through.
                    Value::Array(a) => next.extend(
                        a.iter()
                            .filter_map(|e| e.as_object().and_then(|o| o.get(name))),
                    ),
                    _ => {}
                }
            }
        }
        if let Some(ix) = index {
            let mut spread = Vec::new();
            for v in next {
                if let Value::Array(a) = v {
                    if ix.is_empty() {
                        spread.extend(a.iter());
                    } else if let Some(e) = ix.parse::<usize>().ok().and_then(|i| a.get(i)) {
                        spread.push(e);
                    }
                }
            }
            next = spread;
        }
        cur = next;
        if cur.is_empty() {
            return None;
        }
    }
    if flat {
        let mut out = Vec::new();
        for v in cur {
            match v {
                Value::Array(a) => out.extend(a.iter()),
                other => out.push(other),
            }
        }
        Some(out)
    } else {
        Some(cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(v: Value) -> Payload {
        v.as_object().unwrap().clone()
    }
    fn f(v: Value) -> Filter {
        Filter::from_json(&v).unwrap()
    }

    #[test]
    fn each_clause_type_matches_as_qdrant_does() {
        let pl = p(
            json!({"city": "Paris", "n": 5, "tags": ["a", "b"], "geo": {"zip": 75001},
                          "nil": null, "empty": [], "items": [{"k": 1}, {"k": 2}]}),
        );
        let id = PointId::Num(3);
        let yes = [
            json!({"must": [{"key": "city", "match": {"value": "Paris"}}]}),
            json!({"must": {"key": "tags", "match": {"any": ["x", "b"]}}}),
            json!({"must": [{"key": "city", "match": {"except": ["London"]}}]}),
            json!({"must": [{"key": "n", "range": {"gte": 5, "lt": 6}}]}),
            json!({"must": [{"key": "geo.zip", "match": {"value": 75001}}]}),
            json!({"must": [{"key": "items[].k", "match": {"value": 2}}]}),
            json!({"must": [{"is_empty": {"key": "empty"}}, {"is_empty": {"key": "missing"}}]}),
            json!({"must": [{"is_null": {"key": "nil"}}]}),
            json!({"must": [{"has_id": [1, 3]}]}),
            json!({"should": [{"key": "n", "range": {"gt": 100}}, {"key": "city", "match": {"text": "ari"}}]}),
            json!({"must_not": [{"key": "city", "match": {"value": "London"}}]}),
            json!({"must": [{"key": "tags", "values_count": {"gte": 2}}]}),
            json!({"must": [{"nested": {"key": "items", "filter": {"must": [{"key": "k", "match": {"value": 1}}]}}}]}),
            json!({"must": [{"should": [{"has_id": [3]}]}]}),
        ];
        for y in yes {
            assert!(f(y.clone()).matches(id, &pl), "{y}");
        }
        let no = [
            json!({"must": [{"key": "city", "match": {"value": "London"}}]}),
            json!({"must": [{"key": "missing", "match": {"except": ["x"]}}]}),
            json!({"must": [{"key": "n", "range": {"gt": 5}}]}),
            json!({"must": [{"is_empty": {"key": "tags"}}]}),
            json!({"must": [{"is_null": {"key": "city"}}]}),
            json!({"must": [{"has_id": [4]}]}),
            json!({"should": [{"has_id": [4]}]}),
            json!({"must_not": [{"key": "tags", "match": {"any": ["a"]}}]}),
            json!({"must": [{"key": "tags", "values_count": {"gt": 2}}]}),
        ];
        for n in no {
            assert!(!f(n.clone()).matches(id, &pl), "{n}");
        }
    }

    #[test]
    fn malformed_filters_say_what_is_wrong() {
        for (v, want) in [
            (json!({"must": [{"key": "a"}]}), "needs match"),
            (
                json!({"must": [{"key": "a", "match": {"value": 1.5}}]}),
                "range for floats",
            ),
            (
                json!({"must": [{"key": "a", "range": {"gt": "x"}}]}),
                "must be a number",
            ),
            (json!({"bogus": []}), "unknown filter field"),
            (json!({"must": [{"what": 1}]}), "unknown filter condition"),
        ] {
            let e = Filter::from_json(&v).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
