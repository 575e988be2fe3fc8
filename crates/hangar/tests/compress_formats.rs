//! `hangar quantize/prune --format safetensors` on the real default model: the folder
//! evaluates exactly like the same weights in GGUF, pruned zeros are stored as zeros,
//! and block-quantized types are refused with a clear error.

use serde_json::Value;
mod common;
use common::{hangar, model};
use std::path::{Path, PathBuf};

fn ok(args: &[&str]) -> (String, String) {
    let out = hangar(args);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "hangar {args:?} failed:\n{se}");
    (so, se)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hangar-fmt-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn f16_safetensors_folder_evaluates_like_the_f16_gguf() {
    let Some(m) = model() else { return };
    let dir = scratch("f16");
    let gguf = dir.join("f16.gguf");
    let st = dir.join("f16-st");
    ok(&["quantize", &m, s(&gguf), "--type", "F16", "--no-eval"]);
    let (_, err) = ok(&[
        "quantize",
        &m,
        s(&st),
        "--type",
        "F16",
        "--format",
        "safetensors",
        "--no-eval",
    ]);
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ] {
        assert!(st.join(f).is_file(), "{f} missing");
    }
    assert!(!st.join("tokenizer.json").exists());
    assert!(err.contains("no tokenizer.json"), "{err}");

    let (out, _) = ok(&[
        "eval",
        "--model",
        s(&st),
        "--baseline",
        s(&gguf),
        "--no-speed",
        "--json",
    ]);
    let r: Value = serde_json::from_str(&out).unwrap();
    let (a, b) = (
        r["model"]["ppl"].as_f64().unwrap(),
        r["baseline"]["ppl"].as_f64().unwrap(),
    );
    let d = &r["divergence"];
    eprintln!("safetensors ppl {a:.5} vs GGUF {b:.5}; {d}");
    assert!((a - b).abs() < 1e-3, "ppl {a} vs {b}");
    assert!(d["top1_agreement"].as_f64().unwrap() > 0.999, "{d}");
    assert!(d["kl_mean"].as_f64().unwrap() < 1e-4, "{d}");
    std::fs::remove_dir_all(&dir).ok();
}

/// (dtype, shape, data) of every tensor of a safetensors file, read by hand.
fn read_safetensors(p: &Path) -> Vec<(String, String, Vec<u64>, Vec<u8>)> {
    let b = std::fs::read(p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let data = &b[8 + n..];
    h.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            let (s, e) = (
                o[0].as_u64().unwrap() as usize,
                o[1].as_u64().unwrap() as usize,
            );
            (
                k.clone(),
                v["dtype"].as_str().unwrap().to_string(),
                v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect(),
                data[s..e].to_vec(),
            )
        })
        .collect()
}

#[test]
fn pruned_safetensors_hold_half_zeros_and_quantized_types_are_refused() {
    let Some(m) = model() else { return };
    let dir = scratch("prune");
    let out = dir.join("pruned");
    let (json, _) = ok(&[
        "prune",
        &m,
        s(&out),
        "--format",
        "safetensors",
        "--sparsity",
        "0.5",
        "--no-eval",
        "--json",
    ]);
    let r: Value = serde_json::from_str(&json).unwrap();
    let pruned = r["prune"]["tensors"].as_array().unwrap();
    assert_eq!(pruned.len(), 7 * 18);
    let tensors = read_safetensors(&out.join("model.safetensors"));
    let mut linear = 0;
    for (name, dtype, shape, data) in &tensors {
        if shape.len() == 1 {
            assert_eq!(dtype, "F32", "{name}");
            continue;
        }
        assert_eq!(dtype, "F16", "{name}: quantized input → F16");
        let zeros = data
            .chunks_exact(2)
            .filter(|c| c[0] == 0 && c[1] & 0x7f == 0)
            .count();
        let n = data.len() / 2;
        if name.contains("_proj.") {
            linear += 1;
            assert!(
                zeros * 2 >= n && (zeros as f64) < 0.505 * n as f64,
                "{name}: {zeros} zeros of {n}"
            );
        }
    }
    assert_eq!(linear, 7 * 18);

    for args in [
        vec!["quantize", &m, "--type", "Q4_K"],
        vec!["prune", &m, "--type", "Q8_0"],
    ] {
        let mut args = args.clone();
        let o = dir.join("refused");
        args.insert(2, s(&o));
        args.extend(["--format", "safetensors", "--no-eval"]);
        let res = hangar(&args);
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(!res.status.success(), "{args:?} succeeded");
        assert!(
            err.contains("float tensors only") && !err.contains("panicked"),
            "{err}"
        );
        assert!(!o.exists());
    }
    std::fs::remove_dir_all(&dir).ok();
}
