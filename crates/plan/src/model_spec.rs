//! Turning what the user typed (`--model PATH|NAME`, `--params 7B --arch llama`,
//! shape flags) into a [`Model`]. Files win over presets; presets over bare counts.

use crate::error::{PlanError, Result};
use crate::presets::{by_arch_and_params, by_name};
use crate::shape::{Model, ModelShape, ModelSource};
use crate::units::parse_count;
use serde::Serialize;
use std::path::Path;

/// How the user named a model, plus optional shape overrides.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ModelSpec {
    /// A GGUF path or a preset name (`llama-70b`).
    pub model: Option<String>,
    /// A parameter count (`7B`, `270M`).
    pub params: Option<String>,
    /// An architecture (`llama`, `gemma3`, ...) to pick a preset by size.
    pub arch: Option<String>,
    pub layers: Option<usize>,
    pub hidden: Option<usize>,
    pub ffn: Option<usize>,
    pub heads: Option<usize>,
    pub kv_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub vocab: Option<usize>,
    /// Sliding window applied to every layer.
    pub window: Option<usize>,
    pub context_length: Option<usize>,
}

impl ModelSpec {
    fn has_shape_flags(&self) -> bool {
        self.layers.is_some() || self.hidden.is_some() || self.heads.is_some()
    }

    /// Applies the overrides that do not change the tensor list of a file
    /// (KV heads, head dim, window, context) or that rebuild a preset's shape.
    fn apply(&self, s: &mut ModelShape) {
        if let Some(n) = self.layers {
            s.n_layers = n;
            s.kv_heads.resize(n, s.n_kv_heads);
            s.local.resize(n, false);
        }
        if let Some(v) = self.hidden {
            s.d_model = v;
        }
        if let Some(v) = self.ffn {
            s.d_ff = v;
        }
        if let Some(v) = self.heads {
            s.n_heads = v;
        }
        if let Some(v) = self.kv_heads {
            s.n_kv_heads = v;
            s.kv_heads = vec![v; s.n_layers];
        }
        if let Some(v) = self.head_dim {
            s.key_len = v;
            s.value_len = v;
        }
        if let Some(v) = self.vocab {
            s.vocab = v;
        }
        if let Some(w) = self.window {
            s.sliding_window = Some(w);
            s.local = vec![true; s.n_layers];
        }
        if let Some(c) = self.context_length {
            s.context_length = c;
        }
        s.n_local_layers = s.local.iter().filter(|&&l| l).count();
    }

    fn custom_shape(&self, params: Option<u64>) -> Result<ModelShape> {
        let need = |v: Option<usize>, flag: &str| {
            v.ok_or_else(|| {
                PlanError::Invalid(format!(
                    "a custom shape needs --layers, --hidden and --heads (missing {flag})"
                ))
            })
        };
        let (l, d, h) = (
            need(self.layers, "--layers")?,
            need(self.hidden, "--hidden")?,
            need(self.heads, "--heads")?,
        );
        if l == 0 || d == 0 || h == 0 {
            return Err(PlanError::Invalid(
                "--layers, --hidden and --heads must be at least 1".into(),
            ));
        }
        let arch = self.arch.clone().unwrap_or_else(|| "custom".into());
        let mut s = ModelShape::dense(&arch, l, d, 0, h);
        let mut spec = self.clone();
        spec.ffn = None;
        spec.apply(&mut s);
        s.d_ff = match (self.ffn, params) {
            (Some(f), _) => f,
            // Solve the parameter count for the feed-forward width (gated: 3 matrices).
            (None, Some(p)) => {
                s.d_ff = 0;
                let rest = s.tensors().iter().map(|t| t.n_elements()).sum::<u64>();
                (p.saturating_sub(rest) / (3 * l as u64 * d as u64)) as usize
            }
            (None, None) => (d * 8).div_ceil(3),
        };
        s.validate()?;
        Ok(s)
    }

    /// Resolves the spec to a model.
    pub fn resolve(&self) -> Result<Model> {
        if let Some(m) = &self.model {
            let path = Path::new(m);
            if path.exists() {
                let mut model = Model::from_gguf_path(path)?;
                // A file's tensor list stays as it is; only attention overrides apply.
                let spec = ModelSpec {
                    kv_heads: self.kv_heads,
                    head_dim: self.head_dim,
                    window: self.window,
                    context_length: self.context_length,
                    ..Default::default()
                };
                if let Some(s) = &mut model.shape {
                    spec.apply(s);
                    s.validate()?;
                }
                return Ok(model);
            }
            let p = by_name(m)?;
            let mut s = p.shape;
            self.apply(&mut s);
            return Model::from_shape(
                p.description,
                s,
                ModelSource::Preset {
                    name: p.name.into(),
                },
            );
        }
        let params = self.params.as_deref().map(parse_count).transpose()?;
        if let (Some(p), Some(arch)) = (params, &self.arch) {
            if !self.has_shape_flags() {
                if let Some(pre) = by_arch_and_params(arch, p)? {
                    let mut s = pre.shape;
                    self.apply(&mut s);
                    return Model::from_shape(
                        pre.description,
                        s,
                        ModelSource::Preset {
                            name: pre.name.into(),
                        },
                    );
                }
            }
        }
        if self.has_shape_flags() {
            let s = self.custom_shape(params)?;
            let name = format!("custom {}", s.arch);
            return Model::from_shape(&name, s, ModelSource::ParamCount);
        }
        match params {
            Some(p) => Ok(Model::from_param_count(p, self.arch.as_deref())),
            None => Err(PlanError::Invalid(
                "say which model: --model PATH|NAME, or --params N (e.g. --params 7B --arch llama)"
                    .into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_arch_pick_the_preset() {
        let spec = ModelSpec {
            params: Some("70B".into()),
            arch: Some("llama".into()),
            ..Default::default()
        };
        let m = spec.resolve().unwrap();
        assert_eq!(m.shape.unwrap().n_kv_heads, 8);
    }

    #[test]
    fn bare_params_give_a_count_only_model() {
        let spec = ModelSpec {
            params: Some("7B".into()),
            ..Default::default()
        };
        let m = spec.resolve().unwrap();
        assert!(m.shape.is_none());
        assert_eq!(m.n_params, 7_000_000_000);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let e = ModelSpec {
            params: Some("abc".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("abc"));
        let e = ModelSpec {
            model: Some("no-such-model".into()),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("llama-70b"), "{e}");
        assert!(ModelSpec::default().resolve().is_err());
        let e = ModelSpec {
            layers: Some(4),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.to_string().contains("--hidden"));
    }

    #[test]
    fn custom_shape_solves_the_ffn_width_from_the_count() {
        let spec = ModelSpec {
            params: Some("6.74B".into()),
            layers: Some(32),
            hidden: Some(4096),
            heads: Some(32),
            ..Default::default()
        };
        let m = spec.resolve().unwrap();
        let ff = m.shape.unwrap().d_ff;
        assert!((10900..11100).contains(&ff), "{ff}");
    }

    #[test]
    fn overrides_change_a_preset() {
        let spec = ModelSpec {
            model: Some("llama-7b".into()),
            kv_heads: Some(8),
            ..Default::default()
        };
        assert_eq!(spec.resolve().unwrap().shape.unwrap().n_kv_heads, 8);
    }
}
