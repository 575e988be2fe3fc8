//! Pipeline parallelism on the CPU behind the [`ModelRunner`] seam: the layers are
//! split into `n` stages, each a thread with its own view of the model (one shared
//! mapping of the file), thread pool and KV storage for its layers. A step's
//! sequences are cut into `m` micro-batches that flow through the stages in order,
//! so stage 1 works on micro-batch 0 while stage 0 starts micro-batch 1 (GPipe,
//! forward only). Each stage's busy time is measured, so the idle share can be set
//! against the schedule's `1 − m/(m + n − 1)`.
//!
//! The arithmetic of every layer is unchanged (the fast kernels are batch-invariant),
//! so a pipelined model decodes token for token like the whole one.

use super::owned_step::{own, with_inputs, OwnedSeq};
use super::runner::{ModelRunner, StepInput};
use crate::EngineError;
use hangar_formats::GgufFile;
use hangar_kernels::ThreadPool;
use hangar_models::kv::{KvFormat, KvLayout};
use hangar_models::{KvCache, LoadOptions, Model, ModelConfig, Workspace};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

enum Job {
    Format(KvFormat),
    Allocate {
        block_size: usize,
        blocks: Vec<usize>,
    },
    Micro {
        index: usize,
        seqs: Arc<Vec<OwnedSeq>>,
        hidden: Vec<f32>,
    },
}

enum Out {
    Ack,
    Bytes(usize),
    Logits(usize, Vec<f32>),
    Failed(String),
}

struct Stage {
    jobs: mpsc::Sender<Job>,
    thread: Option<JoinHandle<()>>,
}

/// A [`ModelRunner`] over `n` pipeline stages of CPU threads.
pub struct PpCpuRunner {
    stages: Vec<Stage>,
    /// Acknowledgements and the last stage's results.
    out: mpsc::Receiver<Out>,
    cfg: ModelConfig,
    format: KvFormat,
    micro_batches: usize,
    /// Per stage: nanoseconds busy, since the last `take_idle_share`.
    busy: Arc<Vec<AtomicU64>>,
    wall: Duration,
    /// The schedule's idle share summed over steps (each step's `m`), and the steps:
    /// scalars, so a long-running server keeps nothing per step.
    schedule_idle: f64,
    steps: u64,
}

/// `n` near-equal contiguous ranges of `layers` layers.
pub(crate) fn stage_layers(layers: usize, n: usize) -> Vec<Range<usize>> {
    let (base, extra) = (layers / n, layers % n);
    let mut start = 0;
    (0..n)
        .map(|s| {
            let len = base + usize::from(s < extra);
            let r = start..start + len;
            start += len;
            r
        })
        .collect()
}

impl PpCpuRunner {
    /// Splits `file`'s layers into `stages` stages of `threads_per_stage` threads and
    /// cuts each step into `micro_batches` micro-batches (as many as it has sequences,
    /// at most).
    pub fn new(
        file: Arc<GgufFile>,
        stages: usize,
        micro_batches: usize,
        threads_per_stage: usize,
        opts: LoadOptions,
    ) -> Result<Self, EngineError> {
        if opts.numerics == hangar_models::Numerics::Ggml {
            return Err(EngineError::Invalid(
                "pipeline parallelism runs with fast numerics (llama.cpp's arithmetic is not split)".into(),
            ));
        }
        let probe = Model::from_gguf_with(file.clone(), opts)?;
        let n_layers = probe.cfg.n_layers;
        if stages < 1 || stages > n_layers {
            return Err(EngineError::Invalid(format!(
                "--pipeline-parallel {stages}: the model has {n_layers} layers to split"
            )));
        }
        let cfg = probe.cfg.clone();
        drop(probe);
        let bounds = stage_layers(n_layers, stages);
        let busy: Arc<Vec<AtomicU64>> = Arc::new((0..stages).map(|_| AtomicU64::new(0)).collect());
        let (out_tx, out) = mpsc::channel::<Out>();
        // Build from the last stage back, so each knows where to send its output.
        let mut next: Option<mpsc::Sender<Job>> = None;
        let mut built: Vec<Stage> = Vec::with_capacity(stages);
        for s in (0..stages).rev() {
            let model = Model::from_gguf_with(file.clone(), opts)?;
            let (jobs, rx) = mpsc::channel::<Job>();
            let layers = bounds[s].clone();
            let (to_next, out_tx, busy) = (next.clone(), out_tx.clone(), busy.clone());
            let threads = threads_per_stage.max(1);
            let thread = std::thread::Builder::new()
                .name(format!("hangar-pp-{s}"))
                .spawn(move || stage_loop(s, model, layers, threads, rx, to_next, out_tx, busy))
                .map_err(|e| {
                    EngineError::Invalid(format!("cannot start pipeline stage {s}: {e}"))
                })?;
            next = Some(jobs.clone());
            built.push(Stage {
                jobs,
                thread: Some(thread),
            });
        }
        built.reverse();
        Ok(PpCpuRunner {
            stages: built,
            out,
            cfg,
            format: KvFormat::F16,
            micro_batches: micro_batches.max(1),
            busy,
            wall: Duration::ZERO,
            schedule_idle: 0.0,
            steps: 0,
        })
    }

    /// The measured idle share of the stages since the last call (1 − busy time /
    /// (stages × wall time)) and the schedule's `1 − m/(m + n − 1)` for the same
    /// steps; `None` before any step.
    pub fn take_idle_share(&mut self) -> Option<(f64, f64)> {
        let n = self.stages.len() as f64;
        let busy: u64 = self.busy.iter().map(|b| b.swap(0, Ordering::Relaxed)).sum();
        let wall = std::mem::take(&mut self.wall);
        let (idle, steps) = (
            std::mem::take(&mut self.schedule_idle),
            std::mem::take(&mut self.steps),
        );
        if wall.is_zero() || steps == 0 {
            return None;
        }
        let measured = 1.0 - busy as f64 / 1e9 / (n * wall.as_secs_f64());
        Some((measured, idle / steps as f64))
    }

    fn control(&self, job: impl Fn() -> Job) -> Result<Vec<Out>, EngineError> {
        let mut replies = Vec::new();
        for (s, st) in self.stages.iter().enumerate() {
            st.jobs
                .send(job())
                .map_err(|_| EngineError::Invalid(format!("pipeline stage {s} has stopped")))?;
            match self.out.recv() {
                Ok(Out::Failed(e)) => {
                    return Err(EngineError::Invalid(format!("pipeline stage {s}: {e}")))
                }
                Ok(o) => replies.push(o),
                Err(_) => return Err(EngineError::Invalid(format!("pipeline stage {s} stopped"))),
            }
        }
        Ok(replies)
    }
}

#[allow(clippy::too_many_arguments)]
fn stage_loop(
    s: usize,
    model: Model,
    layers: Range<usize>,
    threads: usize,
    rx: mpsc::Receiver<Job>,
    to_next: Option<mpsc::Sender<Job>>,
    out: mpsc::Sender<Out>,
    busy: Arc<Vec<AtomicU64>>,
) {
    let pool = ThreadPool::new(threads);
    let mut ws = Workspace::default();
    let mut kv: Option<KvCache> = None;
    let mut format = KvFormat::F16;
    let mut logits = Vec::new();
    while let Ok(job) = rx.recv() {
        let sent = match job {
            Job::Format(f) => {
                format = f;
                out.send(Out::Ack)
            }
            Job::Allocate { block_size, blocks } => {
                match KvLayout::for_model_as(&model.cfg, format) {
                    Ok(layout) => {
                        let cache = KvCache::with_layout(layout, &model.cfg, block_size, &blocks);
                        let bytes = cache.capacity_bytes();
                        kv = Some(cache);
                        out.send(Out::Bytes(bytes))
                    }
                    Err(e) => out.send(Out::Failed(e)),
                }
            }
            Job::Micro {
                index,
                seqs,
                mut hidden,
            } => {
                let Some(kv) = kv.as_mut() else {
                    let _ = out.send(Out::Failed(format!(
                        "micro-batch {index}: KV cache not allocated"
                    )));
                    continue;
                };
                let t0 = Instant::now();
                let r = with_inputs(&seqs, |inputs| {
                    model.forward_stage(
                        &pool,
                        inputs,
                        kv,
                        &mut ws,
                        layers.clone(),
                        &mut hidden,
                        &mut logits,
                    )
                });
                busy[s].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                match (r, &to_next) {
                    (Err(e), _) => {
                        out.send(Out::Failed(format!("stage {s}, micro-batch {index}: {e}")))
                    }
                    (Ok(_), Some(next)) => {
                        if next
                            .send(Job::Micro {
                                index,
                                seqs,
                                hidden,
                            })
                            .is_err()
                        {
                            out.send(Out::Failed(format!("stage {} has stopped", s + 1)))
                        } else {
                            Ok(())
                        }
                    }
                    (Ok(_), None) => out.send(Out::Logits(index, std::mem::take(&mut logits))),
                }
            }
        };
        if sent.is_err() {
            break;
        }
    }
}

impl ModelRunner for PpCpuRunner {
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
        format!(
            "cpu (pipeline-parallel {}, {} micro-batches)",
            self.stages.len(),
            self.micro_batches
        )
    }
    fn kv_layout(&self) -> KvLayout {
        // The format was checked against the model in `set_kv_format`.
        KvLayout::for_model_as(&self.cfg, self.format)
            .unwrap_or_else(|_| KvLayout::for_model(&self.cfg))
    }
    fn set_kv_format(&mut self, format: KvFormat) -> Result<(), EngineError> {
        KvLayout::for_model_as(&self.cfg, format).map_err(EngineError::Invalid)?;
        self.control(|| Job::Format(format))?;
        self.format = format;
        Ok(())
    }
    /// The bytes of one whole cache: each stage touches only its layers' share.
    fn allocate_kv(&mut self, block_size: usize, blocks: &[usize]) -> Result<usize, EngineError> {
        let replies = self.control(|| Job::Allocate {
            block_size,
            blocks: blocks.to_vec(),
        })?;
        Ok(match replies.first() {
            Some(Out::Bytes(b)) => *b,
            _ => 0,
        })
    }
    fn execute(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let t0 = Instant::now();
        let m = self.micro_batches.min(step.len()).max(1);
        // Contiguous groups of sequences, as even as the count allows.
        let bounds = stage_layers(step.len(), m);
        for (index, r) in bounds.iter().enumerate() {
            let seqs = own(&step[r.clone()]);
            self.stages[0]
                .jobs
                .send(Job::Micro {
                    index,
                    seqs: Arc::new(seqs),
                    hidden: Vec::new(),
                })
                .map_err(|_| EngineError::Invalid("pipeline stage 0 has stopped".into()))?;
        }
        let mut parts: Vec<Option<Vec<f32>>> = vec![None; m];
        let mut failure = None;
        for _ in 0..m {
            match self.out.recv() {
                Ok(Out::Logits(i, l)) => parts[i] = Some(l),
                Ok(Out::Failed(e)) => {
                    failure.get_or_insert(e);
                }
                Ok(_) => {}
                Err(_) => {
                    failure.get_or_insert("a pipeline stage stopped".into());
                    break;
                }
            }
        }
        if let Some(e) = failure {
            return Err(EngineError::Invalid(e));
        }
        logits.clear();
        for p in parts.into_iter().flatten() {
            logits.extend_from_slice(&p);
        }
        self.wall += t0.elapsed();
        let n = self.stages.len() as f64;
        self.schedule_idle += 1.0 - m as f64 / (m as f64 + n - 1.0);
        self.steps += 1;
        Ok(())
    }
}

impl Drop for PpCpuRunner {
    fn drop(&mut self) {
        for st in &mut self.stages {
            let (dead, _) = mpsc::channel();
            st.jobs = dead;
        }
        for st in &mut self.stages {
            if let Some(t) = st.thread.take() {
                let _ = t.join();
            }
        }
    }
}
