//! Constrained decoding on the real default-model tokenizer (Gemma 3, 262k tokens,
//! SentencePiece with `▁` spaces and `<0xNN>` byte fallback): the token byte strings,
//! the masks a JSON schema / regex / choice produce, end of generation only where the
//! grammar is complete, unsupported features named, and the engine loop producing
//! schema-valid JSON under greedy and random sampling.

use hangar_engine::sampler::constraint::token_byte_strings;
use hangar_engine::sampler::{Constraint, GrammarCompiler, GrammarSpec, SamplingParams};
use hangar_engine::{Engine, EngineConfig, Finish, GenerateRequest, LoadedModel, TokenEvent};
use hangar_formats::GgufFile;
use hangar_testkit::model_path;
use hangar_tokenizer::Tokenizer;
use serde_json::json;
use std::sync::OnceLock;
use std::time::Instant;

/// The tokenizer and a compiler over it, built once for all tests.
fn compiler() -> Option<&'static (Tokenizer, GrammarCompiler)> {
    static C: OnceLock<Option<(Tokenizer, GrammarCompiler)>> = OnceLock::new();
    C.get_or_init(|| {
        let path = model_path()?;
        let gguf = GgufFile::open(&path).expect("open gguf");
        let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer");
        let t0 = Instant::now();
        let c = GrammarCompiler::new(&tok, tok.vocab_size()).expect("compiler");
        eprintln!(
            "grammar compiler over {} tokens: {:.0} ms",
            tok.vocab_size(),
            t0.elapsed().as_secs_f64() * 1e3
        );
        Some((tok, c))
    })
    .as_ref()
}

/// Feeds `text` (as the tokenizer encodes it) through the constraint, checking every
/// token is allowed and end of generation is not, until the last.
fn feed(c: &mut Constraint, tok: &Tokenizer, text: &str) -> Result<(), String> {
    let ids = tok.encode(text, false, false);
    for &id in &ids {
        if !c.allows(id) {
            return Err(format!(
                "token {id} ({:?}) refused in {text:?}",
                tok.id_to_token(id)
            ));
        }
        c.advance(id).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn eos_allowed(c: &mut Constraint, tok: &Tokenizer) -> bool {
    tok.eog_ids().iter().any(|&e| c.allows(e))
}

#[test]
fn token_bytes_cover_spaces_byte_fallback_and_special_tokens() {
    let Some((tok, _)) = compiler() else { return };
    let words = token_byte_strings(tok, tok.vocab_size());
    let id = |s: &str| tok.token_to_id(s).expect(s) as usize;
    assert_eq!(words[id("<0x0A>")], b"\n");
    assert_eq!(words[id("▁the")], b" the");
    let sot = &words[id("<start_of_turn>")];
    assert_eq!(sot[0], 0xFF, "control tokens are marked special");
    assert_eq!(&sot[1..], b"<start_of_turn>");
}

#[test]
fn json_schema_mask_accepts_valid_text_and_eos_only_at_the_end() {
    let Some((tok, comp)) = compiler() else {
        return;
    };
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "age": {"type": "integer"},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}}
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": false
    });
    let mut c = comp.compile(&GrammarSpec::JsonSchema(schema)).unwrap();
    assert!(!eos_allowed(&mut c, tok), "EOS before anything");
    // Prose is refused at the start.
    let hello = tok.encode("Hello", false, false)[0];
    assert!(!c.allows(hello));
    feed(
        &mut c,
        tok,
        r#"{"name": "Ann Lee", "age": 42, "tags": ["a""#,
    )
    .unwrap();
    assert!(!eos_allowed(&mut c, tok), "EOS inside the object");
    // A wrong enum value is refused.
    let mut bad = c.clone();
    assert!(feed(&mut bad, tok, r#", "c"#).is_err());
    feed(&mut c, tok, r#"]}"#).unwrap();
    assert!(c.is_accepting());
    assert!(c.is_stopped(), "nothing may follow the object");
    assert!(eos_allowed(&mut c, tok));
}

#[test]
fn regex_and_choice_masks() {
    let Some((tok, comp)) = compiler() else {
        return;
    };
    let mut c = comp
        .compile(&GrammarSpec::Regex(r"\d{3}-[A-Z]{2}".into()))
        .unwrap();
    feed(&mut c, tok, "123-A").unwrap();
    assert!(!eos_allowed(&mut c, tok));
    assert!(feed(&mut c.clone(), tok, "1").is_err());
    feed(&mut c, tok, "B").unwrap();
    assert!(eos_allowed(&mut c, tok));

    let mut c = comp
        .compile(&GrammarSpec::Choice(vec![
            "positive".into(),
            "negative".into(),
        ]))
        .unwrap();
    assert!(feed(&mut c.clone(), tok, "neutral").is_err());
    feed(&mut c, tok, "negative").unwrap();
    assert!(eos_allowed(&mut c, tok));
}

#[test]
fn unsupported_schema_features_are_named() {
    let Some((_, comp)) = compiler() else { return };
    let e = comp
        .compile(&GrammarSpec::JsonSchema(json!({
            "type": "object",
            "properties": {"a": {"type": "string"}},
            "unevaluatedProperties": {"type": "integer"}
        })))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unevaluatedProperties"), "{e}");
    let e = comp
        .compile(&GrammarSpec::Lark("start: foo".into()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("foo"), "{e}");
}

/// Random logits under the mask: whatever the sampler draws, the output is valid.
#[test]
fn random_logits_under_the_mask_always_give_valid_json() {
    let Some((tok, comp)) = compiler() else {
        return;
    };
    let schema = json!({
        "type": "object",
        "properties": {
            "id": {"type": "integer", "minimum": 0, "maximum": 100000},
            "ok": {"type": "boolean"},
            "kind": {"enum": ["x", "y", "z"]}
        },
        "required": ["id", "ok", "kind"],
        "additionalProperties": false
    });
    let n = tok.vocab_size();
    let mut mask_time = 0.0;
    let mut steps = 0usize;
    for seed in 0..4u64 {
        let mut c = comp
            .compile(&GrammarSpec::JsonSchema(schema.clone()))
            .unwrap();
        let mut s = hangar_engine::sampler::Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        })
        .unwrap();
        let mut ids = Vec::new();
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        for _ in 0..200 {
            let mut logits: Vec<f32> = (0..n)
                .map(|_| {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0
                })
                .collect();
            let t0 = Instant::now();
            c.apply(&mut logits);
            mask_time += t0.elapsed().as_secs_f64();
            steps += 1;
            let id = s.sample(&mut logits, &[]).id;
            if tok.is_eog(id) {
                break;
            }
            c.advance(id).unwrap();
            ids.push(id);
            if c.is_stopped() {
                break;
            }
        }
        let text = tok.decode(&ids, true);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v["id"].as_u64().is_some_and(|i| i <= 100_000), "{text}");
        assert!(v["ok"].is_boolean(), "{text}");
        assert!(
            ["x", "y", "z"].contains(&v["kind"].as_str().unwrap_or("")),
            "{text}"
        );
    }
    eprintln!(
        "mask + apply over {n} tokens: {:.3} ms/token ({steps} steps)",
        mask_time / steps as f64 * 1e3
    );
}

#[test]
fn engine_generates_schema_valid_json_greedy() {
    let Some(path) = model_path() else { return };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let engine = Engine::start(lm, EngineConfig::default()).unwrap();
    // The background warm-up: not warm while the token trie is built (a server is not
    // ready then), warm once it is, and the compiler is then already there.
    assert!(engine.is_warm(), "no warm-up started yet");
    engine.warm_grammar();
    assert!(!engine.is_warm(), "warm before the trie was built");
    let t0 = std::time::Instant::now();
    while !engine.is_warm() {
        assert!(
            t0.elapsed().as_secs() < 120,
            "the grammar warm-up never ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (a, b) = (
        engine.grammar_compiler().unwrap(),
        engine.grammar_compiler().unwrap(),
    );
    assert!(
        std::sync::Arc::ptr_eq(&a, &b),
        "the warmed compiler is not the one kept"
    );
    let schema = json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
            "population": {"type": "integer", "minimum": 0, "maximum": 100000000}
        },
        "required": ["city", "country", "population"],
        "additionalProperties": false
    });
    let msgs = [hangar_engine::chat::ChatMessage::new(
        "user",
        "Give the largest city of Japan as JSON with city, country and population.",
    )];
    let prompt = engine.encode_chat(&msgs).unwrap();
    let mut req = GenerateRequest::greedy(prompt.clone(), 120);
    req.constraint = Some(
        engine
            .compile_grammar(&GrammarSpec::JsonSchema(schema.clone()))
            .unwrap(),
    );
    let (_, mut rx) = engine.submit(req).unwrap();
    let (mut text, mut finish) = (String::new(), None);
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            TokenEvent::Token(t) => text.push_str(&t.text),
            TokenEvent::Done {
                finish: f, text: t, ..
            } => {
                text.push_str(&t);
                finish = Some(f);
            }
            TokenEvent::Error(e) => panic!("{e}"),
            TokenEvent::PromptLogprobs(_) => {}
        }
    }
    assert_eq!(finish, Some(Finish::Stop), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(v["city"].is_string() && v["population"].is_i64(), "{text}");

    // Cut by max_tokens mid-object: finish is Length.
    let mut req = GenerateRequest::greedy(prompt, 5);
    req.constraint = Some(
        engine
            .compile_grammar(&GrammarSpec::JsonSchema(schema))
            .unwrap(),
    );
    let (_, mut rx) = engine.submit(req).unwrap();
    let mut finish = None;
    while let Some(ev) = rx.blocking_recv() {
        if let TokenEvent::Done { finish: f, .. } = ev {
            finish = Some(f);
        }
    }
    assert_eq!(finish, Some(Finish::Length));
}

/// Optimistic constrained sampling (draw unmasked, keep the token if allowed, else
/// mask and draw again) must pick tokens with the distribution of masking first:
/// greedy gives the same token; temperature sampling, over many draws, the same
/// frequencies (a chi-square test at a fixed seed, so the test is deterministic).
#[test]
fn optimistic_constrained_sampling_matches_masking_first() {
    let Some((tok, comp)) = compiler() else {
        return;
    };
    let spec = GrammarSpec::Choice(vec!["yes".into(), "no".into(), "maybe".into()]);
    let n = tok.vocab_size();
    // Logits where the allowed first tokens are neither the most likely overall
    // (so the optimistic draw is often refused) nor negligible.
    let mut logits = vec![0.0f32; n];
    for (i, l) in logits.iter_mut().enumerate() {
        *l = ((i * 7919) % 1000) as f32 / 250.0;
    }
    let allowed: Vec<u32> = {
        let mut c = comp.compile(&spec).unwrap();
        (0..n as u32).filter(|&t| c.allows(t)).collect()
    };
    assert!(allowed.len() >= 3, "allowed first tokens: {allowed:?}");
    for (k, &t) in allowed.iter().enumerate() {
        logits[t as usize] = 3.0 + k as f32 * 0.5;
    }
    logits[1234] = 9.0; // the unmasked favourite, refused by the grammar
                        // Greedy: both ways pick the allowed argmax.
    let greedy = |optimistic: bool| {
        let mut s = hangar_engine::sampler::Sampler::new(SamplingParams::greedy()).unwrap();
        s.set_logprob_wanted(!optimistic);
        let mut c = comp.compile(&spec).unwrap();
        hangar_engine::sampler::sample_constrained(&mut s, Some(&mut c), &mut logits.clone(), &[])
            .id
    };
    assert_eq!(greedy(true), greedy(false));
    assert_eq!(greedy(true), *allowed.last().unwrap());
    // Temperature 1, no truncation: compare frequencies of each allowed token.
    let draws = 2500;
    let counts = |optimistic: bool, seed: u64| {
        let mut s = hangar_engine::sampler::Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        })
        .unwrap();
        s.set_logprob_wanted(!optimistic);
        assert_eq!(s.exact_without_mask(), optimistic);
        let mut hist = std::collections::HashMap::<u32, u64>::new();
        let fresh = comp.compile(&spec).unwrap();
        for _ in 0..draws {
            // A fresh copy each draw, so no mask computed by an earlier draw helps.
            let mut c = fresh.clone();
            let t = hangar_engine::sampler::sample_constrained(
                &mut s,
                Some(&mut c),
                &mut logits.clone(),
                &[],
            );
            assert!(allowed.contains(&t.id), "token {} is not allowed", t.id);
            *hist.entry(t.id).or_default() += 1;
        }
        hist
    };
    let a = counts(true, 7);
    let b = counts(false, 8);
    // Two-sample chi-square over the allowed tokens; df = k - 1.
    let mut chi2 = 0.0;
    for t in &allowed {
        let (x, y) = (
            *a.get(t).unwrap_or(&0) as f64,
            *b.get(t).unwrap_or(&0) as f64,
        );
        if x + y > 0.0 {
            chi2 += (x - y).powi(2) / (x + y);
        }
    }
    let df = (allowed.len() - 1) as f64;
    // 99.9th percentile of chi-square is below df + 4.5*sqrt(2 df) + 10 for these df.
    let limit = df + 4.5 * (2.0 * df).sqrt() + 10.0;
    assert!(
        chi2 < limit,
        "optimistic {a:?} vs masked {b:?}: chi2 {chi2:.1} over {df} df"
    );
}
