#!/usr/bin/env python3
"""n>1 choices sharing the prompt: four n=4 completions of a ~1 400-token prompt on one
server, wall time and prefix-cache hits. Usage: scripts/bench-n-sharing.py BINARY PORT
(HANGAR_MODEL defaults to the default model in the cache)."""
import json, sys, time, urllib.request, subprocess, os, re
binary, port = sys.argv[1], int(sys.argv[2])
M = os.environ.get("HANGAR_MODEL") or os.path.expanduser("~/.cache/hangar/models/gemma-3-270m-q4_k_m.gguf")
p = subprocess.Popen([binary, "serve", "-m", M, "--port", str(port), "--home", f"/tmp/nb{port}", "--no-registry-api", "--no-tracking-api", "--no-vector-api"], stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"
for _ in range(200):
    try: urllib.request.urlopen(base + "/v1/models", timeout=1); break
    except Exception: time.sleep(0.1)
def post(body):
    r = urllib.request.Request(base + "/v1/completions", json.dumps(body).encode(), {"content-type": "application/json"})
    return json.load(urllib.request.urlopen(r, timeout=300))
words = " ".join(f"word{i}" for i in range(700))
times = []
for k in range(4):
    t = time.time()
    post({"prompt": f"[{k}] " + words, "n": 4, "max_tokens": 8, "temperature": 0.8, "seed": k})
    times.append(time.time() - t)
m = urllib.request.urlopen(base + "/metrics").read().decode()
hits = re.search(r"hangar_prefix_cache_hits_total\{[^}]*\} (\S+)", m)
q = re.search(r"hangar_prefix_cache_queries_total\{[^}]*\} (\S+)", m)
print(binary, "n=4 x 4 requests, seconds:", [round(x, 2) for x in times], "median", sorted(times)[2], "prefix hits", hits and hits.group(1), "of", q and q.group(1))
p.terminate(); p.wait()
