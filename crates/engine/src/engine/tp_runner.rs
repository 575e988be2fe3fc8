//! Tensor parallelism on the CPU behind the [`ModelRunner`] seam: the model is split
//! into `world` shards (`hangar_parallel::gguf_shard`), each rank is a thread that
//! owns its shard, its thread pool and its share of the KV cache, and the ranks meet
//! in an all-reduce after each layer's row-parallel projections. The engine loop
//! stays single: every step goes to all ranks at once, in lock-step, and rank 0's
//! logits come back (every rank computes the same bits).
//!
//! On one CPU this is the code path, not a speed-up (the ranks share the memory
//! bandwidth); on GPUs the same split runs one rank per device.

use super::owned_step::{own, with_inputs, OwnedSeq};
use super::runner::{ModelRunner, StepInput};
use crate::EngineError;
use hangar_formats::GgufFile;
use hangar_kernels::ThreadPool;
use hangar_models::kv::{KvFormat, KvLayout};
use hangar_models::{KvCache, LoadOptions, Model, ModelConfig, Workspace};
use hangar_parallel::gguf_shard::shard_gguf;
use hangar_parallel::{Communicator, LocalComm, LocalGroup};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

enum Job {
    Format(KvFormat),
    Allocate {
        block_size: usize,
        blocks: Vec<usize>,
    },
    Execute(Arc<Vec<OwnedSeq>>),
}

enum Reply {
    Done,
    Bytes(usize),
    /// Rank 0's logits, with the step's forward time and the part of it spent in
    /// all-reduces (waiting for the slowest rank included).
    Logits(Vec<f32>, Duration, Duration),
    Failed(String),
}

struct Rank {
    jobs: mpsc::Sender<Job>,
    replies: mpsc::Receiver<Reply>,
    thread: Option<JoinHandle<()>>,
}

/// A [`ModelRunner`] over `world` CPU ranks.
pub struct TpCpuRunner {
    ranks: Vec<Rank>,
    cfg: ModelConfig,
    format: KvFormat,
    world: usize,
    /// Rank 0's forward time and all-reduce time, summed over steps.
    forward_time: Duration,
    collective_time: Duration,
}

/// How long a rank waits for the others at an all-reduce before the group fails.
const COLLECTIVE_TIMEOUT: Duration = Duration::from_secs(120);

impl TpCpuRunner {
    /// Splits `file` over `world` ranks of `threads_per_rank` kernel threads each.
    pub fn new(
        file: &GgufFile,
        world: usize,
        threads_per_rank: usize,
        opts: LoadOptions,
    ) -> Result<Self, EngineError> {
        if world < 1 {
            return Err(EngineError::Invalid(
                "--tensor-parallel must be at least 1".into(),
            ));
        }
        if opts.numerics == hangar_models::Numerics::Ggml {
            return Err(EngineError::Invalid(
                "tensor parallelism runs with fast numerics (llama.cpp's arithmetic is not split)"
                    .into(),
            ));
        }
        let mut models = Vec::with_capacity(world);
        for rank in 0..world {
            let (bytes, _) = shard_gguf(file, world, rank)
                .map_err(|e| EngineError::Invalid(format!("tensor-parallel {world}: {e}")))?;
            let shard = GgufFile::from_bytes(bytes).map_err(hangar_models::ModelError::from)?;
            models.push(Model::from_gguf_with(Arc::new(shard), opts)?);
        }
        let cfg = models[0].cfg.clone();
        let ranks = LocalGroup::ranks(world, COLLECTIVE_TIMEOUT)
            .into_iter()
            .zip(models)
            .enumerate()
            .map(|(r, (comm, model))| spawn_rank(r, comm, model, threads_per_rank.max(1)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TpCpuRunner {
            ranks,
            cfg,
            format: KvFormat::F16,
            world,
            forward_time: Duration::ZERO,
            collective_time: Duration::ZERO,
        })
    }

    /// Share of rank 0's forward time spent in all-reduces (including waiting for the
    /// other ranks) since the last call; `None` before any step.
    pub fn take_collective_share(&mut self) -> Option<f64> {
        let (f, c) = (self.forward_time, self.collective_time);
        self.forward_time = Duration::ZERO;
        self.collective_time = Duration::ZERO;
        (!f.is_zero()).then(|| c.as_secs_f64() / f.as_secs_f64())
    }

    /// Sends `job` to every rank and collects the replies in rank order.
    fn all(&self, job: impl Fn() -> Job) -> Result<Vec<Reply>, EngineError> {
        for (r, rank) in self.ranks.iter().enumerate() {
            rank.jobs.send(job()).map_err(|_| {
                EngineError::Invalid(format!("tensor-parallel rank {r} has stopped"))
            })?;
        }
        let mut out = Vec::with_capacity(self.world);
        let mut failure = None;
        for (r, rank) in self.ranks.iter().enumerate() {
            match rank.replies.recv() {
                Ok(Reply::Failed(e)) => {
                    failure.get_or_insert(format!("tensor-parallel rank {r}: {e}"));
                }
                Ok(reply) => out.push(reply),
                Err(_) => {
                    failure.get_or_insert(format!(
                        "tensor-parallel rank {r} stopped (its thread died)"
                    ));
                }
            }
        }
        match failure {
            Some(e) => Err(EngineError::Invalid(e)),
            None => Ok(out),
        }
    }
}

fn spawn_rank(
    rank: usize,
    comm: LocalComm,
    model: Model,
    threads: usize,
) -> Result<Rank, EngineError> {
    let (jobs, job_rx) = mpsc::channel::<Job>();
    let (reply_tx, replies) = mpsc::channel::<Reply>();
    let thread = std::thread::Builder::new()
        .name(format!("hangar-tp-{rank}"))
        .spawn(move || {
            let pool = ThreadPool::new(threads);
            let mut ws = Workspace::default();
            let mut kv: Option<KvCache> = None;
            let mut format = KvFormat::F16;
            let mut logits = Vec::new();
            while let Ok(job) = job_rx.recv() {
                let reply = match job {
                    Job::Format(f) => {
                        format = f;
                        Reply::Done
                    }
                    Job::Allocate { block_size, blocks } => {
                        match KvLayout::for_model_as(&model.cfg, format) {
                            Ok(layout) => {
                                let cache =
                                    KvCache::with_layout(layout, &model.cfg, block_size, &blocks);
                                let bytes = cache.capacity_bytes();
                                kv = Some(cache);
                                Reply::Bytes(bytes)
                            }
                            Err(e) => Reply::Failed(e),
                        }
                    }
                    Job::Execute(step) => match kv.as_mut() {
                        None => Reply::Failed("KV cache not allocated".into()),
                        Some(kv) => {
                            let mut in_collectives = Duration::ZERO;
                            let mut reduce = |buf: &mut [f32]| {
                                let t = std::time::Instant::now();
                                let r = comm.all_reduce_sum(buf).map_err(|e| e.to_string());
                                in_collectives += t.elapsed();
                                r
                            };
                            let t0 = std::time::Instant::now();
                            let done = with_inputs(&step, |seqs| {
                                model.forward_sharded(
                                    &pool,
                                    seqs,
                                    kv,
                                    &mut ws,
                                    &mut logits,
                                    &mut reduce,
                                )
                            });
                            match done {
                                Ok(_) if rank == 0 => Reply::Logits(
                                    std::mem::take(&mut logits),
                                    t0.elapsed(),
                                    in_collectives,
                                ),
                                Ok(_) => Reply::Done,
                                Err(e) => {
                                    // The others may be waiting for this rank at an
                                    // all-reduce: fail them instead of letting them wait.
                                    comm.abort(&e.to_string());
                                    Reply::Failed(e.to_string())
                                }
                            }
                        }
                    },
                };
                if reply_tx.send(reply).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| {
            EngineError::Invalid(format!("cannot start tensor-parallel rank {rank}: {e}"))
        })?;
    Ok(Rank {
        jobs,
        replies,
        thread: Some(thread),
    })
}

impl ModelRunner for TpCpuRunner {
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
        format!("cpu (tensor-parallel {})", self.world)
    }
    fn kv_layout(&self) -> KvLayout {
        // The format was checked against the model in `set_kv_format`.
        KvLayout::for_model_as(&self.cfg, self.format)
            .unwrap_or_else(|_| KvLayout::for_model(&self.cfg))
    }
    fn set_kv_format(&mut self, format: KvFormat) -> Result<(), EngineError> {
        KvLayout::for_model_as(&self.cfg, format).map_err(EngineError::Invalid)?;
        self.all(|| Job::Format(format))?;
        self.format = format;
        Ok(())
    }
    /// Returns the bytes of all ranks together (each holds its heads' share).
    fn allocate_kv(
        &mut self,
        block_size: usize,
        blocks_per_group: &[usize],
    ) -> Result<usize, EngineError> {
        let replies = self.all(|| Job::Allocate {
            block_size,
            blocks: blocks_per_group.to_vec(),
        })?;
        Ok(replies
            .iter()
            .map(|r| match r {
                Reply::Bytes(b) => *b,
                _ => 0,
            })
            .sum())
    }
    fn execute(&mut self, step: &StepInput, logits: &mut Vec<f32>) -> Result<(), EngineError> {
        let owned = Arc::new(own(step));
        let replies = self.all(|| Job::Execute(owned.clone()))?;
        match replies.into_iter().next() {
            Some(Reply::Logits(l, forward, collectives)) => {
                *logits = l;
                self.forward_time += forward;
                self.collective_time += collectives;
                Ok(())
            }
            _ => Err(EngineError::Invalid(
                "tensor-parallel rank 0 returned no logits".into(),
            )),
        }
    }
}

impl Drop for TpCpuRunner {
    fn drop(&mut self) {
        for rank in &mut self.ranks {
            // Closing the job channel ends the rank's loop.
            let (dead, _) = mpsc::channel();
            rank.jobs = dead;
        }
        for rank in &mut self.ranks {
            if let Some(t) = rank.thread.take() {
                let _ = t.join();
            }
        }
    }
}
