//! [`CudaRunner`]: the engine's `ModelRunner` on an NVIDIA GPU.
//!
//! Weights are uploaded once in their GGUF block formats (the kernels dequantize as
//! they read); norms stay f32. The KV cache is f16, one K and one V array per layer,
//! in the engine's paged layout: token `p` of a sequence lives in block
//! `table[p / block_size]`, row `p % block_size`, `kv_dim` values per row. A step
//! uploads token ids, positions and block tables, runs every layer on the GPU and
//! downloads only the wanted logits. Numerics follow the CPU path's fast numerics
//! (f16 K/V/Q, f16 attention probabilities, ggml's GELU table); the decode GEMVs of
//! the quantized types take int8 activations (32-wide blocks), prefill f16 (cuBLAS).

mod deferred;
mod norm;
mod sampling;
mod step_times;
mod stream;

use crate::gpu::{event_ms, Args, DevBuf, Gpu, Scratch};
use crate::head::HEAD_MAX_VOCAB;
use crate::offload::{plan_layers, CpuLayers, GpuOptions, SCRATCH_RESERVE};
use crate::pinned::Pinned;
use crate::CudaError;
use deferred::Q8Of;
use hangar_engine::sampler::{HeadRequest, HeadResult};
use hangar_engine::{EngineError, ModelRunner, StepInput};
use hangar_formats::GgmlType;
use hangar_kernels::ops::RopeStyle;
use hangar_kernels::packed::GreedyPick;
use hangar_models::kv::{KvLayout, NO_BLOCK};
use hangar_models::{Activation, LogitsWanted, MatrixView, Model, ModelConfig, Observer, Tap};
use stream::{StreamCfg, STREAM_KERNELS};

/// A matrix on the device.
struct DevMat {
    kind: &'static str,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    buf: DevBuf,
    /// The matrix dequantized to f16 once, for cuBLAS on batched steps, where memory
    /// allows (see `CudaRunner::cache_f16`).
    f16: Option<DevBuf>,
}

fn kind_of(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::F32 => "f32",
        GgmlType::F16 => "f16",
        GgmlType::BF16 => "bf16",
        GgmlType::Q8_0 => "q8_0",
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q4K => "q4_k",
        GgmlType::Q5K => "q5_k",
        GgmlType::Q6K => "q6_k",
        _ => return None,
    })
}

impl DevMat {
    fn upload(gpu: &Gpu, name: &str, m: &MatrixView) -> Result<Self, CudaError> {
        let kind = kind_of(m.ty).ok_or_else(|| {
            CudaError::Unsupported(format!("{name}: weight type {:?} has no GPU kernel", m.ty))
        })?;
        if !m.cols.is_multiple_of(32) || m.rows == 0 {
            return Err(CudaError::Unsupported(format!(
                "{name}: {} columns (the GPU kernels need a multiple of 32)",
                m.cols
            )));
        }
        Ok(DevMat {
            kind,
            rows: m.rows,
            cols: m.cols,
            row_bytes: m.data.len() / m.rows,
            buf: DevBuf::upload(gpu, m.data)?,
            f16: None,
        })
    }
}

fn vec_opt(gpu: &Gpu, v: Option<&[f32]>) -> Result<Option<DevBuf>, CudaError> {
    v.map(|v| DevBuf::upload(gpu, v)).transpose()
}

fn ptr(b: &Option<DevBuf>) -> u64 {
    b.as_ref().map_or(0, |b| b.ptr)
}

struct DevLayer {
    attn_norm: DevBuf,
    wq: DevMat,
    wk: DevMat,
    wv: DevMat,
    wo: DevMat,
    bq: Option<DevBuf>,
    bk: Option<DevBuf>,
    bv: Option<DevBuf>,
    q_norm: Option<DevBuf>,
    k_norm: Option<DevBuf>,
    post_attn_norm: Option<DevBuf>,
    ffn_norm: DevBuf,
    gate: DevMat,
    up: DevMat,
    down: DevMat,
    post_ffn_norm: Option<DevBuf>,
}

/// The KV cache on the device: per layer K and V, f16.
struct DevKv {
    block_size: usize,
    blocks: Vec<usize>,
    /// layer -> group
    group: Vec<usize>,
    k: Vec<DevBuf>,
    v: Vec<DevBuf>,
}

#[derive(Default)]
struct Buffers {
    x: Scratch,
    h: Scratch,
    q: Scratch,
    k: Scratch,
    v: Scratch,
    attn: Scratch,
    o: Scratch,
    gate: Scratch,
    up: Scratch,
    sel: Scratch,
    logits: Scratch,
    tokens: Scratch,
    pos: Scratch,
    tok_seq: Scratch,
    rows: Scratch,
    tables: Vec<Scratch>,
    scores: Scratch,
    /// Split attention: per (token, head, chunk) the max and sum, and partial outputs.
    att_ml: Scratch,
    att_part: Scratch,
    /// Prefill through cuBLAS: one dequantized matrix and the f16 activations.
    w16: Scratch,
    x16: Scratch,
    /// The int8 activations of the decode GEMVs: values and per-32 (d, d * sum q).
    xq: Scratch,
    xd: Scratch,
    /// Per 32 values of `xq`, the sum of squares of the un-normed row when its norm
    /// is deferred (runner/deferred.rs).
    ss: Scratch,
    /// Those int8 activations back as floats, for the f32 GEMVs and cuBLAS.
    xf: Scratch,
    /// The device greedy head: picks (id, value bits), skip-list offsets, ids and the
    /// skipped ids' logits.
    pick: Scratch,
    skip_off: Scratch,
    skip_ids: Scratch,
    skipped: Scratch,
    /// The sampling head: its packed requests and its answers.
    head_in: Scratch,
    head_out: Scratch,
}

/// How matrix inputs are rounded (`HANGAR_CUDA_ACT`). `Fine` (the default, `fine` or
/// `q8_1`): int8 per 32 values for the dp4a GEMVs only (llama.cpp's CUDA choice), f32
/// elsewhere. `Cpu` (`cpu`): as the CPU's fast path does, per the weight type (ggml's
/// q8_0 for Q4_0/Q5_0/Q8_0, q8_K for K-quants), in every matrix product, so GPU and
/// CPU multiply the same integers. On random-weight models (docs/GPU.md run 9) it did
/// not raise top-1 agreement clearly and cost 5% of decode and 12% of prefill, so it
/// stays opt-in until a run on the real model decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActRounding {
    Cpu,
    Fine,
}

/// The activation block of the CPU's quantization for a weight kind: 32 (q8_0), 256
/// (q8_K), or 0 for float weights (f32 activations on the CPU too).
fn cpu_act_block(kind: &str) -> usize {
    match kind {
        "q4_0" | "q5_0" | "q8_0" => 32,
        "q4_k" | "q5_k" | "q6_k" => 256,
        _ => 0,
    }
}

/// The decode GEMV kernels in use (`HANGAR_CUDA_GEMV`): `basic` (the generic
/// 8-weights-a-lane kernel on f32 activations for every type), `wide` (the wide-load
/// f32 Q4_K and Q6_K kernels, docs/GPU.md run 5), else the int8 dp4a kernels
/// (kernels/mmvq.cu) for Q4_K, Q5_K, Q6_K, Q8_0 and Q4_0 and the generic one for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GemvChoice {
    Basic,
    Wide,
    Int8,
}

/// Weight kinds with an int8-activation (dp4a) GEMV.
fn has_int8_gemv(kind: &str) -> bool {
    matches!(kind, "q4_k" | "q5_k" | "q6_k" | "q8_0" | "q4_0" | "q5_0")
}

/// How many warps share one row in the `mvs`/`mvp` kernels (kernels/mmvq.cu). One:
/// on the H200, one warp per row with four rows a block beat two and four warps per
/// row on both the 8B and the 270M shapes (docs/GPU.md runs 12-13: 287.8 vs 271.1
/// vs 246.7 tok/s at batch 1 on the 8B shape); a block of one row is too little work
/// per block. `HANGAR_CUDA_PARTS=2|4` selects the split (A/B runs, other GPUs).
fn gemv_parts() -> usize {
    std::env::var("HANGAR_CUDA_PARTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|p| matches!(p, 1 | 2 | 4))
        .unwrap_or(1)
}

/// Token-row tile of the int8 GEMVs for `ntok` rows.
fn gemv_tile(ntok: usize) -> usize {
    match ntok {
        1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    }
}

/// Token counts from which a matrix product goes through cuBLAS (dequantize to f16,
/// tensor-core GEMM) instead of the GEMV kernels.
const GEMM_MIN_TOKENS: usize = 32;
/// The same with f16 copies of the weights (`cache_f16`): cuBLAS wins as soon as the
/// GEMVs would need a second pass over the weights (more than 8 tokens). Run 16 on the
/// 8B shape: 12 sequences 949 -> 1369 tok/s, 16: 1035 -> 1685, 24: 1074 -> 2184; at 8
/// the two are level (941 / 936).
const GEMM_MIN_WITH_F16: usize = 9;

/// Runs a model's forward pass on an NVIDIA GPU (see the module docs).
pub struct CudaRunner {
    cfg: ModelConfig,
    layout: KvLayout,
    layers: Vec<DevLayer>,
    /// `None` when the CPU embeds (partial offload) and the output is not tied.
    embd: Option<DevMat>,
    /// `None` when the output projection is the embedding (tied).
    output: Option<DevMat>,
    out_norm: DevBuf,
    rope_ff: Option<DevBuf>,
    kv: Option<DevKv>,
    bufs: Buffers,
    weight_bytes: usize,
    /// Which decode GEMVs run (`HANGAR_CUDA_GEMV`).
    gemv: GemvChoice,
    /// The input (pointer, tokens, columns) whose int8 copy is current, and where it
    /// is; reset whenever a kernel rewrites a matrix input (norms, attention,
    /// activations).
    q8_of: Option<Q8Of>,
    /// `cuda:N (name, arch)`, for [`ModelRunner::device`].
    device: String,
    /// The input whose int8 activations `bufs.xf` holds as floats (same key).
    xf_of: Option<Q8Key>,
    act: ActRounding,
    /// The first layer on the GPU; the ones before it run on the CPU (`cpu`).
    first: usize,
    cpu: Option<CpuLayers>,
    /// Split-row GEMVs (`mvs`), on unless `HANGAR_CUDA_SPLIT=0`.
    split: bool,
    /// Fused decode launches (QKV in one GEMV, gate + up + activation in one, residual
    /// add + norm + quantization in one, RoPE + KV store in one), on unless
    /// `HANGAR_CUDA_FUSE=0`.
    fuse: bool,
    /// Decode steps of models without post-norms defer each norm to the GEMVs that
    /// read it (runner/deferred.rs), unless `HANGAR_CUDA_DEFER_NORM=0`.
    defer_norm: bool,
    /// Decode steps of one token a sequence fold RoPE and the K/V store into the
    /// attention kernel (`attention_rope`), on unless `HANGAR_CUDA_ATT_ROPE=0`.
    att_rope: bool,
    /// Prefill products of Q4_K matrices on int8 tensor cores from the quantized
    /// blocks (`mmq_q4_k`, kernels/mmq.cu) instead of cuBLAS on f16 copies; opt-in
    /// (`HANGAR_CUDA_MMQ=1`) until it is measured on a GPU.
    mmq: bool,
    /// `HANGAR_CUDA_STEP_TIMES=1`: where graphed steps' wall time goes (runner/step_times.rs).
    step_times: Option<step_times::StepTimes>,
    /// A step's uploads and its logits go through page-locked staging, queued on the
    /// stream (src/pinned.rs; off with `HANGAR_CUDA_PINNED=0`).
    pinned: Option<Pinned>,
    /// Blocks split-K attention aims for where (head, token) blocks are few
    /// (`attention_splits`): `ATT_SPLIT_TARGET_BLOCKS`, `HANGAR_CUDA_SPLITK=N` for A/B
    /// runs (0: off).
    split_k: usize,
    /// Which steps take a tiled prefill attention kernel.
    tiled: TiledRule,
    /// Bytes of the f16 weight copies (`cache_f16`).
    f16_bytes: usize,
    /// Steps of at least this many tokens multiply on cuBLAS (`GEMM_MIN_TOKENS`;
    /// `HANGAR_CUDA_GEMM_MIN` overrides it for A/B runs).
    gemm_min: usize,
    /// Host threads: the CPU layers of a partial offload, and the engine's sampling
    /// of many rows at once (`run_parallel`).
    pool: hangar_kernels::ThreadPool,
    /// The row split of `mvs` launches under `SMALL_GEMV_BYTES`.
    parts_small: usize,
    /// The streamed batch-1 GEMVs (`mvst`/`mvpt`, kernels/mmvq.cu; runner/stream.rs).
    stream: Option<StreamCfg>,
    /// Greedy rows picked on the device (`greedy_pick`), on unless
    /// `HANGAR_CUDA_GREEDY=0` or the vocabulary's skip bitmap outgrows shared memory.
    greedy_on: bool,
    greedy_skips: Vec<Vec<u32>>,
    greedy_picks: Vec<GreedyPick>,
    /// Sampled rows answered on the device (`sample_head`, kernels/sample.cu), on
    /// unless `HANGAR_CUDA_SAMPLE=0` or the skip bitmap outgrows shared memory.
    head_on: bool,
    /// `add_norm_q8` as a thread-block cluster (sm_90+, checked at load).
    norm_cluster: bool,
    head_reqs: Vec<HeadRequest>,
    head_results: Vec<HeadResult>,
    /// The logits row of the last step's first head row (for `head_rows`).
    head_first: usize,
    /// While `execute_observed` runs: each layer's matrix inputs, copied back.
    taps: Option<Vec<(usize, Tap, Vec<f32>)>>,
    /// A sticky driver error a step hit ([`CudaError::is_sticky`]): the context is
    /// unusable, so every later step is refused with it.
    fault: Option<String>,
    gpu: Gpu,
}

/// A matrix input's int8 copy: (input pointer, tokens, columns, CPU block or 0).
type Q8Key = (u64, usize, usize, usize);

const F: usize = std::mem::size_of::<f32>();
/// `mvs` launches over fewer weight bytes than this fit in one wave of warps, so a
/// warp's chain of block steps is the kernel's time: `HANGAR_CUDA_PARTS_SMALL` gives
/// them their own row split (measured in docs/GPU.md run 24).
const SMALL_GEMV_BYTES: usize = 16 << 20;
/// The widest row `add_norm_q8` holds in registers (1024 threads x ANQ_E values).
const ADD_NORM_MAX: usize = 1024 * 8;
/// Attention keeps a token's scores in shared memory up to this many positions.
const ATT_SMEM_SCORES: usize = 4096;
/// Rows and tokens a block of `mmq_q4_k` takes (`MMQ_ROWS`, `MMQ_TOKS`; a kernel built
/// with `MMQ_T64` takes 64 tokens, and the blocks past them find none).
const MMQ_ROWS: usize = 64;
const MMQ_TOKS: usize = 32;
/// Warps per attention block (`ATT_WARPS` in kernels/attention.cu, `twin::ATT_WARPS`).
const ATT_WARPS: usize = crate::twin::ATT_WARPS;

/// The widest head the tiled prefill attention takes (`FA_HD` in kernels/attention.cu).
const ATT_TILED_MAX_HEAD: usize = 128;
/// Rows at least this long take the tiled prefill attention (run 20, 8B shape: pp4096
/// 2 345 -> 2 776 tok/s, but pp512 11 341 -> 10 928: its scores are dot products out of
/// shared memory on CUDA cores, so it wins only where re-reading K/V dominated).
const ATT_TILED_MIN_POSITIONS: usize = 2048;

/// ... and a prompt of at least this many tokens in the step (the tiled kernels take 16
/// or 64 tokens a block).
const ATT_TILED_MIN_TOKENS: usize = 16;

/// The tensor-core kernel (`attention_mma64/128`) wins from far shorter rows: run 55
/// (H100), pp2040 on the plain kernel against pp2048 on it: 8B shape 4 167 against
/// 23 151 tok/s, 1B shape 9 124 against 96 940. It takes 64 tokens a block and goes
/// through a block's sequences one after another, so it is kept to steps of at least
/// `ATT_MMA_TOKENS` tokens a sequence on average: a step of many one-token decode rows
/// beside a prompt stays on the plain kernel, one block per row and head. From 128
/// positions: below that the plain kernel's re-reads of K/V are small, and its one
/// block per row and head fills the GPU where the tensor-core kernel's few blocks do
/// not (not yet timed below 2 048 on a GPU: `scripts/gpu-run56.sh`).
const ATT_MMA_MIN_POSITIONS: usize = 128;
const ATT_MMA_TOKENS: usize = 64;

/// Whether a layer's attention takes a tiled prefill kernel.
struct TiledRule {
    /// The tiled prefill attention (`attention_tiled`) for steps with a 16+-token
    /// prompt and rows of `ATT_TILED_MIN_POSITIONS`+, on unless `HANGAR_CUDA_TILED=0`.
    on: bool,
    /// The tiled prefill attention on tensor cores (`attention_mma64/128`) for heads
    /// of 64 or 128, on unless `HANGAR_CUDA_ATT_MMA=0` (run 26: pp4096 on the 8B
    /// shape 2 768 -> 20 372 tok/s, perplexity at a 4 096 context equal to 1.3e-5).
    mma: bool,
    /// Rows at least this long take the tensor-core attention in steps that are mostly
    /// prompt (`ATT_MMA_MIN_POSITIONS`, `HANGAR_CUDA_MMA_MIN=N` for A/B runs).
    mma_min: usize,
}

impl TiledRule {
    /// The tensor-core kernel takes heads of 64 and 128.
    fn mma(&self, hd: usize) -> bool {
        self.mma && matches!(hd, 64 | 128)
    }

    /// `splits`: the split-K chunks of decode rows (`attention_splits`); `longest`: the
    /// step's longest row in tokens; `max_n`: its positions; `mostly_prompt`: at least
    /// `ATT_MMA_TOKENS` tokens a sequence.
    fn takes(
        &self,
        hd: usize,
        splits: usize,
        longest: usize,
        max_n: usize,
        mostly_prompt: bool,
    ) -> bool {
        let min_positions = if self.mma(hd) && mostly_prompt {
            self.mma_min
        } else {
            ATT_TILED_MIN_POSITIONS
        };
        self.on
            && splits == 1
            && hd <= ATT_TILED_MAX_HEAD
            && longest >= ATT_TILED_MIN_TOKENS
            && max_n >= min_positions
    }
}

/// Blocks the split attention aims for: about sixteen per SM of an H100 / H200 (run
/// 19, 8B at 4k positions: 2048 decodes 205 tok/s, 512 171: the reads are
/// latency-bound, more blocks keep more of them in flight).
const ATT_SPLIT_TARGET_BLOCKS: usize = 2048;
/// The fewest positions a split-attention chunk covers.
const ATT_SPLIT_MIN_CHUNK: usize = 64;

/// The arguments of the kernels that multiply an int8 input in one launch (`gemvq*`,
/// `mmq_q4_k`): the weights (pointer, row bytes, rows, columns), the input's values
/// and scales, the tokens and the output.
fn int8_product_args(
    (w, rb, rows, cols): (u64, usize, usize, usize),
    (xq, xd): (u64, u64),
    ntok: usize,
    y: u64,
) -> Args {
    Args::new()
        .ptr(w)
        .u64(rb as u64)
        .i32(rows as i32)
        .i32(cols as i32)
        .ptr(xq)
        .ptr(xd)
        .i32(ntok as i32)
        .ptr(y)
}

/// How `attention` splits positions for `blocks` (head, token) pairs and rows of up to
/// `max_n` positions, aiming at `target` blocks (0: never split): `(chunks, positions per chunk)`, one chunk meaning the unsplit
/// kernel. Splits only where the blocks alone would leave most SMs idle (decode at
/// small batches), into chunks of at least [`ATT_SPLIT_MIN_CHUNK`] positions.
pub(crate) fn attention_splits(blocks: usize, max_n: usize, target: usize) -> (usize, usize) {
    let want = target.div_ceil(blocks.max(1));
    let most = max_n / ATT_SPLIT_MIN_CHUNK;
    let s = want.min(most);
    if s <= 1 {
        return (1, max_n);
    }
    let chunk = max_n.div_ceil(s).next_multiple_of(ATT_WARPS);
    (max_n.div_ceil(chunk), chunk)
}

/// Launches the three split-attention kernels (kernels/attention.cu): buffers `[q, k
/// cache, v cache, out, tok_seq, block table, scores, ml, part]`, shapes `(heads, kv
/// heads, head size, tokens)`, rows `(table stride, block size, window, max positions,
/// chunks, chunk)`, and the output's q8_1 copy (`(0, 0)`: none).
fn split_attention(
    gpu: &mut Gpu,
    [q, kc, vc, out, ts, table, scores, ml, part]: [u64; 9],
    (nh, nkv, hd, t): (usize, usize, usize, usize),
    (tstride, bs, window, max_n, splits, chunk): (usize, usize, usize, usize, usize, usize),
    scale: f32,
    (xq, xd): (u64, u64),
) -> Result<(), CudaError> {
    let grid = (nh as u32, t as u32, splits as u32);
    let block = (32 * ATT_WARPS as u32, 1, 1);
    let row = |a: Args| {
        a.i32(nh as i32)
            .i32(nkv as i32)
            .i32(hd as i32)
            .ptr(ts)
            .ptr(table)
            .i32(tstride as i32)
            .i32(bs as i32)
            .i32(window as i32)
    };
    let args = row(Args::new().ptr(q).ptr(kc))
        .f32(scale)
        .ptr(scores)
        .i32(max_n as i32)
        .i32(chunk as i32)
        .ptr(ml);
    gpu.launch("att_split_scores", grid, block, 0, args)?;
    let args = row(Args::new().ptr(vc))
        .ptr(scores)
        .i32(max_n as i32)
        .i32(chunk as i32)
        .ptr(ml)
        .ptr(part);
    gpu.launch("att_split_pv", grid, block, 0, args)?;
    let args = Args::new()
        .ptr(part)
        .ptr(out)
        .i32(nh as i32)
        .i32(hd as i32)
        .i32(splits as i32)
        .ptr(xq)
        .ptr(xd);
    gpu.launch("att_split_sum", (nh as u32, t as u32, 1), block, 0, args)
}

fn grid1(n: usize, threads: usize) -> u32 {
    n.div_ceil(threads).clamp(1, 65_535) as u32
}

impl CudaRunner {
    /// Opens CUDA device `ordinal`, compiles (or loads) the kernels and uploads the
    /// model's weights: every layer, or an error when they do not fit.
    pub fn new(model: &Model, ordinal: usize) -> Result<Self, CudaError> {
        Self::with_options(model, ordinal, &GpuOptions::default())
    }

    /// As [`CudaRunner::new`], with `--gpu-layers` and the KV budget to keep free.
    pub fn with_options(
        model: &Model,
        ordinal: usize,
        opts: &GpuOptions,
    ) -> Result<Self, CudaError> {
        let gpu = Gpu::open(ordinal)?;
        gpu.bind()?;
        let cfg = model.cfg.clone();
        if cfg.head_dim > 256 || !cfg.head_dim.is_multiple_of(2) || cfg.rope_dims > cfg.head_dim {
            return Err(CudaError::Unsupported(format!(
                "head size {} (the attention kernel takes even sizes up to 256)",
                cfg.head_dim
            )));
        }
        let all_views = model.layer_views();
        let emb = model.token_embedding();
        let out = model.output_matrix();
        let tied = std::ptr::eq(out.data.as_ptr(), emb.data.as_ptr());
        let layer_bytes: Vec<usize> = all_views
            .iter()
            .map(|l| {
                [&l.wq, &l.wk, &l.wv, &l.wo, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.data.len())
                    .sum()
            })
            .collect();
        let (free, _) = gpu.mem_info()?;
        let device = format!("cuda:{ordinal} ({})", gpu.info.name);
        let plan = plan_layers(
            &layer_bytes,
            out.data.len(),
            if tied { 0 } else { emb.data.len() },
            opts.kv_bytes,
            free,
            opts.gpu_layers,
            &device,
        )?;
        let first = plan.first_gpu_layer();
        let cpu = if first > 0 {
            Some(CpuLayers::new(model.gguf().clone(), first)?)
        } else {
            None
        };
        let views = &all_views[first..];
        let mut need = out.data.len() + layer_bytes[first..].iter().sum::<usize>();
        if first == 0 && !tied {
            need += emb.data.len();
        }
        let mut layers = Vec::with_capacity(views.len());
        for (i, l) in views.iter().enumerate() {
            let i = first + i;
            let n = |s: &str| format!("blk.{i}.{s}");
            layers.push(DevLayer {
                attn_norm: DevBuf::upload(&gpu, l.attn_norm)?,
                wq: DevMat::upload(&gpu, &n("attn_q"), &l.wq)?,
                wk: DevMat::upload(&gpu, &n("attn_k"), &l.wk)?,
                wv: DevMat::upload(&gpu, &n("attn_v"), &l.wv)?,
                wo: DevMat::upload(&gpu, &n("attn_output"), &l.wo)?,
                bq: vec_opt(&gpu, l.bq)?,
                bk: vec_opt(&gpu, l.bk)?,
                bv: vec_opt(&gpu, l.bv)?,
                q_norm: vec_opt(&gpu, l.q_norm)?,
                k_norm: vec_opt(&gpu, l.k_norm)?,
                post_attn_norm: vec_opt(&gpu, l.post_attn_norm)?,
                ffn_norm: DevBuf::upload(&gpu, l.ffn_norm)?,
                gate: DevMat::upload(&gpu, &n("ffn_gate"), &l.gate)?,
                up: DevMat::upload(&gpu, &n("ffn_up"), &l.up)?,
                down: DevMat::upload(&gpu, &n("ffn_down"), &l.down)?,
                post_ffn_norm: vec_opt(&gpu, l.post_ffn_norm)?,
            });
        }
        // The embedding is needed here when the GPU embeds (no CPU layers) or when it
        // is also the output projection.
        let embd = if first == 0 || tied {
            Some(DevMat::upload(&gpu, "token_embd", &emb)?)
        } else {
            None
        };
        let output = if tied {
            None
        } else {
            Some(DevMat::upload(&gpu, "output", &out)?)
        };
        let mut device = format!("cuda:{ordinal} ({}, {})", gpu.info.name, gpu.arch);
        if first > 0 {
            device = format!(
                "{device}, {} of {} layers (the first {first} on the cpu)",
                plan.gpu_layers, plan.n_layers
            );
        }
        let kv_here = opts.kv_bytes / cfg.n_layers.max(1) * plan.gpu_layers;
        let mut r = CudaRunner {
            layout: KvLayout::for_model(&cfg),
            out_norm: DevBuf::upload(&gpu, model.output_norm())?,
            rope_ff: vec_opt(&gpu, model.rope_freq_factors())?,
            cfg,
            layers,
            embd,
            output,
            kv: None,
            bufs: Buffers::default(),
            weight_bytes: need,
            gemv: match std::env::var("HANGAR_CUDA_GEMV").as_deref() {
                Ok("basic") => GemvChoice::Basic,
                Ok("wide") => GemvChoice::Wide,
                _ => GemvChoice::Int8,
            },
            q8_of: None,
            xf_of: None,
            device,
            first,
            cpu,
            act: match std::env::var("HANGAR_CUDA_ACT").as_deref() {
                Ok("cpu") => ActRounding::Cpu,
                _ => ActRounding::Fine,
            },
            split: std::env::var("HANGAR_CUDA_SPLIT").as_deref() != Ok("0"),
            fuse: std::env::var("HANGAR_CUDA_FUSE").as_deref() != Ok("0"),
            defer_norm: std::env::var("HANGAR_CUDA_DEFER_NORM").as_deref() != Ok("0"),
            att_rope: std::env::var("HANGAR_CUDA_ATT_ROPE").as_deref() != Ok("0"),
            mmq: std::env::var("HANGAR_CUDA_MMQ").as_deref() == Ok("1"),
            step_times: step_times::StepTimes::from_env(),
            pinned: Pinned::from_env(),
            split_k: match std::env::var("HANGAR_CUDA_SPLITK").map(|v| v.parse::<usize>()) {
                Ok(Ok(n)) => n,
                _ => ATT_SPLIT_TARGET_BLOCKS,
            },
            tiled: TiledRule {
                on: std::env::var("HANGAR_CUDA_TILED").as_deref() != Ok("0"),
                mma: std::env::var("HANGAR_CUDA_ATT_MMA").as_deref() != Ok("0"),
                mma_min: std::env::var("HANGAR_CUDA_MMA_MIN")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(ATT_MMA_MIN_POSITIONS),
            },
            f16_bytes: 0,
            gemm_min: std::env::var("HANGAR_CUDA_GEMM_MIN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(GEMM_MIN_TOKENS)
                .max(2),
            pool: hangar_kernels::ThreadPool::new(match opts.threads {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                t => t,
            }),
            parts_small: std::env::var("HANGAR_CUDA_PARTS_SMALL")
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|p| matches!(p, 1 | 2 | 4))
                .unwrap_or_else(gemv_parts),
            stream: StreamCfg::from_env(&gpu.info),
            // The skip bitmap lives in shared memory (48 KiB without opting in).
            greedy_on: std::env::var("HANGAR_CUDA_GREEDY").as_deref() != Ok("0")
                && model.cfg.vocab_size.div_ceil(32) * 4 <= 48 << 10,
            greedy_skips: Vec::new(),
            greedy_picks: Vec::new(),
            head_on: std::env::var("HANGAR_CUDA_SAMPLE").as_deref() != Ok("0")
                && model.cfg.vocab_size <= HEAD_MAX_VOCAB,
            norm_cluster: false,
            head_reqs: Vec::new(),
            head_results: Vec::new(),
            head_first: 0,
            taps: None,
            fault: None,
            gpu,
        };
        r.cache_f16(kv_here)?;
        if r.f16_bytes > 0 && std::env::var_os("HANGAR_CUDA_GEMM_MIN").is_none() {
            r.gemm_min = GEMM_MIN_WITH_F16;
        }
        if r.gpu.info.compute_capability.0 >= 9
            && std::env::var("HANGAR_CUDA_NORM_CLUSTER").as_deref() != Ok("0")
        {
            match r.check_norm_cluster() {
                Ok(()) => r.norm_cluster = true,
                Err(why) => eprintln!(
                    "warning: the cluster norm kernel is off ({why}); add_norm_q8 runs on one block"
                ),
            }
        }
        if let Some(st) = &r.stream {
            let max = st.smem_max;
            for name in STREAM_KERNELS {
                if let Err(e) = r.gpu.allow_shared(name, max) {
                    eprintln!("warning: {e}; the streamed GEMVs are off");
                    r.stream = None;
                    break;
                }
            }
        }
        if r.head_on {
            if let Err(why) = r.check_sample_head() {
                eprintln!("warning: the device sampling head is off ({why}); sampled rows are copied to the host");
                r.head_on = false;
            }
        }
        Ok(r)
    }

    /// Batched steps (prefill, or many sequences decoding) multiply on cuBLAS in f16.
    /// Where the device has room beside the weights, the KV budget and a margin, each
    /// matrix is dequantized to f16 once here instead of before every such product:
    /// a step of 64 decoding sequences then reads 2 bytes per weight instead of about
    /// 4.6 (quantized read, f16 write, f16 read). Decode at small batches still reads
    /// the quantized blocks. `HANGAR_CUDA_F16_WEIGHTS=0` keeps only the quantized copy.
    fn cache_f16(&mut self, kv_bytes: usize) -> Result<(), CudaError> {
        if std::env::var("HANGAR_CUDA_F16_WEIGHTS").as_deref() == Ok("0") || self.gpu.blas.is_none()
        {
            return Ok(());
        }
        let gpu = &mut self.gpu;
        let mut mats: Vec<&mut DevMat> = Vec::new();
        for l in self.layers.iter_mut() {
            mats.extend([
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.gate,
                &mut l.up,
                &mut l.down,
            ]);
        }
        // Only the output projection is multiplied (the embedding is looked up).
        match (self.output.as_mut(), self.embd.as_mut()) {
            (Some(o), _) | (None, Some(o)) => mats.push(o),
            (None, None) => {}
        }
        let total: usize = mats.iter().map(|m| m.rows * m.cols * 2).sum();
        let (free, _) = gpu.mem_info()?;
        if total + kv_bytes + SCRATCH_RESERVE + (1 << 30) > free {
            return Ok(());
        }
        for m in mats {
            let buf = DevBuf::alloc(gpu, m.rows * m.cols * 2)?;
            let args = Args::new()
                .ptr(m.buf.ptr)
                .u64(m.row_bytes as u64)
                .i32(m.cols as i32)
                .ptr(buf.ptr);
            gpu.launch(
                &format!("dequant_f16_{}", m.kind),
                (m.rows as u32, 1, 1),
                (128, 1, 1),
                0,
                args,
            )?;
            m.f16 = Some(buf);
        }
        gpu.sync()?;
        self.f16_bytes = total;
        Ok(())
    }

    /// Bytes of f16 weight copies kept for batched steps (0: dequantized per step).
    pub fn f16_bytes(&self) -> usize {
        self.f16_bytes
    }

    /// The device's name, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> &str {
        &self.gpu.info.name
    }
    /// Whether kernels launch with programmatic dependent launch (`HANGAR_CUDA_PDL`).
    pub fn pdl(&self) -> bool {
        self.gpu.pdl()
    }

    /// The architecture the kernels were compiled for, e.g. "sm_90a".
    pub fn arch(&self) -> &str {
        &self.gpu.arch
    }
    /// Bytes of weight matrices on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
    /// Layers on the GPU (the last ones) and in the model.
    pub fn gpu_layers(&self) -> (usize, usize) {
        (self.cfg.n_layers - self.first, self.cfg.n_layers)
    }
    /// Threads of the CPU layers, when some layers run there.
    pub fn cpu_threads(&self) -> Option<usize> {
        self.cpu.as_ref().map(|_| self.pool.n_threads())
    }

    /// `y[t] = W x[t]` for `ntok` rows.
    fn matmul(&mut self, m: usize, x: u64, ntok: usize, y: u64) -> Result<(), CudaError> {
        let w = self.mat(m);
        let (kind, rows, cols, rb, wp) = (w.kind, w.rows, w.cols, w.row_bytes, w.buf.ptr);
        let cached16 = w.f16.as_ref().map(|b| b.ptr);
        let cpu_blk = match self.act {
            ActRounding::Cpu if cols.is_multiple_of(cpu_act_block(kind).max(1)) => {
                cpu_act_block(kind)
            }
            _ => 0,
        };
        let int8 = self.gemv == GemvChoice::Int8 && has_int8_gemv(kind);
        let gemm = ntok >= self.gemm_min && self.gpu.blas.is_some();
        // An int8 copy with its norm deferred is only read by `mvs`, which applies it.
        let xs = self.q8_ss((x, ntok, cols, cpu_blk));
        if xs != 0 && !(int8 && self.split && !gemm) {
            return Err(CudaError::BadLaunch(format!(
                "matrix {m} would read an input whose norm is deferred"
            )));
        }
        if self.mmq
            && ntok >= self.gemm_min
            && kind == "q4_k"
            && cpu_blk == 0
            && xs == 0
            && cols.is_multiple_of(256)
        {
            let x8 = self.quantize_x(x, ntok, cols, 0)?;
            let args = int8_product_args((wp, rb, rows, cols), x8, ntok, y);
            let grid = (
                rows.div_ceil(MMQ_ROWS) as u32,
                ntok.div_ceil(MMQ_TOKS) as u32,
                1,
            );
            return self.gpu.launch("mmq_q4_k", grid, (128, 1, 1), 0, args);
        }
        // Float paths with CPU rounding read the int8 activations back as floats.
        let x = if cpu_blk > 0 && (gemm || !int8) {
            self.quantized_as_float(x, ntok, cols, cpu_blk)?
        } else {
            x
        };
        if gemm {
            let w16 = match cached16 {
                Some(p) => p,
                None => {
                    let w16 = self.bufs.w16.get(&self.gpu, rows * cols * 2)?;
                    let args = Args::new().ptr(wp).u64(rb as u64).i32(cols as i32).ptr(w16);
                    self.gpu.launch(
                        &format!("dequant_f16_{kind}"),
                        (rows as u32, 1, 1),
                        (128, 1, 1),
                        0,
                        args,
                    )?;
                    w16
                }
            };
            let x16 = self.bufs.x16.get(&self.gpu, ntok * cols * 2)?;
            let n = (ntok * cols) as u64;
            self.elementwise("to_f16", n as usize, Args::new().ptr(x).ptr(x16).u64(n))?;
            return match &self.gpu.blas {
                Some(b) => b.gemm_f16(w16, x16, y, rows, cols, ntok),
                None => Err(CudaError::Unsupported("cuBLAS vanished".into())),
            };
        }
        if int8 {
            let (xq, xd) = self.quantize_x(x, ntok, cols, cpu_blk)?;
            let nt = gemv_tile(ntok);
            if self.split {
                return self.launch_mvs(&[(wp, rb, rows, y)], kind, cols, (xq, xd, xs), ntok);
            }
            let args = int8_product_args((wp, rb, rows, cols), (xq, xd), ntok, y);
            return self.gpu.launch(
                &format!("gemvq{nt}_{kind}"),
                (rows.div_ceil(4) as u32, ntok.div_ceil(nt) as u32, 1),
                (128, 1, 1),
                0,
                args,
            );
        }
        let wide = self.gemv == GemvChoice::Wide && matches!(kind, "q4_k" | "q6_k");
        let (name, nt) = if ntok == 1 && wide {
            (format!("gemv1_{kind}_wide"), 1)
        } else if ntok == 1 {
            (format!("gemv1_{kind}"), 1)
        } else {
            (format!("gemv8_{kind}"), 8)
        };
        let args = Args::new()
            .ptr(wp)
            .u64(rb as u64)
            .i32(rows as i32)
            .i32(cols as i32)
            .ptr(x)
            .i32(ntok as i32)
            .ptr(y);
        self.gpu.launch(
            &name,
            (rows.div_ceil(4) as u32, ntok.div_ceil(nt) as u32, 1),
            (128, 1, 1),
            0,
            args,
        )
    }

    /// The streamed GEMVs' settings when they may take a launch of `ntok` tokens
    /// (batch 1; runner/stream.rs says which matrices they take).
    fn stream_for(&self, ntok: usize) -> Option<&StreamCfg> {
        self.stream.as_ref().filter(|_| ntok == 1)
    }

    /// Threads of a streamed GEMV's block: its consumer warps and the producer's.
    fn stream_block(&self) -> u32 {
        self.stream
            .as_ref()
            .map_or(0, |st| (st.warps as u32 + 1) * 32)
    }

    /// One `mvs` launch over up to three matrices of type `kind` sharing the int8
    /// input: `segs` are (weights, row bytes, rows, output); the input is its values,
    /// scales, and its sums of squares when its norm is deferred (0 otherwise).
    fn launch_mvs(
        &mut self,
        segs: &[(u64, usize, usize, u64)],
        kind: &str,
        cols: usize,
        (xq, xd, xs): (u64, u64, u64),
        ntok: usize,
    ) -> Result<(), CudaError> {
        let nt = gemv_tile(ntok);
        let bytes: usize = segs.iter().map(|s| s.1 * s.2).sum();
        let parts = if bytes < SMALL_GEMV_BYTES {
            self.parts_small
        } else {
            gemv_parts()
        };
        let mut args = Args::new();
        let mut total = 0;
        for i in 0..3 {
            let (w, rb, rows, y) = segs.get(i).copied().unwrap_or((0, 0, 0, 0));
            args = args.ptr(w).u64(rb as u64).i32(rows as i32).ptr(y);
            total += rows;
        }
        let args = args
            .i32(cols as i32)
            .ptr(xq)
            .ptr(xd)
            .i32(ntok as i32)
            .i32(parts as i32);
        let args = args.ptr(xs).f32(self.cfg.rms_eps);
        let rb = segs.first().map_or(0, |s| s.1);
        if segs.iter().all(|s| s.1 == rb) {
            let ptrs: Vec<u64> = segs.iter().map(|s| s.0).chain([xq]).collect();
            let shape = self.stream_for(ntok);
            if let Some((grid, smem)) =
                shape.and_then(|st| st.shape(kind, total, cols, rb, 1, &ptrs))
            {
                let name = format!("mvst_{kind}");
                return self.gpu.launch(
                    &name,
                    (grid, 1, 1),
                    (self.stream_block(), 1, 1),
                    smem,
                    args,
                );
            }
        }
        self.gpu.launch(
            &format!("mvs{nt}_{kind}"),
            (
                total.div_ceil(4 / parts) as u32,
                ntok.div_ceil(nt) as u32,
                1,
            ),
            (128, 1, 1),
            0,
            args,
        )
    }

    /// Q, K and V of layer `li` in one launch when they share an int8 type; false
    /// (nothing done) otherwise.
    fn fused_qkv(
        &mut self,
        li: usize,
        x: u64,
        ntok: usize,
        out: [u64; 3],
    ) -> Result<bool, CudaError> {
        let l = &self.layers[li];
        let kind = l.wq.kind;
        if !has_int8_gemv(kind) {
            return Ok(false);
        }
        // The matrices of Q's type go in one launch; another type (Q4_K_M files give
        // V a wider type in some layers) gets its own.
        let mut segs = Vec::with_capacity(3);
        let mut rest = Vec::new();
        for (i, m) in [&l.wq, &l.wk, &l.wv].into_iter().enumerate() {
            if m.kind == kind {
                segs.push((m.buf.ptr, m.row_bytes, m.rows, out[i]));
            } else {
                rest.push(i);
            }
        }
        let cols = l.wq.cols;
        let (xq, xd) = self.quantize_x(x, ntok, cols, 0)?;
        let xs = self.q8_ss((x, ntok, cols, 0));
        self.launch_mvs(&segs, kind, cols, (xq, xd, xs), ntok)?;
        for i in rest {
            self.matmul(li * 8 + i, x, ntok, out[i])?;
        }
        Ok(true)
    }

    /// act(gate x) * (up x) of layer `li` into `y` in one launch when gate and up
    /// share an int8 type; false (nothing done) otherwise.
    fn fused_gate_up(&mut self, li: usize, x: u64, ntok: usize, y: u64) -> Result<bool, CudaError> {
        let l = &self.layers[li];
        let (g, u) = (&l.gate, &l.up);
        let kind = g.kind;
        if u.kind != kind || u.row_bytes != g.row_bytes || !has_int8_gemv(kind) {
            return Ok(false);
        }
        let (wg, wu, rb, rows, cols) = (g.buf.ptr, u.buf.ptr, g.row_bytes, g.rows, g.cols);
        let act = match self.cfg.activation {
            Activation::Silu => 1,
            Activation::GeluTanh => 2,
        };
        let (xq, xd) = self.quantize_x(x, ntok, cols, 0)?;
        let xs = self.q8_ss((x, ntok, cols, 0));
        let nt = gemv_tile(ntok);
        let parts = gemv_parts();
        let args = Args::new()
            .ptr(wg)
            .ptr(wu)
            .u64(rb as u64)
            .i32(rows as i32)
            .i32(cols as i32)
            .ptr(xq)
            .ptr(xd)
            .i32(ntok as i32)
            .i32(act)
            .i32(parts as i32)
            .ptr(y);
        let args = args.ptr(xs).f32(self.cfg.rms_eps);
        let (name, grid, block, smem) = match self
            .stream_for(ntok)
            .and_then(|st| st.shape(kind, rows, cols, rb, 2, &[wg, wu, xq]))
        {
            Some((grid, smem)) => (
                format!("mvpt_{kind}"),
                (grid, 1, 1),
                self.stream_block(),
                smem,
            ),
            None => (
                format!("mvp{nt}_{kind}"),
                (rows.div_ceil(4 / parts) as u32, ntok.div_ceil(nt) as u32, 1),
                256,
                0,
            ),
        };
        self.gpu.launch(&name, grid, (block, 1, 1), smem, args)?;
        Ok(true)
    }

    /// `x` (ntok rows of `cols`) as int8 blocks in `bufs.xq`/`xd`: llama.cpp's q8_1
    /// when `cpu_blk` is 0, else the CPU's rounding for that block size (see
    /// [`ActRounding`]). Skipped when they already hold it (Q, K and V share one
    /// input, so do gate and up).
    fn quantize_x(
        &mut self,
        x: u64,
        ntok: usize,
        cols: usize,
        cpu_blk: usize,
    ) -> Result<(u64, u64), CudaError> {
        let n = ntok * cols;
        let key = (x, ntok, cols, cpu_blk);
        if let Some(r) = self.q8_of.filter(|r| r.key == key) {
            return Ok((r.q, r.d));
        }
        let (xq, xd) = self.q8_buffers(n)?;
        if cpu_blk == 0 {
            let args = Args::new().ptr(x).u64(n as u64).ptr(xq).ptr(xd);
            self.gpu
                .launch("quantize_q8_1", (grid1(n, 256), 1, 1), (256, 1, 1), 0, args)?;
        } else {
            let args = Args::new()
                .ptr(x)
                .u64(n as u64)
                .i32(cpu_blk as i32)
                .ptr(xq)
                .ptr(xd);
            let blocks = n.div_ceil(256) as u32;
            self.gpu
                .launch("quantize_cpu", (blocks, 1, 1), (256, 1, 1), 0, args)?;
        }
        self.set_q8(key, xq, xd, 0);
        Ok((xq, xd))
    }

    /// `x` rounded as the CPU rounds it (int8 blocks of `cpu_blk`), back as floats in
    /// `bufs.xf`.
    fn quantized_as_float(
        &mut self,
        x: u64,
        ntok: usize,
        cols: usize,
        cpu_blk: usize,
    ) -> Result<u64, CudaError> {
        let n = ntok * cols;
        let (xq, xd) = self.quantize_x(x, ntok, cols, cpu_blk)?;
        let xf = self.bufs.xf.get(&self.gpu, n * F)?;
        let key = (x, ntok, cols, cpu_blk);
        if self.xf_of != Some(key) {
            let args = Args::new().ptr(xq).ptr(xd).u64(n as u64).ptr(xf);
            self.elementwise("dequant_q8x", n, args)?;
            self.xf_of = Some(key);
        }
        Ok(xf)
    }

    /// Matrix inputs were rewritten: the int8 copies are stale.
    fn forget_quantized(&mut self) {
        self.q8_of = None;
        self.xf_of = None;
    }

    /// Matrix ids: layer * 8 + slot, or the output / embedding.
    fn mat(&self, id: usize) -> &DevMat {
        const OUT: usize = usize::MAX;
        if id == OUT {
            // `with_options` uploads the embedding whenever there is no separate output.
            return match (&self.output, &self.embd) {
                (Some(o), _) | (None, Some(o)) => o,
                (None, None) => unreachable!("an output projection is always uploaded"),
            };
        }
        let l = &self.layers[id / 8];
        match id % 8 {
            0 => &l.wq,
            1 => &l.wk,
            2 => &l.wv,
            3 => &l.wo,
            4 => &l.gate,
            5 => &l.up,
            _ => &l.down,
        }
    }

    fn elementwise(&mut self, name: &str, n: usize, args: Args) -> Result<(), CudaError> {
        self.gpu
            .launch(name, (grid1(n, 256), 1, 1), (256, 1, 1), 0, args)
    }

    fn validate(&self, step: &StepInput) -> Result<(), CudaError> {
        let kv = self
            .kv
            .as_ref()
            .ok_or_else(|| CudaError::BadBatch("KV cache not allocated".into()))?;
        let bs = kv.block_size;
        let vocab = self.cfg.vocab_size;
        for (i, s) in step.iter().enumerate() {
            if s.logits == LogitsWanted::Greedy && !self.greedy_on {
                return Err(CudaError::BadBatch(
                    "the greedy head is off (HANGAR_CUDA_GREEDY=0): ask for the last logits".into(),
                ));
            }
            if s.logits == LogitsWanted::Head && !self.head_on {
                return Err(CudaError::BadBatch(
                    "the sampling head is off (HANGAR_CUDA_SAMPLE=0): ask for the last logits"
                        .into(),
                ));
            }
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(CudaError::BadBatch(format!(
                    "token id {id} is outside the vocabulary (size {vocab})"
                )));
            }
            if s.block_tables.len() != self.layout.n_groups() {
                return Err(CudaError::BadBatch(format!(
                    "sequence {i} has {} block tables, the cache has {} groups",
                    s.block_tables.len(),
                    self.layout.n_groups()
                )));
            }
            let end = s.start_pos + s.tokens.len();
            for (g, table) in s.block_tables.iter().enumerate() {
                if end > table.len() * bs {
                    return Err(CudaError::BadBatch(format!(
                        "position {} is beyond the KV capacity of {} tokens",
                        end.saturating_sub(1),
                        table.len() * bs
                    )));
                }
                let first = match self.layout.group_window[g] {
                    Some(w) => (s.start_pos + 1).saturating_sub(w),
                    None => 0,
                };
                for &b in &table[first / bs..end.div_ceil(bs)] {
                    if b == NO_BLOCK || b as usize >= kv.blocks[g] {
                        return Err(CudaError::BadBatch(format!(
                            "sequence {i}: block {b} in group {g} is not a valid block"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// The forward pass of one step (see `ModelRunner::execute`).
    pub fn forward(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), CudaError> {
        self.gpu.bind()?;
        self.gpu.stop_recording();
        self.validate(step)?;
        let cfg = self.cfg.clone();
        let t_total: usize = step.iter().map(|s| s.tokens.len()).sum();
        logits.clear();
        if t_total == 0 {
            return Ok(());
        }
        let entry = std::time::Instant::now();
        let (d, qd, kvd, ff, hd) = (
            cfg.d_model,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.ffn_dim,
            cfg.head_dim,
        );
        let (nh, nkv) = (cfg.n_heads, cfg.n_kv_heads);
        // Host-side step description.
        let mut tokens = Vec::with_capacity(t_total);
        let mut pos = Vec::with_capacity(t_total);
        let mut tok_seq = Vec::with_capacity(2 * t_total);
        let mut rows = Vec::new();
        // Greedy and head rows go after the others: their logits stay on the device.
        let mut greedy_rows = Vec::new();
        let mut head_rows = Vec::new();
        let mut max_n = 1usize;
        let longest = step.iter().map(|s| s.tokens.len()).max().unwrap_or(0);
        let mostly_prompt = step.len() * ATT_MMA_TOKENS <= t_total;
        let mut t = 0usize;
        for (si, s) in step.iter().enumerate() {
            for (i, &tok) in s.tokens.iter().enumerate() {
                let p = s.start_pos + i;
                tokens.push(tok);
                pos.push(p as i32);
                tok_seq.push(si as i32);
                tok_seq.push(p as i32);
                max_n = max_n.max(p + 1);
            }
            match s.logits {
                LogitsWanted::None => {}
                LogitsWanted::Last => rows.push((t + s.tokens.len() - 1) as i32),
                LogitsWanted::All => rows.extend((t..t + s.tokens.len()).map(|r| r as i32)),
                LogitsWanted::Greedy => greedy_rows.push((t + s.tokens.len() - 1) as i32),
                LogitsWanted::Head => head_rows.push((t + s.tokens.len() - 1) as i32),
            }
            t += s.tokens.len();
        }
        // Steps without cuBLAS (decode, small batches) run as a CUDA graph: the launch
        // sequence is recorded and replayed while it stays the same, so the per-step
        // values live in device buffers and the strides that size them (scores per
        // head, block-table row) are rounded up to powers of two.
        // (Not while layer taps copy activations back mid-step.)
        let graphed = (t_total < self.gemm_min || self.gpu.blas.is_none()) && self.taps.is_none();
        if graphed {
            max_n = max_n.next_power_of_two();
        }
        let n_groups = self.layout.n_groups();
        let mut tstride = vec![1usize; n_groups];
        let mut flat: Vec<Vec<u32>> = Vec::with_capacity(n_groups);
        for (g, stride) in tstride.iter_mut().enumerate() {
            *stride = step
                .iter()
                .map(|s| s.block_tables[g].len())
                .max()
                .unwrap_or(1)
                .max(1);
            if graphed {
                *stride = stride.next_power_of_two();
            }
            let mut v = vec![0u32; step.len() * *stride];
            for (si, s) in step.iter().enumerate() {
                for (j, &b) in s.block_tables[g].iter().enumerate() {
                    v[si * *stride + j] = if b == NO_BLOCK { 0 } else { b };
                }
            }
            flat.push(v);
        }
        if let Some(p) = self.pinned.as_mut() {
            let n_rows = rows.len() + greedy_rows.len() + head_rows.len();
            let mut sizes = vec![
                4 * tokens.len(),
                4 * pos.len(),
                4 * tok_seq.len(),
                4 * n_rows,
            ];
            sizes.extend(flat.iter().map(|v| 4 * v.len()));
            // The greedy pick's skip lists (`pick_greedy`).
            let n_greedy = greedy_rows.len();
            let skip_ids: usize = self.greedy_skips.iter().take(n_greedy).map(Vec::len).sum();
            sizes.extend([4 * (n_greedy + 1), 4 * skip_ids]);
            p.begin(&mut self.gpu, Pinned::room(&sizes))?;
        }
        let gpu = &self.gpu;
        let b = &mut self.bufs;
        let x = b.x.get(gpu, t_total * d * F)?;
        let hbuf = b.h.get(gpu, t_total * d * F)?;
        let q = b.q.get(gpu, t_total * qd * F)?;
        let k = b.k.get(gpu, t_total * kvd * F)?;
        let v = b.v.get(gpu, t_total * kvd * F)?;
        let attn = b.attn.get(gpu, t_total * qd * F)?;
        let o = b.o.get(gpu, t_total * d * F)?;
        let gate = b.gate.get(gpu, t_total * ff * F)?;
        let up = b.up.get(gpu, t_total * ff * F)?;
        let scores = b.scores.get(gpu, t_total * nh * max_n * F)?;
        // Split attention's buffers, sized for the longest rows (every layer's split is
        // at most this one's), before any launch is recorded.
        let (most_splits, _) = attention_splits(nh * t_total, max_n, self.split_k);
        let att_ml = b.att_ml.get(gpu, t_total * nh * most_splits * 2 * F)?;
        let att_part = b.att_part.get(gpu, t_total * nh * most_splits * hd * F)?;
        // Sized for the widest matrix input now: a recorded launch must not see its
        // buffer reallocated later in the step.
        let widest = d.max(qd).max(ff);
        b.xq.get(gpu, t_total * widest)?;
        b.xd.get(gpu, t_total * widest / 32 * 8)?;
        b.xf.get(gpu, t_total * widest * F)?;
        let tok_p = b.tokens.get(gpu, t_total * 4)?;
        let pos_p = b.pos.get(gpu, t_total * 4)?;
        let ts_p = b.tok_seq.get(gpu, t_total * 8)?;
        let pinned = &mut self.pinned;
        put(gpu, pinned, &b.tokens, &tokens)?;
        put(gpu, pinned, &b.pos, &pos)?;
        put(gpu, pinned, &b.tok_seq, &tok_seq)?;
        if b.tables.len() < n_groups {
            b.tables.resize_with(n_groups, Scratch::default);
        }
        let mut table_p = Vec::with_capacity(n_groups);
        for (g, v) in flat.iter().enumerate() {
            table_p.push(b.tables[g].get(gpu, v.len() * 4)?);
            put(gpu, pinned, &b.tables[g], v)?;
        }

        // Partial offload: the CPU layers run first and their output is the input here.
        if let Some(cpu) = self.cpu.as_mut() {
            let hidden = cpu.run(&self.pool, step)?;
            if hidden.len() != t_total * d {
                return Err(CudaError::CpuLayers(format!(
                    "{} hidden values for {t_total} tokens of width {d}",
                    hidden.len()
                )));
            }
            match self.bufs.x.buf() {
                Some(buf) => buf.write(hidden)?,
                None => return Err(CudaError::BadBatch("no activation buffer".into())),
            }
        }
        let m_logits = rows.len();
        let m_greedy = greedy_rows.len();
        let m_head = head_rows.len();
        // (Requests of an earlier step may linger when this one has no head rows.)
        if m_head > 0 && m_head != self.head_reqs.len() {
            return Err(CudaError::BadBatch(format!(
                "{m_head} sampling-head rows but {} head requests",
                self.head_reqs.len()
            )));
        }
        rows.extend_from_slice(&greedy_rows);
        rows.extend_from_slice(&head_rows);
        self.greedy_picks.clear();
        self.head_results.clear();
        self.head_first = m_logits + m_greedy;
        let m = rows.len();
        let vocab = cfg.vocab_size;
        let (sel, rows_p, lg) = if m > 0 {
            let gpu = &self.gpu;
            let sel = self.bufs.sel.get(gpu, m * d * F)?;
            let rows_p = self.bufs.rows.get(gpu, m * 4)?;
            let lg = self.bufs.logits.get(gpu, m * vocab * F)?;
            put(&self.gpu, &mut self.pinned, &self.bufs.rows, &rows)?;
            (sel, rows_p, lg)
        } else {
            (0, 0, 0)
        };
        // With a known key the launch list is not built again: building it took
        // 106-159 us of host time an 8B token (run 49).
        let flags = [self.cpu.is_some(), mostly_prompt];
        let key = graph_key(t_total, longest, max_n, m, &tstride, flags);
        // (No int8 copy of an earlier step's activations is current.)
        self.forget_quantized();
        let prepared = std::time::Instant::now();
        let reuse = graphed && self.gpu.has_current_graph(&key);
        let graphed = graphed && (reuse || self.gpu.record());
        if !reuse {
            // Embeddings.
            if let (None, Some(embd)) = (&self.cpu, &self.embd) {
                let (kind, rb, cols, wp) = (embd.kind, embd.row_bytes, embd.cols, embd.buf.ptr);
                let args = Args::new()
                    .ptr(wp)
                    .u64(rb as u64)
                    .i32(cols as i32)
                    .ptr(tok_p)
                    .f32(cfg.embed_scale.unwrap_or(1.0))
                    .ptr(x);
                self.gpu.launch(
                    &format!("embed_{kind}"),
                    (t_total as u32, 1, 1),
                    (128, 1, 1),
                    0,
                    args,
                )?;
            }
            let neox = i32::from(cfg.rope_style == RopeStyle::Neox);
            let eps = cfg.rms_eps;
            let kv = self
                .kv
                .as_ref()
                .ok_or_else(|| CudaError::BadBatch("KV cache not allocated".into()))?;
            let (bs, kv_k, kv_v, kv_group): (usize, Vec<u64>, Vec<u64>, Vec<usize>) = (
                kv.block_size,
                kv.k.iter().map(|b| b.ptr).collect(),
                kv.v.iter().map(|b| b.ptr).collect(),
                kv.group.clone(),
            );
            let rope_ff = ptr(&self.rope_ff);
            // Decode steps on the int8 GEMVs fuse launches (see `CudaRunner::fuse`): the
            // residual add, the next norm and its quantization run as one kernel, so the
            // first layer's norm is done here and each layer's last add does the next's.
            let fused = self.fuse
                && self.split
                && self.gemv == GemvChoice::Int8
                && self.act == ActRounding::Fine
                && t_total < self.gemm_min
                && d.is_multiple_of(32)
                && d <= ADD_NORM_MAX;
            // Fused, without taps: a norm not after a post-norm is deferred to the GEMVs
            // that read it (runner/deferred.rs) where those are all int8 `mvs`/`mvp`.
            let defer = fused && self.defer_norm && self.taps.is_none();
            let n_layers = self.layers.len();
            if fused && n_layers > 0 {
                let w = self.layers[0].attn_norm.ptr;
                if defer && self.all_int8(&[0, 1, 2]) {
                    self.add_q8s(x, 0, w, hbuf, t_total)?;
                } else {
                    self.add_norm_q8(x, 0, 0, w, hbuf, t_total)?;
                }
            }
            for li in 0..n_layers {
                let (attn_norm, ffn_norm) =
                    (self.layers[li].attn_norm.ptr, self.layers[li].ffn_norm.ptr);
                let l = &self.layers[li];
                let (bq, bk, bv) = (ptr(&l.bq), ptr(&l.bk), ptr(&l.bv));
                let (qn, kn) = (ptr(&l.q_norm), ptr(&l.k_norm));
                let (pan, pfn) = (ptr(&l.post_attn_norm), ptr(&l.post_ffn_norm));
                if !fused {
                    self.rmsnorm(x, attn_norm, hbuf, d, t_total, 0)?;
                }
                self.tap(li, Tap::AttnIn, hbuf, t_total * d)?;
                if !(fused && self.fused_qkv(li, hbuf, t_total, [q, k, v])?) {
                    self.matmul(li * 8, hbuf, t_total, q)?;
                    self.matmul(li * 8 + 1, hbuf, t_total, k)?;
                    self.matmul(li * 8 + 2, hbuf, t_total, v)?;
                }
                for (bias, dst, n) in [(bq, q, qd), (bk, k, kvd), (bv, v, kvd)] {
                    if bias != 0 {
                        let args = Args::new()
                            .ptr(dst)
                            .ptr(bias)
                            .i32(n as i32)
                            .i32(t_total as i32);
                        self.elementwise("add_bias", n * t_total, args)?;
                    }
                }
                let local = cfg.local_layers[self.first + li];
                let base = if local {
                    cfg.rope_base_local
                } else {
                    cfg.rope_base
                } as f64;
                let g = kv_group[li];
                let window = if local {
                    cfg.sliding_window.unwrap_or(0)
                } else {
                    0
                };
                let max_n_l = if window > 0 { max_n.min(window) } else { max_n };
                let (splits, chunk) = attention_splits(nh * t_total, max_n_l, self.split_k);
                // Long prompts: the tiled kernel reads each K/V row once per 16 tokens
                // (heads up to 128 wide).
                let mma = self.tiled.mma(hd);
                let tiled = self
                    .tiled
                    .takes(hd, splits, longest, max_n_l, mostly_prompt);
                // Decode with one token a sequence: the attention kernel does qk_rope's
                // work itself (`attention_rope`), one launch fewer.
                let att_rope = fused && self.att_rope && longest == 1 && splits == 1 && !tiled;
                if !att_rope {
                    // Fused: the key-head blocks of qk_rope store K and V themselves.
                    let (kc, vc) = if fused { (kv_k[li], kv_v[li]) } else { (0, 0) };
                    let args = Args::new()
                        .ptr(q)
                        .ptr(k)
                        .i32(nh as i32)
                        .i32(nkv as i32)
                        .i32(hd as i32)
                        .ptr(qn)
                        .ptr(kn)
                        .f32(eps)
                        .ptr(pos_p)
                        .f64(base)
                        .i32(cfg.rope_dims as i32)
                        .ptr(rope_ff)
                        .i32(neox)
                        .ptr(v)
                        .ptr(ts_p)
                        .ptr(table_p[g])
                        .i32(tstride[g] as i32)
                        .i32(bs as i32)
                        .ptr(kc)
                        .ptr(vc);
                    self.gpu.launch(
                        "qk_rope",
                        ((nh + nkv) as u32, t_total as u32, 1),
                        (128, 1, 1),
                        0,
                        args,
                    )?;
                }
                if !fused {
                    let args = Args::new()
                        .ptr(k)
                        .ptr(v)
                        .i32(kvd as i32)
                        .ptr(ts_p)
                        .ptr(table_p[g])
                        .i32(tstride[g] as i32)
                        .i32(bs as i32)
                        .ptr(kv_k[li])
                        .ptr(kv_v[li]);
                    self.gpu
                        .launch("kv_store", (t_total as u32, 1, 1), (256, 1, 1), 0, args)?;
                }
                // Fused: the attention kernel also writes its output's q8_1 copy for the
                // output projection (whole warps hold whole 32-blocks when hd % 32 == 0).
                let att_q = if fused && hd.is_multiple_of(32) && !tiled {
                    let xq = self.bufs.xq.get(&self.gpu, t_total * qd)?;
                    let xd = self.bufs.xd.get(&self.gpu, t_total * qd / 32 * 8)?;
                    (xq, xd)
                } else {
                    (0, 0)
                };
                if splits > 1 {
                    split_attention(
                        &mut self.gpu,
                        [
                            q, kv_k[li], kv_v[li], attn, ts_p, table_p[g], scores, att_ml, att_part,
                        ],
                        (nh, nkv, hd, t_total),
                        (tstride[g], bs, window, max_n_l, splits, chunk),
                        cfg.attn_scale,
                        att_q,
                    )?;
                } else if tiled {
                    let args = Args::new()
                        .ptr(q)
                        .ptr(kv_k[li])
                        .ptr(kv_v[li])
                        .ptr(attn)
                        .i32(nh as i32)
                        .i32(nkv as i32)
                        .i32(hd as i32)
                        .i32(t_total as i32)
                        .ptr(ts_p)
                        .ptr(table_p[g])
                        .i32(tstride[g] as i32)
                        .i32(bs as i32)
                        .i32(window as i32)
                        .f32(cfg.attn_scale);
                    // The tensor-core kernel (the default for heads of 64 and 128) takes
                    // the same arguments: 64 tokens and four warps a block instead of 16
                    // tokens and eight.
                    let (name, tokens, threads) = if mma {
                        (format!("attention_mma{hd}"), 64, 128)
                    } else {
                        ("attention_tiled".to_string(), 16, 256)
                    };
                    self.gpu.launch(
                        &name,
                        (nh as u32, t_total.div_ceil(tokens) as u32, 1),
                        (threads, 1, 1),
                        0,
                        args,
                    )?;
                }
                let sm_scores = max_n_l <= ATT_SMEM_SCORES;
                let args = Args::new()
                    .ptr(q)
                    .ptr(kv_k[li])
                    .ptr(kv_v[li])
                    .ptr(attn)
                    .i32(nh as i32)
                    .i32(nkv as i32)
                    .i32(hd as i32)
                    .ptr(ts_p)
                    .ptr(table_p[g])
                    .i32(tstride[g] as i32)
                    .i32(bs as i32)
                    .i32(window as i32)
                    .f32(cfg.attn_scale)
                    .ptr(scores)
                    .i32(max_n_l as i32)
                    .ptr(att_q.0)
                    .ptr(att_q.1)
                    .i32(i32::from(sm_scores));
                let (name, args) = if att_rope {
                    let args = args
                        .ptr(k)
                        .ptr(v)
                        .ptr(qn)
                        .ptr(kn)
                        .f32(eps)
                        .f64(base)
                        .i32(cfg.rope_dims as i32)
                        .ptr(rope_ff)
                        .i32(neox);
                    ("attention_rope", args)
                } else {
                    ("attention", args)
                };
                let smem = (1 + ATT_WARPS) * hd * F + if sm_scores { max_n_l * F } else { 0 };
                if splits == 1 && !tiled {
                    self.gpu.launch(
                        name,
                        (nh as u32, t_total as u32, 1),
                        (32 * ATT_WARPS as u32, 1, 1),
                        smem as u32,
                        args,
                    )?;
                }
                self.forget_quantized();
                if att_q.0 != 0 {
                    self.set_q8((attn, t_total, qd, 0), att_q.0, att_q.1, 0);
                }
                self.tap(li, Tap::AttnOutIn, attn, t_total * qd)?;
                self.matmul(li * 8 + 3, attn, t_total, o)?;
                // Feed-forward.
                if defer && pan == 0 && self.all_int8(&[li * 8 + 4, li * 8 + 5]) {
                    self.add_q8s(x, o, ffn_norm, hbuf, t_total)?;
                } else if fused {
                    self.add_norm_q8(x, o, pan, ffn_norm, hbuf, t_total)?;
                } else {
                    self.norm_add(x, o, pan, d, t_total)?;
                    self.rmsnorm(x, ffn_norm, hbuf, d, t_total, 0)?;
                }
                self.tap(li, Tap::FfnIn, hbuf, t_total * d)?;
                if !(fused && self.fused_gate_up(li, hbuf, t_total, gate)?) {
                    self.matmul(li * 8 + 4, hbuf, t_total, gate)?;
                    self.matmul(li * 8 + 5, hbuf, t_total, up)?;
                    let n = (t_total * ff) as u64;
                    let act = match cfg.activation {
                        Activation::GeluTanh => "gelu_mul",
                        Activation::Silu => "silu_mul",
                    };
                    self.elementwise(act, n as usize, Args::new().ptr(gate).ptr(up).u64(n))?;
                }
                self.forget_quantized();
                self.tap(li, Tap::FfnDownIn, gate, t_total * ff)?;
                self.matmul(li * 8 + 6, gate, t_total, o)?;
                let next = li + 1;
                if fused && next < n_layers {
                    let w = self.layers[next].attn_norm.ptr;
                    let readers = [next * 8, next * 8 + 1, next * 8 + 2];
                    if defer && pfn == 0 && self.all_int8(&readers) {
                        self.add_q8s(x, o, w, hbuf, t_total)?;
                    } else {
                        self.add_norm_q8(x, o, pfn, w, hbuf, t_total)?;
                    }
                } else {
                    self.norm_add(x, o, pfn, d, t_total)?;
                }
            }
            if m > 0 {
                let on = self.out_norm.ptr;
                self.rmsnorm(x, on, sel, d, m, rows_p)?;
                self.matmul(usize::MAX, sel, m, lg)?;
                if let Some(cap) = cfg.final_logit_softcap {
                    let n = (m * vocab) as u64;
                    self.elementwise("softcap", n as usize, Args::new().ptr(lg).u64(n).f32(cap))?;
                }
            }
        }
        let recorded = std::time::Instant::now();
        let mut timed = None;
        if graphed {
            let a = match self.step_times {
                Some(_) => Some(self.gpu.event_now()?),
                None => None,
            };
            if reuse {
                self.gpu.launch_graph(&key)?;
            } else {
                self.gpu.replay(&key)?;
            }
            if let Some(a) = a {
                let b = self.gpu.event_now()?;
                let launched = std::time::Instant::now();
                // `HANGAR_CUDA_STEP_TIMES=2`: the graph runs a second time, queued
                // behind the first, so its GPU time has no wait for the launch call in
                // it (the step's outputs are the same: it recomputes them from the
                // embeddings and stores the same K/V rows again).
                let queued = match self.step_times.as_ref().is_some_and(|t| t.twice) {
                    true => {
                        let c = self.gpu.event_now()?;
                        self.gpu.launch_graph(&key)?;
                        Some((c, self.gpu.event_now()?))
                    }
                    false => None,
                };
                timed = Some((a, b, queued, launched));
            }
        }
        if m == 0 {
            self.gpu.sync()?;
            if let Some(p) = self.pinned.as_mut() {
                p.done();
            }
            return Ok(());
        }
        if m_greedy > 0 {
            self.pick_greedy(lg, m_logits, m_greedy)?;
        }
        if m_head > 0 {
            self.sample_heads(lg, m_logits + m_greedy)?;
        }
        let n_logits = m_logits * vocab;
        if m_logits > 0 {
            match (self.bufs.logits.buf(), self.pinned.as_mut()) {
                // (Appended from the staging: no pass that zeroes the rows first.)
                (Some(buf), Some(p)) if buf.bytes >= n_logits * F => {
                    p.download_append(&mut self.gpu, buf.ptr, n_logits, logits)?
                }
                (Some(buf), _) => {
                    logits.resize(n_logits, 0.0);
                    buf.read(&mut logits[..])?
                }
                (None, _) => return Err(CudaError::BadBatch("no logits buffer".into())),
            }
        }
        self.gpu.sync()?;
        if let Some(p) = self.pinned.as_mut() {
            p.done();
        }
        // (`timed` is set only when step times are kept.)
        if let (Some((a, b, queued, launched)), Some(t)) = (timed, self.step_times.as_mut()) {
            let marks = step_times::StepMarks {
                entry,
                prepared,
                recorded,
                launched,
                end: std::time::Instant::now(),
            };
            t.add(&marks, event_ms(a, b), queued.map(|(c, d)| event_ms(c, d)));
        }
        Ok(())
    }

    /// The greedy picks of logits rows `first..first + n` of `lg` (see `greedy_pick`
    /// in kernels/layer.cu), under the skip lists of [`ModelRunner::set_greedy_skips`].
    fn pick_greedy(&mut self, lg: u64, first: usize, n: usize) -> Result<(), CudaError> {
        let vocab = self.cfg.vocab_size;
        let mut off = Vec::with_capacity(n + 1);
        let mut ids: Vec<u32> = Vec::new();
        off.push(0i32);
        for i in 0..n {
            ids.extend(self.greedy_skips.get(i).map_or(&[][..], |v| &v[..]));
            off.push(ids.len() as i32);
        }
        let gpu = &self.gpu;
        let b = &mut self.bufs;
        let pick = b.pick.get(gpu, n * 8)?;
        let off_p = b.skip_off.get(gpu, (n + 1) * 4)?;
        let ids_p = b.skip_ids.get(gpu, ids.len().max(1) * 4)?;
        let skipped_p = b.skipped.get(gpu, ids.len().max(1) * F)?;
        // Queued behind the step's graph through the staging: the host does not wait
        // for the graph before the pick is launched.
        put(&self.gpu, &mut self.pinned, &b.skip_off, &off)?;
        put(&self.gpu, &mut self.pinned, &b.skip_ids, &ids)?;
        let smem = if ids.is_empty() {
            0
        } else {
            vocab.div_ceil(32) * 4
        };
        let args = Args::new()
            .ptr(lg)
            .i32(vocab as i32)
            .i32(first as i32)
            .ptr(off_p)
            .ptr(ids_p)
            .ptr(pick)
            .ptr(skipped_p);
        self.gpu.launch(
            "greedy_pick",
            (n as u32, 1, 1),
            (1024, 1, 1),
            smem as u32,
            args,
        )?;
        let mut raw = vec![0u32; 2 * n];
        let mut skipped = vec![0f32; ids.len()];
        if let Some(buf) = self.bufs.pick.buf() {
            buf.read(&mut raw[..])?;
        }
        if !ids.is_empty() {
            if let Some(buf) = self.bufs.skipped.buf() {
                buf.read(&mut skipped[..])?;
            }
        }
        for i in 0..n {
            let (a, z) = (off[i] as usize, off[i + 1] as usize);
            self.greedy_picks.push(GreedyPick {
                id: raw[2 * i],
                value: f32::from_bits(raw[2 * i + 1]),
                skipped: skipped[a..z].to_vec(),
            });
        }
        Ok(())
    }

    /// Under `execute_observed`: copies `n` floats at `buf` (a matrix input of GPU
    /// layer `li`) back, after the work launched so far.
    fn tap(&mut self, li: usize, tap: Tap, buf: u64, n: usize) -> Result<(), CudaError> {
        if self.taps.is_none() {
            return Ok(());
        }
        let mut rows = vec![0f32; n];
        // SAFETY: every tapped buffer was sized for at least `n` floats this step.
        unsafe { self.gpu.read_floats(buf, &mut rows) }?;
        let layer = self.cfg.n_layers - self.layers.len() + li;
        if let Some(t) = &mut self.taps {
            t.push((layer, tap, rows));
        }
        Ok(())
    }

    fn rmsnorm(
        &mut self,
        x: u64,
        w: u64,
        out: u64,
        n: usize,
        rows: usize,
        rows_idx: u64,
    ) -> Result<(), CudaError> {
        self.forget_quantized();
        let args = Args::new()
            .ptr(x)
            .ptr(w)
            .ptr(out)
            .i32(n as i32)
            .f32(self.cfg.rms_eps)
            .ptr(rows_idx);
        self.gpu
            .launch("rmsnorm", (rows as u32, 1, 1), (256, 1, 1), 0, args)
    }

    fn norm_add(&mut self, x: u64, o: u64, w: u64, n: usize, rows: usize) -> Result<(), CudaError> {
        let args = Args::new()
            .ptr(x)
            .ptr(o)
            .ptr(w)
            .i32(n as i32)
            .f32(self.cfg.rms_eps);
        self.gpu
            .launch("norm_add", (rows as u32, 1, 1), (256, 1, 1), 0, args)
    }
}

/// A graphed step's key: what its launches depend on besides the model, the runner's
/// settings and the buffers' addresses (`Gpu::has_current_graph` checks that no
/// buffer moved). No finer than the launches need, so that steps which launch the
/// same list share one graph: the longest row counts only as one token, 2-15 or 16+
/// (the attention kernels' choice in `forward`), the logits rows only by their number.
/// `flags`: layers left on the CPU; a step mostly of prompt (`ATT_MMA_TOKENS`).
fn graph_key(
    t_total: usize,
    longest: usize,
    max_n: usize,
    m: usize,
    tstride: &[usize],
    flags: [bool; 2],
) -> Vec<u64> {
    let longest_class = match longest {
        0 | 1 => 0,
        2..ATT_TILED_MIN_TOKENS => 1,
        _ => 2,
    };
    [t_total, longest_class, max_n, m]
        .iter()
        .chain(tstride)
        .map(|&v| v as u64)
        .chain(flags.map(u64::from))
        .collect()
}

/// Copies `data` to the start of `buf`: through the page-locked staging, queued on the
/// stream, when `pinned` is on, else synchronously.
fn put<T: Copy>(
    gpu: &Gpu,
    pinned: &mut Option<Pinned>,
    buf: &Scratch,
    data: &[T],
) -> Result<(), CudaError> {
    let Some(dst) = buf.buf() else {
        return Ok(());
    };
    match pinned {
        Some(p) if std::mem::size_of_val(data) <= dst.bytes => p.upload(gpu, dst.ptr, data),
        _ => dst.write(data),
    }
}

impl Drop for CudaRunner {
    fn drop(&mut self) {
        if let Some(p) = self.pinned.as_mut() {
            let _ = self.gpu.sync();
            p.release(&self.gpu);
        }
    }
}

impl ModelRunner for CudaRunner {
    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }
    fn ctx_len(&self) -> usize {
        self.cfg.ctx_len
    }
    fn arch(&self) -> &str {
        &self.cfg.arch_name
    }
    fn device(&self) -> String {
        self.device.clone()
    }
    fn kv_layout(&self) -> KvLayout {
        self.layout.clone()
    }
    fn allocate_kv(
        &mut self,
        block_size: usize,
        blocks_per_group: &[usize],
    ) -> Result<usize, EngineError> {
        if blocks_per_group.len() != self.layout.n_groups() || block_size == 0 {
            return Err(EngineError::Invalid(format!(
                "{} block counts for {} KV groups",
                blocks_per_group.len(),
                self.layout.n_groups()
            )));
        }
        self.gpu.bind()?;
        self.kv = None;
        let kvd = self.layout.kv_dim;
        let mut group = vec![0usize; self.cfg.n_layers];
        for (g, layers) in self.layout.group_layers.iter().enumerate() {
            for &l in layers {
                group[l] = g;
            }
        }
        // Only the GPU's layers keep K and V here; the CPU layers keep theirs in host
        // memory, under the same block tables.
        let group = group.split_off(self.first);
        let mut k = Vec::with_capacity(group.len());
        let mut v = Vec::with_capacity(group.len());
        let mut total = match self.cpu.as_mut() {
            Some(cpu) => cpu.allocate(self.layout.clone(), block_size, blocks_per_group),
            None => 0,
        };
        for &g in &group {
            let bytes = blocks_per_group[g] * block_size * kvd * 2;
            k.push(DevBuf::alloc(&self.gpu, bytes)?);
            v.push(DevBuf::alloc(&self.gpu, bytes)?);
            total += 2 * bytes;
        }
        self.kv = Some(DevKv {
            block_size,
            blocks: blocks_per_group.to_vec(),
            group,
            k,
            v,
        });
        Ok(total)
    }
    fn execute(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        if let Some(f) = &self.fault {
            return Err(EngineError::Invalid(format!(
                "the GPU context is unusable after an earlier fault: {f}"
            )));
        }
        self.forward(step, logits).map_err(|e| {
            if e.is_sticky() {
                self.fault = Some(e.to_string());
            }
            EngineError::from(e)
        })
    }
    fn fault(&self) -> Option<String> {
        self.fault.clone()
    }
    fn execute_observed(
        &mut self,
        step: &StepInput,
        logits: &mut Vec<f32>,
        observer: Observer,
    ) -> Result<(), EngineError> {
        self.taps = Some(Vec::new());
        let ran = self.execute(step, logits);
        let taps = self.taps.take().unwrap_or_default();
        ran?;
        let t_total: usize = step.iter().map(|s| s.tokens.len()).sum();
        for (layer, tap, rows) in taps {
            observer(layer, tap, &rows, rows.len() / t_total.max(1));
        }
        Ok(())
    }
    fn run_parallel(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        self.pool.for_each_index(n, task);
    }
    fn greedy_head(&self) -> bool {
        self.greedy_on
    }
    fn set_greedy_skips(&mut self, skips: Vec<Vec<u32>>) {
        self.greedy_skips = skips;
    }
    fn greedy_picks(&self) -> &[GreedyPick] {
        &self.greedy_picks
    }
    fn sample_head(&self) -> bool {
        self.head_on
    }
    fn set_head_requests(&mut self, reqs: Vec<HeadRequest>) {
        self.head_reqs = reqs;
    }
    fn head_results(&self) -> &[HeadResult] {
        &self.head_results
    }
    fn head_rows(&mut self, which: &[usize], out: &mut Vec<f32>) -> Result<(), EngineError> {
        let vocab = self.cfg.vocab_size;
        let Some(buf) = self.bufs.logits.buf() else {
            return Err(EngineError::Invalid("no logits on the device".into()));
        };
        for &j in which {
            if j >= self.head_results.len() {
                return Err(EngineError::Invalid(format!(
                    "no sampling-head row {j} in the last step"
                )));
            }
            let start = out.len();
            out.resize(start + vocab, 0.0);
            buf.read_at((self.head_first + j) * vocab * F, &mut out[start..])
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{attention_splits, graph_key, TiledRule, ATT_MMA_TOKENS};

    #[test]
    fn tensor_core_attention_takes_prompts_from_128_positions_but_not_decode_crowds() {
        let rule = TiledRule {
            on: true,
            mma: true,
            mma_min: super::ATT_MMA_MIN_POSITIONS,
        };
        let mostly_prompt = |rows: usize, tokens: usize| rows * ATT_MMA_TOKENS <= tokens;
        // One 512-token prompt, heads of 128 or 64: the tensor cores.
        assert!(rule.takes(128, 1, 512, 512, mostly_prompt(1, 512)));
        assert!(rule.takes(64, 1, 512, 512, mostly_prompt(1, 512)));
        // The rest of a prompt after a cached prefix (112 new tokens at 400-511).
        assert!(rule.takes(128, 1, 112, 512, mostly_prompt(1, 112)));
        // Eight 200-token prompts at once.
        assert!(rule.takes(128, 1, 200, 200, mostly_prompt(8, 1600)));
        // Short rows stay on the plain kernel.
        assert!(!rule.takes(128, 1, 100, 100, mostly_prompt(1, 100)));
        // 63 decode rows beside a 100-token prompt: the plain kernel's block for each
        // row and head, unless the rows are 2 048+ long (the old rule).
        assert!(!rule.takes(128, 1, 100, 1024, mostly_prompt(64, 163)));
        assert!(rule.takes(128, 1, 100, 2048, mostly_prompt(64, 163)));
        // Heads of 256 (Gemma 3) have no tensor-core kernel: 2 048 as before, and none
        // past 128 wide at all.
        assert!(!rule.takes(256, 1, 512, 1024, true));
        // The CUDA-core tiled kernel keeps 2 048; off is off; split decode never tiles.
        let cuda_cores = TiledRule { mma: false, ..rule };
        assert!(!cuda_cores.takes(128, 1, 512, 1024, true));
        assert!(cuda_cores.takes(128, 1, 512, 2048, true));
        assert!(!TiledRule { on: false, ..rule }.takes(128, 1, 512, 4096, true));
        assert!(!rule.takes(128, 4, 512, 4096, true));
        // Fewer than 16 tokens in the longest row: decode kernels.
        assert!(!rule.takes(128, 1, 8, 4096, true));
    }

    #[test]
    fn graph_keys_tell_apart_only_what_changes_the_launches() {
        let no = [false, false];
        let key =
            |longest, max_n, m, strides: &[usize]| graph_key(8, longest, max_n, m, strides, no);
        let base = key(1, 512, 8, &[32]);
        // Decode rows, prompt rows under 16 and from 16 each launch their own attention.
        assert_ne!(base, key(2, 512, 8, &[32]));
        assert_eq!(key(2, 512, 8, &[32]), key(15, 512, 8, &[32]));
        assert_ne!(key(15, 512, 8, &[32]), key(16, 512, 8, &[32]));
        assert_eq!(key(16, 512, 8, &[32]), key(400, 512, 8, &[32]));
        // Positions, logits rows, table strides and the CPU layers are arguments.
        assert_ne!(base, key(1, 1024, 8, &[32]));
        assert_ne!(base, key(1, 512, 7, &[32]));
        assert_ne!(base, key(1, 512, 8, &[64]));
        assert_ne!(base, key(1, 512, 8, &[32, 32]));
        assert_ne!(base, graph_key(8, 1, 512, 8, &[32], [true, false]));
        assert_ne!(base, graph_key(8, 1, 512, 8, &[32], [false, true]));
        assert_ne!(base, graph_key(9, 1, 512, 8, &[32], no));
    }

    #[test]
    fn attention_splits_only_where_blocks_are_few() {
        // An 8B model at batch 1 (32 heads), rows rounded up to 1024 positions.
        let target = super::ATT_SPLIT_TARGET_BLOCKS;
        assert_eq!(attention_splits(32, 1024, target), (16, 64));
        // Batch 64: 2 048 blocks already fill the GPU.
        assert_eq!(attention_splits(32 * 64, 1024, target).0, 1);
        // Short rows are not worth a second launch; switched off is one chunk.
        assert_eq!(attention_splits(4, 64, target).0, 1);
        assert_eq!(attention_splits(4, 4096, 0), (1, 4096));
        for (blocks, n) in [(4, 1000), (8, 8192), (32, 640), (1, 129)] {
            let (s, c) = attention_splits(blocks, n, target);
            assert!(s > 1 && c % 8 == 0 && c >= 64, "{blocks} x {n}: {s} x {c}");
            assert!(s * c >= n && (s - 1) * c < n, "{blocks} x {n}: {s} x {c}");
        }
    }
}
