#!/usr/bin/env python3
"""Items per second of `hangar eval` against a llama-cpp-python loop computing the same
multiple-choice log-likelihoods (each choice evaluated as context + continuation, as a
straightforward harness over llama.cpp does), side by side in one run, same threads.

  HANGAR_LLAMA_PYTHON=$(bash scripts/install-llamacpp.sh)
  $HANGAR_LLAMA_PYTHON scripts/bench-eval.py [--task FILE|NAME] [--limit N] [--threads T] [--numerics fast|ggml]

Prints both rates, the ratio, and the largest per-choice log-likelihood difference
(both sides score the token ids Hangar's tokenizer produced, taken from its item file).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default=str(ROOT / "crates/eval/data/basic_mc.jsonl"))
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--numerics", choices=["fast", "ggml"], default="fast")
    ap.add_argument("--bin", default=os.environ.get("HANGAR_BIN", str(ROOT / "target/release/hangar")))
    ap.add_argument("--model", default=os.environ.get("HANGAR_MODEL") or subprocess.run(
        ["bash", str(ROOT / "scripts/fetch-default-model.sh")], capture_output=True, text=True).stdout.strip())
    a = ap.parse_args()

    out = Path(tempfile.mkdtemp()) / "items.jsonl"
    cmd = [a.bin, "eval", "--task", a.task, "--model", a.model, "--limit", str(a.limit),
           "--threads", str(a.threads), "--numerics", a.numerics, "--json", "--out", str(out), "--with-tokens"]
    env = dict(os.environ, HANGAR_NO_PROGRESS="1")
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    hangar_rate = r["metrics"]["items_per_s"]
    items = [json.loads(l) for l in out.read_text().splitlines()]

    llm = Llama(model_path=a.model, n_ctx=2048, n_batch=512, n_threads=a.threads, logits_all=True, verbose=False)
    t0 = time.perf_counter()
    worst = 0.0
    correct = 0
    for it in items:
        lls = []
        for ctx, cont in it["tokens"]:
            llm.reset()
            llm.eval(ctx + cont)
            scores = np.asarray(llm.scores[: len(ctx) + len(cont)], dtype=np.float64)
            rows = scores[len(ctx) - 1: len(ctx) + len(cont) - 1]
            m = rows.max(axis=1, keepdims=True)
            lse = (m[:, 0] + np.log(np.exp(rows - m).sum(axis=1)))
            lls.append(float(sum(rows[k, t] - lse[k] for k, t in enumerate(cont))))
        correct += int(int(np.argmax(lls)) == it["label"])
        worst = max(worst, max(abs(x - y) for x, y in zip(lls, it["logliks"])))
    llama_rate = len(items) / (time.perf_counter() - t0)
    print(json.dumps({
        "task": Path(a.task).stem, "items": len(items), "threads": a.threads, "numerics": a.numerics,
        "hangar_items_per_s": round(hangar_rate, 3), "llama_cpp_items_per_s": round(llama_rate, 3),
        "speedup": round(hangar_rate / llama_rate, 2),
        "hangar_acc": r["metrics"]["acc"], "llama_cpp_acc": correct / len(items),
        "max_abs_loglik_diff": round(worst, 4),
    }))


if __name__ == "__main__":
    sys.exit(main())
