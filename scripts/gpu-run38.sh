#!/usr/bin/env bash
# GPU run 38 (docs/GPU.md): the streamed batch-1 GEMVs (`mvst`/`mvpt`: a persistent
# grid, a producer thread keeping a ring of weight stages in flight with the copy
# engine) against the default hoisted kernels. Variants: A default, S
# HANGAR_CUDA_STREAM=1, T S with two CTAs an SM, U S with three stages. device-check
# (S must print A's figures: the same bits), batch invariance under S (batch 1 takes
# the streamed kernels, larger batches the batched ones), tg128 alternated, and the
# per-kernel times. One call, carrying .gpu/fin.
#   bash scripts/gpu-run38.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_setup
gpu_info
synth_once l8b --arch llama --preset llama-3-8b --type Q4_K_M -t 16
v() {
  case $1 in
    A) echo "RUN=38" ;;
    S) echo "HANGAR_CUDA_STREAM=1" ;;
    T) echo "HANGAR_CUDA_STREAM=1 HANGAR_CUDA_STREAM_CTAS=2" ;;
    U) echo "HANGAR_CUDA_STREAM=1 HANGAR_CUDA_STREAM_STAGES=3" ;;
  esac
}
echo "== (t=$SECONDS) device-check, A and S (run 37: 8B 62/64 61/64 0.8456)"
for x in A S; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning|rror|panic" | sed "s/^/8B [$x] /"
done
env $(v S) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/8B [S] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s)"
for r in 1 2 3; do
  for x in A S T U; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in A S T; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|quantize|add_" | head -10 | sed "s/^/[$x] /"
done
echo "== done at $SECONDS s"
