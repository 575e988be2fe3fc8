//! Built-in model shapes, as published in each model's config, so `--params 7B
//! --arch llama` or `--model llama-70b` plans without a file. Text towers only.

use crate::error::{PlanError, Result};
use crate::shape::ModelShape;

/// A named, published model shape.
#[derive(Debug, Clone)]
pub struct Preset {
    /// Name used with `--model` (`llama-70b`).
    pub name: &'static str,
    /// What the preset is exactly (`Llama 3.1 70B`).
    pub description: &'static str,
    /// Nominal size used to match `--params` (7e9 for "7B").
    pub nominal_params: f64,
    pub shape: ModelShape,
}

/// A Gemma 3 text tower: the arguments are the config's columns, in its order.
#[allow(clippy::too_many_arguments)]
fn gemma3(
    layers: usize,
    d: usize,
    ff: usize,
    heads: usize,
    kv: usize,
    hd: usize,
    win: usize,
    ctx: usize,
) -> ModelShape {
    let mut s = ModelShape::dense("gemma3", layers, d, ff, heads)
        .with_kv_heads(kv)
        .with_head_dim(hd)
        .with_window(win, |i| (i + 1) % 6 != 0);
    s.vocab = 262144;
    s.context_length = ctx;
    s.tied_embeddings = true;
    s.qk_norm = true;
    s.post_norms = true;
    s
}

fn llama(
    layers: usize,
    d: usize,
    ff: usize,
    heads: usize,
    kv: usize,
    vocab: usize,
    ctx: usize,
) -> ModelShape {
    let mut s = ModelShape::dense("llama", layers, d, ff, heads).with_kv_heads(kv);
    s.vocab = vocab;
    s.context_length = ctx;
    s
}

/// All built-in presets.
pub fn presets() -> Vec<Preset> {
    let mistral = {
        let mut s = llama(32, 4096, 14336, 32, 8, 32000, 32768).with_window(4096, |_| true);
        s.arch = "mistral".into();
        s
    };
    let qwen2 = {
        let mut s = llama(28, 3584, 18944, 28, 4, 152064, 32768);
        s.arch = "qwen2".into();
        s.qkv_bias = true;
        s
    };
    vec![
        Preset {
            name: "llama-7b",
            description: "Llama 2 7B",
            nominal_params: 7e9,
            shape: llama(32, 4096, 11008, 32, 32, 32000, 4096),
        },
        Preset {
            name: "llama-8b",
            description: "Llama 3.1 8B",
            nominal_params: 8e9,
            shape: llama(32, 4096, 14336, 32, 8, 128256, 131072),
        },
        Preset {
            name: "llama-13b",
            description: "Llama 2 13B",
            nominal_params: 13e9,
            shape: llama(40, 5120, 13824, 40, 40, 32000, 4096),
        },
        Preset {
            name: "llama-70b",
            description: "Llama 3.1 70B",
            nominal_params: 70e9,
            shape: llama(80, 8192, 28672, 64, 8, 128256, 131072),
        },
        Preset {
            name: "mistral-7b",
            description: "Mistral 7B v0.1 (sliding window 4096)",
            nominal_params: 7e9,
            shape: mistral,
        },
        Preset {
            name: "qwen2-7b",
            description: "Qwen2 7B",
            nominal_params: 7e9,
            shape: qwen2,
        },
        Preset {
            name: "gemma3-270m",
            description: "Gemma 3 270M",
            nominal_params: 270e6,
            shape: gemma3(18, 640, 2048, 4, 1, 256, 512, 32768),
        },
        Preset {
            name: "gemma3-1b",
            description: "Gemma 3 1B",
            nominal_params: 1e9,
            shape: gemma3(26, 1152, 6912, 4, 1, 256, 512, 32768),
        },
        Preset {
            name: "gemma3-4b",
            description: "Gemma 3 4B (text)",
            nominal_params: 4e9,
            shape: gemma3(34, 2560, 10240, 8, 4, 256, 1024, 131072),
        },
        Preset {
            name: "gemma3-27b",
            description: "Gemma 3 27B (text)",
            nominal_params: 27e9,
            shape: gemma3(62, 5376, 21504, 32, 16, 128, 1024, 131072),
        },
    ]
}

fn known_names() -> String {
    presets()
        .iter()
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Finds a preset by name (`llama-70b`, `Gemma3-270M`; `_` and `-` alike).
pub fn by_name(name: &str) -> Result<Preset> {
    let norm = |s: &str| s.to_ascii_lowercase().replace(['_', ' '], "-");
    let want = norm(name);
    presets()
        .into_iter()
        .find(|p| norm(p.name) == want)
        .ok_or_else(|| PlanError::Unknown {
            what: "model preset (and no such file)",
            input: name.to_string(),
            known: known_names(),
        })
}

/// Finds the preset of `arch` whose nominal size is within 15% of `params`.
/// `Ok(None)` when the architecture is known but no preset is that size.
pub fn by_arch_and_params(arch: &str, params: u64) -> Result<Option<Preset>> {
    let arch_l = arch.to_ascii_lowercase();
    let of_arch: Vec<Preset> = presets()
        .into_iter()
        .filter(|p| p.shape.arch == arch_l)
        .collect();
    if of_arch.is_empty() {
        let mut archs: Vec<String> = presets().into_iter().map(|p| p.shape.arch).collect();
        archs.dedup();
        return Err(PlanError::Unknown {
            what: "architecture",
            input: arch.to_string(),
            known: archs.join(", "),
        });
    }
    Ok(of_arch.into_iter().find(|p| {
        let r = params as f64 / p.nominal_params;
        (0.85..=1.15).contains(&r)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shape::Model;

    fn params_of(name: &str) -> f64 {
        let p = by_name(name).unwrap();
        Model::from_shape(p.name, p.shape, crate::shape::ModelSource::ParamCount)
            .unwrap()
            .n_params as f64
    }

    #[test]
    fn preset_parameter_counts_match_the_published_sizes() {
        // Published totals: Llama 2 7B 6.74B, Llama 3.1 8B 8.03B, Llama 2 13B 13.0B,
        // Llama 3.1 70B 70.6B, Mistral 7B 7.24B, Qwen2 7B 7.62B, Gemma 3 270M 268M,
        // Gemma 3 1B 1.0B, Gemma 3 27B text 27.0B.
        let cases = [
            ("llama-7b", 6.74e9),
            ("llama-8b", 8.03e9),
            ("llama-13b", 13.0e9),
            ("llama-70b", 70.6e9),
            ("mistral-7b", 7.24e9),
            ("qwen2-7b", 7.62e9),
            ("gemma3-270m", 268e6),
            ("gemma3-1b", 1.0e9),
            ("gemma3-27b", 27.0e9),
        ];
        for (name, want) in cases {
            let got = params_of(name);
            assert!((got / want - 1.0).abs() < 0.01, "{name}: {got} vs {want}");
        }
    }

    #[test]
    fn matches_arch_and_size() {
        assert_eq!(
            by_arch_and_params("llama", 7_000_000_000)
                .unwrap()
                .unwrap()
                .name,
            "llama-7b"
        );
        assert_eq!(
            by_arch_and_params("LLAMA", 70_000_000_000)
                .unwrap()
                .unwrap()
                .name,
            "llama-70b"
        );
        assert!(by_arch_and_params("llama", 30_000_000_000)
            .unwrap()
            .is_none());
        assert!(by_arch_and_params("nosuch", 7).is_err());
        assert!(by_name("Gemma3_270M").is_ok());
    }
}
