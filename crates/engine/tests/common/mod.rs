//! Helpers shared by the engine's integration tests on the real model.
#![allow(dead_code)]

use hangar_engine::{Finish, TokenEvent};

#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Option<Finish>,
    pub completion_tokens: usize,
    pub cached_tokens: usize,
}

/// Reads a request's events to the end.
pub fn collect(mut rx: tokio::sync::mpsc::UnboundedReceiver<TokenEvent>) -> Outcome {
    let mut o = Outcome {
        tokens: Vec::new(),
        text: String::new(),
        finish: None,
        completion_tokens: 0,
        cached_tokens: 0,
    };
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            TokenEvent::Token(t) => {
                o.tokens.push(t.id);
                o.text.push_str(&t.text);
            }
            TokenEvent::Done {
                finish,
                usage,
                text,
            } => {
                o.text.push_str(&text);
                o.finish = Some(finish);
                o.completion_tokens = usage.completion_tokens;
                o.cached_tokens = usage.cached_tokens;
            }
            TokenEvent::Error(e) => panic!("engine error: {e}"),
            TokenEvent::PromptLogprobs(_) => {}
        }
    }
    o
}

/// Greedy tokens of every prompt (ignoring end of generation), submitted at once.
pub fn greedy_tokens(
    engine: &hangar_engine::Engine,
    prompts: &[Vec<u32>],
    n: usize,
) -> Vec<Vec<u32>> {
    let rxs: Vec<_> = prompts
        .iter()
        .map(|p| {
            let mut r = hangar_engine::GenerateRequest::greedy(p.clone(), n);
            r.ignore_eos = true;
            engine.submit(r).unwrap().1
        })
        .collect();
    rxs.into_iter().map(|rx| collect(rx).tokens).collect()
}

/// Submits every request at once and waits for all.
pub fn run_all(
    engine: &hangar_engine::Engine,
    reqs: Vec<hangar_engine::GenerateRequest>,
) -> Vec<Outcome> {
    let rxs: Vec<_> = reqs
        .into_iter()
        .map(|r| engine.submit(r).unwrap().1)
        .collect();
    rxs.into_iter().map(collect).collect()
}

/// Plain greedy decoding of `n` tokens (end of text ignored): what batched and
/// speculative decoding must reproduce token for token.
pub fn greedy_reference(lm: &hangar_engine::LoadedModel, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = hangar_engine::GenerateOptions {
        max_tokens: n,
        sampling: hangar_engine::sampler::SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    };
    hangar_engine::generate(lm, prompt, &opts, |_| true)
        .expect("generate")
        .tokens
}
