//! Hardware the planner fits models onto: a built-in list of GPUs and this host's
//! RAM (from /proc/meminfo). Fitting searches the smallest tensor-parallel group and
//! the largest batch and context that fit; it measures nothing.

use crate::error::{PlanError, Result};
use crate::kv::{sequence_bytes, KvDtype};
use crate::scratch::scratch;
use crate::shape::Model;
use serde::Serialize;
use std::path::Path;

/// A GPU model with the numbers the planner needs.
#[derive(Debug, Clone, Serialize)]
pub struct Gpu {
    pub name: &'static str,
    /// Memory as the driver reports it (nvidia-smi MiB, times 2^20).
    pub memory_bytes: u64,
    /// Peak memory bandwidth, bytes per second.
    pub bandwidth: f64,
    /// Dense BF16/FP16 tensor throughput, FLOP per second.
    pub bf16_flops: f64,
}

const MIB: u64 = 1 << 20;

/// The built-in GPUs (datasheet bandwidth and dense 16-bit tensor throughput).
pub fn gpus() -> Vec<Gpu> {
    let g = |name, mib: u64, tbs: f64, tflops: f64| Gpu {
        name,
        memory_bytes: mib * MIB,
        bandwidth: tbs * 1e12,
        bf16_flops: tflops * 1e12,
    };
    vec![
        g("T4 16GB", 15360, 0.32, 65.0),
        g("V100 16GB", 16384, 0.9, 125.0),
        g("V100 32GB", 32768, 0.9, 125.0),
        g("L4 24GB", 23034, 0.3, 121.0),
        g("A10G 24GB", 23028, 0.6, 70.0),
        g("RTX 4090 24GB", 24564, 1.008, 165.0),
        g("A100 40GB", 40960, 1.555, 312.0),
        g("A100 80GB", 81920, 2.039, 312.0),
        g("H100 80GB", 81559, 3.35, 989.0),
        g("H100 NVL 94GB", 95830, 3.9, 835.0),
        g("H200 141GB", 143771, 4.8, 989.0),
        g("B200 180GB", 183359, 8.0, 2250.0),
    ]
}

/// This host's memory, from /proc/meminfo.
#[derive(Debug, Clone, Serialize)]
pub struct HostMemory {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// Reads `MemTotal` and `MemAvailable` (kB) from a meminfo file.
pub fn host_memory_from(path: &Path) -> Result<HostMemory> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(parse_meminfo(&text))
}

/// This host's memory; zeros where /proc/meminfo is not there (not Linux).
pub fn host_memory() -> HostMemory {
    host_memory_from(Path::new("/proc/meminfo")).unwrap_or(HostMemory {
        total_bytes: 0,
        available_bytes: 0,
    })
}

/// Parses meminfo text; missing fields read as 0, `MemAvailable` falls back to `MemFree`.
pub fn parse_meminfo(text: &str) -> HostMemory {
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    HostMemory {
        total_bytes: field("MemTotal").unwrap_or(0),
        available_bytes: field("MemAvailable")
            .or_else(|| field("MemFree"))
            .unwrap_or(0),
    }
}

/// What an inference deployment needs, as a function of batch and context.
#[derive(Debug, Clone)]
pub struct Demand<'a> {
    pub model: &'a Model,
    pub weight_bytes: f64,
    pub kv: KvDtype,
    pub chunk: u64,
    /// Materialized attention scores instead of a fused attention.
    pub naive_attention: bool,
    /// Fixed overhead per device (runtime, CUDA context, fragmentation).
    pub overhead_bytes: f64,
    /// Share of a device's memory the deployment may use (vLLM's default is 0.9).
    pub usable_fraction: f64,
    /// Largest tensor-parallel group to try.
    pub max_tp: u64,
    /// Bytes read per decoded token of one sequence (for the bandwidth bound).
    pub decode_bytes_per_token: f64,
}

impl Demand<'_> {
    /// Weight bytes per device at tensor-parallel degree `tp`: split `tp` ways, except
    /// the K and V projections, which follow their heads and are replicated (like the
    /// cache) when the group is larger than the KV-head count.
    pub fn weights_per_device(&self, tp: u64) -> f64 {
        let tp = tp.max(1);
        let Some(s) = &self.model.shape else {
            return self.weight_bytes / tp as f64;
        };
        let kv_share = (s.n_kv_heads as u64).div_ceil(tp) as f64 / s.n_kv_heads.max(1) as f64;
        let kv_proj = self.weight_bytes * kv_projection_fraction(self.model);
        (self.weight_bytes - kv_proj) / tp as f64 + kv_proj * kv_share
    }

    /// Bytes per device with tensor parallelism over `tp` devices.
    /// Weights and scratch split `tp` ways; KV heads split too, but a group larger
    /// than the KV-head count replicates them (each device keeps at least one).
    pub fn per_device(&self, tp: u64, batch: u64, context: u64) -> f64 {
        let Some(s) = &self.model.shape else {
            return self.weight_bytes / tp as f64 + self.overhead_bytes;
        };
        let kv_share = (s.n_kv_heads as u64).div_ceil(tp) as f64 / s.n_kv_heads as f64;
        let kv = sequence_bytes(s, self.kv, context) * batch as f64 * kv_share;
        let sc = scratch(s, batch, context, self.chunk, self.naive_attention);
        self.weights_per_device(tp)
            + kv
            + sc.prefill_bytes.max(sc.decode_bytes) / tp as f64
            + self.overhead_bytes
    }
}

/// The share of a model's parameters in its K and V projections (`n_layers x 2 x
/// d_model x kv_heads x head size`), which tensor parallelism replicates when there
/// are fewer KV heads than devices.
fn kv_projection_fraction(m: &Model) -> f64 {
    let Some(s) = &m.shape else { return 0.0 };
    if m.n_params == 0 {
        return 0.0;
    }
    let per_layer: u64 = (0..s.n_layers)
        .map(|l| {
            let heads = s.kv_heads.get(l).copied().unwrap_or(s.n_kv_heads) as u64;
            s.d_model as u64 * heads * (s.key_len + s.value_len) as u64
        })
        .sum();
    (per_layer as f64 / m.n_params as f64).min(1.0)
}

/// How a model fits one kind of device.
#[derive(Debug, Clone, Serialize)]
pub struct Fit {
    pub device: String,
    pub memory_bytes: u64,
    /// Smallest tensor-parallel group (1, 2, 4 or 8, dividing the head count) that
    /// holds the model at the requested batch and context; `None` if 8 do not.
    pub devices_needed: Option<u64>,
    /// Bytes used per device in that group.
    pub bytes_per_device: Option<f64>,
    /// Largest batch at the requested context on that group.
    pub max_batch: Option<u64>,
    /// Largest context for one sequence on that group (capped at the model's).
    pub max_context: Option<u64>,
    /// Decode bound for one sequence on that group: bandwidth / bytes per token.
    pub decode_tokens_per_s_bound: Option<f64>,
    /// On one device at the requested batch and context: how many layers fit beside
    /// the embedding and output layers (`hangar serve --gpu-layers N`; the others run on
    /// the CPU); the model's layer count when it fits whole. `None` without a shape.
    pub gpu_layers: Option<u64>,
}

impl Demand<'_> {
    /// The weight bytes (on one device) outside the repeated layers, and per layer,
    /// split by the tensors' parameter counts; `None` without tensors.
    fn layer_split(&self) -> Option<(f64, f64)> {
        let s = self.model.shape.as_ref()?;
        let params = |t: &crate::shape::TensorShape| t.dims.iter().product::<u64>() as f64;
        let total: f64 = self.model.tensors.iter().map(params).sum();
        if total <= 0.0 || s.n_layers == 0 {
            return None;
        }
        let outside: f64 = self
            .model
            .tensors
            .iter()
            .filter(|t| !t.name.starts_with("blk."))
            .map(params)
            .sum();
        let w = self.weights_per_device(1);
        let fixed = w * outside / total;
        Some((fixed, (w - fixed) / s.n_layers as f64))
    }

    /// Layers of one device at `batch` x `context`, counting each layer's share of
    /// the KV cache and scratch (see [`Fit::gpu_layers`]).
    pub fn layers_that_fit(&self, cap: f64, batch: u64, context: u64) -> Option<u64> {
        let s = self.model.shape.as_ref()?;
        let (fixed, per_layer) = self.layer_split()?;
        let n = s.n_layers as u64;
        let kv = sequence_bytes(s, self.kv, context) * batch as f64 / n.max(1) as f64;
        let sc = scratch(s, batch, context, self.chunk, self.naive_attention);
        let base = fixed + sc.prefill_bytes.max(sc.decode_bytes) + self.overhead_bytes;
        Some(
            (0..=n)
                .rev()
                .find(|&g| base + g as f64 * (per_layer + kv) <= cap)
                .unwrap_or(0),
        )
    }
}

/// Largest `x` in `1..=hi` with `ok(x)`, assuming `ok` is monotone; 0 if none.
fn largest(hi: u64, ok: impl Fn(u64) -> bool) -> u64 {
    if !ok(1) {
        return 0;
    }
    let (mut lo, mut hi) = (1u64, hi);
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if ok(mid) {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// Fits a demand onto devices of `memory_bytes` each; `bandwidth` (bytes/s per
/// device), when known, gives the decode bound.
pub fn fit(
    d: &Demand,
    device: &str,
    memory_bytes: u64,
    bandwidth: Option<f64>,
    batch: u64,
    context: u64,
) -> Fit {
    let cap = memory_bytes as f64 * d.usable_fraction;
    let max_tp = d.max_tp;
    let heads = d
        .model
        .shape
        .as_ref()
        .map(|s| s.n_heads as u64)
        .unwrap_or(1);
    let tp = [1u64, 2, 4, 8]
        .into_iter()
        .filter(|&t| t <= max_tp && (t == 1 || heads.is_multiple_of(t) || d.model.shape.is_none()))
        .find(|&t| d.per_device(t, batch, context) <= cap);
    let model_ctx = d
        .model
        .shape
        .as_ref()
        .map(|s| s.context_length.max(1) as u64)
        .unwrap_or(context);
    let mut f = Fit {
        device: device.to_string(),
        memory_bytes,
        devices_needed: tp,
        bytes_per_device: None,
        max_batch: None,
        max_context: None,
        decode_tokens_per_s_bound: None,
        gpu_layers: d.layers_that_fit(cap, batch, context),
    };
    if let Some(t) = tp {
        f.bytes_per_device = Some(d.per_device(t, batch, context));
        if d.model.shape.is_some() {
            f.max_batch = Some(largest(1 << 20, |b| d.per_device(t, b, context) <= cap));
            f.max_context = Some(largest(model_ctx.max(context), |c| {
                d.per_device(t, 1, c) <= cap
            }));
        }
        if let Some(bw) = bandwidth {
            f.decode_tokens_per_s_bound = Some(bw * t as f64 / d.decode_bytes_per_token.max(1.0));
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presets::by_name;
    use crate::shape::ModelSource;
    use crate::weights::{model_bytes, WeightFormat};

    #[test]
    fn parses_meminfo() {
        let m =
            parse_meminfo("MemTotal:       16384 kB\nMemFree: 100 kB\nMemAvailable:    8192 kB\n");
        assert_eq!(m.total_bytes, 16384 * 1024);
        assert_eq!(m.available_bytes, 8192 * 1024);
        assert_eq!(parse_meminfo("MemFree: 1 kB").available_bytes, 1024);
    }

    #[test]
    fn llama_70b_in_bf16_needs_several_h100s() {
        let p = by_name("llama-70b").unwrap();
        let m = Model::from_shape(p.name, p.shape, ModelSource::ParamCount).unwrap();
        let d = Demand {
            model: &m,
            weight_bytes: model_bytes(&m, WeightFormat::BF16) as f64,
            kv: KvDtype::F16,
            chunk: 512,
            naive_attention: false,
            overhead_bytes: 1e9,
            usable_fraction: 0.9,
            max_tp: 8,
            decode_bytes_per_token: 141e9,
        };
        let h100 = gpus()
            .into_iter()
            .find(|g| g.name.starts_with("H100 80"))
            .unwrap();
        let f = fit(
            &d,
            h100.name,
            h100.memory_bytes,
            Some(h100.bandwidth),
            1,
            8192,
        );
        assert_eq!(f.devices_needed, Some(2));
        // One H100 holds about half of the 80 layers (72 GB of 141): the rest would
        // run on the CPU with --gpu-layers.
        let g = f.gpu_layers.unwrap();
        assert!((30..45).contains(&g), "{g}");
        // The H200 (141 GB, 90% usable) still falls short of all 80.
        let h200 = gpus()
            .into_iter()
            .find(|g| g.name.starts_with("H200"))
            .unwrap();
        let g200 = fit(&d, h200.name, h200.memory_bytes, None, 1, 8192)
            .gpu_layers
            .unwrap();
        assert!(g200 > g && g200 < 80, "{g200}");
        // 141 GB of weights: two H100s hold them with room for a few sequences.
        let mb = f.max_batch.unwrap();
        assert!((1..64).contains(&mb), "{mb}");
        let t4 = gpus().into_iter().next().unwrap();
        assert_eq!(
            fit(&d, t4.name, t4.memory_bytes, None, 1, 8192).devices_needed,
            None
        );
    }

    #[test]
    fn binary_search_finds_the_edge() {
        assert_eq!(largest(1000, |x| x <= 437), 437);
        assert_eq!(largest(1000, |_| false), 0);
        assert_eq!(largest(1000, |_| true), 1000);
    }
}
