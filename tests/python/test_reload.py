"""Zero-downtime model rollouts with the official `openai` client: a registry model
reloaded in place under streaming and non-streaming load, a rolling update of three
replicas behind `hangar route`, the stage watcher following a promotion, and SIGTERM
failing readiness before the listener closes.

The two registry versions hold the same weights; version 2 is a copy whose
`general.name` differs by one byte, so its file (and sha256) is its own and every
response says which version answered (`x-hangar-model-version`)."""

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import openai
import pytest

from conftest import Server, hangar_bin, http, model_path
from routerkit import get, replica, router, samples

NAME = "gem"


def run(*args):
    out = subprocess.run([hangar_bin(), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def patched_copy(src: str, dst: Path):
    """The model with one byte of its `general.name` changed: same weights, new hash."""
    data = bytearray(Path(src).read_bytes())
    key = data.find(b"general.name")
    assert key > 0, "no general.name in the model"
    # key, u32 type, u64 length, then the value's first byte.
    value = key + len(b"general.name") + 4 + 8
    data[value] = ord("X") if data[value] != ord("X") else ord("Y")
    dst.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    d = tmp_path_factory.mktemp("reload")
    h = str(d / "home")
    second = d / "gem-v2.gguf"
    patched_copy(model_path(), second)
    run("--home", h, "registry", "import", model_path(), "--name", NAME)
    run("--home", h, "registry", "import", str(second), "--name", NAME)
    second.unlink()
    # The servers (and replicas, whose environment routerkit copies) read this home.
    old = os.environ.get("HANGAR_HOME")
    os.environ["HANGAR_HOME"] = h
    yield h
    if old is None:
        del os.environ["HANGAR_HOME"]
    else:
        os.environ["HANGAR_HOME"] = old
    shutil.rmtree(d, ignore_errors=True)


def promote(home, version):
    run("--home", home, "registry", "promote", f"{NAME}@{version}", "--stage", "production")


SERVE_FLAGS = ["--no-registry-api", "--no-tracking-api", "--no-vector-api", "--kv-memory", "64MiB"]


def registry_server(*extra):
    return Server("--model", f"{NAME}@production", "--model-name", NAME, *SERVE_FLAGS, *extra,
                  with_model=False)


class Load:
    """Clients sending chat requests (every other one streamed) until stopped; each
    result is (started, kind, version header, error or None)."""

    def __init__(self, base, workers=4):
        self.client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
        self.stop_flag = threading.Event()
        self.results = []
        self.lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.futures = [self.pool.submit(self.worker, w) for w in range(workers)]

    def one(self, i):
        msgs = [{"role": "user", "content": f"Name a colour, please ({i})."}]
        if i % 2:
            raw = self.client.chat.completions.with_raw_response.create(
                model=NAME, messages=msgs, max_tokens=10, temperature=0)
            out = raw.parse()
            assert out.choices[0].finish_reason in ("stop", "length"), out
            return "plain", raw.headers.get("x-hangar-model-version")
        raw = self.client.chat.completions.with_raw_response.create(
            model=NAME, messages=msgs, max_tokens=16, temperature=0, stream=True)
        finish = None
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        assert finish in ("stop", "length"), "the stream ended without a finish reason"
        return "stream", raw.headers.get("x-hangar-model-version")

    def worker(self, w):
        i = w
        while not self.stop_flag.is_set():
            started = time.time()
            try:
                kind, version = self.one(i)
                rec = (started, kind, version, None)
            except Exception as e:  # every failure counts; none is expected
                rec = (started, "error", None, repr(e))
            with self.lock:
                self.results.append(rec)
            i += 4

    def wait_started_after(self, t, n=4, timeout=120):
        """Waits until `n` requests that began after `t` have finished."""
        deadline = time.time() + timeout
        while sum(r[0] > t for r in list(self.results)) < n:
            assert time.time() < deadline, "the load made no progress"
            time.sleep(0.2)

    def finish(self):
        self.stop_flag.set()
        for f in self.futures:
            f.result(timeout=300)
        self.pool.shutdown()
        return self.results


def reload(base, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    status, _, text = http("POST", f"{base}/admin/models/{NAME}/reload", data,
                           {"content-type": "application/json"}, timeout=300)
    return status, json.loads(text)


def served(base):
    _, _, body = http("GET", base + "/v1/models")
    return json.loads(body)["data"][0]


def test_reload_under_load_switches_versions_without_a_failed_request(home):
    promote(home, 1)
    srv = registry_server("--threads", "2")
    try:
        before = served(srv.base)
        assert before["reference"] == f"{NAME}@1" and before["sha256"], before
        load = Load(srv.base)
        time.sleep(2)
        # Two reloads at once: one runs, the other is refused.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: reload(srv.base, {"version": 2}), range(2)))
        switched = time.time() + 0.05
        statuses = sorted(s for s, _ in answers)
        assert statuses == [200, 409], answers
        report = next(body for s, body in answers if s == 200)
        assert report["previous"] == f"{NAME}@1" and report["current"] == f"{NAME}@2", report
        load.wait_started_after(switched)
        results = load.finish()

        errors = [r for r in results if r[1] == "error"]
        assert not errors, errors[:3]
        kinds = {r[1] for r in results}
        assert kinds == {"plain", "stream"}, kinds
        versions = [r[2] for r in results]
        assert f"{NAME}@1" in versions and f"{NAME}@2" in versions, versions
        # Every request that began after the switch ran on the new version.
        late = [r for r in results if r[0] > switched]
        assert late and all(r[2] == f"{NAME}@2" for r in late), late

        after = served(srv.base)
        assert after["reference"] == f"{NAME}@2" and after["sha256"] != before["sha256"], after
        _, _, meta = http("GET", f"{srv.base}/v2/models/{NAME}")
        meta = json.loads(meta)
        assert meta["versions"] == ["2"] and meta["registry_reference"] == f"{NAME}@2", meta
        m = samples(get(srv.base + "/metrics")[1])
        assert m[f'hangar_model_version{{model="{NAME}",reference="{NAME}@2",sha256="{after["sha256"]}"}}'] == 2
        assert m['hangar_model_reloads_total{outcome="success"}'] == 1
        assert m['hangar_model_reloads_total{outcome="busy"}'] == 1
        print(f"{len(results)} requests during the reload, "
              f"{sum(v == NAME + '@1' for v in versions)} on v1, {sum(v == NAME + '@2' for v in versions)} on v2")
        # The old engine is freed once drained: the reload lock is free again.
        deadline = time.time() + 30
        while True:
            status, body = reload(srv.base, {"version": 2})
            if status == 200:
                break
            assert status == 409 and time.time() < deadline, body
            time.sleep(0.2)
    finally:
        srv.stop()


def test_rolling_update_behind_the_router(home):
    promote(home, 1)
    binary = hangar_bin()
    replicas = []
    try:
        for _ in range(3):
            replicas.append(replica(binary, f"{NAME}@production", NAME, "--kv-memory", "64MiB"))
        r = router(binary, replicas, "round-robin")
        try:
            assert all(served(x.base)["reference"] == f"{NAME}@1" for x in replicas)
            load = Load(r.base)
            time.sleep(2)
            promote(home, 2)
            for x in replicas:
                status, body = reload(x.base)  # re-resolves gem@production
                assert status == 200 and body["current"] == f"{NAME}@2", body
                time.sleep(1.5)
            done = time.time() + 0.05
            load.wait_started_after(done)
            results = load.finish()
        finally:
            r.stop()
        errors = [x for x in results if x[1] == "error"]
        assert not errors, errors[:3]
        assert all(served(x.base)["reference"] == f"{NAME}@2" for x in replicas)
        late = [x for x in results if x[0] > done]
        assert late and all(x[2] == f"{NAME}@2" for x in late), late
        print(f"rolling update: {len(results)} requests, none failed")
    finally:
        for x in replicas:
            x.stop()


def test_stage_watch_follows_a_promotion(home):
    promote(home, 1)
    srv = registry_server("--threads", "1", "--reload-on-stage-change", "--reload-poll", "0.5")
    try:
        assert served(srv.base)["reference"] == f"{NAME}@1"
        promote(home, 2)
        deadline = time.time() + 60
        while served(srv.base)["reference"] != f"{NAME}@2":
            assert time.time() < deadline, srv.read_log()
            time.sleep(0.2)
        c = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0)
        raw = c.completions.with_raw_response.create(model=NAME, prompt="Hi", max_tokens=2)
        assert raw.headers["x-hangar-model-version"] == f"{NAME}@2"
    finally:
        srv.stop()


def test_sigterm_fails_readiness_before_closing_the_listener():
    srv = Server("--drain-delay", "3", "--no-registry-api", "--no-tracking-api", "--no-vector-api",
                 "--kv-memory", "64MiB")
    c = openai.OpenAI(base_url=srv.base + "/v1", api_key="unused", max_retries=0, timeout=120)
    try:
        stream = c.completions.create(model="gemma-3-270m", prompt="Once upon a time", max_tokens=40,
                                      temperature=0, stream=True)
        it = iter(stream)
        first = next(it)
        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        while get(srv.base + "/readyz")[0] != 503:
            assert time.time() - t0 < 1.5, "readiness did not fail after SIGTERM"
            time.sleep(0.05)
        # Not ready, yet still serving new requests until the drain delay ends.
        assert c.completions.create(model="gemma-3-270m", prompt="Hi", max_tokens=2).choices
        finish = [ch.choices[0].finish_reason for ch in it if ch.choices]
        assert first.choices and finish[-1] == "length", finish
        assert srv.proc.wait(timeout=60) == 0
        assert time.time() - t0 >= 3
    finally:
        srv.stop()
