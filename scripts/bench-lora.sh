#!/usr/bin/env bash
# The cost of LoRA adapters at decode: `hangar bench` on the base model against the same
# model under rank-R adapters on all seven projections, alternated over several rounds so
# every configuration sees the same machine conditions. Prints a Markdown table of
# medians (and every round's figure).
#   base     : batch 1 (tg) and BATCH streams (tgNxB), no adapter
#   one      : batch 1 and BATCH streams, every sequence under adapter A
#   mixed    : BATCH streams cycling base / A / B (--lora base --lora A --lora B)
# usage: scripts/bench-lora.sh [MODEL.gguf] [ROUNDS] [THREADS] [RANK] [BATCH] [TG]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-$(bash scripts/fetch-default-model.sh)}
ROUNDS=${2:-3}
THREADS=${3:-2}
RANK=${4:-16}
BATCH=${5:-8}
TG=${6:-64}
cargo build --release -q --bin hangar
H=./target/release/hangar
out=$(mktemp -d)
$H lora init --model "$MODEL" --rank "$RANK" --seed 1 --out "$out/a.gguf" 2>/dev/null
$H lora init --model "$MODEL" --rank "$RANK" --seed 2 --out "$out/b.gguf" 2>/dev/null
common=(--model "$MODEL" --threads "$THREADS" --pp 0 --tg "$TG" --batch "$BATCH" --runs 3 --json)
for r in $(seq 1 "$ROUNDS"); do
  $H bench "${common[@]}" > "$out/base.$r.json"
  $H bench "${common[@]}" --lora "$out/a.gguf" > "$out/one.$r.json"
  $H bench "${common[@]}" --lora base --lora "$out/a.gguf" --lora "$out/b.gguf" > "$out/mixed.$r.json"
done
python3 - "$out" "$ROUNDS" "$RANK" "$BATCH" "$TG" <<'PY'
import json, statistics, sys
d, rounds, rank, batch, tg = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def load(name):
    per = {}
    for r in range(1, rounds + 1):
        for f in json.load(open(f"{d}/{name}.{r}.json"))["figures"]:
            per.setdefault(f["test"], []).append(f["median_tok_s"])
    return per
base, one, mixed = load("base"), load("one"), load("mixed")
single, batched = f"tg{tg}", f"tg{tg}x{batch}"
med = lambda xs: statistics.median(xs)
fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
rows = [
    (f"decode, batch 1", "base", base[single]),
    (f"decode, batch 1", f"one rank-{rank} adapter", one[single]),
    (f"decode, {batch} streams", "base only", base[batched]),
    (f"decode, {batch} streams", f"all under one rank-{rank} adapter", one[batched]),
    (f"decode, {batch} streams", f"mixed: base / A / B per sequence", mixed[batched]),
]
print(f"| test | adapters | tok/s (median of {rounds} rounds) | vs base | rounds |")
print("|---|---|---|---|---|")
for test, what, xs in rows:
    ref = base[single] if "batch 1" in test else base[batched]
    print(f"| {test} | {what} | {med(xs):.1f} | {med(xs) / med(ref):.2f}x | {fmt(xs)} |")
PY
rm -rf "$out"
