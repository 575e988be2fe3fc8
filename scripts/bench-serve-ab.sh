#!/usr/bin/env bash
# Serving A/B between two hangar binaries (e.g. before and after a change): both
# servers up at once on the same model and thread count, levels interleaved (A, then
# B, per level and round) so both see the same machine state; same client as
# bench-serve-compare.sh (scripts/bench_serve.py).
#
#   scripts/bench-serve-ab.sh BIN_A BIN_B [streams] [rounds] [max_tokens]
#
# Results go to target/bench-serve-ab/ (one JSON per binary, level and round).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1
B=$2
STREAMS="${3:-1,8,16}"
ROUNDS="${4:-2}"
MAXTOK="${5:-64}"
THREADS="${THREADS:-2}"
MODEL="${HANGAR_MODEL:-$(bash scripts/fetch-default-model.sh)}"
OUT=target/bench-serve-ab
mkdir -p "$OUT"
APORT=18090
BPORT=18091
"$A" serve --model "$MODEL" --threads "$THREADS" --port $APORT >"$OUT/a.log" 2>&1 &
APID=$!
"$B" serve --model "$MODEL" --threads "$THREADS" --port $BPORT >"$OUT/b.log" 2>&1 &
BPID=$!
trap 'kill $APID $BPID 2>/dev/null || true' EXIT
wait_up() {
  for _ in $(seq 1 120); do
    curl -sf "http://127.0.0.1:$1/health" >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "server on port $1 did not come up" >&2
  return 1
}
wait_up $APORT
wait_up $BPORT
IFS=, read -ra LEVELS <<<"$STREAMS"
for r in $(seq 1 "$ROUNDS"); do
  for n in "${LEVELS[@]}"; do
    python3 scripts/bench_serve.py --url "http://127.0.0.1:$APORT" --streams "$n" \
      --max-tokens "$MAXTOK" --label A --json "$OUT/a-$n-$r.json"
    python3 scripts/bench_serve.py --url "http://127.0.0.1:$BPORT" --streams "$n" \
      --max-tokens "$MAXTOK" --label B --json "$OUT/b-$n-$r.json"
  done
done
