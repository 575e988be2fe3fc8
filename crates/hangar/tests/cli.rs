//! The `hangar` binary end to end on the real default model.

mod common;
use common::{hangar, model};
use hangar_testkit::repo_file;

/// `hangar perplexity --json` on `file`, as (ppl, scored tokens); `None` without the model.
fn perplexity_of(file: &str) -> Option<(f64, u64)> {
    let m = model()?;
    let text = repo_file(file);
    let out = hangar(&[
        "perplexity",
        "--model",
        &m,
        "--file",
        text.to_str().unwrap(),
        "--ctx",
        "512",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Some((
        v["ppl"].as_f64().unwrap(),
        v["scored_tokens"].as_u64().unwrap(),
    ))
}

fn reference(file: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo_file(file)).unwrap()).unwrap()
}

/// The issue's criterion, on a text long enough to measure it: 6 630 scored tokens.
#[test]
fn perplexity_is_within_one_percent_of_llama_cpp() {
    let Some((got, n)) = perplexity_of("tests/data/ppl/long_text.txt") else {
        return;
    };
    let r = reference("tests/data/ppl/reference.json");
    assert_eq!(Some(n), r["scored_tokens"].as_u64());
    let want = r["ppl"].as_f64().unwrap();
    assert!(
        (got / want - 1.0).abs() < 0.01,
        "perplexity {got} vs llama.cpp {want}"
    );
}

/// The shared 255-token text: same method, same token count. A sample this small moves
/// by about ±0.6% with the kernels' summation order alone (tests/data/ppl/README.md),
/// so the bound here is 2%; the 1% criterion is asserted on the long text above.
#[test]
fn perplexity_on_the_shared_reference_text_is_close_to_llama_cpp() {
    let Some((got, n)) = perplexity_of("tests/data/reference/ppl_text.txt") else {
        return;
    };
    let r = &reference("tests/data/reference/reference.json")["perplexity"];
    assert_eq!(Some(n), r["scored_tokens"].as_u64());
    let want = r["ppl"].as_f64().unwrap();
    assert!(
        (got / want - 1.0).abs() < 0.02,
        "perplexity {got} vs llama.cpp {want}"
    );
}

/// `hangar generate` with its defaults (ggml numerics) prints llama.cpp's greedy text
/// for every shared reference prompt.
#[test]
fn generate_defaults_reproduce_llama_cpp_greedy_text() {
    let Some(m) = model() else { return };
    let r = reference("tests/data/reference/reference.json");
    for case in r["greedy"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let want = case["text"].as_str().unwrap();
        let out = hangar(&[
            "generate",
            "--model",
            &m,
            "-p",
            prompt,
            "--temperature",
            "0",
            "-n",
            "16",
            "--ignore-eos",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            want.trim_end(),
            "prompt {prompt:?}"
        );
    }
}

#[test]
fn generate_streams_greedy_text_and_reports_json() {
    let Some(m) = model() else { return };
    let out = hangar(&[
        "generate",
        "--model",
        &m,
        "-p",
        "The capital of France is",
        "--temperature",
        "0",
        "-n",
        "16",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // llama.cpp's greedy continuation (tests/data/reference).
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        " the capital of the country of France. It is the largest city in France."
    );

    let out = hangar(&[
        "generate",
        "--model",
        &m,
        "-p",
        "Water boils at",
        "--temperature",
        "0.7",
        "--seed",
        "7",
        "-n",
        "12",
        "--json",
        "--logprobs",
        "3",
    ]);
    assert!(out.status.success());
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        a["completion_tokens"].as_u64().unwrap() as usize,
        a["tokens"].as_array().unwrap().len()
    );
    assert_eq!(
        a["logprobs"][0]["top_logprobs"].as_array().unwrap().len(),
        3
    );
    // Same seed, same tokens.
    let out2 = hangar(&[
        "generate",
        "--model",
        &m,
        "-p",
        "Water boils at",
        "--temperature",
        "0.7",
        "--seed",
        "7",
        "-n",
        "12",
        "--json",
    ]);
    let b: serde_json::Value = serde_json::from_slice(&out2.stdout).unwrap();
    assert_eq!(a["tokens"], b["tokens"]);
}

#[test]
fn stop_strings_end_generation_before_the_stop() {
    let Some(m) = model() else { return };
    let out = hangar(&[
        "generate",
        "--model",
        &m,
        "-p",
        "The capital of France is",
        "--temperature",
        "0",
        "-n",
        "32",
        "--stop",
        "France.",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["text"].as_str().unwrap(),
        " the capital of the country of "
    );
    assert_eq!(v["finish_reason"], "stop");
}

#[test]
fn bench_reports_prefill_and_decode_as_json() {
    let Some(m) = model() else { return };
    let out = hangar(&[
        "bench", "--model", &m, "--pp", "64", "--tg", "8", "--runs", "1", "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tests: Vec<&str> = v["figures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["test"].as_str().unwrap())
        .collect();
    assert_eq!(tests, ["pp64", "tg8"]);
    assert!(v["figures"][1]["median_tok_s"].as_f64().unwrap() > 1.0);
}

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let Some(m) = model() else { return };
    for (args, needle) in [
        (
            vec!["generate", "--model", "/nonexistent.gguf", "-p", "x"],
            "not found",
        ),
        (
            vec!["generate", "--model", &m, "-p", "x", "--top-p", "7"],
            "top_p",
        ),
        (
            vec!["generate", "--model", &m, "-p", "x", "--logit-bias", "abc"],
            "ID=BIAS",
        ),
        (
            vec![
                "generate",
                "--model",
                &m,
                "-p",
                "x",
                "--logit-bias",
                "999999999=1",
            ],
            "outside the vocabulary",
        ),
        (
            vec!["perplexity", "--model", &m, "--file", "/nonexistent.txt"],
            "reading",
        ),
        // The compression report runs on the CPU only: said, not ignored.
        (
            vec!["eval", "--model", &m, "--device", "cuda"],
            "--device applies to task evaluation",
        ),
        (vec!["eval", "--model", &m, "--device", "gpu7"], "device"),
        // Partial offload is a GPU option.
        (
            vec!["generate", "--model", &m, "-p", "x", "--gpu-layers", "3"],
            "--gpu-layers needs a GPU",
        ),
    ] {
        let out = hangar(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
        assert!(
            err.to_lowercase().contains(&needle.to_lowercase()),
            "{args:?}: {err}"
        );
    }
    // A file that is not GGUF.
    let bogus = std::env::temp_dir().join("hangar-not-a-model.gguf");
    std::fs::write(&bogus, b"definitely not a model file").unwrap();
    let out = hangar(&["generate", "--model", bogus.to_str().unwrap(), "-p", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !err.contains("panicked") && err.contains("GGUF"),
        "{err}"
    );
}

#[test]
fn eval_on_a_gpu_without_a_driver_names_the_missing_library() {
    let Some(m) = model() else { return };
    if hangar_cuda::driver_available().is_ok() {
        eprintln!("skipped: this machine has a CUDA driver");
        return;
    }
    let task = repo_file("crates/eval/data/basic_mc.jsonl");
    let out = hangar(&[
        "eval",
        "--model",
        &m,
        "--task",
        task.to_str().unwrap(),
        "--device",
        "cuda",
        "--no-track",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("libcuda"), "{err}");
}

#[test]
fn kv_types_on_generate_and_perplexity() {
    let Some(m) = model() else { return };
    // q8_0 keeps f16's greedy answer on this prompt.
    let text = |kv: &str| {
        let out = hangar(&[
            "generate",
            "--model",
            &m,
            "-p",
            "The capital of France is",
            "-n",
            "8",
            "--temperature",
            "0",
            "--numerics",
            "fast",
            "--kv-type",
            kv,
            "-t",
            "2",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(text("q8_0"), text("f16"));
    // The comparison report, as JSON.
    let file = repo_file("tests/data/reference/ppl_text.txt");
    let out = hangar(&[
        "perplexity",
        "--model",
        &m,
        "-f",
        file.to_str().unwrap(),
        "--ctx",
        "128",
        "--kv-type",
        "q8_0",
        "--kl-base",
        "f16",
        "--json",
        "-t",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["base"].as_str(), r["test"].as_str()),
        (Some("f16"), Some("q8_0"))
    );
    let (a, b) = (
        r["ppl_base"].as_f64().unwrap(),
        r["ppl_test"].as_f64().unwrap(),
    );
    assert!((b / a - 1.0).abs() < 0.02, "{r}");
    assert!(r["kl_mean"].as_f64().unwrap() > 0.0);
    // Under llama.cpp's arithmetic a quantized cache is refused, saying why.
    let out = hangar(&[
        "generate",
        "--model",
        &m,
        "-p",
        "x",
        "-n",
        "2",
        "--numerics",
        "ggml",
        "--kv-type",
        "q4_0",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("fast numerics"));
    let out = hangar(&["generate", "--model", &m, "-p", "x", "--kv-type", "q5"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("f16, q8_0 or q4_0"));
}

#[test]
fn bench_with_tensor_parallel_reports_the_all_reduce_share() {
    let Some(m) = model() else { return };
    let out = hangar(&[
        "bench", "--model", &m, "--tp", "2", "-t", "2", "--pp", "32", "--tg", "4", "-r", "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["device"], "cpu (tensor-parallel 2)");
    let share = v["all_reduce_share"].as_f64().expect("a share");
    assert!(share > 0.0 && share < 1.0, "{share}");
    let out = hangar(&[
        "bench", "--model", &m, "--tp", "3", "--pp", "8", "--tg", "2", "-r", "1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("attention heads (4)"));
}

#[test]
fn bench_with_pipeline_stages_reports_the_idle_share_beside_the_schedule() {
    let Some(m) = model() else { return };
    let out = hangar(&[
        "bench",
        "--model",
        &m,
        "--pipeline-parallel",
        "2",
        "--micro-batches",
        "2",
        "-b",
        "4",
        "-t",
        "2",
        "--pp",
        "0",
        "--tg",
        "4",
        "-r",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["device"]
        .as_str()
        .unwrap()
        .contains("pipeline-parallel 2"));
    let idle = &v["pipeline_idle_share"];
    let (measured, schedule) = (
        idle["measured"].as_f64().unwrap(),
        idle["schedule"].as_f64().unwrap(),
    );
    assert!((0.0..1.0).contains(&measured), "{idle}");
    // Steps of 1 sequence (m = 1) and of 4 (m = 2) with n = 2: between 1/3 and 1/2.
    assert!(
        (1.0 / 3.0 - 1e-9..=0.5 + 1e-9).contains(&schedule),
        "{idle}"
    );
}

#[test]
fn plan_says_how_many_layers_fit_on_each_gpu() {
    let Some(m) = model() else { return };
    let out = hangar(&["plan", "--model", &m, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let fits = v["fits"].as_array().expect("fits");
    // 270M parameters fit whole on every listed GPU: all 18 layers.
    for f in fits
        .iter()
        .filter(|f| f["device"] != "this host (RAM available)")
    {
        assert_eq!(f["gpu_layers"], 18, "{f}");
    }
    // The host row is not a GPU: no layer count.
    if let Some(h) = fits
        .iter()
        .find(|f| f["device"] == "this host (RAM available)")
    {
        assert!(h["gpu_layers"].is_null(), "{h}");
    }
    // A 70B model in BF16 fits only in part on one H100.
    let out = hangar(&["plan", "--model", "llama-70b", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let h100 = v["fits"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["device"] == "H100 80GB"))
        .cloned()
        .expect("an H100 row");
    let g = h100["gpu_layers"].as_u64().expect("a layer count");
    assert!(g > 0 && g < 80, "{h100}");
}

/// `device-check --device cpu` is the baseline a GPU's agreement is read against: the
/// CPU's fast numerics against llama.cpp's exact ones, on a short prompt file.
#[test]
fn device_check_layers_shows_where_two_numerics_drift_apart() {
    let Some(m) = model() else { return };
    let out = hangar(&[
        "device-check",
        "--model",
        &m,
        "--device",
        "cpu",
        "--text",
        "The capital of France is Paris. It is known for the Eiffel Tower and",
        "--layers",
    ]);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{se}");
    assert!(so.contains("layer drift after a"), "{so}");
    // One row per layer of the model (Gemma 3 270M: 18), four percentages each.
    let rows: Vec<Vec<f64>> = so
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map(|v| v.trim_end_matches('%').parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 18, "{so}");
    assert!(
        rows.iter()
            .all(|r| r.len() == 4 && r.iter().all(|v| v.is_finite())),
        "{so}"
    );
    // The same embedding and norm feed layer 0; the int8 roundings part the two
    // numerics afterwards, by a few percent but not more.
    assert!(rows[0][0] < 0.01, "{so}");
    assert!(
        rows[17][0] > 0.01 && rows.iter().flatten().all(|&v| v < 50.0),
        "{so}"
    );
}

#[test]
fn device_check_one_ulp_compares_the_fast_numerics_with_a_nudged_copy() {
    let Some(m) = model() else { return };
    let out = hangar(&[
        "device-check",
        "--model",
        &m,
        "--device",
        "cpu",
        "--one-ulp",
        "--text",
        "The capital of France is Paris. It is known for the Eiffel Tower and",
        "--layers",
    ]);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{se}");
    assert!(se.contains("one float step larger"), "{se}");
    // The nudge is real: the last layer's inputs differ (a bit-for-bit copy would
    // print 0.0000% everywhere).
    let last = so
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with("17"))
        .unwrap_or("");
    let first: f64 = last
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("{so}"));
    assert!(first > 0.0, "{so}");
    // And refused where it means nothing.
    let out = hangar(&[
        "device-check",
        "--model",
        &m,
        "--device",
        "cuda",
        "--one-ulp",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--device cpu"));
}

#[test]
fn device_check_on_the_cpu_compares_fast_and_ggml_numerics() {
    let Some(m) = model() else { return };
    let prompts = std::env::temp_dir().join(format!("hangar-dc-{}.txt", std::process::id()));
    std::fs::write(&prompts, "The capital of France is\nOnce upon a time\n").unwrap();
    let out = hangar(&[
        "device-check",
        "--model",
        &m,
        "--device",
        "cpu",
        "--prompts",
        prompts.to_str().unwrap(),
        "--greedy",
        "6",
    ]);
    let _ = std::fs::remove_file(&prompts);
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{se}");
    assert!(se.contains("comparing fast numerics"), "{se}");
    // "2 prompts, N positions: ... prefill A/N (..%), decode B/N (..%)": the two
    // numerics differ only in rounding, so most positions agree but the counts are real.
    let line = so
        .lines()
        .find(|l| l.starts_with("2 prompts,"))
        .unwrap_or_else(|| panic!("no summary in {so}"));
    let n: usize = line
        .split_whitespace()
        .nth(2)
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!((12..=40).contains(&n), "{line}");
    let decode = line.split("decode ").nth(1).unwrap();
    let agree: usize = decode.split('/').next().unwrap().parse().unwrap();
    assert!(agree * 10 >= n * 8 && agree <= n, "{line}");
}
