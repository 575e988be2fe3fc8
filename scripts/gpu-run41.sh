#!/usr/bin/env bash
# GPU run 41 (docs/GPU.md): the session's final binary. The streamed GEMVs as the
# default (two CTAs an SM of eight consumer warps, whole-row stages, activations staged
# in lane order) beside a same-run llama.cpp anchor. Variants: P default, L activations
# staged as they are (STREAM_ACT_LINEAR: run 40's K), A the hoisted kernels
# (HANGAR_CUDA_STREAM=0). P, L and A must print the same device-check figures.
# llama.cpp builds in the background while the checks and the A/B run; the anchor and
# Hangar's pp512/tg128 then run on a quiet machine, on the same file. One call on a
# fresh machine, carrying .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources).
#   bash scripts/gpu-run41.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_setup
anchor_build_bg
gpu_info
synth_once l8b --arch llama --preset llama-3-8b --type Q4_K_M -t 8
v() {
  case $1 in
    P) echo "RUN=41" ;;
    L) echo "HANGAR_CUDA_DEFINES=STREAM_ACT_LINEAR" ;;
    A) echo "HANGAR_CUDA_STREAM=0" ;;
  esac
}
echo "== (t=$SECONDS) device-check, P, L and A (run 40: 8B 62/64 61/64 0.8456)"
for x in P L A; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror|panic" | sed "s/^/8B [$x] /"
done
env $(v P) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8,16 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/8B [P] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s; the llama.cpp build may still run)"
for r in 1 2 3; do
  for x in P L A; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in P L; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|add_|quantize|panic|rror" | head -7 | sed "s/^/[$x] /"
done
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
for x in P A L; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -n 128 -p 0 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
env $(v P) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/hangar 8B [P] /"
echo "== done at $SECONDS s"
