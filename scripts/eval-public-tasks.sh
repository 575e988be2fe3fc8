#!/usr/bin/env bash
# Runs `hangar eval` on every fetched public task (first N items) with the default
# model and prints one JSON result per task; docs/EVALUATION.md records its output.
#   bash scripts/eval-public-tasks.sh [LIMIT] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${1:-100}
OUT=${2:-target/evalres}
BIN=${HANGAR_BIN:-target/release/hangar}
MODEL=${HANGAR_MODEL:-$(bash scripts/fetch-default-model.sh)}
mkdir -p "$OUT"
for t in arc_easy arc_challenge hellaswag piqa winogrande boolq sciq lambada; do
  "$BIN" eval --task "$t" --model "$MODEL" --limit "$LIMIT" --json --out "$OUT/$t.items.jsonl" > "$OUT/$t.json"
  echo "$t $(tr -d '\n ' < "$OUT/$t.json")"
done
