//! Weight memory: the bytes a model takes as stored and in each precision or
//! quantization type, computed tensor by tensor from real shapes and block sizes.

use crate::error::{PlanError, Result};
use crate::shape::{Model, TensorShape};
use hangar_formats::GgmlType;
use serde::Serialize;

/// A storage format for weights. GGML block types keep their real geometry
/// (elements per block, bytes per block, scales included); FP8 is one byte per
/// element with a per-tensor scale; INT2 is the 2-bit K-quant block (Q2_K).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WeightFormat {
    F32,
    BF16,
    F16,
    FP8,
    Q8_0,
    Q6K,
    Q5K,
    Q4K,
    Q4_0,
    Int2,
}

impl WeightFormat {
    /// The formats `hangar plan` lists, widest first.
    pub const ALL: [WeightFormat; 10] = [
        WeightFormat::F32,
        WeightFormat::BF16,
        WeightFormat::F16,
        WeightFormat::FP8,
        WeightFormat::Q8_0,
        WeightFormat::Q6K,
        WeightFormat::Q5K,
        WeightFormat::Q4K,
        WeightFormat::Q4_0,
        WeightFormat::Int2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "F32",
            WeightFormat::BF16 => "BF16",
            WeightFormat::F16 => "F16",
            WeightFormat::FP8 => "FP8",
            WeightFormat::Q8_0 => "Q8_0",
            WeightFormat::Q6K => "Q6_K",
            WeightFormat::Q5K => "Q5_K",
            WeightFormat::Q4K => "Q4_K",
            WeightFormat::Q4_0 => "Q4_0",
            WeightFormat::Int2 => "INT2",
        }
    }

    /// Parses a name (`bf16`, `Q4_K`, `q4k`, `fp8`, `int2`, `q2_k`).
    pub fn parse(s: &str) -> Result<WeightFormat> {
        let n = s.to_ascii_uppercase().replace('-', "_");
        let alias = match n.as_str() {
            "Q4K" => "Q4_K",
            "Q5K" => "Q5_K",
            "Q6K" => "Q6_K",
            "Q8" => "Q8_0",
            "Q4" => "Q4_0",
            "Q2_K" | "Q2K" => "INT2",
            "FP16" => "F16",
            "FP32" => "F32",
            "FP8_E4M3" | "E4M3" => "FP8",
            other => other,
        };
        Self::ALL
            .into_iter()
            .find(|f| f.name() == alias)
            .ok_or_else(|| PlanError::Unknown {
                what: "weight format",
                input: s.to_string(),
                known: Self::ALL.map(|f| f.name()).join(", "),
            })
    }

    /// The GGML block type with this geometry (FP8 has none).
    pub fn ggml(self) -> Option<GgmlType> {
        Some(match self {
            WeightFormat::F32 => GgmlType::F32,
            WeightFormat::BF16 => GgmlType::BF16,
            WeightFormat::F16 => GgmlType::F16,
            WeightFormat::FP8 => return None,
            WeightFormat::Q8_0 => GgmlType::Q8_0,
            WeightFormat::Q6K => GgmlType::Q6K,
            WeightFormat::Q5K => GgmlType::Q5K,
            WeightFormat::Q4K => GgmlType::Q4K,
            WeightFormat::Q4_0 => GgmlType::Q4_0,
            WeightFormat::Int2 => GgmlType::Q2K,
        })
    }

    /// Elements per block and bytes per block.
    pub fn geometry(self) -> (u64, u64) {
        match self.ggml() {
            Some(t) => (t.block_size() as u64, t.type_size() as u64),
            None => (1, 1),
        }
    }

    /// Nominal bits per weight (block scales included).
    pub fn bits_per_weight(self) -> f64 {
        let (b, s) = self.geometry();
        s as f64 * 8.0 / b as f64
    }

    /// Whether this format is a block-quantized integer type (its dots are int8 work).
    pub fn is_integer(self) -> bool {
        !matches!(
            self,
            WeightFormat::F32 | WeightFormat::BF16 | WeightFormat::F16 | WeightFormat::FP8
        )
    }
}

/// Bytes of `t` converted to `fmt`, as a quantizer would store it: vectors (norms,
/// biases) stay F32; a matrix whose rows are not a whole number of blocks falls back
/// to the next type whose block fits (as llama.cpp does), and to F16 if none does.
pub fn tensor_bytes(t: &TensorShape, fmt: WeightFormat) -> u64 {
    let n = t.n_elements();
    if !t.is_matrix() {
        return n * 4;
    }
    let fallback: &[GgmlType] = match fmt {
        WeightFormat::Q4K => &[GgmlType::Q5_0, GgmlType::Q8_0],
        WeightFormat::Q5K => &[GgmlType::Q5_1, GgmlType::Q8_0],
        WeightFormat::Q6K => &[GgmlType::Q8_0],
        WeightFormat::Int2 => &[GgmlType::Q4_0, GgmlType::Q8_0],
        _ => &[],
    };
    let row = t.row_len();
    let (b, s) = fmt.geometry();
    if row.is_multiple_of(b) {
        return n / b * s;
    }
    for ty in fallback {
        if row.is_multiple_of(ty.block_size() as u64) {
            return n / ty.block_size() as u64 * ty.type_size() as u64;
        }
    }
    n * 2
}

/// Weight memory in one format.
#[derive(Debug, Clone, Serialize)]
pub struct WeightRow {
    /// Format name, or `as stored` for the file itself.
    pub format: String,
    pub bytes: u64,
    /// Effective bits per parameter (bytes * 8 / params).
    pub bits_per_param: f64,
    /// Tensors stored in a different type because their rows do not fit the block.
    pub fallback_tensors: usize,
}

/// Bytes of the whole model in `fmt`. Without tensors (a bare parameter count), every
/// parameter is taken to be in a matrix that fits the block.
pub fn model_bytes(m: &Model, fmt: WeightFormat) -> u64 {
    if m.tensors.is_empty() {
        let (b, s) = fmt.geometry();
        return (m.n_params as f64 * s as f64 / b as f64).round() as u64;
    }
    m.tensors.iter().map(|t| tensor_bytes(t, fmt)).sum()
}

/// The weight table: as stored (for a file), then each format in [`WeightFormat::ALL`].
pub fn weight_table(m: &Model) -> Vec<WeightRow> {
    let bits = |bytes: u64| bytes as f64 * 8.0 / m.n_params.max(1) as f64;
    let mut rows = Vec::new();
    if let Some(b) = m.stored_bytes() {
        rows.push(WeightRow {
            format: format!("as stored ({})", stored_mix(m)),
            bytes: b,
            bits_per_param: bits(b),
            fallback_tensors: 0,
        });
    }
    for fmt in WeightFormat::ALL {
        let bytes = model_bytes(m, fmt);
        let (b, _) = fmt.geometry();
        let fallback_tensors = m
            .tensors
            .iter()
            .filter(|t| t.is_matrix() && t.row_len() % b != 0)
            .count();
        rows.push(WeightRow {
            format: fmt.name().to_string(),
            bytes,
            bits_per_param: bits(bytes),
            fallback_tensors,
        });
    }
    rows
}

/// The types a file stores, by share of bytes: `Q4_K 61%, Q6_K 30%, F32 ...`.
pub fn stored_mix(m: &Model) -> String {
    let mut by: Vec<(GgmlType, u64)> = Vec::new();
    for t in &m.tensors {
        if let (Some(ty), Some(b)) = (t.stored, t.stored_bytes) {
            match by.iter_mut().find(|(k, _)| *k == ty) {
                Some((_, v)) => *v += b,
                None => by.push((ty, b)),
            }
        }
    }
    by.sort_by_key(|x| std::cmp::Reverse(x.1));
    let total: u64 = by.iter().map(|x| x.1).sum::<u64>().max(1);
    by.iter()
        .take(3)
        .map(|(t, b)| format!("{t} {:.0}%", *b as f64 * 100.0 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mat(r: u64, c: u64) -> TensorShape {
        TensorShape {
            name: "m".into(),
            dims: vec![r, c],
            stored: None,
            stored_bytes: None,
        }
    }

    #[test]
    fn seven_billion_params_in_bf16_take_14_gb() {
        let m = Model::from_param_count(7_000_000_000, None);
        assert_eq!(model_bytes(&m, WeightFormat::BF16), 14_000_000_000);
        assert_eq!(model_bytes(&m, WeightFormat::F32), 28_000_000_000);
        assert_eq!(model_bytes(&m, WeightFormat::FP8), 7_000_000_000);
        // Q4_K: 144 bytes per 256 weights = 4.5 bits.
        assert_eq!(model_bytes(&m, WeightFormat::Q4K), 3_937_500_000);
    }

    #[test]
    fn block_geometry_is_the_ggml_one() {
        assert_eq!(WeightFormat::Q8_0.bits_per_weight(), 8.5);
        assert_eq!(WeightFormat::Q6K.bits_per_weight(), 6.5625);
        assert_eq!(WeightFormat::Q5K.bits_per_weight(), 5.5);
        assert_eq!(WeightFormat::Q4_0.bits_per_weight(), 4.5);
        assert_eq!(WeightFormat::Int2.bits_per_weight(), 2.625);
    }

    #[test]
    fn rows_that_do_not_fit_the_block_fall_back() {
        // 4096 x 4096 fits Q4_K exactly.
        assert_eq!(
            tensor_bytes(&mat(4096, 4096), WeightFormat::Q4K),
            4096 * 16 * 144
        );
        // A row of 96 is not a multiple of 256: Q4_K falls back to Q5_0 (22 bytes / 32).
        assert_eq!(tensor_bytes(&mat(96, 10), WeightFormat::Q4K), 30 * 22);
        // A row of 100 fits no block: F16.
        assert_eq!(tensor_bytes(&mat(100, 10), WeightFormat::Q4_0), 2000);
        // Vectors stay F32.
        let v = TensorShape {
            dims: vec![4096],
            ..mat(1, 1)
        };
        assert_eq!(tensor_bytes(&v, WeightFormat::Int2), 4096 * 4);
    }

    #[test]
    fn parses_format_names() {
        assert_eq!(WeightFormat::parse("q4k").unwrap(), WeightFormat::Q4K);
        assert_eq!(WeightFormat::parse("Q4_K").unwrap(), WeightFormat::Q4K);
        assert_eq!(WeightFormat::parse("bf16").unwrap(), WeightFormat::BF16);
        assert!(WeightFormat::parse("Q3").is_err());
    }
}
