//! The harness on the default model (Gemma 3 270M): the batched, prefix-sharing
//! log-likelihoods equal an independent full forward pass, the committed
//! multiple-choice file scores sanely, and rolling log-likelihood matches a direct sum.

use hangar_engine::LoadedModel;
use hangar_eval::{evaluate, GenQuery, LocalScorer, LoglikQuery, RunOptions, Scorer, TaskSet};
use hangar_models::{KvCache, LogitsWanted, SeqInput, Workspace};
use std::collections::BTreeMap;
use std::path::Path;

fn scorer() -> Option<LocalScorer> {
    let path = hangar_testkit::model_path()?;
    let lm = LoadedModel::load(&path, 2).expect("load the default model");
    Some(LocalScorer::new(lm, BTreeMap::new()))
}

/// Sum of log p(tokens[i]) for i >= from, by one plain forward over all tokens.
fn direct_loglik(lm: &LoadedModel, tokens: &[u32], from: usize) -> f64 {
    let m = &lm.model;
    let mut kv = KvCache::for_single_sequence(&m.cfg, 16, tokens.len() + 16);
    let table: Vec<u32> = (0..(tokens.len() + 16).div_ceil(16) as u32).collect();
    let tables: Vec<&[u32]> = vec![&table; kv.n_groups()];
    let seq = SeqInput {
        tokens,
        start_pos: 0,
        block_tables: &tables,
        logits: LogitsWanted::All,
    };
    let mut logits = Vec::new();
    m.forward(
        &lm.pool,
        &[seq],
        &mut kv,
        &mut Workspace::default(),
        &mut logits,
    )
    .expect("forward");
    let v = m.cfg.vocab_size;
    (from..tokens.len())
        .map(|i| {
            hangar_engine::perplexity::log_prob(&logits[(i - 1) * v..i * v], tokens[i] as usize)
        })
        .sum()
}

#[test]
fn batched_shared_prefix_logliks_equal_a_direct_forward() {
    let Some(mut s) = scorer() else { return };
    // Contexts of several lengths around the 16-token block size, so both whole
    // shared blocks and partial tails are exercised.
    let long = "Once upon a time, in a small village by the sea, there lived an old fisherman who";
    let queries = vec![
        LoglikQuery {
            context: "The capital of France is".into(),
            continuations: vec![
                " Paris".into(),
                " Berlin".into(),
                " a city of light and rain".into(),
            ],
        },
        LoglikQuery {
            context: long.into(),
            continuations: vec![" loved the sea".into(), " hated fish".into()],
        },
        LoglikQuery {
            context: format!("{long} went out every morning. One day he"),
            continuations: vec![" caught a golden fish".into(), " stayed home".into()],
        },
    ];
    let batched = s.loglikelihood(&queries).unwrap();
    for (q, got) in queries.iter().zip(&batched) {
        for (c, g) in q.continuations.iter().zip(got) {
            let (ctx, cont) = s.encode_pair(&q.context, c);
            let mut all = ctx.clone();
            all.extend_from_slice(&cont);
            let want = direct_loglik(s.model(), &all, ctx.len());
            assert_eq!(g.tokens, cont.len());
            assert!(
                (g.logprob - want).abs() < 2e-3 * (1.0 + want.abs()),
                "{c:?} after {:?}: batched {} direct {want}",
                q.context,
                g.logprob
            );
            assert!(g.logprob < 0.0);
        }
    }
    // One query at a time gives the same numbers as the batch.
    let alone = s.loglikelihood(&queries[1..2]).unwrap();
    for (a, b) in alone[0].iter().zip(&batched[1]) {
        assert!((a.logprob - b.logprob).abs() < 1e-3, "{a:?} {b:?}");
    }
    // The plausible continuation wins.
    assert!(batched[0][0].logprob > batched[0][1].logprob);
}

#[test]
fn committed_multiple_choice_task_scores_sanely() {
    let Some(mut s) = scorer() else { return };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/basic_mc.jsonl");
    let set = hangar_eval::task::load(&path).unwrap();
    assert_eq!(set.len(), 20);
    let opts = RunOptions {
        task: "basic_mc".into(),
        batch: 8,
        ..RunOptions::default()
    };
    let mut calls = 0;
    let r = evaluate(&mut s, &set, &opts, &mut |_, _| calls += 1).unwrap();
    assert_eq!(calls, 3);
    assert_eq!(r.items.len(), 20);
    let acc = r.metrics["acc"];
    // Chance is 0.25; these questions are easy for any language model.
    assert!(acc >= 0.7, "acc {acc}");
    assert!(r.metrics["acc_norm"] >= 0.5);
    assert!(r.metrics["acc_ci_low"] <= acc && acc <= r.metrics["acc_ci_high"]);
    let run = r.to_tracking_run();
    assert_eq!(run.params["task"], "basic_mc");
    assert_eq!(run.artifacts[0].0, "items.jsonl");
    assert_eq!(
        String::from_utf8_lossy(&run.artifacts[0].1).lines().count(),
        20
    );
}

#[test]
fn rolling_loglik_matches_a_direct_sum_and_gives_sane_bits_per_byte() {
    let Some(mut s) = scorer() else { return };
    let text = "The river ran past the mill and under the old stone bridge, where children \
                threw sticks into the water and raced to see whose would reach the far side first.";
    let got = s.loglikelihood_rolling(&[text.to_string()]).unwrap()[0];
    let lm = s.model();
    let mut toks = vec![lm.tokenizer.bos_id().unwrap()];
    toks.extend(lm.tokenizer.encode(text, false, false));
    let want = direct_loglik(lm, &toks, 1);
    assert!((got - want).abs() < 2e-3 * want.abs(), "{got} {want}");
    // Small windows see less context: never better than one window over everything.
    s.rolling_window = 8;
    let windowed = s.loglikelihood_rolling(&[text.to_string()]).unwrap()[0];
    assert!(windowed < got + 1.0, "{windowed} {got}");
    s.rolling_window = 1024;
    let set = TaskSet::Rolling(vec![hangar_eval::RollingItem { text: text.into() }]);
    let r = evaluate(&mut s, &set, &RunOptions::default(), &mut |_, _| {}).unwrap();
    let bpb = r.metrics["bits_per_byte"];
    assert!(bpb > 0.2 && bpb < 3.0, "bits per byte {bpb}");
    let by = text.len() as f64;
    assert!((bpb - (-got / (by * std::f64::consts::LN_2))).abs() < 1e-9);
}

#[test]
fn generation_is_scored_against_its_references() {
    let Some(mut s) = scorer() else { return };
    let prompt = "Count: one, two, three,";
    let out = s
        .generate(&[GenQuery {
            prompt: prompt.into(),
            max_tokens: 6,
            stop: vec!["\n".into()],
        }])
        .unwrap()
        .remove(0);
    assert!(!out.is_empty());
    let set = TaskSet::Generation(vec![
        hangar_eval::GenItem {
            prompt: prompt.into(),
            references: vec![out.clone()],
            stop: vec!["\n".into()],
            max_tokens: Some(6),
        },
        hangar_eval::GenItem {
            prompt: prompt.into(),
            references: vec!["zebra xylophone".into()],
            stop: vec!["\n".into()],
            max_tokens: Some(6),
        },
    ]);
    let r = evaluate(&mut s, &set, &RunOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(r.items[0]["exact_match"], 1.0);
    assert_eq!(r.items[0]["rougeL"], 1.0);
    assert_eq!(r.items[1]["exact_match"], 0.0);
    assert!((r.metrics["exact_match"] - 0.5).abs() < 1e-12);
}
