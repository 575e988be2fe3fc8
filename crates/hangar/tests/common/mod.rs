//! Helpers shared by the `hangar` binary's integration tests.

use std::path::PathBuf;
use std::process::Command;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The default model's path (fetched and cached by the project script).
pub fn model() -> String {
    let out = Command::new("bash")
        .arg(repo().join("scripts/fetch-default-model.sh"))
        .output()
        .expect("fetch script");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs the binary with a test home.
pub fn hangar(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_hangar"))
        .args(args)
        .env(
            "HANGAR_HOME",
            std::env::temp_dir().join("hangar-cli-test-home"),
        )
        .output()
        .expect("running hangar")
}
