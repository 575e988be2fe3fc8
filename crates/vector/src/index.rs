//! Payload indexes on chosen keys (keyword, integer, float, bool): value -> rows, used
//! to list a filter's candidates and to estimate how many points it leaves. Knows
//! filters and payloads, not vectors or the graph. Rows of deleted points stay listed;
//! callers check liveness.

use crate::filter::{values_at, Condition, FieldTest, Filter};
use crate::point::Payload;
use serde_json::Value;
use std::collections::BTreeMap;
use std::ops::Bound;

/// The kind of values an index holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    Keyword,
    Integer,
    Float,
    Bool,
}

impl IndexKind {
    pub fn parse(s: &str) -> crate::Result<IndexKind> {
        match s {
            "keyword" => Ok(IndexKind::Keyword),
            "integer" => Ok(IndexKind::Integer),
            "float" => Ok(IndexKind::Float),
            "bool" => Ok(IndexKind::Bool),
            _ => Err(crate::VectorError::Invalid(format!(
                "unsupported payload index type {s:?}; use keyword, integer, float or bool"
            ))),
        }
    }
}

/// An index key: floats by their order-preserving bit pattern.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Bool(bool),
    Int(i64),
    Float(u64),
    Str(String),
}

fn float_key(f: f64) -> u64 {
    let b = f.to_bits();
    if b >> 63 == 1 {
        !b
    } else {
        b | (1 << 63)
    }
}

pub struct PayloadIndex {
    pub kind: IndexKind,
    map: BTreeMap<Key, Vec<u32>>,
    /// Rows with at least one indexed value.
    pub indexed_rows: usize,
}

impl PayloadIndex {
    pub fn new(kind: IndexKind) -> Self {
        PayloadIndex {
            kind,
            map: BTreeMap::new(),
            indexed_rows: 0,
        }
    }

    fn key(&self, v: &Value) -> Option<Key> {
        match self.kind {
            IndexKind::Keyword => v.as_str().map(|s| Key::Str(s.to_string())),
            IndexKind::Integer => v.as_i64().map(Key::Int),
            IndexKind::Float => v.as_f64().map(|f| Key::Float(float_key(f))),
            IndexKind::Bool => v.as_bool().map(Key::Bool),
        }
    }

    pub fn add(&mut self, row: u32, key: &str, payload: &Payload) {
        let Some(vs) = values_at(payload, key, true) else {
            return;
        };
        let mut any = false;
        for v in vs {
            if let Some(k) = self.key(v) {
                let rows = self.map.entry(k).or_default();
                if rows.last() != Some(&row) {
                    rows.push(row);
                }
                any = true;
            }
        }
        if any {
            self.indexed_rows += 1;
        }
    }

    /// Rows whose value passes this field test, when the index can answer it exactly.
    fn rows_for(&self, test: &FieldTest) -> Option<Vec<u32>> {
        let mut out: Vec<u32> = Vec::new();
        match test {
            FieldTest::Value(v) => {
                if let Some(k) = self.key(v) {
                    out.extend(self.map.get(&k).into_iter().flatten());
                } else {
                    return None;
                }
            }
            FieldTest::Any(vs) => {
                for v in vs {
                    out.extend(self.map.get(&self.key(v)?).into_iter().flatten());
                }
            }
            FieldTest::Range(r) if matches!(self.kind, IndexKind::Float | IndexKind::Integer) => {
                let lo = match (r.gt, r.gte) {
                    (Some(g), _) => Bound::Excluded(g),
                    (None, Some(g)) => Bound::Included(g),
                    _ => Bound::Unbounded,
                };
                let hi = match (r.lt, r.lte) {
                    (Some(l), _) => Bound::Excluded(l),
                    (None, Some(l)) => Bound::Included(l),
                    _ => Bound::Unbounded,
                };
                // Integer keys: scan the covering float range and test exactly.
                for (k, rows) in &self.map {
                    let x = match k {
                        Key::Int(i) => *i as f64,
                        Key::Float(_) => continue,
                        _ => continue,
                    };
                    if r.contains(x) {
                        out.extend(rows);
                    }
                }
                if self.kind == IndexKind::Float {
                    let map_b = |b: Bound<f64>| match b {
                        Bound::Included(x) => Bound::Included(Key::Float(float_key(x))),
                        Bound::Excluded(x) => Bound::Excluded(Key::Float(float_key(x))),
                        Bound::Unbounded => Bound::Unbounded,
                    };
                    let (lo, hi) = (map_b(lo), map_b(hi));
                    let lo = match lo {
                        Bound::Unbounded => Bound::Included(Key::Float(0)),
                        b => b,
                    };
                    let hi = match hi {
                        Bound::Unbounded => Bound::Included(Key::Float(u64::MAX)),
                        b => b,
                    };
                    if range_ok(&lo, &hi) {
                        for rows in self.map.range((lo, hi)).map(|(_, r)| r) {
                            out.extend(rows);
                        }
                    }
                }
            }
            _ => return None,
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }
}

fn range_ok(lo: &Bound<Key>, hi: &Bound<Key>) -> bool {
    let (l, h) = match (lo, hi) {
        (Bound::Included(l) | Bound::Excluded(l), Bound::Included(h) | Bound::Excluded(h)) => {
            (l, h)
        }
        _ => return true,
    };
    match l.cmp(h) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Equal => {
            matches!((lo, hi), (Bound::Included(_), Bound::Included(_)))
        }
        std::cmp::Ordering::Greater => false,
    }
}

fn intersect(a: Vec<u32>, b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// A superset of the rows passing `filter`, from the indexes of its `must` conditions
/// (and `has_id`, resolved by `id_rows`); `None` when no index narrows it.
pub fn candidates(
    filter: &Filter,
    indexes: &BTreeMap<String, PayloadIndex>,
    id_rows: &dyn Fn(&Condition) -> Option<Vec<u32>>,
) -> Option<Vec<u32>> {
    let mut acc: Option<Vec<u32>> = None;
    for c in &filter.must {
        let rows = match c {
            Condition::Field(fc) => indexes.get(&fc.key).and_then(|ix| ix.rows_for(&fc.test)),
            Condition::HasId(_) => id_rows(c),
            Condition::Filter(f) => candidates(f, indexes, id_rows),
            _ => None,
        };
        if let Some(rows) = rows {
            acc = Some(match acc {
                None => rows,
                Some(a) => intersect(a, &rows),
            });
        }
    }
    acc
}
