//! hangar-plan: capacity planning and host profiling for LLM deployment.
//!
//! Answers "what hardware does this model need, and how fast can it go here?" from
//! the model file (real tensor shapes and block sizes) and the machine: weight
//! memory per format, KV cache, scratch, training memory (full, ZeRO, LoRA, QLoRA),
//! which GPUs fit, the pipeline bubble, and roofline bounds from measured bandwidth
//! and compute. It does not run models or own the kernels it times.
//!
//! ```
//! use hangar_plan::{ModelSpec, PlanOptions, plan, HostMemory};
//! let m = ModelSpec { model: Some("llama-70b".into()), ..Default::default() }.resolve().unwrap();
//! let host = HostMemory { total_bytes: 0, available_bytes: 0 };
//! let r = plan(m, PlanOptions { context: Some(131072), ..Default::default() }, host).unwrap();
//! assert!((r.kv.unwrap().total_bytes / 1e9 - 42.9).abs() < 0.1);
//! ```

pub mod bench;
pub mod error;
pub mod hardware;
pub mod kv;
pub mod model_spec;
pub mod pipeline;
pub mod plan;
pub mod presets;
pub mod profile;
pub mod profile_report;
pub mod roofline;
pub mod scratch;
pub mod shape;
pub mod table;
pub mod tokens;
pub mod training;
pub mod units;
pub mod weights;

pub use error::{PlanError, Result};
pub use hardware::HostMemory;
pub use kv::KvDtype;
pub use model_spec::ModelSpec;
pub use plan::{plan, plan_here, PlanOptions, PlanReport};
pub use shape::{Model, ModelShape};
pub use training::{LoraModule, TrainOptions};
pub use weights::WeightFormat;
