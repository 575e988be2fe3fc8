//! Beam search against an exhaustive search on a short horizon, on a toy language
//! model whose next-token distribution depends on the whole history (it keeps its
//! own "KV cache": the tokens written to each block slot, read back through the
//! block tables, so prefix caching and batching are exercised as with a real model).
//! Then the real default model: width 1 is greedy decoding.

use hangar_engine::beam::{beam_search, BeamParams, BeamResult};
use hangar_engine::{
    generate, Engine, EngineConfig, GenerateOptions, LoadedModel, ModelRunner, StepInput, Tenant,
};
use hangar_models::kv::{KvFormat, KvLayout};
use hangar_models::LogitsWanted;
use hangar_tokenizer::{TokenType, Tokenizer, TokenizerSpec};

/// Tokens: a, b, c and an end-of-text token.
const VOCAB: usize = 4;
const EOS: u32 = 3;

fn tokenizer() -> Tokenizer {
    let tokens: Vec<String> = ["a", "b", "c", "<|endoftext|>"].map(String::from).to_vec();
    let mut types = vec![TokenType::Normal; VOCAB];
    types[EOS as usize] = TokenType::Control;
    let mut spec = TokenizerSpec::gpt2(tokens, Vec::new(), "gpt-2");
    spec.token_types = Some(types);
    spec.eos_id = Some(EOS);
    Tokenizer::from_spec(&spec).expect("tokenizer")
}

/// Next-token logits of the toy model after `history`: a hash of the whole history.
fn toy_logits(history: &[u32]) -> [f32; VOCAB] {
    let mut h: u64 = 1469598103934665603;
    for &t in history {
        h = (h ^ u64::from(t)).wrapping_mul(1099511628211);
    }
    let mut out = [0f32; VOCAB];
    for (i, o) in out.iter_mut().enumerate() {
        let x = h
            .wrapping_mul(0x9E3779B97F4A7C15)
            .rotate_left(17 * i as u32 + 5);
        *o = (x >> 40) as f32 / (1u64 << 24) as f32 * 4.0;
    }
    out
}

fn log_softmax(l: &[f32; VOCAB]) -> [f64; VOCAB] {
    let m = l.iter().copied().fold(f32::MIN, f32::max) as f64;
    let z: f64 = l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    l.map(|x| x as f64 - z)
}

/// The toy model as an engine backend.
struct ToyRunner {
    block_size: usize,
    /// Per block: the token at each slot.
    blocks: Vec<Vec<u32>>,
}

impl ModelRunner for ToyRunner {
    fn vocab_size(&self) -> usize {
        VOCAB
    }
    fn ctx_len(&self) -> usize {
        64
    }
    fn arch(&self) -> &str {
        "toy"
    }
    fn kv_layout(&self) -> KvLayout {
        KvLayout {
            group_layers: vec![vec![0]],
            group_window: vec![None],
            kv_dim: 1,
            format: KvFormat::F16,
        }
    }
    fn allocate_kv(
        &mut self,
        block_size: usize,
        blocks: &[usize],
    ) -> Result<usize, hangar_engine::EngineError> {
        self.block_size = block_size;
        self.blocks = vec![vec![u32::MAX; block_size]; blocks[0]];
        Ok(blocks[0] * block_size * 4)
    }
    fn execute(
        &mut self,
        step: &StepInput,
        logits: &mut Vec<f32>,
    ) -> Result<(), hangar_engine::EngineError> {
        let bs = self.block_size;
        logits.clear();
        for s in step {
            let table = s.block_tables[0];
            for (i, &t) in s.tokens.iter().enumerate() {
                let pos = s.start_pos + i;
                self.blocks[table[pos / bs] as usize][pos % bs] = t;
            }
            let history = |end: usize| -> Vec<u32> {
                (0..end)
                    .map(|p| self.blocks[table[p / bs] as usize][p % bs])
                    .collect()
            };
            let end = s.start_pos + s.tokens.len();
            let rows: Vec<usize> = match s.logits {
                LogitsWanted::None => vec![],
                LogitsWanted::Last => vec![end],
                LogitsWanted::All => (s.start_pos + 1..=end).collect(),
                LogitsWanted::Greedy | LogitsWanted::Head => {
                    panic!("this runner has no greedy or sampling head")
                }
            };
            for r in rows {
                logits.extend_from_slice(&toy_logits(&history(r)));
            }
        }
        Ok(())
    }
}

fn toy_engine() -> Engine {
    let runner = ToyRunner {
        block_size: 0,
        blocks: Vec::new(),
    };
    let cfg = EngineConfig {
        block_size: 2,
        max_tokens_in_flight: Some(4096),
        max_running: 64,
        max_request_share: 1.0,
        ..EngineConfig::default()
    };
    Engine::start_with_runner(Box::new(runner), tokenizer(), None, cfg).unwrap()
}

/// Every sequence of up to `horizon` tokens (ending at EOS or at the horizon), scored
/// as beam search scores them.
fn exhaustive(prompt: &[u32], horizon: usize, length_penalty: f64) -> Vec<BeamResult> {
    let mut out = Vec::new();
    let mut frontier = vec![(Vec::<u32>::new(), 0.0f64)];
    for depth in 0..horizon {
        let mut next = Vec::new();
        for (seq, cum) in frontier {
            let mut h = prompt.to_vec();
            h.extend_from_slice(&seq);
            let lp = log_softmax(&toy_logits(&h));
            for (id, &l) in lp.iter().enumerate() {
                let id = id as u32;
                if id == EOS {
                    out.push(BeamResult {
                        score: (cum + l) / (seq.len().max(1) as f64).powf(length_penalty),
                        tokens: seq.clone(),
                        ended_by: Some(EOS),
                        cum_logprob: cum + l,
                    });
                } else {
                    let mut s = seq.clone();
                    s.push(id);
                    next.push((s, cum + l));
                }
            }
        }
        frontier = next;
        if depth + 1 == horizon {
            for (seq, cum) in &frontier {
                out.push(BeamResult {
                    score: cum / (seq.len() as f64).powf(length_penalty),
                    tokens: seq.clone(),
                    ended_by: None,
                    cum_logprob: *cum,
                });
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

fn params(width: usize, max_tokens: usize, length_penalty: f64) -> BeamParams {
    BeamParams {
        width,
        max_tokens,
        length_penalty,
        stop_token_ids: Vec::new(),
        ignore_eos: false,
        tenant: Tenant::default(),
        adapter: None,
    }
}

#[test]
fn a_wide_enough_beam_finds_the_exhaustive_best() {
    // Horizon 3 over 3 letters + EOS: 40 sequences. Width 16 keeps every prefix the
    // top 16 can come from (length penalty 0: pruning and ranking use one order).
    let e = toy_engine();
    for prompt in [vec![0u32], vec![1, 2, 0], vec![2, 2]] {
        let want = exhaustive(&prompt, 3, 0.0);
        let got = beam_search(&e, &prompt, &params(16, 3, 0.0)).unwrap();
        assert_eq!(got.len(), 16);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (&g.tokens, g.ended_by),
                (&w.tokens, w.ended_by),
                "prompt {prompt:?}"
            );
            assert!(
                (g.cum_logprob - w.cum_logprob).abs() < 1e-4,
                "{g:?} vs {w:?}"
            );
        }
    }
    assert_eq!(e.stats().kv_blocks_used(), 0);
}

#[test]
fn beam_search_is_never_worse_than_greedy_and_width_one_is_greedy() {
    let e = toy_engine();
    for prompt in [vec![0u32], vec![1, 1], vec![2, 0, 1]] {
        // Greedy by hand over the toy model.
        let mut h = prompt.clone();
        let mut cum = 0.0;
        let mut greedy = Vec::new();
        for _ in 0..5 {
            let lp = log_softmax(&toy_logits(&h));
            let (id, &l) = lp
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            cum += l;
            if id as u32 == EOS {
                break;
            }
            greedy.push(id as u32);
            h.push(id as u32);
        }
        let one = beam_search(&e, &prompt, &params(1, 5, 0.0)).unwrap();
        assert_eq!(one[0].tokens, greedy);
        assert!((one[0].cum_logprob - cum).abs() < 1e-4);
        let wide = beam_search(&e, &prompt, &params(4, 5, 0.0)).unwrap();
        assert!(wide[0].score >= cum - 1e-6, "{:?} vs greedy {cum}", wide[0]);
        assert!(wide.windows(2).all(|p| p[0].score >= p[1].score));
    }
}

#[test]
fn length_penalty_and_limits() {
    let e = toy_engine();
    // Scores are cum / len^penalty, best first, and distinct beams.
    let got = beam_search(&e, &[0], &params(3, 4, 1.0)).unwrap();
    for b in &got {
        let len = b.tokens.len().max(1) as f64;
        assert!((b.score - b.cum_logprob / len).abs() < 1e-9);
        assert!(b.tokens.len() <= 4);
    }
    let mut seen = got
        .iter()
        .map(|b| (&b.tokens, b.ended_by))
        .collect::<Vec<_>>();
    seen.dedup();
    assert_eq!(seen.len(), got.len());
    // Width is bounded by the per-request share and by the logprob cap.
    assert!(beam_search(&e, &[0], &params(0, 4, 1.0)).is_err());
    assert!(beam_search(&e, &[0], &params(51, 4, 1.0)).is_err());
    assert!(beam_search(&e, &[], &params(2, 4, 1.0)).is_err());
}

#[test]
fn width_one_on_the_real_model_is_greedy_decoding() {
    let Some(path) = hangar_testkit::model_path() else {
        return;
    };
    let lm = LoadedModel::load(&path, 2).unwrap();
    let prompt = lm
        .tokenizer
        .encode("The three primary colors are", true, false);
    let opts = GenerateOptions {
        max_tokens: 12,
        sampling: hangar_engine::sampler::SamplingParams::greedy(),
        ..Default::default()
    };
    let want = generate(&lm, &prompt, &opts, |_| true).unwrap().tokens;
    let e = Engine::start(
        LoadedModel::load(&path, 2).unwrap(),
        EngineConfig::default(),
    )
    .unwrap();
    let got = beam_search(&e, &prompt, &params(1, 12, 1.0)).unwrap();
    assert_eq!(got[0].tokens, want);
    let four = beam_search(&e, &prompt, &params(4, 12, 1.0)).unwrap();
    assert_eq!(four.len(), 4);
    assert!(four[0].cum_logprob >= got[0].cum_logprob - 1e-3 || four[0].score >= got[0].score);
    assert!(e.stats().prefix_hit_tokens > 0, "beams share their prefix");
}
