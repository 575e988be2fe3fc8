#!/usr/bin/env python3
"""Speculative decoding at batch 1 through the server: `hangar serve --speculative
ngram` against plain `hangar serve`, with llama.cpp's own prompt-lookup decoding
(llama-cpp-python's LlamaPromptLookupDecoding) and plain llama.cpp as the anchor, in
one run on the same GGUF, same threads, greedy, one request at a time.

For each task in tests/data/spec (input-grounded summarise / extract / edit / code
edit, and an open-ended poem where lookup has little to copy) every engine answers
the same chat turn; rounds alternate the engines' order, the first round is a
warm-up, and the median decode rate (tokens after the first / time after the first)
of the timed rounds is reported, with hangar's acceptance rate from /metrics and
whether speculative output equals plain output token for token.

Usage (the llama-cpp-python venv; see docs/BENCHMARKS.md):
  target/llama-venv/bin/python scripts/bench-serve-spec.py [--rounds 4] [--tokens 64]
Env: HANGAR (binary, default target/release/hangar), HANGAR_MODEL, THREADS (2).
"""
import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hangar:
    def __init__(self, binary, model, threads, spec):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        args = [binary, "serve", "--model", model, "--port", str(self.port), "-t", str(threads),
                "--no-registry-api", "--no-tracking-api", "--no-vector-api"]
        if spec:
            args += ["--speculative", "ngram", "--draft-tokens", "8"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                models = json.load(urllib.request.urlopen(self.base + "/v1/models", timeout=1))
                self.model = models["data"][0]["id"]
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError("hangar serve did not start")

    def chat(self, text, n):
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": text}],
                           "max_tokens": n, "temperature": 0, "stream": True,
                           "logprobs": True}).encode()
        req = urllib.request.Request(self.base + "/v1/chat/completions", data=body,
                                     headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        first, ids = None, []
        with urllib.request.urlopen(req, timeout=600) as r:
            for line in r:
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                ev = json.loads(line[6:])
                for ch in ev.get("choices", []):
                    lp = (ch.get("logprobs") or {}).get("content") or []
                    for t in lp:
                        if first is None:
                            first = time.perf_counter()
                        ids.append(t["token"])
        end = time.perf_counter()
        return ids, (first or end) - t0, end - (first or end)

    def metric(self, name):
        text = urllib.request.urlopen(self.base + "/metrics", timeout=10).read().decode()
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)


class LlamaCpp:
    def __init__(self, model, threads, lookup):
        from llama_cpp import Llama
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding
        draft = LlamaPromptLookupDecoding(num_pred_tokens=8) if lookup else None
        self.llm = Llama(model_path=model, n_ctx=4096, n_threads=threads, n_batch=512,
                         draft_model=draft, verbose=False, seed=0)

    def chat(self, text, n):
        t0 = time.perf_counter()
        first, pieces = None, []
        for ev in self.llm.create_chat_completion(
                messages=[{"role": "user", "content": text}], max_tokens=n, temperature=0.0,
                top_k=1, stream=True):
            piece = ev["choices"][0]["delta"].get("content")
            if piece:
                if first is None:
                    first = time.perf_counter()
                pieces.append(piece)
        end = time.perf_counter()
        return pieces, (first or end) - t0, end - (first or end)

    def stop(self):
        self.llm.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds, the first a warm-up")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--no-llama", action="store_true", help="skip the llama.cpp anchor")
    a = ap.parse_args()
    binary = os.environ.get("HANGAR", str(ROOT / "target/release/hangar"))
    model = os.environ.get("HANGAR_MODEL", os.path.expanduser(
        "~/.cache/hangar/models/gemma-3-270m-q4_k_m.gguf"))
    threads = int(os.environ.get("THREADS", "2"))
    tasks = sorted((ROOT / "tests/data/spec").glob("*.txt"))
    load = lambda: open("/proc/loadavg").read().split()[:3]
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} load {load()} "
          f"cores {os.cpu_count()} threads {threads} tokens {a.tokens} rounds {a.rounds}")
    engines = {"hangar": Hangar(binary, model, threads, False),
               "hangar+ngram": Hangar(binary, model, threads, True)}
    if not a.no_llama:
        engines["llama.cpp"] = LlamaCpp(model, threads, False)
        engines["llama.cpp+lookup"] = LlamaCpp(model, threads, True)
    rows = []
    try:
        for task in tasks:
            text = task.read_text()
            rates = {k: [] for k in engines}
            outs = {}
            acc0 = [engines["hangar+ngram"].metric(m) for m in
                    ("hangar_spec_decode_draft_tokens_total",
                     "hangar_spec_decode_accepted_tokens_total")]
            names = list(engines)
            for r in range(a.rounds):
                order = names if r % 2 == 0 else names[::-1]
                for k in order:
                    toks, _ttft, dt = engines[k].chat(text, a.tokens)
                    outs[k] = toks
                    if r > 0 and len(toks) > 1 and dt > 0:
                        rates[k].append((len(toks) - 1) / dt)
            acc1 = [engines["hangar+ngram"].metric(m) for m in
                    ("hangar_spec_decode_draft_tokens_total",
                     "hangar_spec_decode_accepted_tokens_total")]
            drafted, accepted = acc1[0] - acc0[0], acc1[1] - acc0[1]
            med = {k: statistics.median(v) if v else 0.0 for k, v in rates.items()}
            row = {"task": task.stem, "tok_s": med,
                   "hangar_acceptance": accepted / drafted if drafted else 0.0,
                   "hangar_same_tokens": outs["hangar"] == outs["hangar+ngram"],
                   "tokens": {k: len(v) for k, v in outs.items()}}
            if "llama.cpp" in outs:
                row["llama_same_text"] = outs["llama.cpp"] == outs["llama.cpp+lookup"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        for e in engines.values():
            e.stop()
    print(f"# end load {load()}")
    print()
    cols = list(engines)
    print("| task | " + " | ".join(f"{c} tok/s" for c in cols) +
          " | hangar speed-up | llama.cpp speed-up | hangar acceptance | same tokens |")
    print("|---" * (len(cols) + 5) + "|")
    for r in rows:
        t = r["tok_s"]
        hs = t["hangar+ngram"] / t["hangar"] if t["hangar"] else 0
        ls = (t["llama.cpp+lookup"] / t["llama.cpp"]) if t.get("llama.cpp") else 0
        print(f"| {r['task']} | " + " | ".join(f"{t[c]:.1f}" if t[c] else "-" for c in cols) +
              f" | {hs:.2f}x | {ls:.2f}x | {100 * r['hangar_acceptance']:.1f}% | "
              f"{'yes' if r['hangar_same_tokens'] else 'NO'} |")


if __name__ == "__main__":
    sys.exit(main())
