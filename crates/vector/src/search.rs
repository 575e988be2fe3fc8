//! Nearest-neighbour search of a collection: picks exact search or the filtered graph
//! traversal from payload-index cardinality (or a sampled estimate), re-scores int8
//! candidates in f32, and falls back to exact search whenever the graph returns fewer
//! than `limit + offset` points, so a filter matching that many always fills the page.

use crate::collection::{Collection, WithPayload};
use crate::error::{Result, VectorError};
use crate::filter::{Condition, Filter};
use crate::index::candidates;
use crate::point::ScoredPoint;
use crate::vectors::PreparedQuery;
use std::collections::BinaryHeap;

/// A nearest-neighbour query.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest {
    pub vector: Vec<f32>,
    pub limit: usize,
    pub offset: usize,
    pub filter: Option<Filter>,
    /// Candidate list size of the graph search (default: the collection's
    /// ef_construct, at least limit + offset).
    pub ef: Option<usize>,
    /// Exact search, no graph.
    pub exact: bool,
    /// Cosine/Dot: the lowest score kept; Euclid: the largest distance kept.
    pub score_threshold: Option<f32>,
    pub with_payload: WithPayload,
    pub with_vector: bool,
    /// Maximal marginal relevance: re-rank the nearest candidates for diversity.
    pub mmr: Option<Mmr>,
}

/// Maximal marginal relevance (Carbonell & Goldstein), as Qdrant's `nearest.mmr`: take
/// the `candidates_limit` nearest points, keep the nearest, then repeatedly the one
/// maximising `(1 - diversity) * sim(query, p) - diversity * max sim(p, kept)`, with
/// the collection's own similarity (negated squared distance for Euclid). Scores
/// returned stay the similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mmr {
    /// 0: relevance only (plain nearest), 1: diversity only.
    pub diversity: f32,
    /// Nearest points considered (default: the request's limit).
    pub candidates_limit: Option<usize>,
}

/// How a query was answered (for tests and `hangar vector query --json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SearchPlan {
    Exact,
    Graph,
    GraphThenExact,
}

struct Hit(f32, u32);
impl PartialEq for Hit {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == std::cmp::Ordering::Equal
    }
}
impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Hit {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

impl Collection {
    pub fn search(&self, req: &SearchRequest) -> Result<Vec<ScoredPoint>> {
        Ok(self.search_planned(req)?.0)
    }

    /// [`Collection::search`], also saying which plan answered.
    pub fn search_planned(&self, req: &SearchRequest) -> Result<(Vec<ScoredPoint>, SearchPlan)> {
        if req.vector.len() != self.config.dim {
            return Err(VectorError::WrongDimension {
                expected: self.config.dim,
                got: req.vector.len(),
            });
        }
        if let Some(x) = req.vector.iter().find(|x| !x.is_finite()) {
            return Err(VectorError::Invalid(format!(
                "query vector holds {x}; only finite numbers are allowed"
            )));
        }
        if let Some(m) = &req.mmr {
            if !(0.0..=1.0).contains(&m.diversity) {
                return Err(VectorError::Invalid(format!(
                    "mmr.diversity {} is out of range; use 0.0 to 1.0",
                    m.diversity
                )));
            }
        }
        let wanted = match req.mmr {
            Some(Mmr {
                candidates_limit: Some(c),
                ..
            }) => c.max(req.limit),
            _ => req.limit,
        };
        // Never more than there are points (limits come from clients).
        let k = wanted.saturating_add(req.offset).min(self.live);
        if k == 0 {
            return Ok((Vec::new(), SearchPlan::Exact));
        }
        let q = self.rows.prepare(&req.vector);
        let filter = req.filter.as_ref().filter(|f| !f.is_empty());
        let pass = |row: u32| {
            !self.deleted[row as usize]
                && filter
                    .is_none_or(|f| f.matches(self.ids[row as usize], &self.payloads[row as usize]))
        };
        let cands = filter.and_then(|f| {
            candidates(f, &self.indexes, &|c| match c {
                Condition::HasId(ids) => {
                    let mut v: Vec<u32> = ids
                        .iter()
                        .filter_map(|id| self.by_id.get(id).copied())
                        .collect();
                    v.sort_unstable();
                    v.dedup();
                    Some(v)
                }
                _ => None,
            })
        });
        let threshold = self.config.full_scan_threshold.max(k);
        let (hits, plan) = if req.exact || self.live <= threshold {
            (
                self.exact_scan(&q, cands.as_deref(), k, &pass),
                SearchPlan::Exact,
            )
        } else {
            let estimate = match (&cands, filter) {
                (Some(c), _) => c.len(),
                (None, Some(f)) => self.estimate(f),
                (None, None) => self.live,
            };
            if filter.is_some() && estimate <= threshold {
                (
                    self.exact_scan(&q, cands.as_deref(), k, &pass),
                    SearchPlan::Exact,
                )
            } else {
                let ef = req
                    .ef
                    .unwrap_or(self.config.hnsw.ef_construct)
                    .max(k)
                    .min(self.ids.len());
                let hits = self.graph_search(&q, ef, k, &pass);
                if hits.len() < k {
                    (
                        self.exact_scan(&q, cands.as_deref(), k, &pass),
                        SearchPlan::GraphThenExact,
                    )
                } else {
                    (hits, SearchPlan::Graph)
                }
            }
        };
        let bigger = self.config.distance.bigger_is_better();
        let kept: Vec<(f32, u32)> = hits
            .into_iter()
            .skip(req.offset)
            .filter(|(d, _)| {
                let s = self.rows.score(*d);
                req.score_threshold
                    .is_none_or(|t| if bigger { s >= t } else { s <= t })
            })
            .collect();
        let kept = match &req.mmr {
            Some(m) => self.mmr(kept, m.diversity, req.limit),
            None => kept,
        };
        let out = kept
            .into_iter()
            .map(|(d, row)| (self.rows.score(d), row))
            .map(|(score, row)| {
                let r = self.record(row, &req.with_payload, req.with_vector);
                ScoredPoint {
                    id: r.id,
                    score,
                    payload: r.payload,
                    vector: r.vector,
                }
            })
            .collect();
        Ok((out, plan))
    }

    /// Greedy MMR selection of `limit` of the candidates (closest first, as internal
    /// distances where smaller is closer, so similarity is the negated distance).
    fn mmr(&self, cands: Vec<(f32, u32)>, diversity: f32, limit: usize) -> Vec<(f32, u32)> {
        if cands.len() <= 1 || limit == 0 {
            return cands.into_iter().take(limit).collect();
        }
        let relevance = 1.0 - diversity;
        let mut pending = cands;
        let mut kept = vec![pending.remove(0)];
        // Per pending candidate: its largest similarity to any kept point so far.
        let mut max_sim: Vec<f32> = pending
            .iter()
            .map(|&(_, r)| -self.rows.pair(r, kept[0].1))
            .collect();
        while kept.len() < limit && !pending.is_empty() {
            let mut best = 0;
            let mut best_score = f32::NEG_INFINITY;
            for (i, &(d, _)) in pending.iter().enumerate() {
                let score = relevance * -d - diversity * max_sim[i];
                if score > best_score {
                    best_score = score;
                    best = i;
                }
            }
            let chosen = pending.remove(best);
            max_sim.remove(best);
            for (i, &(_, r)) in pending.iter().enumerate() {
                max_sim[i] = max_sim[i].max(-self.rows.pair(r, chosen.1));
            }
            kept.push(chosen);
        }
        kept
    }

    /// Exact search over candidate rows (or all rows), closest first.
    fn exact_scan(
        &self,
        q: &PreparedQuery,
        cands: Option<&[u32]>,
        k: usize,
        pass: &impl Fn(u32) -> bool,
    ) -> Vec<(f32, u32)> {
        match cands {
            Some(c) => self.exact(q, &mut c.iter().copied(), k, pass),
            None => self.exact(q, &mut (0..self.ids.len() as u32), k, pass),
        }
    }

    fn exact(
        &self,
        q: &PreparedQuery,
        rows: &mut dyn Iterator<Item = u32>,
        k: usize,
        pass: &impl Fn(u32) -> bool,
    ) -> Vec<(f32, u32)> {
        let mut heap: BinaryHeap<Hit> = BinaryHeap::with_capacity(k + 1);
        for row in rows {
            if !pass(row) {
                continue;
            }
            let d = self.rows.dist(q, row);
            if heap.len() < k {
                heap.push(Hit(d, row));
            } else if heap.peek().is_some_and(|w| d < w.0) {
                heap.pop();
                heap.push(Hit(d, row));
            }
        }
        heap.into_sorted_vec()
            .into_iter()
            .map(|h| (h.0, h.1))
            .collect()
    }

    /// Graph search; with int8 vectors the candidates are re-scored in f32.
    fn graph_search(
        &self,
        q: &PreparedQuery,
        ef: usize,
        k: usize,
        pass: &impl Fn(u32) -> bool,
    ) -> Vec<(f32, u32)> {
        if self.rows.quantized() {
            let found = self.graph.search(
                |r| self.rows.dist_fast(q, r),
                ef,
                pass,
                |r| self.rows.prefetch(r),
            );
            let mut exact: Vec<(f32, u32)> = found
                .into_iter()
                .map(|(_, r)| (self.rows.dist(q, r), r))
                .collect();
            exact.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            exact.truncate(k);
            exact
        } else {
            let mut found = self.graph.search(
                |r| self.rows.dist(q, r),
                ef,
                pass,
                |r| self.rows.prefetch(r),
            );
            found.truncate(k);
            found
        }
    }

    /// Points a filter leaves, estimated from an even sample of rows.
    fn estimate(&self, f: &Filter) -> usize {
        let n = self.ids.len();
        let step = (n / 1024).max(1);
        let (mut seen, mut hit) = (0usize, 0usize);
        for row in (0..n).step_by(step) {
            if self.deleted[row] {
                continue;
            }
            seen += 1;
            if f.matches(self.ids[row], &self.payloads[row]) {
                hit += 1;
            }
        }
        if seen == 0 {
            return 0;
        }
        // Round up so a filter seen once is never estimated at zero.
        (hit * self.live).div_ceil(seen)
    }
}
