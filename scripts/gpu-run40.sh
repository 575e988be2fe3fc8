#!/usr/bin/env bash
# GPU run 40 (docs/GPU.md): the streamed GEMVs as the default (two CTAs an SM of eight
# consumer warps; gate/up stages of half rows) beside a same-run llama.cpp anchor.
# Variants: T default, A the hoisted kernels (HANGAR_CUDA_STREAM=0), K gate/up stages
# of whole rows (run 39's T: STREAM_MVP_K16), X ten consumer warps. llama.cpp builds
# in the background (sources vendored in llama-cpp-python 0.3.36, sm_90) while the
# checks and the A/B run; the anchor and Hangar's pp512/tg128 run after it, on a quiet
# machine, on the same file (Hangar's synth output). One call on a fresh machine,
# carrying .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources).
#   bash scripts/gpu-run40.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_setup
anchor_build_bg
gpu_info
synth_once l8b --arch llama --preset llama-3-8b --type Q4_K_M -t 8
v() {
  case $1 in
    T) echo "RUN=40" ;;
    A) echo "HANGAR_CUDA_STREAM=0" ;;
    K) echo "HANGAR_CUDA_DEFINES=STREAM_MVP_K16" ;;
    X) echo "HANGAR_CUDA_STREAM_WARPS=10" ;;
  esac
}
echo "== (t=$SECONDS) device-check, T and A (run 39: 8B 62/64 61/64 0.8456)"
for x in T A; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror|panic" | sed "s/^/8B [$x] /"
done
env $(v T) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/8B [T] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s; the llama.cpp build may still run)"
for r in 1 2 3; do
  for x in T A K X; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in T K X; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|add_|quantize|panic|rror" | head -8 | sed "s/^/[$x] /"
done
echo "== (t=$SECONDS) $(anchor_wait)"
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
for x in T A; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -n 128 -p 0 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
echo "== done at $SECONDS s"
