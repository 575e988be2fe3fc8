//! Reading counts people type (`7B`, `270m`, `1.5e9`) and printing byte sizes.
//! Sizes print in decimal units (1 GB = 10^9 bytes), as model cards and GPU sheets do.

use crate::error::{PlanError, Result};

/// Parses a parameter count such as `7B`, `270M`, `1.5b`, `8e9` or `123456`.
///
/// ```
/// assert_eq!(hangar_plan::units::parse_count("7B").unwrap(), 7_000_000_000);
/// assert_eq!(hangar_plan::units::parse_count("270m").unwrap(), 270_000_000);
/// assert!(hangar_plan::units::parse_count("abc").is_err());
/// ```
pub fn parse_count(input: &str) -> Result<u64> {
    let bad = || PlanError::BadNumber {
        what: "parameter count",
        input: input.to_string(),
        hint: "write a number with an optional K, M, B or T suffix, e.g. 7B, 270M, 1.5e9",
    };
    let s = input.trim();
    let (num, mult) = match s.chars().last() {
        Some(c) if c.is_ascii_alphabetic() && !s.ends_with(['e', 'E']) => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1e3,
                'M' => 1e6,
                'B' | 'G' => 1e9,
                'T' => 1e12,
                _ => return Err(bad()),
            };
            (&s[..s.len() - 1], m)
        }
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().map_err(|_| bad())?;
    let n = v * mult;
    if !n.is_finite() || !(1.0..=1e15).contains(&n) {
        return Err(bad());
    }
    Ok(n.round() as u64)
}

/// Parses a positive integer option (`--context 128k`, `--batch 8`); `k` means 1024.
pub fn parse_tokens(what: &'static str, input: &str) -> Result<u64> {
    let bad = || PlanError::BadNumber {
        what,
        input: input.to_string(),
        hint: "write a positive whole number, optionally with k (x1024), e.g. 4096 or 128k",
    };
    let s = input.trim();
    let (num, mult) = match s.strip_suffix(['k', 'K']) {
        Some(n) => (n, 1024.0),
        None => (s, 1.0),
    };
    let v: f64 = num.parse().map_err(|_| bad())?;
    let n = v * mult;
    if !n.is_finite() || !(1.0..=1e12).contains(&n) || n.fract() != 0.0 {
        return Err(bad());
    }
    Ok(n as u64)
}

/// `14.0 GB`, `512.0 MB`, `3.2 KB`, `12 B` (decimal units).
pub fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v.abs() >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

/// `6.74B`, `268M`, `12.3K` parameters.
pub fn fmt_count(n: f64) -> String {
    if n >= 1e12 {
        format!("{:.2}T", n / 1e12)
    } else if n >= 1e9 {
        format!("{:.2}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}K", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

/// Bytes to decimal gigabytes.
pub fn gb(b: f64) -> f64 {
    b / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_suffixed_counts() {
        assert_eq!(parse_count("7B").unwrap(), 7_000_000_000);
        assert_eq!(parse_count("1.5b").unwrap(), 1_500_000_000);
        assert_eq!(parse_count("270M").unwrap(), 270_000_000);
        assert_eq!(parse_count("8e9").unwrap(), 8_000_000_000);
        assert_eq!(parse_count(" 1000 ").unwrap(), 1000);
    }

    #[test]
    fn rejects_garbage_counts_with_a_hint() {
        for s in ["abc", "", "7X", "-3B", "B", "nan", "1e99"] {
            let e = parse_count(s).unwrap_err().to_string();
            assert!(e.contains("7B"), "{s}: {e}");
        }
    }

    #[test]
    fn reads_token_counts_with_k() {
        assert_eq!(parse_tokens("context", "128k").unwrap(), 131072);
        assert_eq!(parse_tokens("context", "4096").unwrap(), 4096);
        assert!(parse_tokens("context", "0").is_err());
        assert!(parse_tokens("context", "1.5").is_err());
    }

    #[test]
    fn formats_decimal_units() {
        assert_eq!(fmt_bytes(14e9), "14.00 GB");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_count(6.74e9), "6.74B");
    }
}
