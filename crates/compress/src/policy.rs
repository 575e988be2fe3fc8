//! Which type each tensor gets when a model is quantized to a target type: the
//! per-tensor mix llama.cpp's `_M` presets use, adapted to the types we have.
//!
//! Owns the decision only (a pure function of names, shapes and options), so it can be
//! printed and tested without touching tensor data.

use hangar_formats::GgmlType;

/// Targets `hangar quantize --type` accepts.
pub const TARGETS: [GgmlType; 8] = [
    GgmlType::Q8_0,
    GgmlType::Q6K,
    GgmlType::Q5K,
    GgmlType::Q5_0,
    GgmlType::Q4K,
    GgmlType::Q4_0,
    GgmlType::F16,
    GgmlType::BF16,
];

/// `--keep PATTERN[=TYPE]`: tensors whose name matches `PATTERN` (`*` matches any run
/// of characters) keep their source type, or get `TYPE`.
#[derive(Debug, Clone, PartialEq)]
pub struct KeepRule {
    pub pattern: String,
    pub ty: Option<GgmlType>,
}

impl std::str::FromStr for KeepRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            None => Ok(KeepRule {
                pattern: s.to_string(),
                ty: None,
            }),
            Some((p, t)) => {
                let ty = GgmlType::from_name(t.trim())
                    .filter(|t| TARGETS.contains(t) || *t == GgmlType::F32)
                    .ok_or_else(|| {
                        format!("unknown or unsupported type {t:?} in --keep {s:?} (use F32, F16, BF16, Q8_0, Q6_K, Q5_K, Q5_0, Q4_K, Q4_0)")
                    })?;
                Ok(KeepRule {
                    pattern: p.to_string(),
                    ty: Some(ty),
                })
            }
        }
    }
}

/// Glob match with `*` only.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(k) => rest = &rest[k + p.len()..],
                None => return false,
            }
        }
    }
    true
}

/// What the policy chose for one tensor, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    pub ty: GgmlType,
    /// Copy the source bytes unchanged (same type, or pinned with --keep).
    pub copy: bool,
    pub reason: &'static str,
}

/// The tensor's role, from its GGUF name.
fn role(name: &str) -> &'static str {
    let base = name.rsplit_once('.').map(|(a, _)| a).unwrap_or(name);
    let last = base.rsplit('.').next().unwrap_or(base);
    match last {
        "token_embd" => "embedding",
        "output" => "output",
        "attn_v" => "attn_v",
        "ffn_down" => "ffn_down",
        _ => "other",
    }
}

fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's "use more bits" layers: the first and last eighth, and every third one
/// in between.
fn more_bits(layer: usize, n_layers: usize) -> bool {
    let e = n_layers / 8;
    layer < e || layer >= n_layers.saturating_sub(e) || (layer - e) % 3 == 2
}

/// The nearest type we can store rows of `row_len` in, for a K-quant that needs 256.
fn fallback(ty: GgmlType, row_len: usize) -> GgmlType {
    if row_len.is_multiple_of(ty.block_size()) {
        return ty;
    }
    let t = match ty {
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_0,
        GgmlType::Q6K => GgmlType::Q8_0,
        t => t,
    };
    if row_len.is_multiple_of(t.block_size()) {
        t
    } else {
        GgmlType::F16
    }
}

/// Rank of precision, to say "at least Q6_K".
fn bits(t: GgmlType) -> f64 {
    t.bits_per_weight()
}

/// Inputs to the decision for one tensor.
#[derive(Debug, Clone, Copy)]
pub struct TensorShape<'a> {
    pub name: &'a str,
    pub dims: &'a [u64],
    pub src: GgmlType,
}

/// Chooses the type of one tensor. `tied_output`: the model has no `output.weight`,
/// so `token_embd` doubles as the output matrix. `pure`: every matrix gets the target
/// (no mix), as llama.cpp's `--pure`.
pub fn choose(
    t: TensorShape,
    target: GgmlType,
    keep: &[KeepRule],
    n_layers: usize,
    tied_output: bool,
    pure: bool,
) -> Choice {
    if let Some(rule) = keep.iter().find(|r| glob_match(&r.pattern, t.name)) {
        return match rule.ty {
            None => Choice {
                ty: t.src,
                copy: true,
                reason: "--keep",
            },
            Some(ty) => {
                let ty = fallback(ty, t.dims[0] as usize);
                Choice {
                    ty,
                    copy: ty == t.src,
                    reason: "--keep=TYPE",
                }
            }
        };
    }
    let is_vector = t.dims.len() < 2 || t.dims[1..].iter().product::<u64>() <= 1;
    if is_vector
        || !matches!(
            t.src,
            GgmlType::F32
                | GgmlType::F16
                | GgmlType::BF16
                | GgmlType::Q4_0
                | GgmlType::Q5_0
                | GgmlType::Q8_0
                | GgmlType::Q4K
                | GgmlType::Q5K
                | GgmlType::Q6K
        )
    {
        // Norms, biases, rope factors: tiny and sensitive; kept as they are (F32).
        return Choice {
            ty: t.src,
            copy: true,
            reason: if is_vector {
                "vector (norm/bias)"
            } else {
                "type kept"
            },
        };
    }
    let low_bit =
        bits(target) < bits(GgmlType::Q6K) && !matches!(target, GgmlType::F16 | GgmlType::BF16);
    let (want, reason) = match role(t.name) {
        _ if pure => (target, "target (--pure)"),
        "output" => (
            if low_bit { GgmlType::Q6K } else { target },
            "output at higher precision",
        ),
        "embedding" if tied_output => (
            if low_bit { GgmlType::Q6K } else { target },
            "tied embedding/output at higher precision",
        ),
        "embedding" => (
            if low_bit { GgmlType::Q6K } else { target },
            "embedding at higher precision",
        ),
        "attn_v" | "ffn_down"
            if matches!(target, GgmlType::Q4K | GgmlType::Q5K)
                && layer_of(t.name).is_some_and(|l| more_bits(l, n_layers)) =>
        {
            (GgmlType::Q6K, "_M mix: more bits in this layer")
        }
        _ => (target, "target"),
    };
    let ty = fallback(want, t.dims[0] as usize);
    let reason = if ty != want {
        "row length not a multiple of 256: fallback"
    } else {
        reason
    };
    Choice {
        ty,
        copy: ty == t.src,
        reason,
    }
}

/// `general.file_type` as llama.cpp numbers it for a target.
pub fn file_type(target: GgmlType) -> u32 {
    match target {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q4K => 15,
        GgmlType::Q5K => 17,
        GgmlType::Q6K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(name: &str, dims: &[u64], target: GgmlType) -> GgmlType {
        choose(
            TensorShape {
                name,
                dims,
                src: GgmlType::F32,
            },
            target,
            &[],
            16,
            false,
            false,
        )
        .ty
    }

    #[test]
    fn norms_stay_f32_and_output_gets_more_bits() {
        assert_eq!(
            pick("blk.0.attn_norm.weight", &[4096], GgmlType::Q4K),
            GgmlType::F32
        );
        assert_eq!(
            pick("output.weight", &[4096, 32000], GgmlType::Q4K),
            GgmlType::Q6K
        );
        assert_eq!(
            pick("output.weight", &[4096, 32000], GgmlType::Q8_0),
            GgmlType::Q8_0
        );
        assert_eq!(
            pick("blk.0.attn_q.weight", &[4096, 4096], GgmlType::Q4K),
            GgmlType::Q4K
        );
        assert_eq!(
            pick("blk.0.attn_v.weight", &[4096, 1024], GgmlType::Q4K),
            GgmlType::Q6K
        );
        assert_eq!(
            pick("blk.5.attn_v.weight", &[4096, 1024], GgmlType::Q4K),
            GgmlType::Q4K
        );
    }

    #[test]
    fn k_quants_fall_back_when_rows_do_not_fit_256() {
        assert_eq!(
            pick("blk.3.ffn_up.weight", &[640, 2048], GgmlType::Q4K),
            GgmlType::Q5_0
        );
        assert_eq!(
            pick("output.weight", &[640, 1000], GgmlType::Q4K),
            GgmlType::Q8_0
        );
    }

    #[test]
    fn keep_pins_tensors() {
        let keep: Vec<KeepRule> = vec![
            "blk.*.ffn_*".parse().unwrap(),
            "output*=Q8_0".parse().unwrap(),
        ];
        let c = choose(
            TensorShape {
                name: "blk.2.ffn_up.weight",
                dims: &[256, 8],
                src: GgmlType::F16,
            },
            GgmlType::Q4_0,
            &keep,
            4,
            false,
            false,
        );
        assert!(c.copy && c.ty == GgmlType::F16);
        let c = choose(
            TensorShape {
                name: "output.weight",
                dims: &[256, 8],
                src: GgmlType::F16,
            },
            GgmlType::Q4_0,
            &keep,
            4,
            false,
            false,
        );
        assert_eq!(c.ty, GgmlType::Q8_0);
        assert!("x=Q3_K".parse::<KeepRule>().is_err());
    }

    #[test]
    fn glob() {
        assert!(glob_match("blk.*.attn_*", "blk.1.attn_q.weight"));
        assert!(!glob_match("blk.*.ffn", "blk.1.ffn_up"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("output.weight", "output.weight"));
    }
}
