//! Partial offload (`--gpu-layers N`, llama.cpp's `-ngl`): the last `N` layers, the
//! output norm and the output projection run on the GPU; the token embedding and the
//! first layers run on the CPU kernels, with their own KV storage in host memory under
//! the same block tables. One step runs the CPU layers over all of its tokens, copies
//! the hidden rows (`tokens x d_model` floats) to the GPU and finishes there, so only
//! the hidden rows and the wanted logits cross PCIe.
//!
//! The GPU gets the last layers rather than the first because the output projection
//! (the largest single matrix of most models: 262k x 640 for Gemma 3, 128k x 4096 for
//! Llama 3) should run where the memory bandwidth is.

use crate::CudaError;
use hangar_engine::StepInput;
use hangar_formats::GgufFile;
use hangar_kernels::ThreadPool;
use hangar_models::kv::KvLayout;
use hangar_models::{KvCache, LoadOptions, Model, Numerics, Workspace};
use std::sync::Arc;

/// Device memory kept free beside the weights and the KV cache: scratch buffers
/// (activations, logits, dequantized prefill matrices), cuBLAS workspace, graphs.
pub const SCRATCH_RESERVE: usize = 512 << 20;

/// How a [`crate::CudaRunner`] places the model.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// `--gpu-layers`: the last `N` layers on the GPU; `None`: as many as fit.
    pub gpu_layers: Option<usize>,
    /// The KV budget the engine will allocate for the whole model (its
    /// `--kv-memory`), kept free beside the weights in proportion to the GPU's layers.
    pub kv_bytes: usize,
    /// Threads of the CPU layers (0: one per core).
    pub threads: usize,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            gpu_layers: None,
            kv_bytes: 1 << 30,
            threads: 0,
        }
    }
}

/// What [`plan_layers`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    /// Layers on the GPU: the last `gpu_layers` of the model.
    pub gpu_layers: usize,
    pub n_layers: usize,
    /// Device bytes the plan needs (weights, KV share, scratch).
    pub need_bytes: usize,
    /// Device bytes all layers would need.
    pub need_all_bytes: usize,
}

impl LayerPlan {
    /// The first layer that runs on the GPU.
    pub fn first_gpu_layer(&self) -> usize {
        self.n_layers - self.gpu_layers
    }
}

/// How many layers go on the GPU. `layer_bytes[i]`: layer `i`'s weights on the device;
/// `head_bytes`: the output norm and projection (always on the GPU); `embd_bytes`: the
/// token embedding, needed on the GPU only when it runs layer 0 (0 when it is the
/// output projection, already counted); `kv_bytes`: the KV budget of the whole model,
/// shared out by layer. `requested`: `--gpu-layers`, else as many as fit.
pub fn plan_layers(
    layer_bytes: &[usize],
    head_bytes: usize,
    embd_bytes: usize,
    kv_bytes: usize,
    free: usize,
    requested: Option<usize>,
    device: &str,
) -> Result<LayerPlan, CudaError> {
    let n = layer_bytes.len();
    let kv_layer = kv_bytes / n.max(1);
    let need = |g: usize| -> usize {
        let layers: usize = layer_bytes[n - g..].iter().sum();
        let embd = if g == n { embd_bytes } else { 0 };
        head_bytes + embd + layers + g * kv_layer + SCRATCH_RESERVE
    };
    let mib = |b: usize| b.div_ceil(1 << 20);
    let need_all = need(n);
    if let Some(r) = requested {
        if r > n || r == 0 {
            return Err(CudaError::Unsupported(format!(
                "--gpu-layers {r}: choose 1 to {n} (the model has {n} layers; --device cpu runs none on the GPU)"
            )));
        }
        if need(r) > free {
            let fit = (0..=n).rev().find(|&g| need(g) <= free);
            return Err(CudaError::OutOfMemory {
                need_mib: mib(need(r)),
                free_mib: mib(free),
                device: device.to_string(),
                hint: match fit {
                    Some(g) => format!("--gpu-layers {g} fits (the other layers run on the CPU)"),
                    None => "not even the output layer fits: use --device cpu".into(),
                },
            });
        }
        return Ok(LayerPlan {
            gpu_layers: r,
            n_layers: n,
            need_bytes: need(r),
            need_all_bytes: need_all,
        });
    }
    match (0..=n).rev().find(|&g| need(g) <= free) {
        // Only the output layer would fit: not worth a GPU, say so instead.
        Some(g) if g > 0 || n == 0 => Ok(LayerPlan {
            gpu_layers: g,
            n_layers: n,
            need_bytes: need(g),
            need_all_bytes: need_all,
        }),
        _ => Err(CudaError::OutOfMemory {
            need_mib: mib(need_all),
            free_mib: mib(free),
            device: device.to_string(),
            hint: "not even one layer fits beside the output layer: use --device cpu, or a \
                   smaller --kv-memory"
                .into(),
        }),
    }
}

/// The layers that stay on the CPU: their own view of the model (the file's mapping
/// is shared), KV storage and workspace; the runner lends its thread pool.
pub(crate) struct CpuLayers {
    model: Model,
    kv: Option<KvCache>,
    ws: Workspace,
    /// Layers `0..layers` run here.
    layers: usize,
    hidden: Vec<f32>,
    logits: Vec<f32>,
}

impl CpuLayers {
    pub(crate) fn new(file: Arc<GgufFile>, layers: usize) -> Result<Self, CudaError> {
        // The GPU's arithmetic follows the CPU's fast numerics; stages need them too.
        let opts = LoadOptions {
            numerics: Numerics::Fast,
            ..LoadOptions::default()
        };
        let model = Model::from_gguf_with(file, opts)
            .map_err(|e| CudaError::CpuLayers(format!("loading the CPU layers: {e}")))?;
        Ok(CpuLayers {
            model,
            kv: None,
            ws: Workspace::default(),
            layers,
            hidden: Vec::new(),
            logits: Vec::new(),
        })
    }

    /// Host KV storage for the CPU layers; returns the bytes those layers use.
    pub(crate) fn allocate(
        &mut self,
        layout: KvLayout,
        block_size: usize,
        blocks: &[usize],
    ) -> usize {
        let cfg = &self.model.cfg;
        let kv = KvCache::with_layout(layout, cfg, block_size, blocks);
        // The cache is laid out for every layer; pages of the GPU's layers are never
        // touched, so only this share is resident.
        let bytes = kv.capacity_bytes() * self.layers / cfg.n_layers.max(1);
        self.kv = Some(kv);
        bytes
    }

    /// Runs the CPU layers over every token of `step`: the hidden rows, `tokens x
    /// d_model`.
    pub(crate) fn run(&mut self, pool: &ThreadPool, step: &StepInput) -> Result<&[f32], CudaError> {
        let kv = self
            .kv
            .as_mut()
            .ok_or_else(|| CudaError::BadBatch("KV cache not allocated".into()))?;
        self.model
            .forward_stage(
                pool,
                step,
                kv,
                &mut self.ws,
                0..self.layers,
                &mut self.hidden,
                &mut self.logits,
            )
            .map_err(|e| CudaError::CpuLayers(e.to_string()))?;
        Ok(&self.hidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn all_layers_when_they_fit() {
        let p = plan_layers(
            &[100 * MIB; 10],
            50 * MIB,
            50 * MIB,
            100 * MIB,
            2000 * MIB,
            None,
            "d",
        )
        .unwrap();
        assert_eq!(p.gpu_layers, 10);
        assert_eq!(p.first_gpu_layer(), 0);
        assert_eq!(p.need_bytes, p.need_all_bytes);
    }

    #[test]
    fn as_many_as_fit_otherwise() {
        // Each layer 100 MiB + 10 MiB of KV; head 50; scratch 512.
        let free = 50 * MIB + SCRATCH_RESERVE + 4 * 110 * MIB + MIB;
        let p = plan_layers(
            &[100 * MIB; 10],
            50 * MIB,
            50 * MIB,
            100 * MIB,
            free,
            None,
            "d",
        )
        .unwrap();
        assert_eq!(p.gpu_layers, 4);
        assert_eq!(p.first_gpu_layer(), 6);
        assert!(p.need_bytes <= free && p.need_all_bytes > free);
    }

    #[test]
    fn a_request_that_does_not_fit_names_one_that_does() {
        let free = 50 * MIB + SCRATCH_RESERVE + 4 * 110 * MIB + MIB;
        let e = plan_layers(
            &[100 * MIB; 10],
            50 * MIB,
            0,
            100 * MIB,
            free,
            Some(8),
            "cuda:0",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--gpu-layers 4 fits"), "{e}");
        assert!(e.contains("cuda:0"), "{e}");
        let e = plan_layers(&[MIB; 3], 0, 0, 0, 1 << 30, Some(4), "d")
            .unwrap_err()
            .to_string();
        assert!(e.contains("has 3 layers"), "{e}");
    }

    #[test]
    fn nothing_useful_fits() {
        let e = plan_layers(&[100 * MIB; 10], 50 * MIB, 0, 0, SCRATCH_RESERVE, None, "d")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--device cpu"), "{e}");
        // Zero layers is the CPU runner's job (the CLI picks it for --gpu-layers 0).
        let e = plan_layers(&[MIB; 2], 0, 0, 0, 1 << 30, Some(0), "d").unwrap_err();
        assert!(e.to_string().contains("choose 1 to 2"), "{e}");
    }
}
