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
    Legacy,
    /// Also Q4_K/Q6_K: +30% prefill and +8-10% 16-sequence decode on Gemma 3 270M, but
    /// their packed layout is larger (Q4_K +11%, Q6_K +47%), so where K-quants hold
    /// most of the bytes, memory-bound decode reads more per token.
    All,
    /// `All` when the K-quant matrices are a small share of the model's matrix bytes
    /// (at most [`Packing::AUTO_KQUANT_SHARE`]: the larger copies then cost decode
    /// little), else `Legacy`. Decided at load ([`Packing::resolve`]).
    #[default]
    Auto,
}

impl Packing {
    /// The largest share of matrix bytes in Q4_K/Q6_K for which `Auto` packs them.
    pub const AUTO_KQUANT_SHARE: f64 = 0.10;

    /// Parses `0`/`none`, `legacy`, `all` or `auto`/`default`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "0" | "none" | "off" => Some(Packing::None),
            "1" | "legacy" => Some(Packing::Legacy),
            "all" => Some(Packing::All),
            "" | "auto" | "default" => Some(Packing::Auto),
            _ => None,
        }
    }

    /// `Auto` decided for a model whose matrices hold `kquant_bytes` of Q4_K/Q6_K
    /// among `total_bytes`; other values are returned as they are.
    pub fn resolve(self, kquant_bytes: usize, total_bytes: usize) -> Packing {
        match self {
            Packing::Auto
                if (kquant_bytes as f64) <= Self::AUTO_KQUANT_SHARE * total_bytes as f64 =>
            {
                Packing::All
            }
            Packing::Auto => Packing::Legacy,
            p => p,
        }
    }

    /// Whether a matrix of type `ty` is repacked (when a packed kernel exists for it
    /// on this CPU).
    pub fn packs(self, ty: GgmlType) -> bool {
        match self {
            Packing::None => false,
            Packing::Legacy => matches!(ty, GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0),
            Packing::All => true,
            // Unresolved: the part both choices share.
            Packing::Auto => Packing::Legacy.packs(ty),
        }
    }
}

/// Options fixed when a model is loaded. The default is what `hangar serve` and
/// `hangar bench` run: fast numerics, packing decided per model (`Auto`).
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
        assert_eq!(Packing::parse("legacy"), Some(Packing::Legacy));
        assert_eq!(Packing::parse(""), Some(Packing::Auto));
        assert_eq!(Packing::parse("bogus"), None);
        assert!(Packing::Legacy.packs(GgmlType::Q8_0));
        assert!(!Packing::Legacy.packs(GgmlType::Q4K));
        assert!(Packing::All.packs(GgmlType::Q6K));
        assert!(!Packing::None.packs(GgmlType::Q4_0));
    }

    #[test]
    fn auto_packs_k_quants_only_where_they_are_a_small_share() {
        // Gemma 3 270M Q4_K_M: K-quants only in the FFN down projections (~7%).
        assert_eq!(Packing::Auto.resolve(18, 253), Packing::All);
        // An 8B Q4_K_M: nearly every byte is a K-quant.
        assert_eq!(Packing::Auto.resolve(4_500, 4_920), Packing::Legacy);
        assert_eq!(Packing::Auto.resolve(0, 0), Packing::All);
        assert_eq!(Packing::Legacy.resolve(1, 100), Packing::Legacy);
        assert_eq!(Packing::None.resolve(1, 100), Packing::None);
        assert!(Packing::Auto.packs(GgmlType::Q8_0) && !Packing::Auto.packs(GgmlType::Q4K));
    }

    #[test]
    fn numerics_names() {
        assert_eq!(Numerics::parse("GGML"), Some(Numerics::Ggml));
        assert_eq!(Numerics::parse("llama.cpp"), Some(Numerics::Ggml));
        assert_eq!(Numerics::parse("fast"), Some(Numerics::Fast));
        assert_eq!(Numerics::parse("slow"), None);
    }
}
