#!/usr/bin/env python3
"""Serving benchmark: aggregate generated tokens/s and time to first token at several
numbers of concurrent streams, against any OpenAI-compatible /v1/completions server
(hangar serve, llama.cpp's llama-server, llama_cpp.server).

Standard library only. Each stream sends streaming completions back to back with a
distinct prompt (so no server can answer from a prompt cache shared across streams)
and end-of-generation tokens banned by logit_bias (so every request generates exactly
--max-tokens tokens on every server).

    python3 scripts/bench_serve.py --url http://127.0.0.1:8080 --streams 1,4,8,16 \
        --max-tokens 64 --requests-per-stream 2 --json out.json
"""

import argparse
import http.client
import json
import statistics
import threading
import time
import urllib.parse

# Merged into every request body (--extra-body), e.g. a response_format.
EXTRA = {}

WORDS = ("river mountain lantern copper orchard violet harbor meadow signal pepper "
         "glacier thunder velvet compass marble falcon").split()


def prompt_for(i: int, words: int, salt: int = 0) -> str:
    # Distinct from the first tokens on (salt, then i): no shared prefix blocks, within
    # a run or across runs with different salts.
    seq = [WORDS[(i * 7 + k * 3 + (i // len(WORDS))) % len(WORDS)] for k in range(words)]
    return f"[{salt}] Story {i}: " + " ".join(seq) + ". Once upon a time"


def one_request(url, model, prompt, max_tokens, ban):
    """Streams one completion; returns (ttft_s, tokens, total_s)."""
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "stream": True, "stream_options": {"include_usage": True}, "logit_bias": {str(t): -100 for t in ban},
        **EXTRA,
    }
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:300]!r}")
    ttft, tokens, usage = None, 0, None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if chunk.get("usage"):
            usage = chunk["usage"]
        for c in chunk.get("choices") or []:
            if c.get("text"):
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    conn.close()
    if usage and usage.get("completion_tokens"):
        tokens = usage["completion_tokens"]
    return (ttft if ttft is not None else total), tokens, total


def run_level(url, model, streams, per_stream, max_tokens, words, ban, offset, salt):
    results, errors = [], []
    lock = threading.Lock()

    def worker(s):
        for r in range(per_stream):
            i = offset + s * per_stream + r
            try:
                out = one_request(url, model, prompt_for(i, words, salt), max_tokens, ban)
                with lock:
                    results.append(out)
            except Exception as e:  # noqa: BLE001 - reported, not hidden
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(s,)) for s in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttfts = sorted(r[0] for r in results)
    tokens = sum(r[1] for r in results)

    def pct(p):
        if not ttfts:
            return float("nan")
        return ttfts[min(len(ttfts) - 1, int(round(p / 100 * (len(ttfts) - 1))))]

    return {
        "streams": streams, "requests": len(results), "errors": len(errors),
        "generated_tokens": tokens, "wall_s": round(wall, 3),
        "aggregate_tok_s": round(tokens / wall, 2) if wall > 0 else 0.0,
        "per_stream_tok_s": round(statistics.mean(r[1] / max(r[2] - r[0], 1e-9) for r in results), 2) if results else 0.0,
        "ttft_p50_s": round(pct(50), 4), "ttft_p99_s": round(pct(99), 4),
        "first_error": errors[0] if errors else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="", help="model name to send (default: the first of /v1/models)")
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--requests-per-stream", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=24)
    ap.add_argument("--ban", default="1,106", help="token ids banned via logit_bias (Gemma: <eos>=1, <end_of_turn>=106)")
    ap.add_argument("--label", default="")
    ap.add_argument("--salt", type=int, default=None, help="prompt salt (default: from the clock, so runs never share prompts)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--extra-body", default="", help="JSON merged into every request (e.g. a response_format)")
    a = ap.parse_args()
    EXTRA.update(json.loads(a.extra_body) if a.extra_body else {})
    model = a.model
    if not model:
        u = urllib.parse.urlparse(a.url)
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)
        c.request("GET", "/v1/models")
        model = json.loads(c.getresponse().read())["data"][0]["id"]
    ban = [int(x) for x in a.ban.split(",") if x.strip()]
    salt = a.salt if a.salt is not None else int(time.time() * 1000) % 1_000_000
    # Warm-up (page in weights, JIT nothing, fill caches).
    one_request(a.url, model, "Warm up", 4, ban)
    levels = []
    offset = 0
    for s in [int(x) for x in a.streams.split(",")]:
        r = run_level(a.url, model, s, a.requests_per_stream, a.max_tokens, a.prompt_words, ban, offset, salt)
        offset += 1000
        levels.append(r)
        print(f"{a.label or a.url} streams={s:3d} requests={r['requests']:3d} aggregate={r['aggregate_tok_s']:8.1f} tok/s "
              f"per-stream={r['per_stream_tok_s']:7.1f} tok/s ttft p50={r['ttft_p50_s']*1000:7.0f} ms "
              f"p99={r['ttft_p99_s']*1000:7.0f} ms errors={r['errors']}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"label": a.label, "url": a.url, "model": model, "max_tokens": a.max_tokens,
                       "requests_per_stream": a.requests_per_stream, "levels": levels}, f, indent=1)


if __name__ == "__main__":
    main()
