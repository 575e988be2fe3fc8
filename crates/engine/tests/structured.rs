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

/// Decode speed with and without a JSON schema, batch 1 and 16 sequences, rounds
/// interleaved (A B A B ...) so machine load hits both alike; medians reported.
/// `cargo test --release -p hangar-engine --test structured -- --ignored --nocapture overhead`
#[test]
#[ignore = "benchmark: run explicitly"]
fn constrained_decoding_overhead() {
    let Some(path) = model_path() else { return };
    let threads: usize = std::env::var("HANGAR_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    let engine = Engine::start(
        LoadedModel::load(&path, threads).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let schema = json!({
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 100, "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20},
                           "qty": {"type": "integer", "minimum": 0, "maximum": 1000}},
            "required": ["name", "qty"], "additionalProperties": false}}},
        "required": ["items"], "additionalProperties": false
    });
    let spec = GrammarSpec::JsonSchema(schema);
    let _ = engine.compile_grammar(&spec).unwrap(); // build the trie outside the timing
    let tokens = 48;
    let rounds = 3;
    let run = |batch: usize, constrained: bool, round: usize| -> f64 {
        let reqs: Vec<GenerateRequest> = (0..batch)
            .map(|i| {
                let msgs = [hangar_engine::chat::ChatMessage::new(
                    "user",
                    format!(
                        "[{round}-{i}-{constrained}] List the items of a shop inventory as JSON."
                    ),
                )];
                let mut r = GenerateRequest::greedy(engine.encode_chat(&msgs).unwrap(), tokens);
                r.ignore_eos = true;
                if constrained {
                    r.constraint = Some(engine.compile_grammar(&spec).unwrap());
                }
                r
            })
            .collect();
        // Decode speed: from every sequence's first token to the last token of all.
        let rxs: Vec<_> = reqs
            .into_iter()
            .map(|r| engine.submit(r).unwrap().1)
            .collect();
        let mut first = None;
        let mut n = 0usize;
        for mut rx in rxs {
            while let Some(ev) = rx.blocking_recv() {
                match ev {
                    TokenEvent::Token(_) => {
                        first.get_or_insert_with(Instant::now);
                        n += 1;
                    }
                    TokenEvent::Error(e) => panic!("{e}"),
                    _ => {}
                }
            }
        }
        let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
        (n - batch.min(n)) as f64 / secs.max(1e-9)
    };
    for batch in [1usize, 16] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            a.push(run(batch, false, round));
            b.push(run(batch, true, round));
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|x, y| x.total_cmp(y));
            v[v.len() / 2]
        };
        let (ma, mb) = (med(&mut a), med(&mut b));
        eprintln!(
            "batch {batch:2}: unconstrained {ma:7.1} tok/s, JSON schema {mb:7.1} tok/s, overhead {:+.1}% (rounds: {a:.1?} vs {b:.1?})",
            (ma / mb - 1.0) * 100.0
        );
    }
}
