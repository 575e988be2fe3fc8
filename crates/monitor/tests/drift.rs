//! Drift verdicts on constructed traffic: an English reference, then same-distribution
//! prompts (no alert), then another language and code (unseen tokens and length shifts
//! alert).

use hangar_monitor::{DriftConfig, DriftMonitor, Observation};

/// A toy tokenizer: one id per lowercase word from a hash, so that words seen in the
/// reference come back with the same id.
fn toks(text: &str) -> Vec<u32> {
    text.split_whitespace()
        .map(|w| {
            w.bytes()
                .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                % 50_000
        })
        .collect()
}

const WORDS: &[&str] = &[
    "the", "model", "answer", "question", "please", "explain", "how", "what", "is", "a", "good",
    "way", "to", "learn", "about", "history", "of", "science", "and", "art",
];

fn english(i: usize) -> String {
    let n = 6 + (i * 7) % 9;
    (0..n)
        .map(|k| WORDS[(i * 13 + k * 5) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

fn obs(text: &str, resp: usize) -> Observation {
    Observation::new(text, toks(text), resp)
}

fn monitor() -> DriftMonitor {
    let mut m = DriftMonitor::new(DriftConfig {
        reference_size: 100,
        window: 60,
        min_current: 30,
        ..Default::default()
    });
    for i in 0..100 {
        m.observe(obs(&english(i), 20 + i % 10));
    }
    m
}

#[test]
fn same_distribution_does_not_alert() {
    let mut m = monitor();
    for i in 100..160 {
        m.observe(obs(&english(i), 20 + i % 10));
    }
    let r = m.report();
    assert!(r.ready);
    assert!(r.unseen_token_share < 0.05, "{r:#?}");
    assert!(!r.alert, "{r:#?}");
}

#[test]
fn another_language_and_code_alert() {
    let mut m = monitor();
    for i in 0..60 {
        let t = if i % 2 == 0 {
            format!("wie kann ich am besten die Geschichte der Kunst lernen {i}")
        } else {
            format!("fn main() {{ let x{i} = vec![{i}, 2, 3]; println!(\"{{:?}}\", x{i}); }}")
        };
        m.observe(obs(&t, 80));
    }
    let r = m.report();
    assert!(r.unseen_token_share > 0.5, "{r:#?}");
    assert!(r.unseen_drifted && r.alert, "{r:#?}");
    let resp = r
        .features
        .iter()
        .find(|f| f.name == "response_length")
        .unwrap();
    assert!(resp.drifted && resp.ks.p_value < 0.05, "{resp:#?}");
    let sym = r
        .features
        .iter()
        .find(|f| f.name == "non_letter_share")
        .unwrap();
    assert!(sym.current_mean > sym.reference_mean);
}

#[test]
fn no_verdict_before_the_window_fills() {
    let mut m = monitor();
    for i in 0..5 {
        m.observe(obs(&format!("völlig neue Wörter {i}"), 500));
    }
    let r = m.report();
    assert!(!r.ready && !r.alert, "{r:#?}");
}

#[test]
fn embedding_shift_is_detected_by_mmd() {
    let mut m = DriftMonitor::new(DriftConfig {
        reference_size: 60,
        window: 60,
        min_current: 30,
        permutations: 99,
        ..Default::default()
    });
    let emb = |i: usize, shift: f32| {
        let mut o = obs(&english(i), 20);
        o.embedding = Some(vec![
            ((i * 37) % 11) as f32 * 0.05 + shift,
            ((i * 17) % 7) as f32 * 0.05,
        ]);
        o
    };
    for i in 0..60 {
        m.observe(emb(i, 0.0));
    }
    for i in 60..100 {
        m.observe(emb(i, 0.0));
    }
    let calm = m.report();
    assert!(!calm.embedding_drifted, "{calm:#?}");
    for i in 100..160 {
        m.observe(emb(i, 2.0));
    }
    let r = m.report();
    assert!(r.embedding_drifted && r.alert, "{r:#?}");
    assert!(r.embedding_distance.unwrap() > calm.embedding_distance.unwrap());
}

#[test]
fn a_saved_baseline_round_trips() {
    let m = monitor();
    let b = m.baseline();
    let text = serde_json::to_string(&b).unwrap();
    let b2: hangar_monitor::Baseline = serde_json::from_str(&text).unwrap();
    let mut m2 = DriftMonitor::with_baseline(DriftConfig::default(), b2);
    m2.observe(obs("brand new words entirely", 3));
    assert_eq!(m2.report().reference_size, 100);
    assert_eq!(m2.report().current_size, 1);
}
