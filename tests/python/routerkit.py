"""Processes for the router tests and benchmark: `hangar serve` replicas (one kernel
thread each) and `hangar route` in front of them, on loopback ports, plus readers of
their Prometheus metrics. Used by tests/python/test_router.py and
scripts/bench-router.py."""

import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=5):
    """(status, body text) without raising on 4xx/5xx; (0, error) when unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def samples(text: str) -> dict:
    """Prometheus samples keyed by 'name{labels}' (as printed) -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def first_sample(text: str, name: str) -> float:
    for key, v in samples(text).items():
        if key.split("{", 1)[0] == name:
            return v
    return 0.0


class Process:
    """A hangar subprocess with its log in a temporary file."""

    def __init__(self, cmd, ready_path, port, what):
        self.cmd, self.ready_path, self.port, self.what = cmd, ready_path, port, what
        self.base = f"http://127.0.0.1:{port}"
        self.proc = None
        self.start()

    def start(self):
        self.log = tempfile.NamedTemporaryFile(prefix=f"hangar-{self.what}-", suffix=".log", delete=False)
        env = dict(os.environ)
        env.pop("HANGAR_API_KEYS", None)
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{self.read_log()}")
            if get(self.base + self.ready_path, timeout=2)[0] == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.what} did not become ready:\n{self.read_log()}")

    def read_log(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def metrics(self) -> str:
        return get(self.base + "/metrics")[1]

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout=30):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def replica(hangar_bin, model, name, *extra, port=None, threads=1):
    port = port or free_port()
    cmd = [hangar_bin, "serve", "--model", model, "--model-name", name, "--threads", str(threads),
           "--host", "127.0.0.1", "--port", str(port), "--no-registry-api", "--no-tracking-api",
           "--no-vector-api", "--shutdown-timeout", "5", *extra]
    return Process(cmd, "/v2/health/ready", port, f"serve-{port}")


def router(hangar_bin, backends, policy, *extra):
    port = free_port()
    cmd = [hangar_bin, "route", "--host", "127.0.0.1", "--port", str(port), "--policy", policy,
           "--probe-interval-ms", "200", *extra]
    for b in backends:
        cmd += ["--backend", b.base]
    return Process(cmd, "/health", port, f"route-{policy}")


def backend_counts(router_metrics: str, outcome="ok") -> dict:
    """Attempts per replica URL with the given outcome, from the router's /metrics."""
    out = {}
    pat = re.compile(r'hangar_route_backend_requests_total\{backend="([^"]+)",outcome="([^"]+)"\}')
    for key, v in samples(router_metrics).items():
        m = pat.fullmatch(key)
        if m and m.group(2) == outcome:
            out[m.group(1)] = v
    return out


def healthy(router_metrics: str, url: str) -> bool:
    return samples(router_metrics).get(f'hangar_route_backend_healthy{{backend="{url}"}}') == 1.0
