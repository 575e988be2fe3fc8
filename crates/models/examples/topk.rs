//! Prints the top candidates at each greedy step (diagnosing near-ties against a reference).
//! usage: topk MODEL ID,ID,... STEPS
#[path = "env_options.rs"]
mod env_options;
use hangar_kernels::ThreadPool;
use hangar_models::{KvCache, LogitsWanted, SeqInput, Workspace};

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let model = env_options::load(&a[1]);
    let mut toks: Vec<u32> = a[2].split(',').map(|s| s.parse().expect("id")).collect();
    let steps: usize = a[3].parse().expect("steps");
    let pool = ThreadPool::new(2);
    let mut kv = KvCache::for_single_sequence(&model.cfg, 16, toks.len() + steps + 1);
    let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let mut pos = 0;
    let mut new = toks.clone();
    for _ in 0..steps {
        let seq = SeqInput {
            tokens: &new,
            start_pos: pos,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        model
            .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
            .expect("forward");
        pos += new.len();
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&x, &y| logits[y].total_cmp(&logits[x]));
        let top: Vec<String> = idx[..4]
            .iter()
            .map(|&i| format!("{i}:{:.3}", logits[i]))
            .collect();
        println!("{}", top.join("  "));
        new = vec![idx[0] as u32];
        toks.push(idx[0] as u32);
    }
}
