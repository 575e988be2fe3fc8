//! The HNSW graph (Malkov & Yashunin): layered proximity graph over dense node numbers,
//! built one insertion at a time with the neighbour-selection heuristic, searched with
//! a filter applied during the traversal. Knows only node numbers and distances passed
//! in as closures (smaller is closer); vectors, ids and payloads live elsewhere.
//!
//! Layout: level-0 links of every node in one flat `Vec<u32>` (`m0 + 1` slots per
//! node: a count, then neighbours) so a traversal reads one cache-friendly array; the
//! few nodes above level 0 keep their upper links in small vectors.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Mutex;

/// Build parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HnswParams {
    /// Links per node on upper levels (twice this on level 0).
    pub m: usize,
    /// Candidate list size while inserting.
    pub ef_construct: usize,
}

impl Default for HnswParams {
    fn default() -> Self {
        HnswParams {
            m: 16,
            ef_construct: 100,
        }
    }
}

/// A distance and a node, ordered by distance (total order on floats).
#[derive(Clone, Copy, Debug)]
struct Near(f32, u32);
impl PartialEq for Near {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Near {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0).then(self.1.cmp(&o.1))
    }
}

/// Which nodes a traversal has seen: a generation tag per node, so clearing is O(1).
struct Visited {
    tags: Vec<u16>,
    cur: u16,
}

impl Visited {
    fn prepare(&mut self, n: usize) {
        if self.tags.len() < n {
            self.tags.resize(n, 0);
        }
        self.cur = self.cur.wrapping_add(1);
        if self.cur == 0 {
            self.tags.iter_mut().for_each(|t| *t = 0);
            self.cur = 1;
        }
    }
    /// Marks `i`; true when it was not marked before.
    #[inline]
    fn insert(&mut self, i: u32) -> bool {
        let t = &mut self.tags[i as usize];
        if *t == self.cur {
            false
        } else {
            *t = self.cur;
            true
        }
    }
}

pub struct Hnsw {
    params: HnswParams,
    m0: usize,
    ml: f64,
    levels: Vec<u8>,
    links0: Vec<u32>,
    upper: Vec<Vec<Vec<u32>>>,
    entry: Option<u32>,
    max_level: usize,
    rng: u64,
    pool: Mutex<Vec<Visited>>,
}

impl Hnsw {
    pub fn new(params: HnswParams, seed: u64) -> Hnsw {
        let m = params.m.clamp(2, 128);
        let params = HnswParams {
            m,
            ef_construct: params.ef_construct.max(m),
        };
        Hnsw {
            params,
            m0: 2 * m,
            ml: 1.0 / (m as f64).ln(),
            levels: Vec::new(),
            links0: Vec::new(),
            upper: Vec::new(),
            entry: None,
            max_level: 0,
            rng: seed ^ 0x9E37_79B9_7F4A_7C15,
            pool: Mutex::new(Vec::new()),
        }
    }

    pub fn params(&self) -> HnswParams {
        self.params
    }

    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Bytes held by the links.
    pub fn memory_bytes(&self) -> usize {
        self.links0.capacity() * 4
            + self.levels.capacity()
            + self.upper.capacity() * 24
            + self
                .upper
                .iter()
                .map(|l| l.iter().map(|v| v.capacity() * 4 + 24).sum::<usize>())
                .sum::<usize>()
    }

    fn random_level(&mut self) -> usize {
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = ((z >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        ((-u.ln() * self.ml) as usize).min(16)
    }

    #[inline]
    fn links(&self, node: u32, level: usize) -> &[u32] {
        if level == 0 {
            let base = node as usize * (self.m0 + 1);
            let n = self.links0[base] as usize;
            &self.links0[base + 1..base + 1 + n]
        } else {
            &self.upper[node as usize][level - 1]
        }
    }

    fn set_links(&mut self, node: u32, level: usize, list: &[u32]) {
        if level == 0 {
            let base = node as usize * (self.m0 + 1);
            self.links0[base] = list.len() as u32;
            self.links0[base + 1..base + 1 + list.len()].copy_from_slice(list);
        } else {
            let v = &mut self.upper[node as usize][level - 1];
            v.clear();
            v.extend_from_slice(list);
        }
    }

    fn visited(&self) -> Visited {
        let mut v = self
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or(Visited {
                tags: Vec::new(),
                cur: 0,
            });
        v.prepare(self.levels.len());
        v
    }

    fn give_back(&self, v: Visited) {
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }

    /// Greedy descent through one level: the closest node reachable from `cur`.
    fn greedy(&self, mut cur: Near, level: usize, qd: &impl Fn(u32) -> f32) -> Near {
        loop {
            let mut changed = false;
            for &nb in self.links(cur.1, level) {
                let d = qd(nb);
                if d < cur.0 {
                    cur = Near(d, nb);
                    changed = true;
                }
            }
            if !changed {
                return cur;
            }
        }
    }

    /// Best-first search of one level from `entry`: up to `ef` accepted nodes, closest
    /// first. Nodes that are not accepted are still walked through (their links lead to
    /// accepted ones), so a filter never cuts the graph.
    // The hot loop: its hooks are plain closures so they inline (no trait object).
    #[allow(clippy::too_many_arguments)]
    fn search_level(
        &self,
        entry: Near,
        ef: usize,
        level: usize,
        qd: &impl Fn(u32) -> f32,
        accept: &impl Fn(u32) -> bool,
        prefetch: &impl Fn(u32),
        vis: &mut Visited,
    ) -> BinaryHeap<Near> {
        let cap = ef.min(self.levels.len()) + 1;
        let mut cands: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(cap * 4);
        let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(cap);
        vis.insert(entry.1);
        cands.push(Reverse(entry));
        if accept(entry.1) {
            found.push(entry);
        }
        let mut bound = if found.len() >= ef {
            entry.0
        } else {
            f32::INFINITY
        };
        while let Some(Reverse(c)) = cands.pop() {
            if c.0 > bound {
                break;
            }
            // Ask for the unvisited neighbours' vectors before computing any distance.
            for &nb in self.links(c.1, level) {
                if vis.tags[nb as usize] != vis.cur {
                    prefetch(nb);
                }
            }
            for &nb in self.links(c.1, level) {
                if !vis.insert(nb) {
                    continue;
                }
                let d = qd(nb);
                if found.len() < ef || d < bound {
                    cands.push(Reverse(Near(d, nb)));
                    if accept(nb) {
                        found.push(Near(d, nb));
                        if found.len() > ef {
                            found.pop();
                        }
                        if found.len() >= ef {
                            bound = found.peek().map_or(f32::INFINITY, |w| w.0);
                        }
                    }
                }
            }
        }
        found
    }

    /// The heuristic of the paper (and hnswlib): keep a candidate only if it is closer
    /// to the base than to every neighbour already kept, so links spread in direction.
    fn select(&self, sorted: &[Near], m: usize, pair: &impl Fn(u32, u32) -> f32) -> Vec<u32> {
        if sorted.len() <= m {
            return sorted.iter().map(|n| n.1).collect();
        }
        let mut kept: Vec<u32> = Vec::with_capacity(m);
        for c in sorted {
            if kept.len() >= m {
                break;
            }
            if kept.iter().all(|&s| pair(s, c.1) >= c.0) {
                kept.push(c.1);
            }
        }
        kept
    }

    /// Adds node number `self.len()` and links it; `pair(a, b)` is the distance between
    /// two nodes (the new one included).
    pub fn insert(&mut self, pair: impl Fn(u32, u32) -> f32, prefetch: impl Fn(u32)) -> u32 {
        let node = self.levels.len() as u32;
        let level = self.random_level();
        self.levels.push(level as u8);
        self.links0.resize(self.links0.len() + self.m0 + 1, 0);
        self.upper.push(vec![Vec::new(); level]);
        let Some(ep) = self.entry else {
            self.entry = Some(node);
            self.max_level = level;
            return node;
        };
        let qd = |x: u32| pair(node, x);
        let mut cur = Near(qd(ep), ep);
        for l in (level + 1..=self.max_level).rev() {
            cur = self.greedy(cur, l, &qd);
        }
        let mut vis = self.visited();
        for l in (0..=level.min(self.max_level)).rev() {
            vis.prepare(self.levels.len());
            let found = self.search_level(
                cur,
                self.params.ef_construct,
                l,
                &qd,
                &|x| x != node,
                &prefetch,
                &mut vis,
            );
            let sorted = found.into_sorted_vec();
            if let Some(best) = sorted.first() {
                cur = *best;
            }
            let chosen = self.select(&sorted, self.params.m, &pair);
            self.set_links(node, l, &chosen);
            let cap = if l == 0 { self.m0 } else { self.params.m };
            for &nb in &chosen {
                let mut list: Vec<u32> = self.links(nb, l).to_vec();
                if list.contains(&node) {
                    continue;
                }
                if list.len() < cap {
                    list.push(node);
                } else {
                    let mut cands: Vec<Near> = list
                        .iter()
                        .map(|&x| Near(pair(nb, x), x))
                        .chain(std::iter::once(Near(pair(nb, node), node)))
                        .collect();
                    cands.sort_unstable();
                    list = self.select(&cands, cap, &pair);
                }
                self.set_links(nb, l, &list);
            }
        }
        self.give_back(vis);
        if level > self.max_level {
            self.max_level = level;
            self.entry = Some(node);
        }
        node
    }

    /// Up to `ef` accepted nodes nearest the query (`qd(node)` is its distance to the
    /// query), closest first. Upper levels are descended greedily without the filter.
    pub fn search(
        &self,
        qd: impl Fn(u32) -> f32,
        ef: usize,
        accept: impl Fn(u32) -> bool,
        prefetch: impl Fn(u32),
    ) -> Vec<(f32, u32)> {
        let Some(ep) = self.entry else {
            return Vec::new();
        };
        let mut cur = Near(qd(ep), ep);
        for l in (1..=self.max_level).rev() {
            cur = self.greedy(cur, l, &qd);
        }
        let mut vis = self.visited();
        let found = self.search_level(cur, ef.max(1), 0, &qd, &accept, &prefetch, &mut vis);
        self.give_back(vis);
        found
            .into_sorted_vec()
            .into_iter()
            .map(|n| (n.0, n.1))
            .collect()
    }
}
