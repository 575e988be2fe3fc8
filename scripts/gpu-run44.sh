#!/usr/bin/env bash
# GPU run 44 (docs/GPU.md): two switches of launch order and attention latency, A/B
# beside a same-run llama.cpp anchor. Variants: P default; E PDL_EARLY (a kernel lets
# the next one's blocks be scheduled before its own PDL wait, so they take SMs and
# start their weight copies while two kernels back still drain); U ATT_AU16 (decode
# attention's warps fetch sixteen positions a group: one K and one V round trip up to
# 128 positions); EU both. None changes the arithmetic: all must print P's
# device-check figures. Two calls, the second while the machine is warm, each
# carrying .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources):
#   bash scripts/gpu-run44.sh a      # set-up, checks and the A/B runs
#   bash scripts/gpu-run44.sh b      # the anchor and Hangar on a quiet machine
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
PHASE=${1:-a}
gpu_begin
v() {
  case $1 in
    P) echo "RUN=44" ;;
    E) echo "HANGAR_CUDA_DEFINES=PDL_EARLY" ;;
    U) echo "HANGAR_CUDA_DEFINES=ATT_AU16" ;;
    EU) echo "HANGAR_CUDA_DEFINES=PDL_EARLY,ATT_AU16" ;;
  esac
}
if [ "$PHASE" = a ]; then
echo "== (t=$SECONDS) device-check (run 43: 8B 62/64 61/64 0.8456)"
for x in P E EU; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|warning|rror|panic" | sed "s/^/8B [$x] /"
done
env $(v EU) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8,16 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/8B [EU] /"
env $(v EU) timeout 90 $H device-check -m $W/l1b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|warning|rror|panic" | sed "s/^/1B [EU] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s; the llama.cpp build may still run)"
for r in 1 2 3; do
  for x in P E U EU; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) tg128 at depth 512 and batch 8, 8B"
for x in P EU P EU; do
  env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 --depth 512 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
done
for x in P EU; do
  env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 --batch 8 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
done
echo "== (t=$SECONDS) tg128, Llama-3.2-1B"
for r in 1 2; do
  for x in P E EU; do
    env $(v $x) timeout 30 $H bench -m $W/l1b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/1B [$x] /"
  done
done
fi
[ "$PHASE" = b ] || exit 0
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
for x in P EU; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -n 128 -p 0 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
for x in P E EU P E EU; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/hangar 8B [$x] /"
done
echo "== done at $SECONDS s"
