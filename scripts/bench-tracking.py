#!/usr/bin/env python3
"""Tracking throughput: the same MLflow client calls against `hangar serve --no-model`
and against MLflow's own server (SQLite backend), in one run, side by side.

Workloads (same client library, same calls, fresh stores):
  1. log_batch: 100 000 metric points in batches of 1000 (MlflowClient.log_batch)
  2. per-call:  --per-call points with MlflowClient.log_metric, one request each
  3. search:    --runs runs (each with a metric and a param), then search_runs over
                all of them (filter + order-by, 100 results; and all runs, paged by 1000),
                median of --repeat timings

Usage (full mlflow lives in its own venv; CI needs only mlflow-skinny):
  python3 -m venv target/mlflow-venv && target/mlflow-venv/bin/pip install mlflow
  cargo build --release -p hangar
  target/mlflow-venv/bin/python scripts/bench-tracking.py [--points 100000] [--runs 10000]
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def start_hangar(tmp):
    port = free_port()
    binary = os.environ.get("HANGAR_BIN", os.path.join(ROOT, "target/release/hangar"))
    proc = subprocess.Popen([binary, "serve", "--no-model", "--home", os.path.join(tmp, "home"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    wait_up(base + "/health", proc)
    return base, proc


def start_mlflow(tmp):
    port = free_port()
    env = dict(os.environ)
    # Background job consumers (huey) have nothing to do with tracking; keep them off
    # so they do not take CPU from the server being measured.
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server",
                             "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                             "--artifacts-destination", f"{tmp}/mlartifacts",
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    wait_up(base + "/health", proc, timeout=300)
    return base, proc


def stop(proc):
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def bench(base, args):
    c = MlflowClient(tracking_uri=base)
    out = {}
    exp = c.create_experiment("bench-log")
    rid = c.create_run(exp).info.run_id
    t0 = time.perf_counter()
    ts = 1_700_000_000_000
    for start in range(0, args.points, 1000):
        c.log_batch(rid, metrics=[Metric("loss", 1.0 / (s + 1), ts + s, s)
                                  for s in range(start, min(start + 1000, args.points))])
    out["log_batch_s"] = time.perf_counter() - t0
    assert len(c.get_metric_history(rid, "loss")) == args.points

    rid2 = c.create_run(exp).info.run_id
    t0 = time.perf_counter()
    for s in range(args.per_call):
        c.log_metric(rid2, "loss", 1.0 / (s + 1), timestamp=ts + s, step=s)
    out["per_call_s"] = time.perf_counter() - t0

    sexp = c.create_experiment("bench-search")

    def make(i):
        r = c.create_run(sexp, run_name=f"r{i}").info.run_id
        c.log_batch(r, metrics=[Metric("acc", (i * 7919 % 10007) / 10007, ts, 0)],
                    params=[Param("group", str(i % 10))])

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(args.runs)))
    out["setup_runs_s"] = time.perf_counter() - t0

    def search_top():
        return c.search_runs([sexp], filter_string="metrics.acc > 0.5 and params.group = '3'",
                             order_by=["metrics.acc DESC"], max_results=100)

    def search_all():
        n, token = 0, None
        while True:
            page = c.search_runs([sexp], max_results=1000, page_token=token)
            n += len(page)
            token = page.token
            if not token:
                return n

    def search_raw():
        # The same search as one HTTP request, without the client's protobuf parsing:
        # closer to the server's own time.
        body = json.dumps({"experiment_ids": [sexp], "max_results": 100,
                           "filter": "metrics.acc > 0.5 and params.group = '3'",
                           "order_by": ["metrics.acc DESC"]}).encode()
        req = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", data=body,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return len(json.loads(r.read())["runs"])

    top = search_top()
    assert search_raw() == len(top)
    assert len(top) > 0 and all(r.data.metrics["acc"] > 0.5 for r in top)
    assert search_all() == args.runs
    for name, fn in [("search_filtered_s", search_top), ("search_raw_s", search_raw),
                     ("search_all_s", search_all)]:
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--per-call", type=int, default=5_000)
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--only", choices=["hangar", "mlflow"], help="measure one server only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    for name, start in [("hangar", start_hangar), ("mlflow", start_mlflow)]:
        if args.only and args.only != name:
            continue
        tmp = tempfile.mkdtemp(prefix=f"bench-tracking-{name}-")
        base, proc = start(tmp)
        try:
            results[name] = bench(base, args)
        finally:
            stop(proc)
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"{name}: {json.dumps({k: round(v, 4) for k, v in results[name].items()})}", file=sys.stderr)
    if args.json or args.only:
        print(json.dumps(results, indent=2))
        return
    h, m = results["hangar"], results["mlflow"]
    rows = [
        (f"log_batch, {args.points} points", "log_batch_s", args.points),
        (f"log_metric per call, {args.per_call} points", "per_call_s", args.per_call),
        (f"create {args.runs} runs (+1 log_batch each, 8 threads)", "setup_runs_s", args.runs),
        (f"search_runs over {args.runs} runs: filter+order, top 100", "search_filtered_s", None),
        ("same search, one raw HTTP request (no client parsing)", "search_raw_s", None),
        (f"search_runs over {args.runs} runs: all, pages of 1000", "search_all_s", None),
    ]
    print("| workload | hangar | mlflow server | speed-up |")
    print("| --- | --- | --- | --- |")
    for label, key, n in rows:
        def cell(v):
            return f"{v * 1000:.1f} ms" if n is None else f"{v:.2f} s ({n / v:,.0f}/s)"
        print(f"| {label} | {cell(h[key])} | {cell(m[key])} | {m[key] / h[key]:.1f}x |")


if __name__ == "__main__":
    main()
