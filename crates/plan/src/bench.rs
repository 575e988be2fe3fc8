//! Reading measured throughput written by `hangar bench --json`, so the roofline can
//! be printed beside it. It reads `hangar bench`'s layout (`figures: [{test: "pp512",
//! tokens, median_tok_s}, {test: "tg128", ...}]`) and is lenient otherwise: numeric
//! fields named like decode or prefill tokens per second anywhere in the document.

use crate::error::{PlanError, Result};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;

/// Tokens per second measured by a benchmark.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    pub decode_tokens_per_s: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    /// Tokens of the decode test (`tg128`: 128), when the file says.
    pub decode_tokens: Option<u64>,
    /// Prompt length of the prefill test (`pp512`: 512), when the file says.
    pub prefill_tokens: Option<u64>,
}

fn classify(key: &str) -> Option<bool> {
    let k = key.to_ascii_lowercase();
    let rate = k.contains("tps")
        || k.contains("tok_s")
        || k.contains("per_s")
        || k.contains("per_sec")
        || k.contains("tokens_s")
        || k.contains("throughput");
    if !rate {
        return None;
    }
    if k.contains("decode") || k.contains("generat") || k.starts_with("tg") {
        Some(true)
    } else if k.contains("prefill") || k.contains("prompt") || k.starts_with("pp") {
        Some(false)
    } else {
        None
    }
}

/// A `hangar bench` figure: `{"test": "tg128", "tokens": 128, "median_tok_s": 41.2}`.
fn figure(map: &serde_json::Map<String, Value>, out: &mut Measured) -> bool {
    let (Some(test), Some(rate)) = (
        map.get("test").and_then(Value::as_str),
        map.get("median_tok_s").and_then(Value::as_f64),
    ) else {
        return false;
    };
    let tokens = map.get("tokens").and_then(Value::as_u64);
    let t = test.to_ascii_lowercase();
    let (slot, n) = if t.starts_with("tg") || t.contains("decode") {
        (&mut out.decode_tokens_per_s, &mut out.decode_tokens)
    } else if t.starts_with("pp") || t.contains("prefill") {
        (&mut out.prefill_tokens_per_s, &mut out.prefill_tokens)
    } else {
        return false;
    };
    *slot = Some(slot.map_or(rate, |o: f64| o.max(rate)));
    *n = tokens.or(*n);
    true
}

fn walk(v: &Value, out: &mut Measured) {
    match v {
        Value::Object(map) => {
            if figure(map, out) {
                return;
            }
            for (k, x) in map {
                if let (Some(is_decode), Some(n)) = (classify(k), x.as_f64()) {
                    let slot = if is_decode {
                        &mut out.decode_tokens_per_s
                    } else {
                        &mut out.prefill_tokens_per_s
                    };
                    // Several runs: keep the best, the one closest to the roof.
                    *slot = Some(slot.map_or(n, |o: f64| o.max(n)));
                } else {
                    walk(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
        _ => {}
    }
}

/// Finds decode/prefill tokens per second in a JSON document.
///
/// ```
/// let m = hangar_plan::bench::measured_from_json(
///     r#"{"model":"x","results":{"decode_tokens_per_s":41.5,"prefill_tokens_per_s":900}}"#,
/// ).unwrap();
/// assert_eq!(m.decode_tokens_per_s, Some(41.5));
/// ```
pub fn measured_from_json(text: &str) -> std::result::Result<Measured, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let mut m = Measured::default();
    walk(&v, &mut m);
    if m.decode_tokens_per_s.is_none() && m.prefill_tokens_per_s.is_none() {
        return Err("no field like decode_tokens_per_s or prefill_tokens_per_s found".into());
    }
    Ok(m)
}

/// Reads a file written by `hangar bench --json`.
pub fn read_bench_json(path: &Path) -> Result<Measured> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    measured_from_json(&text).map_err(|why| PlanError::Bench {
        path: path.to_path_buf(),
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_rates_in_nested_and_short_names() {
        let m =
            measured_from_json(r#"[{"pp512_tps": 800.0}, {"tg128_tps": 30}, {"tg128_tps": 35}]"#)
                .unwrap();
        assert_eq!(m.prefill_tokens_per_s, Some(800.0));
        assert_eq!(m.decode_tokens_per_s, Some(35.0));
    }

    #[test]
    fn reads_hangar_bench_figures() {
        let j = r#"{"model":"m","threads":2,"simd":"avx2","figures":[
            {"test":"pp512","tokens":512,"median_tok_s":700.5,"min_tok_s":600,"max_tok_s":800,"runs":3},
            {"test":"tg128","tokens":128,"median_tok_s":60.25,"min_tok_s":50,"max_tok_s":70,"runs":3}]}"#;
        let m = measured_from_json(j).unwrap();
        assert_eq!(m.prefill_tokens_per_s, Some(700.5));
        assert_eq!(m.prefill_tokens, Some(512));
        assert_eq!(m.decode_tokens_per_s, Some(60.25));
        assert_eq!(m.decode_tokens, Some(128));
    }

    #[test]
    fn says_what_is_missing() {
        assert!(measured_from_json(r#"{"a":1}"#)
            .unwrap_err()
            .contains("decode_tokens_per_s"));
        assert!(measured_from_json("nope").unwrap_err().contains("not JSON"));
    }
}
