"""Shared fixtures: start a real `hangar serve` on a free port and talk to it over
the socket. The binary comes from $HANGAR_BIN (default target/release/hangar), the
model from $HANGAR_MODEL (default: the cache scripts/fetch-default-model.sh fills).

A missing model skips the tests that need it, with a note; with HANGAR_REQUIRE_MODEL=1
(or HANGAR_REQUIRE_ALL=1), as scripts/test.sh sets, it fails them instead, like the
Rust tests do through hangar-testkit."""

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "gemma-3-270m"
START_TIMEOUT_S = 180
MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"

# Every temporary folder the tests make (homes with imported models, server logs) goes
# under one per-run folder that is removed at exit: a suite that leaked ~250 MB per
# registry test filled CI's disk once.
_RUN_TMP = tempfile.mkdtemp(prefix="hangar-pytest-")
tempfile.tempdir = _RUN_TMP
atexit.register(shutil.rmtree, _RUN_TMP, True)


def required(what: str) -> bool:
    """Whether a missing resource (`what`: "MODEL", "LLAMA_PYTHON", "MOTO") must fail the
    test instead of skipping it."""
    return any(os.environ.get(v, "") in ("1", "true", "yes")
               for v in (f"HANGAR_REQUIRE_{what}", "HANGAR_REQUIRE_ALL"))


def unavailable(what: str, message: str):
    """Fails (when required) or skips the current test, saying what is missing."""
    if required(what):
        pytest.fail(f"{message}\n(HANGAR_REQUIRE_{what} or HANGAR_REQUIRE_ALL is set, "
                    "so this test fails instead of skipping)", pytrace=False)
    pytest.skip(message)


def hangar_bin() -> str:
    explicit = os.environ.get("HANGAR_BIN")
    p = explicit or str(ROOT / "target" / "release" / "hangar")
    if not Path(p).is_file():
        message = f"no hangar binary at {p}; run cargo build --release --bins (or set HANGAR_BIN)"
        if explicit:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return p


def model_path() -> str:
    """$HANGAR_MODEL, else the cache scripts/fetch-default-model.sh fills. Never downloads."""
    p = os.environ.get("HANGAR_MODEL")
    if p:
        if not Path(p).is_file():
            unavailable("MODEL", f"HANGAR_MODEL points to {p}, which is not a file; set it to "
                                 "the default model (bash scripts/fetch-default-model.sh prints its path)")
        return p
    dirs = [os.environ.get("HANGAR_MODEL_DIR"),
            os.environ.get("XDG_CACHE_HOME") and os.path.join(os.environ["XDG_CACHE_HOME"], "hangar", "models"),
            os.environ.get("HOME") and os.path.join(os.environ["HOME"], ".cache", "hangar", "models")]
    candidates = [Path(d) / MODEL_FILE for d in dirs if d]
    for c in candidates:
        if c.is_file():
            return str(c)
    unavailable("MODEL", f"the default model {MODEL_FILE} is not cached (looked in "
                         f"{[str(c) for c in candidates]}); run scripts/fetch-default-model.sh "
                         "or set HANGAR_MODEL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, headers=None, timeout=120):
    """(status, headers, body bytes) without raising on 4xx/5xx."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


class Server:
    def __init__(self, *extra_args, env=None, with_model=True):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="hangar-serve-", suffix=".log", delete=False)
        model_args = ["--model", model_path(), "--threads", "2", "--model-name", MODEL_NAME] if with_model else []
        cmd = [
            hangar_bin(), "serve", *model_args,
            "--host", "127.0.0.1", "--port", str(self.port), *extra_args,
        ]
        full_env = dict(os.environ)
        full_env.pop("HANGAR_API_KEYS", None)
        full_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hangar serve exited with {self.proc.returncode}:\n{self.read_log()}")
            try:
                status, _, _ = http("GET", self.base + "/v2/health/ready", timeout=2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"hangar serve did not become ready:\n{self.read_log()}")

    def read_log(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def grpc_port(self) -> int:
        """The port `--grpc-port 0` picked, from the server's log line."""
        deadline = time.time() + 10
        while time.time() < deadline:
            m = re.search(r"KServe V2 gRPC on 127\.0\.0\.1:(\d+)", self.read_log())
            if m:
                return int(m.group(1))
            time.sleep(0.1)
        raise AssertionError(f"no gRPC address in the log:\n{self.read_log()}")

    def metrics(self) -> dict:
        """Un-bucketed samples by metric name (labels dropped; first sample wins)."""
        _, _, body = http("GET", self.base + "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{", 1)[0]
            out.setdefault(name, float(value))
        return out

    def wait_metric(self, name, want, timeout=30.0):
        deadline = time.time() + timeout
        while True:
            v = self.metrics().get(name)
            if v == want:
                return
            if time.time() > deadline:
                raise AssertionError(f"{name} is {v}, expected {want}")
            time.sleep(0.05)

    def post_json(self, path, obj, headers=None):
        h = {"content-type": "application/json", **(headers or {})}
        status, hdrs, body = http("POST", self.base + path, json.dumps(obj).encode(), h)
        return status, json.loads(body) if body else None

    def stop(self, timeout=60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


def hangar_generate(prompt, max_tokens, chat=False):
    """Greedy text from `hangar generate` (the single-sequence CLI path), in the fast
    numerics that `hangar serve` runs by default: the servers' answers must equal it
    token for token. (`generate` defaults to llama.cpp's arithmetic, whose greedy tail
    on this base model can differ from the fast kernels' in a low-confidence token.)"""
    cmd = [hangar_bin(), "generate", "--model", model_path(), "--threads", "2",
           "--numerics", "fast",
           "-p", prompt, "-n", str(max_tokens), "--temperature", "0", "--json"]
    if chat:
        cmd.append("--chat")
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=300).stdout
    return json.loads(out)["text"]
