#!/usr/bin/env python3
"""Embedding throughput (texts/s) at batch 1 and batch 32: `hangar serve
--embedding-model` (TEI's /embed over HTTP, loopback) against sentence-transformers
(torch, CPU) on the same machine, same texts, same thread count, in one run.

  target/pyenv/bin/pip install torch sentence-transformers
  target/pyenv/bin/python scripts/bench-embed.py [--model-dir DIR] [--hangar target/release/hangar] [--threads 2]

DIR defaults to the folder `hangar pull embedder` fills. The texts are the 213 of
crates/engine/tests/data/minilm_reference.json (short sentences to 256-token
paragraphs), all truncated at the model's 256 tokens by both sides.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url, obj):
    req = urllib.request.Request(url, json.dumps(obj).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def rate(fn, texts, batch, min_seconds):
    """texts/s of fn over `texts` in chunks of `batch`, repeated for at least min_seconds."""
    fn(texts[:batch])  # warm-up
    done, t0 = 0, time.perf_counter()
    while True:
        for i in range(0, len(texts), batch):
            fn(texts[i:i + batch])
            done += len(texts[i:i + batch])
        el = time.perf_counter() - t0
        if el >= min_seconds:
            return done / el


def main():
    ap = argparse.ArgumentParser()
    cache = Path(os.environ.get("HANGAR_MODEL_DIR", Path.home() / ".cache/hangar/models"))
    ap.add_argument("--model-dir", default=str(cache / "all-minilm-l6-v2"))
    ap.add_argument("--hangar", default=str(ROOT / "target/release/hangar"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=8.0)
    a = ap.parse_args()
    texts = json.loads((ROOT / "crates/engine/tests/data/minilm_reference.json").read_text())["texts"]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([a.hangar, "serve", "--no-model", "--no-registry-api", "--embedding-model",
                             a.model_dir, "--threads", str(a.threads), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        hangar = lambda b: post(base + "/embed", {"inputs": b, "truncate": True})
        results = {}
        for bs in (1, 32):
            results[("hangar", bs)] = rate(hangar, texts, bs, a.seconds)
            print(f"hangar serve /embed   batch {bs:>2}: {results[('hangar', bs)]:8.1f} texts/s", flush=True)
    finally:
        proc.terminate()
        proc.wait()

    import torch
    from sentence_transformers import SentenceTransformer
    torch.set_num_threads(a.threads)
    model = SentenceTransformer(a.model_dir, device="cpu")
    st = lambda b: model.encode(b, batch_size=len(b), convert_to_numpy=True)
    for bs in (1, 32):
        results[("st", bs)] = rate(st, texts, bs, a.seconds)
        print(f"sentence-transformers batch {bs:>2}: {results[('st', bs)]:8.1f} texts/s "
              f"(torch {torch.__version__}, {a.threads} threads)", flush=True)
    print()
    print("| batch | hangar texts/s | sentence-transformers texts/s | ratio |")
    print("| --- | --- | --- | --- |")
    for bs in (1, 32):
        h, s = results[("hangar", bs)], results[("st", bs)]
        print(f"| {bs} | {h:.1f} | {s:.1f} | {h / s:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
