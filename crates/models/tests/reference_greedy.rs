//! Greedy continuations of the default model equal llama.cpp's (tests/data/reference).

use hangar_kernels::ThreadPool;
use hangar_models::{KvCache, LogitsWanted, Model, SeqInput, Workspace};
use hangar_testkit::{model_path, repo_file};

fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

/// Greedy decode of `n` tokens after `prompt` (prefilled in one call), one sequence.
fn greedy(model: &Model, pool: &ThreadPool, prompt: &[u32], n: usize) -> Vec<u32> {
    greedy_chunked(model, pool, prompt, n, prompt.len().max(1)).0
}

/// Logits at every step of `prompt` followed by `forced` (teacher forcing): row i
/// predicts forced[i].
fn forced_logits(
    model: &Model,
    pool: &ThreadPool,
    prompt: &[u32],
    forced: &[u32],
) -> Vec<Vec<f32>> {
    let mut kv = KvCache::for_single_sequence(&model.cfg, 16, prompt.len() + forced.len() + 1);
    let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let seq = SeqInput {
        tokens: prompt,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::Last,
    };
    model
        .forward(pool, &[seq], &mut kv, &mut ws, &mut logits)
        .unwrap();
    let mut rows = vec![logits.clone()];
    for (i, &t) in forced[..forced.len() - 1].iter().enumerate() {
        let seq = SeqInput {
            tokens: &[t],
            start_pos: prompt.len() + i,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        model
            .forward(pool, &[seq], &mut kv, &mut ws, &mut logits)
            .unwrap();
        rows.push(logits.clone());
    }
    rows
}

/// Gemma 3 270M amplifies rounding differences (our own SIMD levels disagree by ~0.25
/// logits), so free-running greedy text matches llama.cpp's only up to the first
/// near-tie. The fidelity criterion is therefore: every one of llama.cpp's greedy
/// choices, fed back as in teacher forcing, is our top token or within a near-tie
/// margin of it; the first token matches exactly; and free-running agreement is
/// reported (and must not regress below half). The first step is prefill, later steps
/// decode, so both paths are covered.
#[test]
fn greedy_matches_llama_cpp_on_reference_prompts() {
    let Some(path) = model_path() else { return };
    let model = Model::load(path).unwrap();
    let pool = ThreadPool::new(2);
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("tests/data/reference/reference.json")).unwrap(),
    )
    .unwrap();
    let cases = reference["greedy"].as_array().unwrap();
    let (mut exact, mut top1, mut steps, mut worst) = (0, 0, 0, 0f32);
    for case in cases {
        let ids = |k: &str| -> Vec<u32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, want) = (ids("prompt_ids"), ids("greedy_ids"));
        let rows = forced_logits(&model, &pool, &prompt, &want);
        for (row, &w) in rows.iter().zip(&want) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let gap = max - row[w as usize];
            worst = worst.max(gap);
            top1 += (gap == 0.0) as usize;
            steps += 1;
            assert!(
                gap < 0.4,
                "{:?}: llama.cpp's token {w} is {gap} below our best logit",
                case["prompt"]
            );
        }
        let got = greedy(&model, &pool, &prompt, want.len());
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!(
            "{:?}: {same}/{} free-running greedy tokens equal",
            case["prompt"],
            want.len()
        );
        exact += (same == want.len()) as usize;
    }
    eprintln!("teacher-forced top-1 agreement {top1}/{steps}, worst gap {worst:.3}; free-running exact {exact}/{}", cases.len());
    assert!(
        top1 * 10 >= steps * 9,
        "teacher-forced top-1 agreement {top1}/{steps} is below 90%"
    );
    assert!(
        exact * 2 >= cases.len(),
        "only {exact} of {} prompts reproduce llama.cpp's 16 greedy tokens",
        cases.len()
    );
}

/// The reference cases of `file` (prompt ids, llama.cpp's greedy ids).
fn cases(file: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file(file)).unwrap()).unwrap();
    let list = v.get("greedy").or_else(|| v.get("cases")).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = |k: &str| -> Vec<u32> {
                c[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            };
            (ids("prompt_ids"), ids("greedy_ids"))
        })
        .collect()
}

/// With ggml numerics the arithmetic is llama.cpp's, bit for bit, so every greedy
/// continuation must be identical: the shared reference prompts, 40 more prompts,
/// and prompts past the 512-token sliding window.
#[test]
fn ggml_numerics_reproduce_llama_cpp_greedy_tokens_exactly() {
    let Some(path) = model_path() else { return };
    let mut model = Model::load(path).unwrap();
    model.set_numerics(hangar_models::Numerics::Ggml);
    let pool = ThreadPool::new(2);
    for file in [
        "tests/data/reference/reference.json",
        "tests/data/greedy40/reference.json",
    ] {
        let cases = cases(file);
        let mut exact = 0;
        for (prompt, want) in &cases {
            let got = greedy(&model, &pool, prompt, want.len());
            if &got == want {
                exact += 1;
            } else {
                eprintln!("{file}: prompt {prompt:?}: got {got:?}, llama.cpp {want:?}");
            }
        }
        eprintln!("{file}: {exact}/{} prompts identical", cases.len());
        assert_eq!(
            exact,
            cases.len(),
            "{file}: {exact}/{} identical",
            cases.len()
        );
    }
}

#[test]
fn batched_sequences_equal_separate_runs() {
    // Two sequences at different positions in one call give the same logits as alone.
    let Some(path) = model_path() else { return };
    let model = Model::load(path).unwrap();
    let pool = ThreadPool::new(2);
    let a: Vec<u32> = vec![2, 818, 5279, 529, 7001, 563];
    let b: Vec<u32> = vec![2, 818, 3823, 8864, 37423];
    let vocab = model.cfg.vocab_size;
    let run_alone = |p: &[u32]| {
        let mut kv = KvCache::for_single_sequence(&model.cfg, 16, 32);
        let table: Vec<u32> = (0..2).collect();
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
            .unwrap();
        logits
    };
    let (la, lb) = (run_alone(&a), run_alone(&b));
    let groups = hangar_models::kv::KvLayout::for_model(&model.cfg).n_groups();
    let mut kv = KvCache::new(&model.cfg, 16, &vec![4; groups]);
    let (ta, tb): (Vec<u32>, Vec<u32>) = (vec![0, 1], vec![2, 3]);
    let tables_a: Vec<&[u32]> = vec![&ta; groups];
    let tables_b: Vec<&[u32]> = vec![&tb; groups];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let seqs = [
        SeqInput {
            tokens: &a,
            start_pos: 0,
            block_tables: &tables_a,
            logits: LogitsWanted::Last,
        },
        SeqInput {
            tokens: &b,
            start_pos: 0,
            block_tables: &tables_b,
            logits: LogitsWanted::Last,
        },
    ];
    assert_eq!(
        model
            .forward(&pool, &seqs, &mut kv, &mut ws, &mut logits)
            .unwrap(),
        2
    );
    let close = |x: &[f32], y: &[f32]| {
        x.iter()
            .zip(y)
            .all(|(p, q)| (p - q).abs() < 1e-3 * (1.0 + q.abs()))
    };
    assert!(close(&logits[..vocab], &la));
    assert!(close(&logits[vocab..], &lb));
    assert_eq!(argmax(&logits[..vocab]), argmax(&la));
}

#[test]
fn bad_token_and_short_block_table_are_errors() {
    let Some(path) = model_path() else { return };
    let model = Model::load(path).unwrap();
    let pool = ThreadPool::new(1);
    let mut kv = KvCache::for_single_sequence(&model.cfg, 16, 16);
    let table: Vec<u32> = vec![0];
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let bad = [u32::MAX];
    let seq = SeqInput {
        tokens: &bad,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::Last,
    };
    assert!(model
        .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
        .is_err());
    let long = vec![2u32; 17];
    let seq = SeqInput {
        tokens: &long,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::Last,
    };
    assert!(model
        .forward(&pool, &[seq], &mut kv, &mut ws, &mut logits)
        .is_err());
}

#[test]
fn observer_sees_every_matrix_input_of_every_layer() {
    let Some(path) = model_path() else { return };
    let model = Model::load(path).unwrap();
    let pool = ThreadPool::new(2);
    let mut kv = KvCache::for_single_sequence(&model.cfg, 16, 16);
    let table: Vec<u32> = vec![0];
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let toks = [2u32, 818, 3823];
    let seq = SeqInput {
        tokens: &toks,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::Last,
    };
    let mut seen = Vec::new();
    let mut obs = |layer: usize, tap: hangar_models::Tap, rows: &[f32], width: usize| {
        // Every token's rows for the layers; only the logits row for the output.
        let n = if tap == hangar_models::Tap::OutputIn {
            1
        } else {
            3
        };
        assert_eq!(rows.len(), n * width);
        assert!(rows.iter().all(|v| v.is_finite()));
        seen.push((layer, tap, width));
    };
    model
        .forward_observed(&pool, &[seq], &mut kv, &mut ws, &mut logits, Some(&mut obs))
        .unwrap();
    let cfg = &model.cfg;
    assert_eq!(seen.len(), 4 * cfg.n_layers + 1);
    assert_eq!(seen[0], (0, hangar_models::Tap::AttnIn, cfg.d_model));
    assert_eq!(seen[3], (0, hangar_models::Tap::FfnDownIn, cfg.ffn_dim));
    assert_eq!(
        seen[4 * cfg.n_layers],
        (cfg.n_layers, hangar_models::Tap::OutputIn, cfg.d_model)
    );
}

/// Greedy decode after a long prompt prefilled in chunks of `chunk` tokens.
fn greedy_chunked(
    model: &Model,
    pool: &ThreadPool,
    prompt: &[u32],
    n: usize,
    chunk: usize,
) -> (Vec<u32>, Vec<f32>) {
    let mut kv = KvCache::for_single_sequence(&model.cfg, 16, prompt.len() + n + 1);
    let table: Vec<u32> = (0..kv.blocks_in_group(0) as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let mut ws = Workspace::default();
    let mut logits = Vec::new();
    let mut pos = 0;
    while pos < prompt.len() {
        let end = (pos + chunk).min(prompt.len());
        let want = if end == prompt.len() {
            LogitsWanted::Last
        } else {
            LogitsWanted::None
        };
        let seq = SeqInput {
            tokens: &prompt[pos..end],
            start_pos: pos,
            block_tables: &tables,
            logits: want,
        };
        model
            .forward(pool, &[seq], &mut kv, &mut ws, &mut logits)
            .unwrap();
        pos = end;
    }
    let first_logits = logits.clone();
    let mut out = vec![argmax(&logits)];
    while out.len() < n {
        let last = [*out.last().unwrap()];
        let seq = SeqInput {
            tokens: &last,
            start_pos: prompt.len() + out.len() - 1,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        };
        model
            .forward(pool, &[seq], &mut kv, &mut ws, &mut logits)
            .unwrap();
        out.push(argmax(&logits));
    }
    (out, first_logits)
}

#[test]
fn sliding_window_past_512_tokens_matches_llama_cpp() {
    let Some(path) = model_path() else { return };
    let model = Model::load(path).unwrap();
    let pool = ThreadPool::new(2);
    let data: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("tests/data/long/long_context.json")).unwrap(),
    )
    .unwrap();
    for case in data["cases"].as_array().unwrap() {
        let ids = |k: &str| -> Vec<u32> {
            case[k]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (prompt, want) = (ids("prompt_ids"), ids("greedy_ids"));
        assert!(prompt.len() > 512);
        let rows = forced_logits(&model, &pool, &prompt, &want);
        let mut top1 = 0;
        for (row, &w) in rows.iter().zip(&want) {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let gap = max - row[w as usize];
            top1 += (gap == 0.0) as usize;
            assert!(
                gap < 0.4,
                "{} prompt tokens: llama.cpp's token {w} is {gap} below our best",
                prompt.len()
            );
        }
        eprintln!(
            "{} prompt tokens: teacher-forced top-1 {top1}/{}",
            prompt.len(),
            want.len()
        );
        assert!(top1 >= want.len() - 3);
        // A broken window (attending too far back, or too little) changes the
        // continuation entirely; chunked prefill must agree with this path.
        let (chunked, first) = greedy_chunked(&model, &pool, &prompt, 2, 100);
        assert_eq!(chunked[0], argmax(&rows[0]));
        assert_eq!(
            first, rows[0],
            "chunked prefill must give bit-identical logits"
        );
    }
}

#[test]
fn chunked_prefill_equals_one_shot_past_the_window() {
    let Some(path) = model_path() else { return };
    let model = Model::load(path).unwrap();
    let pool = ThreadPool::new(2);
    let prompt: Vec<u32> = (0..700u32).map(|i| 2 + (i * 7919) % 20000).collect();
    let (a, la) = greedy_chunked(&model, &pool, &prompt, 4, 700);
    let (b, lb) = greedy_chunked(&model, &pool, &prompt, 4, 97);
    let max_diff = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        max_diff < 0.05,
        "chunked prefill changes logits by {max_diff}"
    );
    assert_eq!(a[0], b[0]);
}

/// `LogitsWanted::Greedy` rows give the argmax of the `Last` logits of the same batch
/// outside their skip lists, and those skipped tokens' logits: on the packed output
/// head (fast numerics, default packing; no logits written) and on an unpacked one
/// (packing off: full logits, then the pick). The ggml numerics refuse it.
#[test]
fn greedy_rows_pick_the_argmax_of_the_last_logits() {
    use hangar_models::{LoadOptions, Numerics, Packing};
    let Some(path) = model_path() else { return };
    let pool = ThreadPool::new(2);
    let prompts: [&[u32]; 3] = [
        &[2, 818, 5279, 529, 7001, 563],
        &[2, 818, 3823, 8864, 37423],
        &[2, 9259, 236764],
    ];
    for (packing, fused) in [(Packing::Auto, true), (Packing::None, false)] {
        let opts = LoadOptions {
            numerics: Numerics::Fast,
            packing,
        };
        let model = Model::load_with(&path, opts).unwrap();
        assert_eq!(model.greedy_head_fused(&pool), fused, "{packing:?}");
        let vocab = model.cfg.vocab_size;
        let groups = hangar_models::kv::KvLayout::for_model(&model.cfg).n_groups();
        let run = |want: LogitsWanted, skips: Vec<Vec<u32>>| {
            let mut kv = KvCache::new(&model.cfg, 16, &vec![3; groups]);
            let tables: Vec<Vec<u32>> = (0..3).map(|i| vec![i as u32]).collect();
            let refs: Vec<Vec<&[u32]>> =
                tables.iter().map(|t| vec![t.as_slice(); groups]).collect();
            let seqs: Vec<SeqInput> = prompts
                .iter()
                .zip(&refs)
                .map(|(p, r)| SeqInput {
                    tokens: p,
                    start_pos: 0,
                    block_tables: r,
                    logits: want,
                })
                .collect();
            let mut ws = Workspace::default();
            ws.set_greedy_skips(skips);
            let mut logits = Vec::new();
            model
                .forward(&pool, &seqs, &mut kv, &mut ws, &mut logits)
                .unwrap();
            (logits, ws.greedy_picks().to_vec())
        };
        let (logits, none) = run(LogitsWanted::Last, Vec::new());
        assert!(none.is_empty());
        // Skip lists: nothing; the top token (the pick moves to the runner-up) and an
        // id past the vocabulary; two ordinary tokens.
        let tops: Vec<u32> = (0..3)
            .map(|i| argmax(&logits[i * vocab..(i + 1) * vocab]))
            .collect();
        let skips = vec![Vec::new(), vec![tops[1], u32::MAX], vec![5, 7]];
        let (rows, picks) = run(LogitsWanted::Greedy, skips.clone());
        assert!(rows.is_empty(), "greedy rows return no logits");
        assert_eq!(picks.len(), 3);
        for (i, pick) in picks.iter().enumerate() {
            let row = &logits[i * vocab..(i + 1) * vocab];
            let mut masked = row.to_vec();
            for &s in &skips[i] {
                if let Some(v) = masked.get_mut(s as usize) {
                    *v = f32::NEG_INFINITY;
                }
            }
            let want = argmax(&masked);
            assert_eq!(
                (pick.id, pick.value),
                (want, row[want as usize]),
                "{packing:?} seq {i}"
            );
            for (k, &s) in skips[i].iter().enumerate() {
                match row.get(s as usize) {
                    Some(&v) => assert_eq!(pick.skipped[k], v),
                    None => assert!(pick.skipped[k].is_nan()),
                }
            }
        }
    }
    let ggml = Model::load_with(
        &path,
        LoadOptions {
            numerics: Numerics::Ggml,
            packing: Packing::Auto,
        },
    )
    .unwrap();
    assert!(!ggml.greedy_head_fused(&pool));
}
