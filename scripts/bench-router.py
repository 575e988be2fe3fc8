#!/usr/bin/env python3
"""Router benchmark (issue #15): three `hangar serve` replicas behind `hangar route`,
prefix-cache-aware routing against round-robin in one run, on two workloads:

- shared: groups of requests that share a long system prompt (each group its own),
  interleaved at random, as a multi-tenant chat service sees them;
- unique: the same number and lengths of requests, no two sharing a prefix.

For each (workload, policy) it reports the replicas' prefix-cache hit share (prompt
tokens served from cache / looked up, summed over replicas), the router's affinity
share, time to first token p50/p99 and aggregate generated tokens/s. Every phase uses
prompts of its own (salted), so no phase finds another's prompts in a cache.

    target/pyenv/bin/python scripts/bench-router.py --groups 4 --per-group 6 \
        --system-words 250 --max-tokens 16 --concurrency 6

Needs target/release/hangar and the default model (scripts/fetch-default-model.sh).
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))
from routerkit import first_sample, replica, router  # noqa: E402

WORDS = ("river mountain lantern copper orchard violet harbor meadow signal pepper glacier "
         "thunder velvet compass marble falcon bicycle window garden silver autumn bridge "
         "candle forest island winter shadow engine letter market").split()
MODEL = "gemma-3-270m"


def text(rng, words):
    return " ".join(rng.choice(WORDS) for _ in range(words))


def workload(kind, salt, groups, per_group, system_words):
    """(system, user) pairs in random order."""
    rng = random.Random(f"{kind}-{salt}")
    reqs = []
    for g in range(groups):
        shared = f"[{salt}] Tenant {g} policy: " + text(rng, system_words)
        for q in range(per_group):
            system = shared if kind == "shared" else f"[{salt}] Tenant {g}.{q} policy: " + text(rng, system_words)
            reqs.append((system, f"Question {q}: " + text(rng, 8)))
    rng.shuffle(reqs)
    return reqs


def one(base, system, user, max_tokens):
    """Streams one chat completion; returns (ttft_s, completion_tokens, total_s)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:300]}")
    ttft, tokens = None, 0
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if "error" in ev:
            raise RuntimeError(ev["error"])
        for c in ev.get("choices") or []:
            if ttft is None and (c.get("delta") or {}).get("content"):
                ttft = time.perf_counter() - t0
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
    total = time.perf_counter() - t0
    conn.close()
    return ttft if ttft is not None else total, tokens, total


def cache_counters(replicas):
    hits = queries = 0.0
    for r in replicas:
        m = r.metrics()
        hits += first_sample(m, "hangar_prefix_cache_hits_total")
        queries += first_sample(m, "hangar_prefix_cache_queries_total")
    return hits, queries


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def phase(route, replicas, reqs, args):
    h0, q0 = cache_counters(replicas)
    share0 = first_sample(route.metrics(), "hangar_route_prefix_affinity_hit_share")
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        results = list(pool.map(lambda r: one(route.base, r[0], r[1], args.max_tokens), reqs))
    wall = time.perf_counter() - t0
    h1, q1 = cache_counters(replicas)
    ttfts = [r[0] for r in results]
    tokens = sum(r[1] for r in results)
    return {
        "requests": len(results),
        "cache_hit_share": (h1 - h0) / (q1 - q0) if q1 > q0 else 0.0,
        "affinity_share_cumulative": first_sample(route.metrics(), "hangar_route_prefix_affinity_hit_share") if share0 is not None else None,
        "ttft_p50_s": statistics.median(ttfts),
        "ttft_p99_s": pct(ttfts, 0.99),
        "tokens_per_s": tokens / wall,
        "wall_s": wall,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--per-group", type=int, default=6)
    ap.add_argument("--system-words", type=int, default=250)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=6)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--kv-memory", default="256MiB")
    ap.add_argument("--threads", type=int, default=1, help="kernel threads per replica")
    ap.add_argument("--device", default="cpu", help="each replica's --device (cpu, cuda)")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    binary = os.environ.get("HANGAR_BIN", str(ROOT / "target" / "release" / "hangar"))
    model = os.environ.get("HANGAR_MODEL") or str(Path.home() / ".cache/hangar/models/gemma-3-270m-q4_k_m.gguf")
    replicas, routers = [], {}
    try:
        for _ in range(args.replicas):
            replicas.append(replica(binary, model, MODEL, "--kv-memory", args.kv_memory,
                                    "--device", args.device, threads=args.threads))
        for policy in ("round-robin", "prefix"):
            routers[policy] = router(binary, replicas, policy)
        # Warm every replica once (page faults of the weights, thread start-up).
        for r in replicas:
            one(r.base, "warm up", "hello", 2)
        results = {}
        salt = 0
        for kind in ("shared", "unique"):
            for policy in ("round-robin", "prefix"):
                salt += 1
                reqs = workload(kind, salt, args.groups, args.per_group, args.system_words)
                res = phase(routers[policy], replicas, reqs, args)
                results[f"{kind}/{policy}"] = res
                print(f"{kind:6} {policy:11}  cache hit share {res['cache_hit_share']:.2f}  "
                      f"TTFT p50 {res['ttft_p50_s']:.2f} s  p99 {res['ttft_p99_s']:.2f} s  "
                      f"{res['tokens_per_s']:.1f} tok/s  ({res['requests']} requests, {res['wall_s']:.1f} s)",
                      flush=True)
        for kind in ("shared", "unique"):
            rr, px = results[f"{kind}/round-robin"], results[f"{kind}/prefix"]
            print(f"{kind}: prefix/round-robin TTFT p50 x{px['ttft_p50_s'] / rr['ttft_p50_s']:.2f}, "
                  f"throughput x{px['tokens_per_s'] / rr['tokens_per_s']:.2f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    finally:
        for r in routers.values():
            r.stop()
        for r in replicas:
            r.stop()


if __name__ == "__main__":
    main()
