//! How a KV cache stores one row of keys or values: f16, or ggml's Q8_0 / Q4_0 block
//! layouts (32 values share an f16 scale) packed into the cache's `u16` words.
//!
//! The cache is a `Vec<u16>` whatever the format, so rows stay 2-byte aligned and the
//! f16 path reads them without conversion. A Q8_0 block (34 bytes) is 17 words and a
//! Q4_0 block (18 bytes) 9 words, holding ggml's block bytes; the block code is
//! `quants`'.

/// Values that share one scale in the quantized formats.
pub const KV_BLOCK: usize = 32;

/// Storage format of K and V rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum KvFormat {
    /// IEEE half precision: 2 bytes a value.
    #[default]
    F16,
    /// 8-bit values with an f16 scale per 32: 1.0625 bytes a value.
    Q8_0,
    /// 4-bit values with an f16 scale per 32: 0.5625 bytes a value.
    Q4_0,
}

impl KvFormat {
    /// Parses `f16`, `q8_0` or `q4_0` (also `q8`, `q4`, any case).
    pub fn parse(s: &str) -> Option<KvFormat> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f16" | "fp16" => Some(KvFormat::F16),
            "q8_0" | "q8" => Some(KvFormat::Q8_0),
            "q4_0" | "q4" => Some(KvFormat::Q4_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F16 => "f16",
            KvFormat::Q8_0 => "q8_0",
            KvFormat::Q4_0 => "q4_0",
        }
    }

    /// Whether rows of `n` values can be stored (the quantized formats need whole
    /// blocks of 32).
    pub fn fits(self, n: usize) -> bool {
        self == KvFormat::F16 || n.is_multiple_of(KV_BLOCK)
    }

    /// `u16` words one row of `n` values takes (`n` a multiple of 32 for the
    /// quantized formats).
    pub fn words(self, n: usize) -> usize {
        match self {
            KvFormat::F16 => n,
            KvFormat::Q8_0 => n / KV_BLOCK * 17,
            KvFormat::Q4_0 => n / KV_BLOCK * 9,
        }
    }

    /// Bytes per value, for sizing.
    pub fn bytes_per_value(self) -> f64 {
        self.words(KV_BLOCK) as f64 * 2.0 / KV_BLOCK as f64
    }
}

/// The `u16` words of a row as the bytes they hold in memory (on a little-endian
/// host, ggml's block layout).
fn as_bytes(w: &[u16]) -> &[u8] {
    // SAFETY: any u16 memory is valid as twice as many bytes; alignment 1 <= 2.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u8>(), w.len() * 2) }
}

fn as_bytes_mut(w: &mut [u16]) -> &mut [u8] {
    // SAFETY: as `as_bytes`; the borrow is exclusive for its lifetime.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast::<u8>(), w.len() * 2) }
}

fn ggml_type(format: KvFormat) -> crate::GgmlType {
    match format {
        KvFormat::F16 => crate::GgmlType::F16,
        KvFormat::Q8_0 => crate::GgmlType::Q8_0,
        KvFormat::Q4_0 => crate::GgmlType::Q4_0,
    }
}

/// Stores `src` (a row of `src.len()` values) into `dst` (`format.words(len)` words),
/// with ggml's reference rounding for the block formats.
pub fn store_row(format: KvFormat, src: &[f32], dst: &mut [u16]) {
    debug_assert_eq!(dst.len(), format.words(src.len()));
    match format {
        KvFormat::F16 => crate::ops::f32_to_f16_bits(src, dst),
        _ => {
            // Lengths are whole blocks (checked when the cache was sized).
            let _ = crate::quants::quantize_row(ggml_type(format), src, as_bytes_mut(dst));
        }
    }
}

/// Reads a row of `dst.len()` values stored by [`store_row`].
pub fn load_row(format: KvFormat, src: &[u16], dst: &mut [f32]) {
    debug_assert_eq!(src.len(), format.words(dst.len()));
    match format {
        KvFormat::F16 => crate::ops::f16_bits_to_f32(src, dst),
        _ => {
            let _ = crate::quants::dequantize_row(ggml_type(format), as_bytes(src), dst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{quants, GgmlType};

    fn row(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
            })
            .collect()
    }

    #[test]
    fn sizes_and_names() {
        assert_eq!(KvFormat::F16.words(256), 256);
        assert_eq!(KvFormat::Q8_0.words(256), 8 * 17);
        assert_eq!(KvFormat::Q4_0.words(256), 8 * 9);
        assert!((KvFormat::Q8_0.bytes_per_value() - 1.0625).abs() < 1e-12);
        assert!((KvFormat::Q4_0.bytes_per_value() - 0.5625).abs() < 1e-12);
        assert!(!KvFormat::Q8_0.fits(40) && KvFormat::F16.fits(40));
        for f in [KvFormat::F16, KvFormat::Q8_0, KvFormat::Q4_0] {
            assert_eq!(KvFormat::parse(f.name()), Some(f));
        }
        assert_eq!(KvFormat::parse("Q8"), Some(KvFormat::Q8_0));
        assert_eq!(KvFormat::parse("q5_1"), None);
    }

    #[test]
    fn round_trips_within_each_formats_step() {
        // Q8_0 rounds to half a step; Q4_0's largest value of the other sign than
        // the scale's clamps at +7 steps, a whole step from +8.
        for (f, bound) in [(KvFormat::Q8_0, 0.5 / 127.0), (KvFormat::Q4_0, 1.0 / 8.0)] {
            let x = row(256, 3);
            let mut w = vec![0u16; f.words(256)];
            let mut y = vec![0f32; 256];
            store_row(f, &x, &mut w);
            load_row(f, &w, &mut y);
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let amax = bx.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (a, b) in bx.iter().zip(by) {
                    // Half a step of rounding, plus the f16 scale's own rounding.
                    assert!((a - b).abs() <= amax * (bound + 2e-3), "{f:?}: {a} vs {b}");
                }
            }
        }
        // Zeros stay zeros; f16 is exact for f16 values.
        let mut w = vec![7u16; KvFormat::Q4_0.words(32)];
        let mut y = vec![1f32; 32];
        store_row(KvFormat::Q4_0, &[0.0; 32], &mut w);
        load_row(KvFormat::Q4_0, &w, &mut y);
        assert!(y.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn blocks_are_ggmls_byte_for_byte() {
        // The packed words, seen as bytes, are the GGUF block layout: the same bytes
        // as quantizing into a byte buffer.
        for (f, t) in [
            (KvFormat::Q8_0, GgmlType::Q8_0),
            (KvFormat::Q4_0, GgmlType::Q4_0),
        ] {
            let x = row(128, 9);
            let mut w = vec![0u16; f.words(128)];
            store_row(f, &x, &mut w);
            let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut want = vec![0u8; quants::row_bytes(t, 128)];
            quants::quantize_row(t, &x, &mut want).unwrap();
            assert_eq!(bytes, want, "{f:?}");
        }
    }
}
