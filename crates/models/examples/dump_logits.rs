//! Writes the last-position logits of each reference prompt as raw f32 (diagnostics:
//! compare against another implementation's logits).
//! usage: dump_logits MODEL reference.json OUT.f32
#[path = "env_options.rs"]
mod env_options;
use hangar_kernels::ThreadPool;
use hangar_models::{KvCache, LogitsWanted, SeqInput, Workspace};
use std::io::Write;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let model = env_options::load(&a[1]);
    let text = std::fs::read_to_string(&a[2]).expect("reference");
    let pool = ThreadPool::new(2);
    let mut out = std::fs::File::create(&a[3]).expect("out");
    // Minimal JSON scan: every "prompt_ids": [..] list in order.
    for part in text.split("\"prompt_ids\": [").skip(1) {
        let ids: Vec<u32> = part[..part.find(']').expect("list end")]
            .split(',')
            .map(|s| s.trim().parse().expect("id"))
            .collect();
        let mut kv = KvCache::for_single_sequence(&model.cfg, 16, ids.len() + 1);
        let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
        let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
        let mut ws = Workspace::default();
        let mut logits = Vec::new();
        let seq = SeqInput {
            tokens: &ids,
            start_pos: 0,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        model
            .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
            .expect("forward");
        for v in &logits {
            out.write_all(&v.to_le_bytes()).expect("write");
        }
    }
}
