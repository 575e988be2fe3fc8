//! `hangar profile`'s report: the measured host next to the roofline bounds of a
//! model's decode and prefill, and what `hangar bench` measured, so the gap to the
//! physical limit reads as one number (measured / bound).

use crate::bench::Measured;
use crate::kv::KvDtype;
use crate::profile::HostProfile;
use crate::roofline::{decode_bound, prefill_bound, token_cost, Bound, Storage, TokenCost};
use crate::shape::Model;
use crate::table::Table;
use crate::units::{fmt_bytes, fmt_count};
use crate::weights::WeightFormat;
use serde::Serialize;
use std::fmt::Write;

/// Settings of the roofline part.
#[derive(Debug, Clone, Serialize)]
pub struct RooflineOptions {
    /// Context of the decode bound.
    pub context: u64,
    /// Prompt length of the prefill bound.
    pub prompt: u64,
    pub batch: u64,
    pub chunk: u64,
    pub kv: KvDtype,
    /// Weights as stored (`None`) or converted to a format.
    pub weights: Option<WeightFormat>,
    pub measured: Measured,
}

/// A model's roofline on this host.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRoofline {
    pub model: String,
    pub cost: TokenCost,
    /// Which measured dot rate is the compute roof: `int8` or `f32`.
    pub compute_kind: String,
    pub compute_ops_per_s: f64,
    pub bandwidth_bytes_per_s: f64,
    pub bounds: Vec<Bound>,
}

/// The whole `hangar profile` report.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    pub host: HostProfile,
    pub roofline: Option<ModelRoofline>,
}

/// Whether the weights are mostly block-quantized integers (then matmuls are int8
/// dots against quantized activations).
fn integer_weights(m: &Model, w: Option<WeightFormat>) -> bool {
    if let Some(f) = w {
        return f.is_integer();
    }
    let (mut int, mut all) = (0u64, 0u64);
    for t in &m.tensors {
        if let (Some(ty), Some(b)) = (t.stored, t.stored_bytes) {
            all += b;
            if ty.block_size() > 1 {
                int += b;
            }
        }
    }
    all > 0 && int * 2 > all
}

/// The roofline of `m` on a measured host.
pub fn model_roofline(host: &HostProfile, m: &Model, o: &RooflineOptions) -> ModelRoofline {
    let st = o.weights.map_or(Storage::AsStored, Storage::Format);
    let cost = token_cost(m, st, o.kv, o.context, o.prompt);
    let kind = if integer_weights(m, o.weights) {
        "int8"
    } else {
        "f32"
    };
    let flops = host
        .dot_rate(kind)
        .or_else(|| host.dot_rate("f32"))
        .unwrap_or(0.0);
    let bw = host.bandwidth.best();
    let bounds = vec![
        decode_bound(&cost, o.batch, bw, flops, o.measured.decode_tokens_per_s),
        prefill_bound(&cost, o.chunk, bw, flops, o.measured.prefill_tokens_per_s),
    ];
    ModelRoofline {
        model: m.name.clone(),
        cost,
        compute_kind: kind.into(),
        compute_ops_per_s: flops,
        bandwidth_bytes_per_s: bw,
        bounds,
    }
}

/// `84.4 Gop/s`.
fn ops(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.1} Gop/s", x / 1e9)
    } else {
        format!("{:.1} Mop/s", x / 1e6)
    }
}

impl ProfileReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let h = &self.host;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Host: {} — {} cores, RAM {} ({} available)",
            h.cpu,
            h.cores,
            fmt_bytes(h.memory.total_bytes as f64),
            fmt_bytes(h.memory.available_bytes as f64)
        );
        let mut t = Table::new(["measure", "value", "how"]);
        let b = &h.bandwidth;
        t.row([
            "memory bandwidth, copy".to_string(),
            format!("{}/s", fmt_bytes(b.copy_bytes_per_s)),
            format!(
                "{} threads, 2 x {} buffers, read+write bytes",
                b.threads,
                fmt_bytes(b.buffer_bytes as f64)
            ),
        ]);
        t.row([
            "memory bandwidth, read".to_string(),
            format!("{}/s", fmt_bytes(b.read_bytes_per_s)),
            format!(
                "{} threads, sum over {}",
                b.threads,
                fmt_bytes(b.buffer_bytes as f64)
            ),
        ]);
        for d in &h.dots {
            t.row([
                format!("{} dot throughput", d.kind),
                ops(d.ops_per_s),
                format!("{} threads, {}", d.threads, d.kernel),
            ]);
        }
        out.push_str(&t.render());
        if let Some(r) = &self.roofline {
            let c = &r.cost;
            let _ = writeln!(
                out,
                "\nRoofline for {}: decode reads {} per token ({} weights + {} KV at context {}); {} FLOP per decode token, {} per prefill token",
                r.model,
                fmt_bytes(c.decode_bytes_per_token()),
                fmt_bytes(c.weight_bytes_per_token),
                fmt_bytes(c.kv_bytes_per_token),
                c.context,
                fmt_count(c.decode_flops_per_token),
                fmt_count(c.prefill_flops_per_token),
            );
            let _ = writeln!(
                out,
                "  roofs: {}/s bandwidth, {} {} compute",
                fmt_bytes(r.bandwidth_bytes_per_s),
                ops(r.compute_ops_per_s),
                r.compute_kind
            );
            let mut t = Table::new([
                "phase",
                "bound tok/s",
                "limited by",
                "measured tok/s",
                "of bound",
            ]);
            for b in &r.bounds {
                t.row([
                    b.what.clone(),
                    format!("{:.1}", b.bound_tokens_per_s),
                    b.limited_by.to_string(),
                    b.measured_tokens_per_s
                        .map_or("-".into(), |m| format!("{m:.1}")),
                    b.efficiency
                        .map_or("-".into(), |e| format!("{:.0}%", e * 100.0)),
                ]);
            }
            out.push_str(&t.render());
            if r.bounds.iter().all(|b| b.measured_tokens_per_s.is_none()) {
                out.push_str("(pass --decode-tps/--prefill-tps or --bench-json FILE from `hangar bench --json` to see the gap)\n");
            }
        }
        out
    }
}
