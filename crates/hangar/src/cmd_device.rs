//! `--device cpu|cuda|cuda:N|auto` for the commands that run a model, and
//! `hangar device-check`: the GPU backend against the CPU forward pass.

use anyhow::{bail, Context, Result};
use clap::Args;
use hangar_cuda::{CudaRunner, Device};
use hangar_engine::{BorrowedCpuRunner, LoadedModel, ModelRunner};
use hangar_models::{LogitsWanted, SeqInput, Tap};
use std::path::{Path, PathBuf};

/// Parses `--device`.
pub fn parse_device(s: &str) -> Result<Device, String> {
    s.parse()
}

/// The GPU runner when `device` resolves to CUDA, `None` for the CPU; prints the choice
/// to stderr. A CUDA request without a driver, a device or NVRTC is an error that names
/// what is missing. `gpu_layers`: `--gpu-layers` (the last N layers on the GPU).
pub fn open(
    lm: &LoadedModel,
    device: Device,
    gpu_layers: Option<usize>,
) -> Result<Option<CudaRunner>> {
    open_with(
        lm,
        device,
        gpu_layers,
        hangar_cuda::GpuOptions::default().kv_bytes,
    )
}

/// As [`open`], keeping `kv_bytes` (the engine's KV budget) free on the GPU.
pub fn open_with(
    lm: &LoadedModel,
    device: Device,
    gpu_layers: Option<usize>,
    kv_bytes: usize,
) -> Result<Option<CudaRunner>> {
    match device.resolve() {
        Device::Cpu => {
            if gpu_layers.is_some_and(|n| n > 0) {
                bail!(
                    "--gpu-layers needs a GPU: add --device cuda (or auto on a machine with one)"
                );
            }
            eprintln!("device: cpu ({} threads)", lm.pool.n_threads());
            Ok(None)
        }
        Device::Cuda(_) if gpu_layers == Some(0) => {
            eprintln!(
                "device: cpu ({} threads; --gpu-layers 0 keeps every layer on the CPU)",
                lm.pool.n_threads()
            );
            Ok(None)
        }
        Device::Cuda(n) => {
            let t0 = std::time::Instant::now();
            let opts = hangar_cuda::GpuOptions {
                gpu_layers,
                kv_bytes,
                threads: lm.pool.n_threads(),
            };
            let r = CudaRunner::with_options(&lm.model, n, &opts)
                .with_context(|| format!("--device cuda:{n}"))?;
            let (on_gpu, layers) = r.gpu_layers();
            let split = match r.cpu_threads() {
                Some(t) => format!(
                    "; {on_gpu} of {layers} layers on the GPU, the first {} on the CPU ({t} threads)",
                    layers - on_gpu
                ),
                None => String::new(),
            };
            let f16 = match r.f16_bytes() {
                0 => String::new(),
                b => format!(
                    "; {:.0} MiB of f16 copies for batched steps (HANGAR_CUDA_F16_WEIGHTS=0 skips them)",
                    b as f64 / (1 << 20) as f64
                ),
            };
            eprintln!(
                "device: cuda:{n} ({}, kernels for {}{}, {:.0} MiB of weights uploaded in {:.2}s{split}{f16})",
                r.device_name(),
                r.arch(),
                if r.pdl() { " with PDL" } else { "" },
                r.weight_bytes() as f64 / (1 << 20) as f64,
                t0.elapsed().as_secs_f64()
            );
            Ok(Some(r))
        }
        Device::Auto => unreachable!("resolve() never returns Auto"),
    }
}

#[derive(Args, Debug)]
pub struct DeviceCheckArgs {
    /// GGUF file.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// The GPU to check.
    #[arg(long, default_value = "cuda", value_parser = parse_device)]
    pub device: Device,
    /// Check a partial offload: the last N layers on the GPU, the rest on the CPU.
    #[arg(long, value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// Tokens of the teacher-forced sequence (pseudo-random ids, or --text).
    #[arg(long, default_value_t = 64)]
    pub tokens: usize,
    /// Text to tokenize as the sequence instead of random ids.
    #[arg(long)]
    pub text: Option<String>,
    /// Greedy tokens to generate on both devices.
    #[arg(long, default_value_t = 32)]
    pub greedy: usize,
    /// Teacher-forced agreement over many prompts instead: a text file (one prompt a
    /// line, each followed by the CPU's greedy continuation of --greedy tokens) or a
    /// greedy reference JSON (`{"greedy": [{"prompt_ids", "greedy_ids"}]}`, as
    /// tests/data/greedy40/reference.json).
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Batch invariance: the greedy continuation of the sequence's first 8 tokens,
    /// decoded alone and beside N - 1 other sequences, for each N of this list (e.g.
    /// `2,4,8,16`); each sequence's prompt is prefilled in its own step.
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    pub batch_invariance: Vec<usize>,
    /// Instead of the logits checks: prefill the sequence on both sides and print, per
    /// layer, how far each matrix input (attention input, attention output, FFN input,
    /// FFN down input) differs (RMS of the difference over RMS of the CPU's), to see
    /// where the two drift apart.
    #[arg(long)]
    pub layers: bool,
    /// With `--device cpu`: compare the fast numerics with themselves after moving
    /// every embedding value by one float step (the embedding scale's next f32)
    /// instead of with the ggml numerics: how far a difference in the last bit
    /// carries through this model.
    #[arg(long)]
    pub one_ulp: bool,
    #[arg(long, short = 't', default_value_t = 0)]
    pub threads: usize,
}

fn argmax(x: &[f32]) -> usize {
    x.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// A fresh KV cache on `r` for one sequence of up to `tokens` positions (blocks of
/// 16), and that sequence's block table.
fn one_sequence_kv(r: &mut dyn ModelRunner, tokens: usize) -> Result<Vec<u32>> {
    let n = tokens.div_ceil(16);
    r.allocate_kv(16, &vec![n; r.kv_layout().n_groups()])?;
    Ok((0..n as u32).collect())
}

/// Teacher-forced logits of `toks` on `r`: one prefill step with every row's logits,
/// then the same sequence again one token at a time (the decode kernels).
fn logits_of(r: &mut dyn ModelRunner, toks: &[u32]) -> Result<(Vec<f32>, Vec<f32>)> {
    let table = one_sequence_kv(r, toks.len() + 1)?;
    let tables: Vec<&[u32]> = vec![&table; r.kv_layout().n_groups()];
    let mut prefill = Vec::new();
    r.execute(
        &[SeqInput {
            tokens: toks,
            start_pos: 0,
            block_tables: &tables,
            logits: LogitsWanted::All,
        }],
        &mut prefill,
    )?;
    let mut decode = Vec::new();
    let mut row = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        r.execute(
            &[SeqInput {
                tokens: std::slice::from_ref(t),
                start_pos: i,
                block_tables: &tables,
                logits: LogitsWanted::Last,
            }],
            &mut row,
        )?;
        decode.extend_from_slice(&row);
    }
    Ok((prefill, decode))
}

/// The gap between the largest and the second largest logit of a row.
fn top2_margin(x: &[f32]) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in x {
        if v > a {
            (a, b) = (v, a);
        } else if v > b {
            b = v;
        }
    }
    a - b
}

/// The reference rows' top-2 margins at the positions where the two sets disagree on
/// the top-1 token: small margins mean near-ties that any rounding change can flip.
fn disagreement_margins(reference: &[f32], other: &[f32], vocab: usize) -> Vec<f32> {
    reference
        .chunks_exact(vocab)
        .zip(other.chunks_exact(vocab))
        .filter(|(a, b)| argmax(a) != argmax(b))
        .map(|(a, _)| top2_margin(a))
        .collect()
}

/// Top-1 agreement and the largest logit difference between two sets of rows.
fn compare(a: &[f32], b: &[f32], vocab: usize) -> (usize, usize, f32, f32) {
    let (mut agree, mut rows, mut max_diff, mut max_abs) = (0, 0, 0f32, 0f32);
    for (ra, rb) in a.chunks_exact(vocab).zip(b.chunks_exact(vocab)) {
        rows += 1;
        agree += usize::from(argmax(ra) == argmax(rb));
        for (x, y) in ra.iter().zip(rb) {
            max_diff = max_diff.max((x - y).abs());
            max_abs = max_abs.max(x.abs());
        }
    }
    (agree, rows, max_diff, max_abs)
}

fn greedy(r: &mut dyn ModelRunner, prompt: &[u32], n: usize) -> Result<Vec<u32>> {
    let table = one_sequence_kv(r, prompt.len() + n + 1)?;
    let tables: Vec<&[u32]> = vec![&table; r.kv_layout().n_groups()];
    let mut logits = Vec::new();
    r.execute(
        &[SeqInput {
            tokens: prompt,
            start_pos: 0,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        }],
        &mut logits,
    )?;
    let mut out = Vec::new();
    for i in 0..n {
        let id = argmax(&logits) as u32;
        out.push(id);
        r.execute(
            &[SeqInput {
                tokens: &[id],
                start_pos: prompt.len() + i,
                block_tables: &tables,
                logits: LogitsWanted::Last,
            }],
            &mut logits,
        )?;
    }
    Ok(out)
}

pub fn run_device_check(a: DeviceCheckArgs) -> Result<()> {
    let opts = hangar_models::LoadOptions {
        numerics: hangar_models::Numerics::Fast,
        ..Default::default()
    };
    let lm = LoadedModel::load_with(&a.model, a.threads, opts)
        .with_context(|| format!("loading {}", a.model.display()))?;
    // `--device cpu`: the baseline, the CPU's two numerics (fast against ggml), which
    // says how far two correct int8-activation paths drift apart on this model.
    let ggml_lm;
    let mut ggml_cpu;
    let mut cuda;
    let gpu: &mut dyn ModelRunner = match a.device.resolve() {
        Device::Cpu if a.gpu_layers.is_none() => {
            let numerics = if a.one_ulp {
                hangar_models::Numerics::Fast
            } else {
                hangar_models::Numerics::Ggml
            };
            let opts = hangar_models::LoadOptions {
                numerics,
                ..Default::default()
            };
            let mut other = LoadedModel::load_with(&a.model, a.threads, opts)
                .with_context(|| format!("loading {}", a.model.display()))?;
            if a.one_ulp {
                let cfg = &mut other.model.cfg;
                let scale = cfg.embed_scale.unwrap_or(1.0);
                cfg.embed_scale = Some(f32::from_bits(scale.to_bits() + 1));
                eprintln!(
                    "device: cpu, comparing fast numerics (\"cpu\") with themselves, every embedding value one float step larger (\"gpu\")"
                );
            } else {
                eprintln!(
                    "device: cpu, comparing fast numerics (\"cpu\") with ggml numerics (\"gpu\")"
                );
            }
            ggml_lm = other;
            ggml_cpu = BorrowedCpuRunner::new(&ggml_lm.model, &ggml_lm.pool);
            &mut ggml_cpu
        }
        _ if a.one_ulp => bail!("--one-ulp compares the CPU with itself: pass --device cpu"),
        _ => {
            let Some(r) = open(&lm, a.device, a.gpu_layers)? else {
                bail!("device-check compares a GPU with the CPU: pass --device cuda or cuda:N (and --gpu-layers of at least 1)");
            };
            cuda = r;
            &mut cuda
        }
    };
    let vocab = lm.model.cfg.vocab_size;
    let toks: Vec<u32> = match &a.text {
        Some(t) => lm.tokenizer.encode(t, true, false),
        None => {
            let mut s = 0x9e37_79b9_7f4a_7c15u64;
            (0..a.tokens.max(1))
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 33) as usize % vocab.clamp(1, 32_000)) as u32
                })
                .collect()
        }
    };
    if toks.is_empty() {
        bail!("the sequence is empty");
    }
    let mut cpu = BorrowedCpuRunner::new(&lm.model, &lm.pool);
    if a.layers {
        return print_layer_drift(&mut cpu, gpu, &toks);
    }
    if let Some(path) = &a.prompts {
        return check_prompts(&lm, &mut cpu, gpu, path, a.greedy);
    }
    let (cpu_pre, cpu_dec) = logits_of(&mut cpu, &toks)?;
    let (gpu_pre, gpu_dec) = logits_of(gpu, &toks)?;
    let (ap, np, dp, mp) = compare(&cpu_pre, &gpu_pre, vocab);
    let (ad, nd, dd, md) = compare(&cpu_dec, &gpu_dec, vocab);
    let (ag, ng, dg, _) = compare(&gpu_pre, &gpu_dec, vocab);
    println!(
        "teacher-forced prefill: top-1 agreement {ap}/{np}, max |logit diff| {dp:.4} (max |logit| {mp:.2})"
    );
    println!(
        "teacher-forced decode:  top-1 agreement {ad}/{nd}, max |logit diff| {dd:.4} (max |logit| {md:.2})"
    );
    println!("gpu prefill vs gpu decode: top-1 agreement {ag}/{ng}, max |logit diff| {dg:.4}");
    if gpu.greedy_head() {
        let (same, n) = check_greedy_head(gpu, &toks)?;
        println!("device greedy head vs the host's pick over the same logits: {same}/{n} identical (id, value, skipped logits)");
    }
    if gpu.sample_head() {
        let (same, n) = check_sample_head(gpu, &toks)?;
        println!("device sampling head vs the host's reference over the same logits: {same}/{n} identical (argmax, draw, top-p sum, candidates, fetched row)");
    }
    let prompt = &toks[..toks.len().min(8)];
    for &n in &a.batch_invariance {
        let (same, first_diff) = check_batch_invariance(gpu, prompt, n, a.greedy, vocab)?;
        let verdict = match first_diff {
            None => format!("identical ({same}/{})", a.greedy),
            Some(i) => format!(
                "first difference at token {i} ({same}/{} identical)",
                a.greedy
            ),
        };
        println!(
            "batch invariance: greedy {} tokens alone and in a batch of {n}: {verdict}",
            a.greedy
        );
    }
    let gc = greedy(&mut cpu, prompt, a.greedy)?;
    let gg = greedy(gpu, prompt, a.greedy)?;
    let same = gc.iter().zip(&gg).take_while(|(x, y)| x == y).count();
    println!(
        "greedy {} tokens from an {}-token prompt: identical prefix {same}/{} (cpu {:?}, gpu {:?})",
        a.greedy,
        prompt.len(),
        a.greedy,
        &gc[..gc.len().min(12)],
        &gg[..gg.len().min(12)]
    );
    Ok(())
}

/// The runner's greedy head ([`LogitsWanted::Greedy`]) against the host's pick over
/// the logits row of the same step, position by position, with a skip list holding the
/// row's argmax (the runner-up must win), a low id and an id past the vocabulary.
/// Re-running a position rewrites its KV rows with the same values.
fn check_greedy_head(r: &mut dyn ModelRunner, toks: &[u32]) -> Result<(usize, usize)> {
    let table = one_sequence_kv(r, toks.len() + 1)?;
    let tables: Vec<&[u32]> = vec![&table; r.kv_layout().n_groups()];
    let vocab = r.vocab_size() as u32;
    let mut row = Vec::new();
    let mut same = 0;
    for (i, t) in toks.iter().enumerate() {
        let seq = |logits| {
            [SeqInput {
                tokens: std::slice::from_ref(t),
                start_pos: i,
                block_tables: &tables,
                logits,
            }]
        };
        r.execute(&seq(LogitsWanted::Last), &mut row)?;
        let skip = vec![argmax(&row) as u32, i as u32 % 7, vocab + 5];
        let want = hangar_kernels::packed::greedy_pick_row(&row, &skip);
        r.set_greedy_skips(vec![skip]);
        r.execute(&seq(LogitsWanted::Greedy), &mut row)?;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        same += usize::from(r.greedy_picks().first().is_some_and(|p| {
            p.id == want.id
                && p.value.to_bits() == want.value.to_bits()
                && bits(&p.skipped) == bits(&want.skipped)
        }));
    }
    Ok((same, toks.len()))
}

/// Each layer's matrix inputs after a prefill of `toks`, `(layer, tap, rows)`.
fn layer_inputs(r: &mut dyn ModelRunner, toks: &[u32]) -> Result<Vec<(usize, Tap, Vec<f32>)>> {
    let table = one_sequence_kv(r, toks.len() + 1)?;
    let tables: Vec<&[u32]> = vec![&table; r.kv_layout().n_groups()];
    let mut seen = Vec::new();
    let mut logits = Vec::new();
    r.execute_observed(
        &[SeqInput {
            tokens: toks,
            start_pos: 0,
            block_tables: &tables,
            logits: LogitsWanted::Last,
        }],
        &mut logits,
        &mut |layer, tap, rows, _| {
            if tap != Tap::OutputIn {
                seen.push((layer, tap, rows.to_vec()));
            }
        },
    )?;
    Ok(seen)
}

/// `--layers`: per layer and matrix input, RMS(gpu - cpu) / RMS(cpu) after one
/// prefill of `toks` on each side.
fn print_layer_drift(
    cpu: &mut dyn ModelRunner,
    gpu: &mut dyn ModelRunner,
    toks: &[u32],
) -> Result<()> {
    let a = layer_inputs(cpu, toks)?;
    let b = layer_inputs(gpu, toks)?;
    const TAPS: [(Tap, &str); 4] = [
        (Tap::AttnIn, "attn_in"),
        (Tap::AttnOutIn, "attn_out_in"),
        (Tap::FfnIn, "ffn_in"),
        (Tap::FfnDownIn, "ffn_down_in"),
    ];
    println!(
        "layer drift after a {}-token prefill: RMS(gpu - cpu) / RMS(cpu) of each matrix input",
        toks.len()
    );
    print!("layer");
    for (_, name) in TAPS {
        print!(" {name:>12}");
    }
    println!();
    let layers = a.iter().map(|t| t.0 + 1).max().unwrap_or(0);
    for layer in 0..layers {
        print!("{layer:>5}");
        for (tap, _) in TAPS {
            let find = |v: &[(usize, Tap, Vec<f32>)]| {
                v.iter()
                    .find(|t| t.0 == layer && t.1 == tap)
                    .map(|t| t.2.clone())
            };
            match (find(&a), find(&b)) {
                (Some(x), Some(y)) if !x.is_empty() && !y.is_empty() => {
                    // A side that skips rows no logit needs (the last layer's FFN of
                    // a prefill) shows fewer: compare the last rows both have.
                    let n = x.len().min(y.len());
                    let (x, y) = (&x[x.len() - n..], &y[y.len() - n..]);
                    let (mut num, mut den) = (0f64, 0f64);
                    for (p, q) in x.iter().zip(y) {
                        num += ((q - p) as f64).powi(2);
                        den += (*p as f64).powi(2);
                    }
                    let rel = if den > 0.0 {
                        (num / den).sqrt()
                    } else {
                        num.sqrt()
                    };
                    print!(" {:>11.4}%", 100.0 * rel);
                }
                _ => print!(" {:>12}", "-"),
            }
        }
        println!();
    }
    Ok(())
}

/// The runner's sampling head ([`LogitsWanted::Head`]) against
/// [`hangar_engine::sampler::head::reference`] over the logits row of the same step,
/// position by position: requests alternate between an untruncated draw and a
/// truncating one whose penalties adjust the row's argmax and a low id. The row the
/// runner hands back for a wide nucleus must be the row itself.
fn check_sample_head(r: &mut dyn ModelRunner, toks: &[u32]) -> Result<(usize, usize)> {
    use hangar_engine::sampler::head::reference;
    use hangar_engine::sampler::{HeadRequest, HeadSkip};
    let table = one_sequence_kv(r, toks.len() + 1)?;
    let tables: Vec<&[u32]> = vec![&table; r.kv_layout().n_groups()];
    let mut row = Vec::new();
    let mut back = Vec::new();
    let mut same = 0;
    for (i, t) in toks.iter().enumerate() {
        let seq = |logits| {
            [SeqInput {
                tokens: std::slice::from_ref(t),
                start_pos: i,
                block_tables: &tables,
                logits,
            }]
        };
        r.execute(&seq(LogitsWanted::Last), &mut row)?;
        let top = argmax(&row) as u32;
        let low = i as u32 % 7;
        let mut skips = vec![
            HeadSkip {
                id: top,
                bias: 0.0,
                rep: 1.3,
                pen: 0.5,
            },
            HeadSkip {
                id: low,
                bias: 1.5,
                rep: 1.0,
                pen: 0.0,
            },
        ];
        skips.sort_unstable_by_key(|s| s.id);
        skips.dedup_by_key(|s| s.id);
        let req = HeadRequest {
            inv_t: if i % 2 == 0 { 1.0 } else { 1.0 / 0.8 },
            u: ((i as f64 + 0.5) * 0.618_033_988_75).fract(),
            candidates: i % 2 == 1,
            skips: if i % 2 == 1 { skips } else { Vec::new() },
        };
        let want = reference(&row, &req);
        r.set_head_requests(vec![req]);
        r.execute(&seq(LogitsWanted::Head), &mut back)?;
        back.clear();
        r.head_rows(&[0], &mut back)?;
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        same += usize::from(r.head_results().first() == Some(&want) && bits(&back) == bits(&row));
    }
    Ok((same, toks.len()))
}

/// Greedy tokens of `prompt` decoded alone, then beside `n - 1` other sequences
/// (pseudo-random prompts of other lengths), each prompt prefilled in its own step and
/// then every decode step batched: how many of the first sequence's tokens agree, and
/// the first index where they differ.
fn check_batch_invariance(
    r: &mut dyn ModelRunner,
    prompt: &[u32],
    n: usize,
    steps: usize,
    vocab: usize,
) -> Result<(usize, Option<usize>)> {
    let alone = greedy(r, prompt, steps)?;
    let n = n.max(1);
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut prompts = vec![prompt.to_vec()];
    for i in 1..n {
        let len = 3 + (i * 5) % 13;
        prompts.push(
            (0..len)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % vocab.clamp(1, 32_000) as u64) as u32
                })
                .collect(),
        );
    }
    let block = 16;
    let per = (prompts.iter().map(Vec::len).max().unwrap_or(1) + steps + 1).div_ceil(block);
    let groups = r.kv_layout().n_groups();
    r.allocate_kv(block, &vec![per * n; groups])?;
    let tables: Vec<Vec<u32>> = (0..n)
        .map(|i| ((i * per) as u32..((i + 1) * per) as u32).collect())
        .collect();
    let views: Vec<Vec<&[u32]>> = tables.iter().map(|t| vec![&t[..]; groups]).collect();
    let mut logits = Vec::new();
    let mut last = Vec::with_capacity(n);
    for (i, p) in prompts.iter().enumerate() {
        r.execute(
            &[SeqInput {
                tokens: p,
                start_pos: 0,
                block_tables: &views[i],
                logits: LogitsWanted::Last,
            }],
            &mut logits,
        )?;
        last.push(argmax(&logits) as u32);
    }
    let mut batched = vec![last[0]];
    for step in 0..steps.saturating_sub(1) {
        let seqs: Vec<SeqInput> = (0..n)
            .map(|i| SeqInput {
                tokens: std::slice::from_ref(&last[i]),
                start_pos: prompts[i].len() + step,
                block_tables: &views[i],
                logits: LogitsWanted::Last,
            })
            .collect();
        r.execute(&seqs, &mut logits)?;
        let v = r.vocab_size();
        for (i, row) in logits.chunks_exact(v).enumerate().take(n) {
            last[i] = argmax(row) as u32;
        }
        batched.push(last[0]);
    }
    let same = alone.iter().zip(&batched).filter(|(a, b)| a == b).count();
    let first = alone.iter().zip(&batched).position(|(a, b)| a != b);
    Ok((same, first))
}

/// A prompt's ids and, from a reference JSON, its continuation.
type PromptSeq = (Vec<u32>, Option<Vec<u32>>);

/// The sequences of `--prompts`.
fn read_prompts(lm: &LoadedModel, path: &Path) -> Result<Vec<PromptSeq>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "json") {
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let ids = |x: &serde_json::Value| -> Option<Vec<u32>> {
            x.as_array()?
                .iter()
                .map(|i| i.as_u64().map(|i| i as u32))
                .collect()
        };
        let items = v["greedy"]
            .as_array()
            .with_context(|| format!("{}: no \"greedy\" list", path.display()))?;
        items
            .iter()
            .map(|it| {
                let p = ids(&it["prompt_ids"]).context("an entry without prompt_ids")?;
                Ok((p, ids(&it["greedy_ids"])))
            })
            .collect()
    } else {
        Ok(text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| (lm.tokenizer.encode(l, true, false), None))
            .collect())
    }
}

/// Teacher-forced top-1 agreement, GPU against CPU, over every prompt of a file (see
/// `--prompts`), for the prefill and the decode kernels.
fn check_prompts(
    lm: &LoadedModel,
    cpu: &mut dyn ModelRunner,
    gpu: &mut dyn ModelRunner,
    path: &Path,
    greedy_n: usize,
) -> Result<()> {
    let vocab = lm.model.cfg.vocab_size;
    let seqs = read_prompts(lm, path)?;
    if seqs.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    let (mut ap, mut ad, mut rows, mut worst) = (0usize, 0usize, 0usize, 0f32);
    let mut margins = Vec::new();
    for (i, (prompt, cont)) in seqs.iter().enumerate() {
        if prompt.is_empty() || prompt.iter().any(|&t| t as usize >= vocab) {
            bail!("prompt {i}: empty or with ids outside the vocabulary");
        }
        let cont = match cont {
            Some(c) => c.clone(),
            None => greedy(cpu, prompt, greedy_n)?,
        };
        let mut toks = prompt.clone();
        toks.extend(cont.iter().filter(|&&t| (t as usize) < vocab));
        let (cpu_pre, cpu_dec) = logits_of(cpu, &toks)?;
        let (gpu_pre, gpu_dec) = logits_of(gpu, &toks)?;
        let (p, n, dp, _) = compare(&cpu_pre, &gpu_pre, vocab);
        let (d, _, dd, _) = compare(&cpu_dec, &gpu_dec, vocab);
        margins.extend(disagreement_margins(&cpu_dec, &gpu_dec, vocab));
        println!(
            "prompt {i:>2}: {n:>3} tokens, prefill {p}/{n}, decode {d}/{n}, max |logit diff| {:.4}",
            dp.max(dd)
        );
        ap += p;
        ad += d;
        rows += n;
        worst = worst.max(dp.max(dd));
    }
    let pct = |a: usize| 100.0 * a as f64 / rows.max(1) as f64;
    println!(
        "{} prompts, {rows} positions: teacher-forced top-1 agreement prefill {ap}/{rows} ({:.2}%), decode {ad}/{rows} ({:.2}%), max |logit diff| {worst:.4}",
        seqs.len(),
        pct(ap),
        pct(ad)
    );
    if !margins.is_empty() {
        margins.sort_by(f32::total_cmp);
        let under = |m: f32| margins.iter().filter(|&&x| x < m).count();
        println!(
            "decode disagreements: the CPU's top-2 margin there is under 0.1 at {}, under 0.25 at {}, under 0.5 at {}, of {} (median {:.3}, largest {:.3})",
            under(0.1),
            under(0.25),
            under(0.5),
            margins.len(),
            margins[margins.len() / 2],
            margins[margins.len() - 1]
        );
    }
    Ok(())
}
