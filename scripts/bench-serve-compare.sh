#!/usr/bin/env bash
# Serving benchmark, hangar serve vs llama.cpp's llama-server, same GGUF, same thread
# count, same client (scripts/bench_serve.py), levels interleaved (hangar, then
# llama-server, per level) so both see the same machine state.
#
#   LLAMA_SERVER=/path/to/llama-server scripts/bench-serve-compare.sh [streams] [max_tokens]
#
# llama-server is not part of Hangar: build it from the llama.cpp sources vendored in the
# llama-cpp-python sdist (see docs/BENCHMARKS.md). Results go to target/bench-serve/.
set -euo pipefail
cd "$(dirname "$0")/.."
STREAMS="${1:-1,4,8,16}"
MAXTOK="${2:-64}"
THREADS="${THREADS:-2}"
: "${LLAMA_SERVER:?set LLAMA_SERVER to a llama-server binary}"
MODEL="$(bash scripts/fetch-default-model.sh)"
OUT=target/bench-serve
mkdir -p "$OUT"
cargo build --release -q -p hangar
HPORT=18080
LPORT=18081
./target/release/hangar serve --model "$MODEL" --threads "$THREADS" --port $HPORT >"$OUT/hangar.log" 2>&1 &
HPID=$!
# 16 slots of 512 tokens each (prompts ~40 tokens + 64 generated fit easily).
"$LLAMA_SERVER" -m "$MODEL" -t "$THREADS" -tb "$THREADS" -np 16 -c 8192 --port $LPORT --no-webui >"$OUT/llama.log" 2>&1 &
LPID=$!
trap 'kill $HPID $LPID 2>/dev/null || true' EXIT
wait_up() {
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
    curl -sf "http://127.0.0.1:$1/v2/health/ready" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server on port $1 did not come up" >&2
  return 1
}
wait_up $HPORT
wait_up $LPORT
IFS=, read -ra LEVELS <<<"$STREAMS"
for n in "${LEVELS[@]}"; do
  python3 scripts/bench_serve.py --url "http://127.0.0.1:$HPORT" --streams "$n" --max-tokens "$MAXTOK" --json "$OUT/hangar-$n.json"
  python3 scripts/bench_serve.py --url "http://127.0.0.1:$LPORT" --streams "$n" --max-tokens "$MAXTOK" --json "$OUT/llama-$n.json"
done
