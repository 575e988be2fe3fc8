#!/usr/bin/env python3
"""Anchor benchmark: llama.cpp (through the llama-cpp-python package) on a GGUF model,
measured the way `hangar bench` measures: pp = one eval of N prompt tokens (logits of
the last only), tg = N single-token evals after a one-token prompt. Median of runs.
Prints JSON shaped like `hangar bench --json`.
"""
import argparse, json, random, statistics, time

from llama_cpp import Llama


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    t0 = time.perf_counter()
    llm = Llama(model_path=a.model, n_ctx=max(a.pp, a.tg) + 64, n_batch=max(a.pp, 32), n_ubatch=max(a.pp, 32),
                n_threads=a.threads, n_threads_batch=a.threads, logits_all=False, verbose=False)
    load_s = time.perf_counter() - t0
    rng = random.Random(1)
    toks = [rng.randrange(2, 32000) for _ in range(max(a.pp, a.tg) + 1)]
    figures = []

    def fig(test, n, secs):
        secs = sorted(secs)
        return {"test": test, "tokens": n, "median_tok_s": n / statistics.median(secs),
                "min_tok_s": n / secs[-1], "max_tok_s": n / secs[0], "runs": len(secs)}

    if a.pp:
        secs = []
        for r in range(a.runs + 1):
            llm.reset()
            t = time.perf_counter()
            llm.eval(toks[: a.pp])
            if r:
                secs.append(time.perf_counter() - t)
        figures.append(fig(f"pp{a.pp}", a.pp, secs))
    if a.tg:
        secs = []
        for r in range(a.runs + 1):
            llm.reset()
            llm.eval(toks[:1])
            t = time.perf_counter()
            for i in range(a.tg):
                llm.eval([toks[i + 1]])
            if r:
                secs.append(time.perf_counter() - t)
        figures.append(fig(f"tg{a.tg}", a.tg, secs))
    print(json.dumps({"engine": "llama.cpp (llama-cpp-python)", "model": a.model, "threads": a.threads,
                      "load_s": load_s, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
