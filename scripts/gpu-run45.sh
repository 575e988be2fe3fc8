#!/usr/bin/env bash
# GPU run 45 (docs/GPU.md): the streamed GEMVs over rows of one stage (4 096 wide and
# narrower: Q/K/V, O, gate/up of the 8B) hold each lane's activation blocks in
# registers for the whole launch instead of reading them from shared memory for every
# row and matrix. Variants: P default, S STREAM_ACT_SMEM (run 44's kernels). Same
# arithmetic: P and S must print the same device-check figures. Two calls, the second
# while the machine is warm, each carrying .gpu/fin (hangar.xz) and .gpu/anchor:
#   bash scripts/gpu-run45.sh a      # set-up, checks and the A/B runs
#   bash scripts/gpu-run45.sh b      # the anchor and Hangar on a quiet machine
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
PHASE=${1:-a}
gpu_begin
v() {
  case $1 in
    P) echo "RUN=45" ;;
    S) echo "HANGAR_CUDA_DEFINES=STREAM_ACT_SMEM" ;;
  esac
}
if [ "$PHASE" = a ]; then
echo "== (t=$SECONDS) device-check (run 44: 8B 62/64 61/64 0.8456; 1B 60/64 59/64)"
for m in l8b l1b; do
  for x in P S; do
    env $(v $x) timeout 90 $H device-check -m $W/$m.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|warning|rror|panic" | sed "s/^/$m [$x] /"
  done
done
env $(v P) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8,16 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/l8b [P] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s; the llama.cpp build may still run)"
for r in 1 2 3 4; do
  for x in P S; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) tg128, Llama-3.2-1B"
for r in 1 2; do
  for x in P S; do
    env $(v $x) timeout 30 $H bench -m $W/l1b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/1B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in P S; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|add_|quantize|panic|rror" | head -7 | sed "s/^/[$x] /"
done
fi
[ "$PHASE" = b ] || exit 0
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
for x in P S; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -n 128 -p 0 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
for x in P S P S; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/hangar 8B [$x] /"
done
echo "== done at $SECONDS s"
