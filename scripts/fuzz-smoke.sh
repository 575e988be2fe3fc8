#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ from its committed seed corpus for a short
# time (CI: about a minute in all) or a set number of executions (long runs), and
# fails on any crash, timeout, leak or out-of-memory.
#
#   scripts/fuzz-smoke.sh                       # 8 s per target, all targets
#   scripts/fuzz-smoke.sh --time 120 gguf       # one target, two minutes
#   scripts/fuzz-smoke.sh --runs 10000000 -j 8  # long run, 8 targets at once
#
# Prints one parseable line per target:
#   fuzz-result target=gguf status=ok execs=123456 seconds=8 crashes=0 artifacts=-
# Works on a stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags;
# no sanitizer is used (-s none), overflow checks and debug assertions are on.
set -euo pipefail
cd "$(dirname "$0")/.."

TIME=${FUZZ_TIME:-8}
RUNS=${FUZZ_RUNS:-}
JOBS=${FUZZ_JOBS:-1}
TIMEOUT=${FUZZ_TIMEOUT:-10}
RSS_MB=${FUZZ_RSS_MB:-2048}
TARGETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --time) TIME=$2; RUNS=""; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    -j|--jobs) JOBS=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
    *) TARGETS+=("$1"); shift ;;
  esac
done

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi
if [ ${#TARGETS[@]} -eq 0 ]; then
  mapfile -t TARGETS < <(cd fuzz && cargo fuzz list)
fi

echo "== building fuzz targets (${TARGETS[*]})" >&2
for t in "${TARGETS[@]}"; do
  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s none --codegen-units 16 "$t" >&2)
done
BIN=fuzz/target/x86_64-unknown-linux-gnu/release

run_one() {
  local t=$1 work=fuzz/work/$1 art=fuzz/artifacts/$1 log mark
  mkdir -p "$work" "$art"
  log=$(mktemp)
  mark=$(mktemp)
  local limit=(-max_total_time="$TIME")
  if [ -n "$RUNS" ]; then limit=(-runs="$RUNS"); fi
  local start=$SECONDS rc=0
  # New inputs go to the first (working) corpus; the committed seeds stay as they are.
  "$BIN/$t" "$work" "fuzz/corpus/$t" "${limit[@]}" -timeout="$TIMEOUT" \
    -rss_limit_mb="$RSS_MB" -print_final_stats=1 -artifact_prefix="$art/" \
    >"$log" 2>&1 || rc=$?
  local execs
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  local found
  found=$(find "$art" -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \
    -o -name 'leak-*' -o -name 'slow-unit-*' \) -newer "$mark" | tr '\n' ',' | sed 's/,$//')
  local status=ok crashes=0
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    status=crash
    crashes=$(printf '%s' "$found" | tr ',' '\n' | grep -c . || true)
    [ "$crashes" -eq 0 ] && crashes=1
    tail -40 "$log" >&2
  fi
  echo "fuzz-result target=$t status=$status execs=${execs:-0} seconds=$((SECONDS - start)) crashes=$crashes artifacts=${found:--}"
  rm -f "$log" "$mark"
  [ "$status" = ok ]
}

failed=0
running=0
pids=()
for t in "${TARGETS[@]}"; do
  if [ "$JOBS" -le 1 ]; then
    run_one "$t" || failed=1
  else
    run_one "$t" &
    pids+=($!)
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
      wait "${pids[0]}" || failed=1
      pids=("${pids[@]:1}")
      running=$((running - 1))
    fi
  fi
done
for p in "${pids[@]}"; do wait "$p" || failed=1; done
if [ "$failed" -ne 0 ]; then
  echo "== fuzzing found crashes; reproduce with fuzz/target/x86_64-unknown-linux-gnu/release/<target> <artifact>" >&2
  exit 1
fi
echo "== fuzzing: no crashes" >&2
