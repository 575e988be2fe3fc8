//! hangar-testkit: finds what end-to-end tests need from outside the repository — the
//! default model, a python with llama-cpp-python, a moto S3 server — in one place.
//!
//! Test code only: other crates take it as a `[dev-dependencies]` entry; nothing in a
//! library or the binary may depend on it.
//!
//! Each locator returns `None` when its resource is missing, after printing a
//! `SKIPPED:` note, so `cargo test` on a bare checkout still passes. When the
//! resource is required — `HANGAR_REQUIRE_MODEL`, `HANGAR_REQUIRE_LLAMA_PYTHON`,
//! `HANGAR_REQUIRE_MOTO` or `HANGAR_REQUIRE_ALL` set to `1` (as `scripts/test.sh`
//! does) — it panics instead with what was missing and how to get it: a skipped test
//! in CI proves nothing.
//!
//! ```no_run
//! let Some(model) = hangar_testkit::model_path() else { return };
//! # let _ = model;
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// File name of the default model (Gemma 3 270M, Q4_K_M), as the fetch script caches it.
pub const MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";

/// Something a test needs from outside the repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// The default model file.
    Model,
    /// A python that imports `llama_cpp` (`HANGAR_LLAMA_PYTHON`).
    LlamaPython,
    /// A moto S3 server (`moto[server]`).
    Moto,
}

impl Need {
    /// The variable that turns a missing resource into a failure.
    pub fn require_var(self) -> &'static str {
        match self {
            Need::Model => "HANGAR_REQUIRE_MODEL",
            Need::LlamaPython => "HANGAR_REQUIRE_LLAMA_PYTHON",
            Need::Moto => "HANGAR_REQUIRE_MOTO",
        }
    }
}

/// Reads the process environment; tests of this crate pass a map instead.
type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

fn process_env(key: &str) -> Option<OsString> {
    std::env::var_os(key)
}

fn flag_set(env: Env, key: &str) -> bool {
    env(key).is_some_and(|v| matches!(v.to_str(), Some("1" | "true" | "yes")))
}

fn required_in(env: Env, need: Need) -> bool {
    flag_set(env, need.require_var()) || flag_set(env, "HANGAR_REQUIRE_ALL")
}

/// Whether a missing `need` must fail the test (see the crate docs).
pub fn required(need: Need) -> bool {
    required_in(&process_env, need)
}

/// Reports a missing resource and gives `None`: panics when it is required, else
/// prints a `SKIPPED:` note on stderr (the test then returns early).
pub fn unavailable<T>(need: Need, what: &str) -> Option<T> {
    if required(need) {
        panic!(
            "{what}\n({} or HANGAR_REQUIRE_ALL is set, so this test fails instead of skipping)",
            need.require_var()
        );
    }
    eprintln!("SKIPPED: {what}");
    None
}

/// The repository root (this crate lives in `crates/testkit`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A file or folder of the repository, by its path from the root.
pub fn repo_file(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// Where the default model is looked for, in order, and whether `HANGAR_MODEL` named
/// it (then it is the only candidate: a wrong path must not fall back to the cache).
fn model_candidates(env: Env) -> (Vec<PathBuf>, bool) {
    if let Some(p) = env("HANGAR_MODEL").filter(|p| !p.is_empty()) {
        return (vec![PathBuf::from(p)], true);
    }
    let c = [
        env("HANGAR_MODEL_DIR").map(|d| PathBuf::from(d).join(MODEL_FILE)),
        env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("hangar/models").join(MODEL_FILE)),
        env("HOME").map(|d| {
            PathBuf::from(d)
                .join(".cache/hangar/models")
                .join(MODEL_FILE)
        }),
    ];
    (c.into_iter().flatten().collect(), false)
}

fn locate_model(env: Env) -> Result<PathBuf, String> {
    let (candidates, explicit) = model_candidates(env);
    if let Some(p) = candidates.iter().find(|p| p.is_file()) {
        return Ok(p.clone());
    }
    Err(if explicit {
        format!(
            "HANGAR_MODEL points to {}, which is not a file; set it to the default model \
             (bash scripts/fetch-default-model.sh prints its path)",
            candidates[0].display()
        )
    } else {
        format!(
            "the default model {MODEL_FILE} is not cached (looked in {candidates:?}); run \
             scripts/fetch-default-model.sh or set HANGAR_MODEL"
        )
    })
}

/// The default model: `$HANGAR_MODEL`, else the cache that
/// `scripts/fetch-default-model.sh` fills (`$HANGAR_MODEL_DIR`, `$XDG_CACHE_HOME` or
/// `~/.cache`, then `hangar/models`). Never downloads.
pub fn model_path() -> Option<PathBuf> {
    match locate_model(&process_env) {
        Ok(p) => Some(p),
        Err(what) => unavailable(Need::Model, &what),
    }
}

/// Folder name of the default embedding model (all-MiniLM-L6-v2) in the model cache,
/// where `hangar pull embedder` unpacks it.
pub const EMBEDDER_DIR: &str = "all-minilm-l6-v2";

/// The default embedding model's Hugging Face folder: `$HANGAR_EMBEDDER`, else
/// `all-minilm-l6-v2/` in the model cache (`HANGAR_MODEL_DIR`, `$XDG_CACHE_HOME/hangar/models`,
/// `~/.cache/hangar/models`). Missing: skipped, or a failure under `HANGAR_REQUIRE_MODEL`.
pub fn embedder_dir() -> Option<PathBuf> {
    let env = process_env;
    let candidates: Vec<PathBuf> = match env("HANGAR_EMBEDDER").filter(|p| !p.is_empty()) {
        Some(p) => vec![PathBuf::from(p)],
        None => [
            env("HANGAR_MODEL_DIR").map(PathBuf::from),
            env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("hangar/models")),
            env("HOME").map(|d| PathBuf::from(d).join(".cache/hangar/models")),
        ]
        .into_iter()
        .flatten()
        .map(|d| d.join(EMBEDDER_DIR))
        .collect(),
    };
    match candidates.iter().find(|d| d.join("config.json").is_file()) {
        Some(d) => Some(d.clone()),
        None => unavailable(
            Need::Model,
            &format!(
                "the embedding model is not in {}: run `hangar pull embedder` (or set HANGAR_EMBEDDER)",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
    }
}

/// A python that imports `llama_cpp`, from `$HANGAR_LLAMA_PYTHON`
/// (`scripts/install-llamacpp.sh` builds one and prints its path).
pub fn llama_python() -> Option<PathBuf> {
    let Some(py) = std::env::var_os("HANGAR_LLAMA_PYTHON").filter(|p| !p.is_empty()) else {
        return unavailable(
            Need::LlamaPython,
            "HANGAR_LLAMA_PYTHON is not set; set it to a python with llama_cpp: \
             HANGAR_LLAMA_PYTHON=$(bash scripts/install-llamacpp.sh)",
        );
    };
    let py = PathBuf::from(py);
    let imports = Command::new(&py)
        .args(["-c", "import llama_cpp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !imports {
        return unavailable(
            Need::LlamaPython,
            &format!(
                "HANGAR_LLAMA_PYTHON={} cannot run `import llama_cpp`; rebuild it with \
                 scripts/install-llamacpp.sh",
                py.display()
            ),
        );
    }
    Some(py)
}

fn succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How to start moto: `python -m moto.server` with `$HANGAR_MOTO_PYTHON` when set
/// (`scripts/test.sh` sets it), else `moto_server` on the PATH, else `$PYTHON` or
/// `python3` (installing `moto[server]` with pip once if the module is missing).
fn moto_command() -> Option<Command> {
    let explicit = std::env::var("HANGAR_MOTO_PYTHON")
        .ok()
        .filter(|p| !p.is_empty());
    if explicit.is_none() && succeeds(Command::new("moto_server").arg("--help")) {
        return Some(Command::new("moto_server"));
    }
    let py = explicit
        .or_else(|| std::env::var("PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let has_module =
        |py: &str| succeeds(Command::new(py).args(["-c", "import moto.server, flask, werkzeug"]));
    if !has_module(&py) {
        eprintln!("installing moto[server] with pip into {py} ...");
        let installed =
            succeeds(Command::new(&py).args(["-m", "pip", "install", "--quiet", "moto[server]"]));
        if !installed || !has_module(&py) {
            return None;
        }
    }
    let mut c = Command::new(py);
    c.args(["-m", "moto.server"]);
    Some(c)
}

/// A moto S3 server on 127.0.0.1, stopped when dropped.
#[derive(Debug)]
pub struct MotoServer {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl MotoServer {
    /// Starts moto on a free port and waits (up to 30 s) until it accepts connections.
    pub fn start() -> Option<MotoServer> {
        let Some(mut cmd) = moto_command() else {
            return unavailable(
                Need::Moto,
                "moto[server] is not installed and pip could not install it; \
                 run `pip install \"moto[server]\"` (or set HANGAR_MOTO_PYTHON to a python that has it)",
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("binding an ephemeral port on 127.0.0.1")
            .port();
        let child = match cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => return unavailable(Need::Moto, &format!("moto did not start: {e}")),
        };
        let server = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(server);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto started but did not listen on port {port} within 30 s");
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let m: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn require_flags() {
        let e = env_of(&[("HANGAR_REQUIRE_MODEL", "1"), ("HANGAR_REQUIRE_MOTO", "0")]);
        assert!(required_in(&e, Need::Model));
        assert!(!required_in(&e, Need::Moto));
        assert!(!required_in(&e, Need::LlamaPython));
        let all = env_of(&[("HANGAR_REQUIRE_ALL", "1")]);
        for n in [Need::Model, Need::LlamaPython, Need::Moto] {
            assert!(required_in(&all, n));
        }
        assert!(!required_in(&env_of(&[]), Need::Model));
    }

    #[test]
    fn explicit_model_path_that_is_missing_is_reported_not_replaced_by_the_cache() {
        let dir = std::env::temp_dir().join(format!("hangar-testkit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("hangar/models")).unwrap();
        std::fs::write(dir.join("hangar/models").join(MODEL_FILE), b"x").unwrap();
        let cache = dir.to_str().unwrap();
        // Without HANGAR_MODEL the cache is used.
        let e = env_of(&[("XDG_CACHE_HOME", cache)]);
        assert_eq!(
            locate_model(&e).unwrap(),
            dir.join("hangar/models").join(MODEL_FILE)
        );
        // A wrong HANGAR_MODEL is an error naming the path, even with a cached copy.
        let e = env_of(&[
            ("HANGAR_MODEL", "/nonexistent/m.gguf"),
            ("XDG_CACHE_HOME", cache),
        ]);
        let err = locate_model(&e).unwrap_err();
        assert!(
            err.contains("HANGAR_MODEL points to /nonexistent/m.gguf"),
            "{err}"
        );
        let err = locate_model(&env_of(&[("HOME", "/nonexistent")])).unwrap_err();
        assert!(err.contains("fetch-default-model.sh"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Run by `required_model_fails_the_test_with_a_clear_message` in a child process
    /// with a prepared environment; alone it only checks that the locator returns.
    #[test]
    #[ignore = "a probe run in a child process by another test"]
    fn probe_model_path() {
        let _ = model_path();
    }

    #[test]
    fn required_model_fails_the_test_with_a_clear_message() {
        let run = |require: bool| {
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.args([
                "--ignored",
                "--exact",
                "tests::probe_model_path",
                "--nocapture",
            ])
            .env("HANGAR_MODEL", "/nonexistent/model.gguf")
            .env_remove("HANGAR_REQUIRE_ALL")
            .env_remove("HANGAR_REQUIRE_MODEL");
            if require {
                c.env("HANGAR_REQUIRE_MODEL", "1");
            }
            let out = c.output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        };
        let (ok, text) = run(true);
        assert!(
            !ok,
            "the probe passed although the model is required:\n{text}"
        );
        assert!(
            text.contains("HANGAR_MODEL points to /nonexistent/model.gguf")
                && text.contains("HANGAR_REQUIRE_MODEL"),
            "{text}"
        );
        let (ok, text) = run(false);
        assert!(ok, "{text}");
        assert!(text.contains("SKIPPED: HANGAR_MODEL points to"), "{text}");
    }
}
