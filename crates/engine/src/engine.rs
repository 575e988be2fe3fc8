//! The engine: requests go in through a handle, token events come back through one
//! channel per request, and one loop thread owns the model runner, the KV cache, the
//! block manager and the scheduler.
//!
//! Split by concern: `request` (what callers send and receive), `kv_sizing` (limits
//! and KV pool sizes), `handle` (the [`Engine`] callers hold), `core` (the loop:
//! schedule → execute → update), `update` (post-step bookkeeping over plain data) and
//! `runner` (the [`ModelRunner`] seam: CPU, and a fake for tests). Knows nothing
//! about HTTP.

mod core;
mod handle;
mod kv_sizing;
mod owned_step;
mod pp_runner;
pub(crate) mod prompt_lp;
mod request;
pub mod runner;
mod tp_runner;
mod update;

pub use handle::{Engine, EngineStats, ModelInfo};
pub use kv_sizing::EngineConfig;
pub use pp_runner::PpCpuRunner;
pub use request::{
    Finish, GenerateRequest, PromptTokenLogprob, Tenant, TokenEvent, TokenOut, TopLogprob, Usage,
};
pub use runner::{AdapterRunner, BorrowedCpuRunner, CpuRunner, FakeRunner, ModelRunner, StepInput};
pub use tp_runner::TpCpuRunner;
