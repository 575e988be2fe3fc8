//! Writes the activations the observer sees (and the logits) of one evaluation, for
//! comparing numerics layer by layer against another implementation's tensor dump.
//! usage: dump_taps MODEL PROMPT_IDS GEN_IDS EVAL DIR
//! (eval 0 = the prompt batch; eval k = the k-th single-token step over GEN_IDS)
#[path = "env_options.rs"]
mod env_options;
use hangar_kernels::ThreadPool;
use hangar_models::{KvCache, LogitsWanted, SeqInput, Tap, Workspace};
use std::io::Write;

fn ids(s: &str) -> Vec<u32> {
    s.split([',', ' '])
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().expect("id"))
        .collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let model = env_options::load(&a[1]);
    let (prompt, gen) = (ids(&a[2]), ids(&a[3]));
    let want: usize = a[4].parse().expect("eval");
    let dir = std::path::PathBuf::from(&a[5]);
    std::fs::create_dir_all(&dir).expect("dir");
    let pool = ThreadPool::new(2);
    let mut kv = KvCache::for_single_sequence(&model.cfg, 16, prompt.len() + gen.len() + 1);
    let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let mut batches = vec![(prompt.clone(), 0usize)];
    for (i, &g) in gen.iter().enumerate() {
        batches.push((vec![g], prompt.len() + i));
    }
    for (e, (toks, pos)) in batches.iter().enumerate().take(want + 1) {
        let seq = SeqInput {
            tokens: toks,
            start_pos: *pos,
            block_tables: &tables,
            logits: LogitsWanted::All,
        };
        let mut obs = |li: usize, tap: Tap, rows: &[f32], _w: usize| {
            if e != want {
                return;
            }
            let name = format!("{tap:?}-{li}.bin");
            let mut f = std::fs::File::create(dir.join(name)).expect("file");
            for v in rows {
                f.write_all(&v.to_le_bytes()).expect("write");
            }
        };
        model
            .forward_observed(&pool, &[seq], &mut kv, &mut ws, &mut logits, Some(&mut obs))
            .expect("forward");
        if e == want {
            let mut f = std::fs::File::create(dir.join("logits.bin")).expect("file");
            for v in &logits {
                f.write_all(&v.to_le_bytes()).expect("write");
            }
        }
    }
}
