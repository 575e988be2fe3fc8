//! `hangar prompts` end to end: create, list, show, alias and render through the
//! binary against a temporary home (no model needed).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh home for one test.
fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hangar-prompts-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn hangar(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("HANGAR_TOKEN")
        .output()
        .expect("running hangar")
}

fn ok_json(home: &Path, args: &[&str]) -> serde_json::Value {
    let out = hangar(home, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn fails_with(home: &Path, args: &[&str], needle: &str) {
    let out = hangar(home, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

#[test]
fn create_list_show_alias_and_render_prompts() {
    let d = scratch("create");
    let home = d.as_path();
    let v = ok_json(
        home,
        &[
            "prompts",
            "create",
            "qa",
            "--system",
            "Answer in {{ language }}.",
            "--text",
            "Q: {{ question }}",
            "--alias",
            "production",
            "--json",
        ],
    );
    assert_eq!(v["reference"], "qa@1");
    assert_eq!(v["variables"], serde_json::json!(["language", "question"]));
    assert_eq!(v["stage"], "production");

    let file = d.join("qa.json");
    std::fs::write(
        &file,
        r#"{"system": "Be brief.", "user": "{{ question }}?"}"#,
    )
    .unwrap();
    let v = ok_json(
        home,
        &[
            "prompts",
            "create",
            "qa",
            "--file",
            file.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(v["version"], 2);
    assert_eq!(v["template"]["system"], "Be brief.");

    let v = ok_json(home, &["prompts", "alias", "qa@2", "beta", "--json"]);
    assert_eq!(v["aliases"], serde_json::json!(["beta"]));
    let list = ok_json(home, &["prompts", "list", "--json"]);
    assert_eq!(list["prompts"][0]["name"], "qa");
    assert_eq!(list["prompts"][0]["production"], 1);
    assert_eq!(list["prompts"][0]["aliases"]["beta"], 2);
    let versions = ok_json(home, &["prompts", "list", "qa", "--json"]);
    assert_eq!(versions["versions"].as_array().unwrap().len(), 2);

    // `qa` alone is the production version.
    let r = ok_json(
        home,
        &[
            "prompts",
            "render",
            "qa",
            "--var",
            "question=Why",
            "--var",
            "language=French",
            "--json",
        ],
    );
    assert_eq!(r["prompt"], "qa@1");
    assert_eq!(r["system"], "Answer in French.");
    assert_eq!(r["user"], "Q: Why");
    let r = ok_json(
        home,
        &[
            "prompts",
            "render",
            "qa@beta",
            "--vars-json",
            r#"{"question": "How"}"#,
            "--json",
        ],
    );
    assert_eq!(
        (r["prompt"].as_str(), r["user"].as_str()),
        (Some("qa@2"), Some("How?"))
    );

    // Prompts are not models.
    let models = ok_json(home, &["registry", "list", "--json"]);
    assert!(!models.to_string().contains("\"qa\""), "{models}");
}

#[test]
fn bad_prompts_are_clear_errors() {
    let d = scratch("bad");
    let home = d.as_path();
    fails_with(
        home,
        &["prompts", "create", "../x", "--text", "hi"],
        "invalid name",
    );
    fails_with(
        home,
        &["prompts", "create", "p", "--text", "{{ x"],
        "does not parse",
    );
    fails_with(
        home,
        &["prompts", "create", "p"],
        "--text TEXT or --file FILE",
    );
    fails_with(home, &["prompts", "show", "nope"], "not found");
    ok_json(
        home,
        &[
            "prompts",
            "create",
            "p",
            "--text",
            "{{ a }} {{ b }}",
            "--json",
        ],
    );
    fails_with(
        home,
        &["prompts", "render", "p", "--var", "a=1"],
        "needs the variable(s) b",
    );
    fails_with(
        home,
        &[
            "prompts", "render", "p", "--var", "a=1", "--var", "b=2", "--var", "c=3",
        ],
        "does not use the variable(s) c",
    );
    fails_with(home, &["prompts", "alias", "p@1", "latest"], "reserved");
    fails_with(home, &["prompts", "show", "p@9"], "not found");
}
