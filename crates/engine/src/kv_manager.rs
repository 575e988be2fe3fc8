//! KV block bookkeeping: which sequence holds which fixed-size KV block in each layer
//! group, prefix sharing by content hash with reference counts, sliding-window release.
//!
//! Never touches KV memory: it hands out block numbers that index `hangar_models::KvCache`.

use hangar_models::kv::NO_BLOCK;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Content hash of a full block of tokens, chained through every block before it, so
/// equal hashes mean equal tokens at equal positions.
pub type BlockHash = u128;

/// Hash of block `tokens` following the block whose hash is `prev` (0 for the first).
pub fn chain_hash(prev: BlockHash, tokens: &[u32]) -> BlockHash {
    let half = |salt: u64| {
        let mut h = DefaultHasher::new();
        salt.hash(&mut h);
        prev.hash(&mut h);
        tokens.hash(&mut h);
        h.finish()
    };
    ((half(0x9e37_79b9_7f4a_7c15) as u128) << 64) | half(0xc2b2_ae3d_27d4_eb4f) as u128
}

/// The blocks of one layer group: reference counts, a free list, and the prefix cache
/// (hash → block) with an LRU of cached blocks nobody references any more.
#[derive(Debug)]
struct GroupPool {
    refs: Vec<u32>,
    hash: Vec<Option<BlockHash>>,
    /// Blocks holding nothing worth keeping.
    free: Vec<u32>,
    /// Unreferenced blocks still in the prefix cache, oldest first (tick → block).
    lru: BTreeMap<u64, u32>,
    lru_tick: Vec<u64>,
    by_hash: HashMap<BlockHash, u32>,
    tick: u64,
}

impl GroupPool {
    fn new(n: usize) -> Self {
        GroupPool {
            refs: vec![0; n],
            hash: vec![None; n],
            free: (0..n as u32).rev().collect(),
            lru: BTreeMap::new(),
            lru_tick: vec![0; n],
            by_hash: HashMap::new(),
            tick: 0,
        }
    }
    fn total(&self) -> usize {
        self.refs.len()
    }
    /// Blocks that can be handed out now (free or evictable).
    fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }
    fn alloc(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                if let Some(h) = self.hash[b as usize].take() {
                    self.by_hash.remove(&h);
                }
                b
            }
        };
        self.refs[b as usize] = 1;
        Some(b)
    }
    /// Takes a reference on a cached block (reviving it from the LRU if unreferenced).
    fn share(&mut self, b: u32) {
        let i = b as usize;
        if self.refs[i] == 0 {
            self.lru.remove(&self.lru_tick[i]);
        }
        self.refs[i] += 1;
    }
    fn release(&mut self, b: u32) {
        let i = b as usize;
        debug_assert!(self.refs[i] > 0, "double free of block {b}");
        self.refs[i] = self.refs[i].saturating_sub(1);
        if self.refs[i] == 0 {
            if self.hash[i].is_some() {
                self.tick += 1;
                self.lru_tick[i] = self.tick;
                self.lru.insert(self.tick, b);
            } else {
                self.free.push(b);
            }
        }
    }
    fn register(&mut self, b: u32, h: BlockHash) {
        if self.hash[b as usize].is_some() || self.by_hash.contains_key(&h) {
            return;
        }
        self.hash[b as usize] = Some(h);
        self.by_hash.insert(h, b);
    }
    fn cached(&self, h: &BlockHash) -> Option<u32> {
        self.by_hash.get(h).copied()
    }
}

/// One sequence's block tables (one per group) and the hashes of its full blocks.
#[derive(Debug, Clone, Default)]
pub struct SeqBlocks {
    /// Per group: block per `block_size` tokens; [`NO_BLOCK`] where released or not needed.
    pub tables: Vec<Vec<u32>>,
    /// Chain hashes of the full blocks whose KV is computed and published.
    hashes: Vec<BlockHash>,
    /// Where the chain starts: 0 for the base model, else what makes the KV differ
    /// for the same tokens (a LoRA adapter's id), so such blocks are never shared.
    salt: BlockHash,
}

impl SeqBlocks {
    /// Blocks held in group `g`.
    pub fn held(&self, g: usize) -> usize {
        self.tables
            .get(g)
            .map_or(0, |t| t.iter().filter(|&&b| b != NO_BLOCK).count())
    }
}

/// Per-group block counts, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockUsage {
    pub total: usize,
    /// Referenced by at least one sequence.
    pub used: usize,
    /// Unreferenced but kept for prefix reuse (evictable).
    pub cached: usize,
}

/// Hands out KV blocks to sequences, shares prompt prefixes, releases sliding-window
/// blocks once no future query can see them.
///
/// ```
/// use hangar_engine::kv_manager::KvBlockManager;
/// let mut m = KvBlockManager::new(4, &[None], &[8], true);
/// let tokens: Vec<u32> = (0..10).collect();
/// let (mut seq, cached) = m.start_sequence(&tokens);
/// assert_eq!(cached, 0);
/// assert!(m.allocate(&mut seq, 0, 10));
/// m.publish(&mut seq, &tokens, 10);
/// m.free(&mut seq);
/// // The same prompt now reuses its two full blocks.
/// let (mut again, cached) = m.start_sequence(&tokens);
/// assert_eq!(cached, 8);
/// m.free(&mut again);
/// ```
#[derive(Debug)]
pub struct KvBlockManager {
    block_size: usize,
    windows: Vec<Option<usize>>,
    groups: Vec<GroupPool>,
    prefix_caching: bool,
    /// Prompt tokens looked up / found in the prefix cache.
    pub prefix_queried_tokens: u64,
    pub prefix_hit_tokens: u64,
}

impl KvBlockManager {
    /// `windows[g]` is group g's sliding window (`None` = full attention) and
    /// `blocks[g]` its pool size.
    pub fn new(
        block_size: usize,
        windows: &[Option<usize>],
        blocks: &[usize],
        prefix_caching: bool,
    ) -> Self {
        assert!(block_size > 0 && windows.len() == blocks.len());
        KvBlockManager {
            block_size,
            windows: windows.to_vec(),
            groups: blocks.iter().map(|&n| GroupPool::new(n)).collect(),
            prefix_caching,
            prefix_queried_tokens: 0,
            prefix_hit_tokens: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Whether computed blocks are shared through the prefix cache.
    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// A manager with the same pools, all blocks free and the prefix cache empty.
    pub fn emptied(&self) -> Self {
        let blocks: Vec<usize> = self.groups.iter().map(GroupPool::total).collect();
        KvBlockManager::new(self.block_size, &self.windows, &blocks, self.prefix_caching)
    }
    pub fn n_groups(&self) -> usize {
        self.groups.len()
    }

    /// The most tokens one sequence can ever hold (the smallest full-attention pool).
    pub fn max_sequence_tokens(&self) -> usize {
        let mut cap = usize::MAX;
        for (g, pool) in self.groups.iter().enumerate() {
            let c = match self.windows[g] {
                None => pool.total() * self.block_size,
                // A windowed group needs the window plus the blocks of one prefill chunk;
                // the scheduler sizes chunks, so only require the window here.
                Some(w) if pool.total() * self.block_size >= w + 2 * self.block_size => usize::MAX,
                Some(_) => pool.total() * self.block_size,
            };
            cap = cap.min(c);
        }
        cap
    }

    /// Block usage of group `g`.
    pub fn usage(&self, g: usize) -> BlockUsage {
        let p = &self.groups[g];
        BlockUsage {
            total: p.total(),
            used: p.total() - p.available(),
            cached: p.lru.len(),
        }
    }

    /// Fraction of looked-up prompt tokens served from the prefix cache.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queried_tokens == 0 {
            0.0
        } else {
            self.prefix_hit_tokens as f64 / self.prefix_queried_tokens as f64
        }
    }

    /// First block index whose tokens a query at `pos` can see in group `g`.
    fn first_visible_block(&self, g: usize, pos: usize) -> usize {
        match self.windows[g] {
            Some(w) => (pos + 1).saturating_sub(w) / self.block_size,
            None => 0,
        }
    }

    /// Starts a sequence over `tokens`: takes references on the longest cached prefix
    /// of whole blocks (leaving at least one token to compute) and returns its blocks
    /// and the number of tokens whose KV is already there.
    pub fn start_sequence(&mut self, tokens: &[u32]) -> (SeqBlocks, usize) {
        self.start_sequence_salted(tokens, 0)
    }

    /// As [`Self::start_sequence`], for a sequence whose KV depends on more than its
    /// tokens (a LoRA adapter): only blocks published under the same `salt` are
    /// shared. Salt 0 is the base model.
    pub fn start_sequence_salted(&mut self, tokens: &[u32], salt: BlockHash) -> (SeqBlocks, usize) {
        let mut seq = SeqBlocks {
            tables: vec![Vec::new(); self.groups.len()],
            hashes: Vec::new(),
            salt,
        };
        if !self.prefix_caching || tokens.is_empty() {
            return (seq, 0);
        }
        self.prefix_queried_tokens += tokens.len() as u64;
        let bs = self.block_size;
        let max_blocks = (tokens.len() - 1) / bs;
        let mut hashes = Vec::with_capacity(max_blocks);
        let mut prev = salt;
        for i in 0..max_blocks {
            prev = chain_hash(prev, &tokens[i * bs..(i + 1) * bs]);
            hashes.push(prev);
        }
        // Longest k such that every group holds the blocks a query at k*bs needs.
        let mut k = hashes.len();
        'outer: while k > 0 {
            for g in 0..self.groups.len() {
                let first = self.first_visible_block(g, k * bs);
                if hashes[first..k]
                    .iter()
                    .any(|h| self.groups[g].cached(h).is_none())
                {
                    k -= 1;
                    continue 'outer;
                }
            }
            break;
        }
        if k == 0 {
            return (seq, 0);
        }
        for g in 0..self.groups.len() {
            let first = self.first_visible_block(g, k * bs);
            let table = &mut seq.tables[g];
            table.resize(first, NO_BLOCK);
            for h in &hashes[first..k] {
                let b = self.groups[g].cached(h).expect("checked above");
                self.groups[g].share(b);
                table.push(b);
            }
        }
        hashes.truncate(k);
        seq.hashes = hashes;
        self.prefix_hit_tokens += (k * bs) as u64;
        (seq, k * bs)
    }

    /// Releases blocks of windowed groups that no query at `next_pos` or later can see.
    pub fn release_outside_window(&mut self, seq: &mut SeqBlocks, next_pos: usize) {
        for g in 0..self.groups.len() {
            if self.windows[g].is_none() {
                continue;
            }
            let first = self.first_visible_block(g, next_pos);
            let table = &mut seq.tables[g];
            for b in table.iter_mut().take(first) {
                if *b != NO_BLOCK {
                    self.groups[g].release(*b);
                    *b = NO_BLOCK;
                }
            }
        }
    }

    /// Blocks each group must hand out so `seq` can compute positions `start..end`.
    fn needed(&self, seq: &SeqBlocks, start: usize, end: usize) -> Vec<usize> {
        let bs = self.block_size;
        (0..self.groups.len())
            .map(|g| {
                let first = self.first_visible_block(g, start);
                let table = &seq.tables[g];
                (first..end.div_ceil(bs))
                    .filter(|&i| table.get(i).is_none_or(|&b| b == NO_BLOCK))
                    .count()
            })
            .collect()
    }

    /// Whether `allocate(seq, start, end)` would succeed now.
    pub fn can_allocate(&self, seq: &SeqBlocks, start: usize, end: usize) -> bool {
        self.can_allocate_reserving(seq, start, end, 0)
    }

    /// Like [`Self::can_allocate`], but also leaves `reserve` blocks available in every
    /// group afterwards (head-room for running sequences' next decode tokens).
    pub fn can_allocate_reserving(
        &self,
        seq: &SeqBlocks,
        start: usize,
        end: usize,
        reserve: usize,
    ) -> bool {
        self.needed(seq, start, end)
            .iter()
            .zip(&self.groups)
            .all(|(&n, p)| n + reserve <= p.available())
    }

    /// Makes sure `seq` has blocks for positions `start..end` (and, in windowed groups,
    /// the window before `start`). All or nothing: returns `false` and changes nothing
    /// when a pool is short.
    pub fn allocate(&mut self, seq: &mut SeqBlocks, start: usize, end: usize) -> bool {
        if !self.can_allocate(seq, start, end) {
            return false;
        }
        let bs = self.block_size;
        for g in 0..self.groups.len() {
            let first = self.first_visible_block(g, start);
            let n = end.div_ceil(bs);
            if seq.tables[g].len() < n {
                seq.tables[g].resize(n, NO_BLOCK);
            }
            for i in first..n {
                if seq.tables[g][i] == NO_BLOCK {
                    seq.tables[g][i] = self.groups[g].alloc().expect("checked by can_allocate");
                }
            }
        }
        true
    }

    /// Publishes the full blocks among the first `computed` tokens of `tokens` to the
    /// prefix cache, so later sequences with the same prefix can share them.
    pub fn publish(&mut self, seq: &mut SeqBlocks, tokens: &[u32], computed: usize) {
        if !self.prefix_caching {
            return;
        }
        let bs = self.block_size;
        let full = computed.min(tokens.len()) / bs;
        while seq.hashes.len() < full {
            let i = seq.hashes.len();
            let prev = seq.hashes.last().copied().unwrap_or(seq.salt);
            let h = chain_hash(prev, &tokens[i * bs..(i + 1) * bs]);
            seq.hashes.push(h);
            for g in 0..self.groups.len() {
                if let Some(&b) = seq.tables[g].get(i) {
                    if b != NO_BLOCK {
                        self.groups[g].register(b, h);
                    }
                }
            }
        }
    }

    /// Returns every block of `seq` (tail first, so the LRU evicts tails first).
    pub fn free(&mut self, seq: &mut SeqBlocks) {
        for (g, table) in seq.tables.iter_mut().enumerate() {
            for &b in table.iter().rev() {
                if b != NO_BLOCK {
                    self.groups[g].release(b);
                }
            }
            table.clear();
        }
        seq.hashes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(n: usize, salt: u32) -> Vec<u32> {
        (0..n as u32).map(|i| i * 7 + salt).collect()
    }

    #[test]
    fn allocates_and_frees_all_blocks() {
        let mut m = KvBlockManager::new(4, &[None], &[5], false);
        let (mut s, c) = m.start_sequence(&toks(10, 0));
        assert_eq!(c, 0);
        assert!(m.allocate(&mut s, 0, 10));
        assert_eq!(s.tables[0].len(), 3);
        assert_eq!(m.usage(0).used, 3);
        assert!(m.allocate(&mut s, 10, 12));
        assert_eq!(m.usage(0).used, 3);
        assert!(m.allocate(&mut s, 12, 13));
        assert_eq!(m.usage(0).used, 4);
        m.free(&mut s);
        assert_eq!(
            m.usage(0),
            BlockUsage {
                total: 5,
                used: 0,
                cached: 0
            }
        );
    }

    #[test]
    fn allocation_is_all_or_nothing() {
        let mut m = KvBlockManager::new(4, &[None, None], &[4, 2], false);
        let (mut s, _) = m.start_sequence(&toks(12, 0));
        assert!(!m.allocate(&mut s, 0, 12));
        assert_eq!(m.usage(0).used, 0);
        assert_eq!(m.usage(1).used, 0);
        assert!(m.allocate(&mut s, 0, 8));
        assert_eq!((m.usage(0).used, m.usage(1).used), (2, 2));
    }

    #[test]
    fn shares_identical_prefix_blocks() {
        let mut m = KvBlockManager::new(4, &[None], &[16], true);
        let mut a_toks = toks(13, 1);
        let (mut a, _) = m.start_sequence(&a_toks);
        assert!(m.allocate(&mut a, 0, 13));
        m.publish(&mut a, &a_toks, 13);
        // Same first 9 tokens, different tail: two whole blocks are shared.
        let mut b_toks = a_toks[..9].to_vec();
        b_toks.extend([900, 901, 902]);
        let (mut b, cached) = m.start_sequence(&b_toks);
        assert_eq!(cached, 8);
        assert_eq!(&b.tables[0][..2], &a.tables[0][..2]);
        assert!(m.allocate(&mut b, 8, 12));
        assert_ne!(b.tables[0][2], a.tables[0][2]);
        assert_eq!(m.usage(0).used, 4 + 1);
        // Freeing one keeps the shared blocks for the other.
        m.free(&mut a);
        assert_eq!(m.usage(0).used, 3);
        m.free(&mut b);
        assert_eq!(m.usage(0).used, 0);
        assert!(m.usage(0).cached > 0);
        a_toks.truncate(9);
        let (_, again) = m.start_sequence(&a_toks);
        assert_eq!(again, 8);
        assert!(m.prefix_hit_rate() > 0.0);
    }

    #[test]
    fn leaves_one_token_to_compute_on_full_hit() {
        let mut m = KvBlockManager::new(4, &[None], &[8], true);
        let t = toks(8, 3);
        let (mut a, _) = m.start_sequence(&t);
        assert!(m.allocate(&mut a, 0, 8));
        m.publish(&mut a, &t, 8);
        let (mut b, cached) = m.start_sequence(&t);
        assert_eq!(cached, 4);
        m.free(&mut a);
        m.free(&mut b);
    }

    #[test]
    fn different_prefix_does_not_hit() {
        let mut m = KvBlockManager::new(4, &[None], &[8], true);
        let t = toks(9, 0);
        let (mut a, _) = m.start_sequence(&t);
        assert!(m.allocate(&mut a, 0, 9));
        m.publish(&mut a, &t, 9);
        let mut u = t.clone();
        u[0] = 999;
        assert_eq!(m.start_sequence(&u).1, 0);
        m.free(&mut a);
    }

    #[test]
    fn evicts_cached_blocks_when_pool_runs_dry() {
        let mut m = KvBlockManager::new(4, &[None], &[3], true);
        let t = toks(12, 0);
        let (mut a, _) = m.start_sequence(&t);
        assert!(m.allocate(&mut a, 0, 12));
        m.publish(&mut a, &t, 12);
        m.free(&mut a);
        assert_eq!(m.usage(0).cached, 3);
        let u = toks(12, 5);
        let (mut b, c) = m.start_sequence(&u);
        assert_eq!(c, 0);
        assert!(m.allocate(&mut b, 0, 12));
        assert_eq!(m.usage(0).cached, 0);
        assert_eq!(m.start_sequence(&t).1, 0, "evicted blocks no longer hit");
    }

    #[test]
    fn releases_blocks_outside_sliding_window() {
        // Group 0 global, group 1 window of 8 tokens, blocks of 4.
        let mut m = KvBlockManager::new(4, &[None, Some(8)], &[16, 4], false);
        let (mut s, _) = m.start_sequence(&toks(24, 0));
        assert!(m.allocate(&mut s, 0, 8));
        for pos in 8..24 {
            m.release_outside_window(&mut s, pos);
            assert!(m.allocate(&mut s, pos, pos + 1), "pos {pos}");
            // A query at pos sees pos-7..=pos: at most 3 blocks of 4.
            assert!(s.held(1) <= 3, "pos {pos} holds {}", s.held(1));
        }
        assert_eq!(s.held(0), 6);
        assert_eq!(s.tables[1][0], NO_BLOCK);
        m.free(&mut s);
        assert_eq!(m.usage(1).used, 0);
        assert_eq!(m.usage(0).used, 0);
    }

    #[test]
    fn windowed_prefix_hit_needs_only_window_blocks() {
        let mut m = KvBlockManager::new(4, &[None, Some(8)], &[16, 16], true);
        let t = toks(21, 2);
        let (mut a, _) = m.start_sequence(&t);
        for pos in 0..21 {
            m.release_outside_window(&mut a, pos);
            assert!(m.allocate(&mut a, pos, pos + 1));
            m.publish(&mut a, &t, pos + 1);
        }
        let (mut b, cached) = m.start_sequence(&t);
        assert_eq!(cached, 20);
        // Query at 20 sees 13..=20: blocks 3 and 4 only; the rest stay empty.
        assert_eq!(&b.tables[1][..3], &[NO_BLOCK; 3]);
        assert_ne!(b.tables[1][3], NO_BLOCK);
        assert!(m.allocate(&mut b, 20, 21));
        m.free(&mut a);
        m.free(&mut b);
        assert_eq!(m.usage(0).used + m.usage(1).used, 0);
    }

    #[test]
    fn different_salts_never_share_blocks() {
        let mut m = KvBlockManager::new(4, &[None], &[16], true);
        let t = toks(9, 4);
        let (mut a, _) = m.start_sequence_salted(&t, 7);
        assert!(m.allocate(&mut a, 0, 9));
        m.publish(&mut a, &t, 9);
        assert_eq!(
            m.start_sequence(&t).1,
            0,
            "the base model misses an adapter's blocks"
        );
        assert_eq!(
            m.start_sequence_salted(&t, 8).1,
            0,
            "another adapter misses them"
        );
        let (mut b, cached) = m.start_sequence_salted(&t, 7);
        assert_eq!(cached, 8, "the same adapter hits");
        m.free(&mut a);
        m.free(&mut b);
    }

    #[test]
    fn duplicate_content_is_registered_once() {
        let mut m = KvBlockManager::new(4, &[None], &[8], true);
        let t = toks(5, 0);
        let (mut a, _) = m.start_sequence(&t);
        let (mut b, _) = m.start_sequence(&t);
        assert!(m.allocate(&mut a, 0, 5));
        assert!(m.allocate(&mut b, 0, 5));
        m.publish(&mut a, &t, 5);
        m.publish(&mut b, &t, 5);
        m.free(&mut a);
        m.free(&mut b);
        assert_eq!(m.usage(0).cached, 1);
        assert_eq!(m.usage(0).used, 0);
    }
}
