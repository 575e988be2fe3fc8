//! hangar-parallel: the device-independent half of tensor parallelism (issue #16) —
//! how a model's matrices split over `tp` ranks (Megatron's column- and row-parallel
//! layers) and the collective operations the ranks use to agree, with an in-process
//! implementation that runs on the CPU and in CI.
//!
//! - [`Communicator`]: `all_reduce_sum` and `all_gather` over a group of ranks. The
//!   reduction adds the ranks' buffers in rank order, so every rank ends with the
//!   same bits and the result does not depend on timing. [`LocalGroup`] is the
//!   in-process group (one thread per rank); an NCCL group implements the same trait
//!   on GPUs.
//! - [`shard`]: which rows or columns of each matrix a rank holds: heads split over
//!   ranks for Q/K/V (KV heads replicated when there are fewer than ranks), gate/up
//!   split by rows, output and down projections split by columns on quantization
//!   block boundaries, the vocabulary split for the embedding and output head.
//!
//! - [`gguf_shard`]: a rank's shard of a GGUF model as a loadable GGUF; the forward
//!   pass over it is `hangar_models::Model::forward_sharded`.
//!
//! Must not know about requests, scheduling or HTTP (see crates/parallel/README.md
//! for what issue #16 still needs).

mod comm;
pub mod gguf_shard;
pub mod shard;

pub use comm::{CommError, Communicator, LocalComm, LocalGroup};
