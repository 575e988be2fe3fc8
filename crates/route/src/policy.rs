//! Routing policies: which of the eligible replicas gets a request, and why.
//! Pure decisions over the replicas' load; knows nothing about HTTP or relaying.
//!
//! - `round-robin`: each replica in turn.
//! - `least-loaded`: the smallest [`Backend::score`] (requests in flight, the
//!   replica's running + waiting sequences from its `/metrics`, KV usage).
//! - `session`: rendezvous hashing of a session header, so one conversation stays on
//!   one replica while the set of replicas changes as little as possible.
//! - `prefix`: the replica last sent the longest matching prompt prefix (the
//!   [`PrefixIndex`]; the least busy of several); without one, rendezvous hashing of
//!   the prompt's first block. Either way with bounded load (Mirrokni et al.'s
//!   consistent hashing with bounded loads): a replica with more than `load_factor` ×
//!   the mean requests in flight (for a prefix no replica holds: more than the mean)
//!   is passed over for the next one in hash order, and least-loaded decides when all
//!   are.

use crate::backend::Backend;
use crate::prefix::PrefixIndex;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A routing policy (`--policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    RoundRobin,
    LeastLoaded,
    Session,
    Prefix,
}

impl FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "round-robin" => Ok(Policy::RoundRobin),
            "least-loaded" => Ok(Policy::LeastLoaded),
            "session" => Ok(Policy::Session),
            "prefix" => Ok(Policy::Prefix),
            other => Err(format!(
                "unknown routing policy {other:?}; use round-robin, least-loaded, session or prefix"
            )),
        }
    }
}

/// Why a replica was chosen (the `reason` label of the routing-decision counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    RoundRobin,
    LeastLoaded,
    /// The session header's replica.
    Session,
    /// No session header: least-loaded.
    NoSessionKey,
    /// The replica last sent the longest matching prefix.
    PrefixMatch,
    /// No known prefix: the prompt's first block hashed onto the replicas.
    PrefixHash,
    /// The favourite was over its load bound: the next replica in hash order, or the
    /// least-loaded one.
    PrefixOverloaded,
    /// No prompt in the request: least-loaded.
    NoPrompt,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RoundRobin => "round_robin",
            Reason::LeastLoaded => "least_loaded",
            Reason::Session => "session",
            Reason::NoSessionKey => "no_session_key",
            Reason::PrefixMatch => "prefix_match",
            Reason::PrefixHash => "prefix_hash",
            Reason::PrefixOverloaded => "prefix_overloaded",
            Reason::NoPrompt => "no_prompt",
        }
    }
}

/// What a request offers to route on.
#[derive(Debug, Default, Clone, Copy)]
pub struct RouteKey<'a> {
    /// The session header's value.
    pub session: Option<&'a str>,
    /// The prompt's chained block hashes ([`crate::prefix::block_hashes`]).
    pub prefix: &'a [u64],
}

/// Chooses replicas by one policy.
pub struct Picker {
    pub policy: Policy,
    /// A replica may hold this many times the mean in-flight requests (plus the new
    /// one) before prefix routing passes it over.
    pub load_factor: f64,
    next: AtomicUsize,
    index: Mutex<PrefixIndex>,
}

/// Rendezvous (highest random weight) score of `url` for `key`.
fn weight(key: u64, url: &str) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    url.hash(&mut h);
    h.finish()
}

fn hash_str(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

impl Picker {
    pub fn new(policy: Policy, load_factor: f64, index_capacity: usize) -> Self {
        Picker {
            policy,
            load_factor: if load_factor.is_finite() && load_factor >= 1.0 {
                load_factor
            } else {
                1.0
            },
            next: AtomicUsize::new(0),
            index: Mutex::new(PrefixIndex::new(index_capacity)),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, PrefixIndex> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks one of `candidates` (the healthy replicas that serve the model and were
    /// not tried yet) for `key`; None when there are none.
    pub fn pick(
        &self,
        candidates: &[Arc<Backend>],
        key: RouteKey,
    ) -> Option<(Arc<Backend>, Reason)> {
        if candidates.is_empty() {
            return None;
        }
        match self.policy {
            Policy::RoundRobin => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
                Some((candidates[i].clone(), Reason::RoundRobin))
            }
            Policy::LeastLoaded => Some((self.least_loaded(candidates), Reason::LeastLoaded)),
            Policy::Session => match key.session {
                Some(s) => Some((
                    hash_order(candidates, hash_str(s)).swap_remove(0),
                    Reason::Session,
                )),
                None => Some((self.least_loaded(candidates), Reason::NoSessionKey)),
            },
            Policy::Prefix => Some(self.by_prefix(candidates, key.prefix)),
        }
    }

    /// Records that the prompt of `prefix` went to `backend`.
    pub fn record(&self, prefix: &[u64], backend: &Backend) {
        if self.policy == Policy::Prefix && !prefix.is_empty() {
            self.index().insert(prefix, &backend.url);
        }
    }

    /// Forgets the prefixes of a replica that lost its cache (ejected: it may have
    /// restarted).
    pub fn forget(&self, backend: &Backend) {
        if self.policy == Policy::Prefix {
            self.index().forget(&backend.url);
        }
    }

    /// The smallest load score; ties go round-robin so equal replicas share the work.
    fn least_loaded(&self, candidates: &[Arc<Backend>]) -> Arc<Backend> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = candidates.len();
        let mut best = &candidates[start % n];
        let mut best_score = best.score();
        for k in 1..n {
            let b = &candidates[(start + k) % n];
            let s = b.score();
            if s < best_score {
                best = b;
                best_score = s;
            }
        }
        best.clone()
    }

    /// The most in-flight requests a replica may have and still take one more.
    fn bound(&self, candidates: &[Arc<Backend>]) -> usize {
        let total: usize = candidates.iter().map(|b| b.inflight()).sum();
        ((self.load_factor * (total + 1) as f64) / candidates.len() as f64).ceil() as usize
    }

    fn by_prefix(&self, candidates: &[Arc<Backend>], prefix: &[u64]) -> (Arc<Backend>, Reason) {
        let Some(&first) = prefix.first() else {
            return (self.least_loaded(candidates), Reason::NoPrompt);
        };
        let bound = self.bound(candidates).max(1);
        let within = |b: &Arc<Backend>| b.inflight() < bound;
        // The replicas holding the longest match that are within their bound; the
        // least busy of them.
        let matches: Vec<(&Arc<Backend>, usize)> = self
            .index()
            .matches(prefix)
            .into_iter()
            .filter_map(|(owner, blocks)| {
                candidates
                    .iter()
                    .find(|b| b.url == owner)
                    .map(|b| (b, blocks))
            })
            .collect();
        let passed_over = matches.iter().any(|(b, _)| !within(b));
        if let Some((b, _)) = matches
            .iter()
            .filter(|(b, _)| within(b))
            .max_by_key(|(b, blocks)| (*blocks, std::cmp::Reverse(b.inflight())))
        {
            return ((*b).clone(), Reason::PrefixMatch);
        }
        // A prefix no replica holds yet may go only where the load is at most the
        // mean (bound with factor 1): new prefixes spread evenly, and the load
        // factor's slack is left for the prefixes that have a cache to follow.
        let total: usize = candidates.iter().map(|b| b.inflight()).sum();
        let even = (total + 1).div_ceil(candidates.len()).max(1);
        for (i, b) in hash_order(candidates, first).into_iter().enumerate() {
            if b.inflight() < even {
                let reason = if passed_over || i > 0 {
                    Reason::PrefixOverloaded
                } else {
                    Reason::PrefixHash
                };
                return (b, reason);
            }
        }
        (self.least_loaded(candidates), Reason::PrefixOverloaded)
    }
}

/// `candidates` in rendezvous order for `key`, favourite first.
fn hash_order(candidates: &[Arc<Backend>], key: u64) -> Vec<Arc<Backend>> {
    let mut v: Vec<(u64, Arc<Backend>)> = candidates
        .iter()
        .map(|b| (weight(key, &b.url), b.clone()))
        .collect();
    v.sort_by_key(|(w, _)| std::cmp::Reverse(*w));
    v.into_iter().map(|(_, b)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Source;
    use crate::prefix::{block_hashes, BlockConfig};

    fn replicas(n: usize) -> Vec<Arc<Backend>> {
        (0..n)
            .map(|i| Arc::new(Backend::new(&format!("http://r{i}"), Source::Static)))
            .collect()
    }

    #[test]
    fn round_robin_takes_turns() {
        let r = replicas(3);
        let p = Picker::new(Policy::RoundRobin, 1.25, 100);
        let urls: Vec<_> = (0..6)
            .map(|_| p.pick(&r, RouteKey::default()).unwrap().0.url.clone())
            .collect();
        assert_eq!(urls[0..3], urls[3..6]);
        assert_ne!(urls[0], urls[1]);
        assert!(p.pick(&[], RouteKey::default()).is_none());
    }

    #[test]
    fn least_loaded_avoids_busy_replicas() {
        let r = replicas(3);
        let _busy = [r[0].start_request(), r[1].start_request()];
        let p = Picker::new(Policy::LeastLoaded, 1.25, 100);
        for _ in 0..5 {
            assert_eq!(p.pick(&r, RouteKey::default()).unwrap().0.url, r[2].url);
        }
    }

    #[test]
    fn sessions_stick_and_survive_losing_another_replica() {
        let r = replicas(4);
        let p = Picker::new(Policy::Session, 1.25, 100);
        let key = RouteKey {
            session: Some("conversation-7"),
            prefix: &[],
        };
        let (first, reason) = p.pick(&r, key).unwrap();
        assert_eq!(reason, Reason::Session);
        let others: Vec<_> = r.iter().filter(|b| b.url != first.url).cloned().collect();
        let mut fewer = vec![first.clone()];
        fewer.extend(others.into_iter().take(2));
        assert_eq!(p.pick(&fewer, key).unwrap().0.url, first.url);
        assert_eq!(
            p.pick(&r, RouteKey::default()).unwrap().1,
            Reason::NoSessionKey
        );
    }

    #[test]
    fn prefix_follows_the_longest_match_within_its_load_bound() {
        let r = replicas(3);
        let p = Picker::new(Policy::Prefix, 1.5, 1000);
        let cfg = BlockConfig {
            block_chars: 8,
            max_blocks: 64,
        };
        let system = "You are a terse assistant who answers in one line. ";
        let a = block_hashes("m", &format!("{system}What is 2+2?"), cfg);
        let b = block_hashes("m", &format!("{system}Name a colour."), cfg);
        let key = |h| RouteKey {
            session: None,
            prefix: h,
        };
        let (first, reason) = p.pick(&r, key(&a)).unwrap();
        assert_eq!(reason, Reason::PrefixHash);
        p.record(&a, &first);
        let (second, reason) = p.pick(&r, key(&b)).unwrap();
        assert_eq!(
            (second.url.clone(), reason),
            (first.url.clone(), Reason::PrefixMatch)
        );
        // Busy favourite: two in flight against a bound of ceil(1.5 * 3 / 3) = 2.
        let _g = [first.start_request(), first.start_request()];
        let (third, reason) = p.pick(&r, key(&b)).unwrap();
        assert_ne!(third.url, first.url);
        assert_eq!(reason, Reason::PrefixOverloaded);
        // A replica that restarted lost its cache.
        p.forget(&first);
        drop(_g);
        assert_eq!(p.pick(&r, key(&b)).unwrap().1, Reason::PrefixHash);
        assert_eq!(p.pick(&r, key(&[])).unwrap().1, Reason::NoPrompt);
    }

    #[test]
    fn policies_parse_with_a_helpful_error() {
        assert_eq!("prefix".parse::<Policy>(), Ok(Policy::Prefix));
        let e = "fastest".parse::<Policy>().unwrap_err();
        assert!(e.contains("round-robin"), "{e}");
    }
}
