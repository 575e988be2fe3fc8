//! Counts reference prompts whose greedy continuation we reproduce exactly
//! (diagnostics for numerical fidelity against another implementation).
//! usage: greedy_agree MODEL REFERENCE.json   (entries with prompt_ids and greedy_ids)
#[path = "env_options.rs"]
mod env_options;
use hangar_kernels::ThreadPool;
use hangar_models::{KvCache, LogitsWanted, SeqInput, Workspace};

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

fn list(s: &str, key: &str) -> Vec<Vec<u32>> {
    s.split(&format!("\"{key}\": ["))
        .skip(1)
        .map(|p| {
            p[..p.find(']').expect("end")]
                .split(',')
                .map(|v| v.trim().parse().expect("id"))
                .collect()
        })
        .collect()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let model = env_options::load(&a[1]);
    let text = std::fs::read_to_string(&a[2])
        .expect("reference")
        .replace("\":[", "\": [");
    let (prompts, wants) = (list(&text, "prompt_ids"), list(&text, "greedy_ids"));
    let pool = ThreadPool::new(2);
    let (mut exact, mut steps_ok, mut steps) = (0, 0, 0);
    for (p, want) in prompts.iter().zip(&wants) {
        let mut kv = KvCache::for_single_sequence(&model.cfg, 16, p.len() + want.len() + 1);
        let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
        let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
        let mut ws = Workspace::default();
        let mut logits = Vec::new();
        let seq = SeqInput {
            tokens: p,
            start_pos: 0,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        model
            .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
            .expect("forward");
        let mut got = vec![argmax(&logits)];
        while got.len() < want.len() {
            let last = [*got.last().expect("one")];
            let seq = SeqInput {
                tokens: &last,
                start_pos: p.len() + got.len() - 1,
                block_tables: &tables,
                logits: LogitsWanted::Last,
            };
            model
                .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
                .expect("forward");
            got.push(argmax(&logits));
        }
        let same = got.iter().zip(want).take_while(|(x, y)| x == y).count();
        steps_ok += same;
        steps += want.len();
        if same == want.len() {
            exact += 1;
        }
    }
    println!(
        "exact {exact}/{}  matching prefix tokens {steps_ok}/{steps}",
        prompts.len()
    );
}
