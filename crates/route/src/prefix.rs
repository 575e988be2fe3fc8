//! Prompt prefixes as chains of block hashes, and the index of which replica was last
//! sent each prefix. Knows nothing about HTTP or about how replicas are chosen.
//!
//! A prompt (the completion prompt, or chat messages rendered to one canonical text)
//! is cut into fixed-size blocks of characters; block `i`'s hash covers blocks `0..=i`
//! and the model name, so two prompts share hash `i` exactly when they share their
//! first `i + 1` blocks. The replica that was sent a prefix most recently most likely
//! holds its KV blocks in its prefix cache.

use serde_json::Value;
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// How prompts are cut into blocks.
#[derive(Debug, Clone, Copy)]
pub struct BlockConfig {
    /// Characters per block.
    pub block_chars: usize,
    /// Blocks hashed at most (longer prompts are matched on their first blocks).
    pub max_blocks: usize,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            block_chars: 128,
            max_blocks: 256,
        }
    }
}

/// The canonical text of an inference request body, if it has a prompt: the
/// completion `prompt` (the first one of a list), the chat `messages` as
/// `role\ncontent\n` lines, or KServe's `text_input` / the first string input tensor.
pub fn prompt_text(body: &Value) -> Option<String> {
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        let mut out = String::new();
        for m in messages {
            out.push_str(m.get("role").and_then(Value::as_str).unwrap_or(""));
            out.push('\n');
            match m.get("content") {
                Some(Value::String(s)) => out.push_str(s),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        if let Some(t) = p.get("text").and_then(Value::as_str) {
                            out.push_str(t);
                        }
                    }
                }
                _ => {}
            }
            out.push('\n');
        }
        return Some(out);
    }
    if let Some(p) = body.get("prompt") {
        return match p {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => match items.first() {
                Some(Value::String(s)) => Some(s.clone()),
                // Token ids: their decimal text is as good a key as any.
                Some(Value::Number(_)) => Some(join_tokens(items)),
                Some(Value::Array(ids)) => Some(join_tokens(ids)),
                _ => None,
            },
            _ => None,
        };
    }
    if let Some(s) = body.get("text_input").and_then(Value::as_str) {
        return Some(s.to_string());
    }
    body.get("inputs")
        .and_then(Value::as_array)
        .and_then(|inputs| {
            inputs.iter().find_map(|i| {
                i.get("data")
                    .and_then(Value::as_array)
                    .and_then(|d| d.first())
                    .and_then(Value::as_str)
            })
        })
        .map(str::to_string)
}

fn join_tokens(items: &[Value]) -> String {
    let mut out = String::new();
    for v in items {
        if let Some(n) = v.as_i64() {
            out.push_str(&n.to_string());
            out.push(' ');
        }
    }
    out
}

/// The chained block hashes of `text` for `model`: one per full block (at most
/// `cfg.max_blocks`); a text shorter than one block gets one hash of all of it.
pub fn block_hashes(model: &str, text: &str, cfg: BlockConfig) -> Vec<u64> {
    let block = cfg.block_chars.max(1);
    let mut h = DefaultHasher::new();
    model.hash(&mut h);
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    for (i, c) in text.char_indices() {
        if out.len() >= cfg.max_blocks {
            break;
        }
        chars += 1;
        if chars == block {
            let end = i + c.len_utf8();
            text[start..end].hash(&mut h);
            out.push(h.finish());
            start = end;
            chars = 0;
        }
    }
    if out.is_empty() && !text.is_empty() {
        text.hash(&mut h);
        out.push(h.finish());
    }
    out
}

/// Replicas remembered per block hash: the most recent ones (a prefix that spilled
/// over to another replica under load is cached on both).
const OWNERS_PER_BLOCK: usize = 4;

struct Entry {
    /// Most recent first.
    owners: Vec<Arc<str>>,
    tick: u64,
}

/// Which replicas (by base URL) were last sent each prefix block hash; bounded, the
/// least recently used entries go first.
pub struct PrefixIndex {
    entries: HashMap<u64, Entry>,
    capacity: usize,
    tick: u64,
}

impl PrefixIndex {
    pub fn new(capacity: usize) -> Self {
        PrefixIndex {
            entries: HashMap::new(),
            capacity: capacity.max(16),
            tick: 0,
        }
    }

    /// The replicas holding a matching prefix of `hashes`, each with the number of
    /// blocks of its longest match; longest first, most recent first among equals.
    pub fn matches(&self, hashes: &[u64]) -> Vec<(Arc<str>, usize)> {
        let mut out: Vec<(Arc<str>, usize)> = Vec::new();
        for (i, h) in hashes.iter().enumerate().rev() {
            if let Some(e) = self.entries.get(h) {
                for owner in &e.owners {
                    if !out.iter().any(|(o, _)| o == owner) {
                        out.push((owner.clone(), i + 1));
                    }
                }
            }
        }
        out
    }

    /// Records that `owner` was sent the prompt of `hashes`.
    pub fn insert(&mut self, hashes: &[u64], owner: &Arc<str>) {
        self.tick += 1;
        for h in hashes {
            let e = self.entries.entry(*h).or_insert_with(|| Entry {
                owners: Vec::new(),
                tick: 0,
            });
            e.owners.retain(|o| o != owner);
            e.owners.insert(0, owner.clone());
            e.owners.truncate(OWNERS_PER_BLOCK);
            e.tick = self.tick;
        }
        if self.entries.len() > self.capacity {
            self.evict();
        }
    }

    /// Forgets every prefix of `owner` (a replica that restarted lost its cache).
    pub fn forget(&mut self, owner: &str) {
        for e in self.entries.values_mut() {
            e.owners.retain(|o| &**o != owner);
        }
        self.entries.retain(|_, e| !e.owners.is_empty());
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the least recently used quarter of the entries.
    fn evict(&mut self) {
        let mut ticks: Vec<u64> = self.entries.values().map(|e| e.tick).collect();
        ticks.sort_unstable();
        let cut = ticks[ticks.len() / 4];
        self.entries.retain(|_, e| e.tick > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CFG: BlockConfig = BlockConfig {
        block_chars: 4,
        max_blocks: 100,
    };

    #[test]
    fn shared_prefixes_share_their_leading_hashes() {
        let a = block_hashes("m", "abcdefghXXXX", CFG);
        let b = block_hashes("m", "abcdefghYYYY", CFG);
        assert_eq!(a.len(), 3);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        // Another model never matches.
        assert_ne!(block_hashes("n", "abcdefghXXXX", CFG)[0], a[0]);
    }

    #[test]
    fn blocks_count_characters_not_bytes() {
        let h = block_hashes("m", "ééééééé", CFG);
        assert_eq!(h.len(), 1);
        assert_eq!(block_hashes("m", "ab", CFG).len(), 1);
        assert!(block_hashes("m", "", CFG).is_empty());
        let capped = BlockConfig {
            block_chars: 1,
            max_blocks: 3,
        };
        assert_eq!(block_hashes("m", "abcdefgh", capped).len(), 3);
    }

    #[test]
    fn chat_messages_render_to_one_text() {
        let body = json!({"messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]}
        ]});
        assert_eq!(
            prompt_text(&body).as_deref(),
            Some("system\nbe brief\nuser\nhi\n")
        );
        assert_eq!(
            prompt_text(&json!({"prompt": ["x", "y"]})).as_deref(),
            Some("x")
        );
        assert_eq!(
            prompt_text(&json!({"prompt": [1, 2]})).as_deref(),
            Some("1 2 ")
        );
        assert_eq!(
            prompt_text(&json!({"text_input": "t"})).as_deref(),
            Some("t")
        );
        assert_eq!(prompt_text(&json!({"input": 3})), None);
    }

    #[test]
    fn longest_match_comes_first_and_eviction_keeps_recent_entries() {
        let mut idx = PrefixIndex::new(16);
        let a: Arc<str> = Arc::from("http://a");
        let b: Arc<str> = Arc::from("http://b");
        let p = block_hashes("m", "abcdefghijkl", CFG);
        idx.insert(&p[..1], &a);
        idx.insert(&p[..3], &b);
        let m = idx.matches(&p);
        assert_eq!(m[0], (b.clone(), 3));
        // Block 0 went to both; forgetting b leaves a's match.
        idx.forget("http://b");
        assert_eq!(idx.matches(&p), vec![(a.clone(), 1)]);
        for i in 0..100u64 {
            idx.insert(&[i], &a);
        }
        assert!(idx.len() <= 16);
        assert_eq!(idx.matches(&[99]).len(), 1);
    }
}
