//! How a loaded model computes: the arithmetic ([`Numerics`]) and which weights are
//! repacked ([`Packing`]). Parses option values; never reads the environment.

use hangar_formats::GgmlType;

/// Which arithmetic the forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Numerics {
    /// Hangar's own kernels (packed, fused, fastest).
    #[default]
    Fast,
    /// Bit-for-bit llama.cpp CPU arithmetic (x86-64 AVX-512 build).
    Ggml,
}

impl Numerics {
    /// Parses `fast` or `ggml` (also `llama.cpp`, `reference`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fast" => Some(Numerics::Fast),
            "ggml" | "llama.cpp" | "llamacpp" | "reference" | "exact" => Some(Numerics::Ggml),
            _ => None,
        }
    }
}

/// Which weight types the `Fast` numerics repack into row-interleaved copies (made on
/// first use, or at load with [`crate::Model::pack_weights`]). `Ggml` numerics
/// never use packed copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Packing {
    /// Nothing: every product reads the GGUF blocks in place (A/B comparisons).
    None,
    /// The 32-element types (Q4_0/Q5_0/Q8_0): faster at every batch size.
    #[default]
    Legacy,
    /// Also Q4_K/Q6_K: +25-30% prefill, but 4-5% slower decode (their packed layout
    /// reads more bytes and unpacks per token), so it suits prompt-heavy work only.
    All,
}

impl Packing {
    /// Parses `0`/`none`, `legacy`/`default` or `all`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "none" | "off" => Some(Packing::None),
            "" | "1" | "legacy" | "default" => Some(Packing::Legacy),
            "all" => Some(Packing::All),
            _ => None,
        }
    }

    /// Whether a matrix of type `ty` is repacked (when a packed kernel exists for it
    /// on this CPU).
    pub fn packs(self, ty: GgmlType) -> bool {
        match self {
            Packing::None => false,
            Packing::Legacy => matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0),
            Packing::All => true,
        }
    }
}

/// Options fixed when a model is loaded. The default is what `hangar serve` and
/// `hangar bench` run: fast numerics, legacy types packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadOptions {
    pub numerics: Numerics,
    pub packing: Packing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_values_keep_their_old_meaning() {
        assert_eq!(Packing::parse("0"), Some(Packing::None));
        assert_eq!(Packing::parse("all"), Some(Packing::All));
        assert_eq!(Packing::parse(""), Some(Packing::Legacy));
        assert_eq!(Packing::parse("bogus"), None);
        assert!(Packing::Legacy.packs(GgmlType::Q8_0));
        assert!(!Packing::Legacy.packs(GgmlType::Q4K));
        assert!(Packing::All.packs(GgmlType::Q6K));
        assert!(!Packing::None.packs(GgmlType::Q4_0));
    }

    #[test]
    fn numerics_names() {
        assert_eq!(Numerics::parse("GGML"), Some(Numerics::Ggml));
        assert_eq!(Numerics::parse("llama.cpp"), Some(Numerics::Ggml));
        assert_eq!(Numerics::parse("fast"), Some(Numerics::Fast));
        assert_eq!(Numerics::parse("slow"), None);
    }
}
