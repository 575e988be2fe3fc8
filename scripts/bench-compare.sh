#!/usr/bin/env bash
# Side-by-side CPU benchmark: `hangar bench` and llama.cpp (llama-cpp-python) on the same
# GGUF with the same thread count, alternated over several rounds so both see the same
# machine conditions. Prints a Markdown table of medians (and every round's figures).
#   LLAMA_BENCH    llama.cpp's own llama-bench binary: used when set (preferred; build it
#                  from the llama.cpp sources vendored in the llama-cpp-python sdist)
#   LLAMA_PYTHON   else, python with llama_cpp (default /work/llama-venv/bin/python; build
#                  one with the command in tests/data/reference/README.md)
# usage: scripts/bench-compare.sh [MODEL.gguf] [ROUNDS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-$(bash scripts/fetch-default-model.sh)}
ROUNDS=${2:-5}
THREADS=${3:-2}
PY=${LLAMA_PYTHON:-/work/llama-venv/bin/python}
cargo build --release -q --bin hangar
out=$(mktemp -d)
for r in $(seq 1 "$ROUNDS"); do
  ./target/release/hangar bench --model "$MODEL" --threads "$THREADS" --runs 3 --json > "$out/hangar.$r.json"
  if [ -n "${LLAMA_BENCH:-}" ]; then
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r 3 -o json 2>/dev/null \
      | python3 -c 'import json,sys; rows=json.load(sys.stdin); print(json.dumps({"figures":[{"test": (f"pp{r['"'"'n_prompt'"'"']}" if r["n_prompt"] else f"tg{r['"'"'n_gen'"'"']}"), "median_tok_s": r["avg_ts"]} for r in rows]}))' \
      > "$out/llama.$r.json"
  else
    "$PY" scripts/bench-llamacpp.py --model "$MODEL" --threads "$THREADS" --runs 3 > "$out/llama.$r.json" 2>/dev/null
  fi
done
python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    per = {}
    for r in range(1, rounds + 1):
        for f in json.load(open(f"{d}/{name}.{r}.json"))["figures"]:
            per.setdefault(f["test"], []).append(f["median_tok_s"])
    return per
h, l = load("hangar"), load("llama")
print("| test | hangar tok/s (median of rounds) | llama.cpp tok/s | ratio | hangar rounds | llama.cpp rounds |")
print("|---|---|---|---|---|---|")
for t in h:
    hm, lm = statistics.median(h[t]), statistics.median(l[t])
    print(f"| {t} | {hm:.1f} | {lm:.1f} | {hm/lm:.2f}x | {', '.join(f'{x:.0f}' for x in h[t])} | {', '.join(f'{x:.0f}' for x in l[t])} |")
PY
