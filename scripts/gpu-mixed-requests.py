#!/usr/bin/env python3
"""A server under a mix the GPU runs check (scripts/gpu-run52.sh, gpu-run56.sh): 16
completions at once, request i with a prompt of i x WORDS words, 16 + 3i tokens, odd
ones greedy and even ones sampled (temperature 0.8, seed i), in two rounds. Waits for
the server first; prints how many completions came back each round.

    python3 scripts/gpu-mixed-requests.py PORT [WORDS]
"""
import concurrent.futures as cf
import json
import sys
import time
import urllib.request

base = "http://127.0.0.1:%d" % int(sys.argv[1])
words = int(sys.argv[2]) if len(sys.argv) > 2 else 5
for _ in range(300):
    try:
        urllib.request.urlopen(base + "/v1/models", timeout=1)
        break
    except Exception:
        time.sleep(0.2)


def ask(i):
    body = {"prompt": "Question %d: " % i + "word " * (i * words), "max_tokens": 16 + 3 * i,
            "temperature": 0 if i % 2 else 0.8, "seed": i}
    req = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(),
                                 {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=120))["choices"][0]["text"]


for rnd in range(2):
    with cf.ThreadPoolExecutor(16) as ex:
        out = list(ex.map(ask, range(16)))
    print("serve round %d: %d completions" % (rnd, sum(1 for o in out if o)))
