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

    /// Appends the graph to `out` (little-endian; read back by [`Hnsw::decode`]).
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let n = self.levels.len();
        out.extend_from_slice(&(self.params.m as u32).to_le_bytes());
        out.extend_from_slice(&(self.params.ef_construct as u32).to_le_bytes());
        out.extend_from_slice(&self.entry.unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&(self.max_level as u32).to_le_bytes());
        out.extend_from_slice(&self.rng.to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&self.levels);
        for x in &self.links0 {
            out.extend_from_slice(&x.to_le_bytes());
        }
        for node in &self.upper {
            for list in node {
                out.extend_from_slice(&(list.len() as u32).to_le_bytes());
                for x in list {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            }
        }
    }

    /// Reads a graph written by [`Hnsw::encode`] for `n` nodes built with `params`.
    /// Returns the graph and the bytes it used, or `None` when anything is out of
    /// place (wrong parameters or node count, a link past the end, a bad level): the
    /// caller then rebuilds rather than trusting it.
    pub(crate) fn decode(params: HnswParams, n: usize, bytes: &[u8]) -> Option<(Hnsw, usize)> {
        let mut g = Hnsw::new(params, 0);
        let mut pos = 0usize;
        let mut take = |k: usize| -> Option<&[u8]> {
            let end = pos.checked_add(k).filter(|&e| e <= bytes.len())?;
            let s = &bytes[pos..end];
            pos = end;
            Some(s)
        };
        let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let m = u32_at(take(4)?) as usize;
        let ef = u32_at(take(4)?) as usize;
        if m != g.params.m || ef != g.params.ef_construct {
            return None;
        }
        let entry = u32_at(take(4)?);
        let max_level = u32_at(take(4)?) as usize;
        let rng = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let count = u64::from_le_bytes(take(8)?.try_into().ok()?);
        if count != n as u64 || max_level > 16 {
            return None;
        }
        let levels = take(n)?.to_vec();
        if levels.iter().any(|&l| l > 16) {
            return None;
        }
        let slots = n.checked_mul(g.m0 + 1)?;
        let raw = take(slots.checked_mul(4)?)?;
        let links0: Vec<u32> = raw.chunks_exact(4).map(u32_at).collect();
        for node in links0.chunks_exact(g.m0 + 1) {
            let k = node[0] as usize;
            if k > g.m0 || node[1..=k].iter().any(|&x| x as usize >= n) {
                return None;
            }
        }
        let mut upper = Vec::with_capacity(n);
        for &l in &levels {
            let mut lists = Vec::with_capacity(l as usize);
            for _ in 0..l {
                let k = u32_at(take(4)?) as usize;
                if k > g.m0 {
                    return None;
                }
                let list: Vec<u32> = take(k * 4)?.chunks_exact(4).map(u32_at).collect();
                if list.iter().any(|&x| x as usize >= n) {
                    return None;
                }
                lists.push(list);
            }
            upper.push(lists);
        }
        let entry = if n == 0 {
            if entry != u32::MAX {
                return None;
            }
            None
        } else {
            if entry as usize >= n || levels[entry as usize] as usize != max_level {
                return None;
            }
            Some(entry)
        };
        g.levels = levels;
        g.links0 = links0;
        g.upper = upper;
        g.entry = entry;
        g.max_level = max_level;
        g.rng = rng;
        Some((g, pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(n: usize) -> Hnsw {
        let pts: Vec<[f32; 2]> = (0..n)
            .map(|i| [(i as f32 * 0.37).sin(), (i as f32 * 0.91).cos()])
            .collect();
        let mut g = Hnsw::new(
            HnswParams {
                m: 4,
                ef_construct: 16,
            },
            7,
        );
        for _ in 0..n {
            let d = |a: u32, b: u32| {
                let (p, q) = (pts[a as usize], pts[b as usize]);
                (p[0] - q[0]).powi(2) + (p[1] - q[1]).powi(2)
            };
            g.insert(d, |_| {});
        }
        g
    }

    #[test]
    fn encode_decode_round_trips_and_every_truncation_is_refused() {
        let g = built(200);
        let mut buf = Vec::new();
        g.encode(&mut buf);
        let (back, used) = Hnsw::decode(g.params, 200, &buf).unwrap();
        assert_eq!(used, buf.len());
        assert_eq!(back.levels, g.levels);
        assert_eq!(back.links0, g.links0);
        assert_eq!(back.upper, g.upper);
        assert_eq!(
            (back.entry, back.max_level, back.rng),
            (g.entry, g.max_level, g.rng)
        );
        for cut in 0..buf.len() {
            assert!(
                Hnsw::decode(g.params, 200, &buf[..cut]).is_none(),
                "cut {cut}"
            );
        }
        // Another node count or other parameters: not this graph.
        assert!(Hnsw::decode(g.params, 199, &buf).is_none());
        let other = HnswParams {
            m: 5,
            ef_construct: 16,
        };
        assert!(Hnsw::decode(other, 200, &buf).is_none());
        // A link past the end is refused.
        let mut bad = buf.clone();
        let links0_at = 4 + 4 + 4 + 4 + 8 + 8 + 200;
        bad[links0_at + 4..links0_at + 8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Hnsw::decode(g.params, 200, &bad).is_none());
    }
}
