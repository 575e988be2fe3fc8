//! Helpers shared by the `hangar` binary's integration tests.

use std::process::Command;

/// The default model's path, or `None` (after a note, or a panic when CI requires
/// it: see hangar-testkit).
pub fn model() -> Option<String> {
    hangar_testkit::model_path().map(|p| p.display().to_string())
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
