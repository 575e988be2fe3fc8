#!/usr/bin/env bash
# GPU run 39 (docs/GPU.md): the streamed GEMVs after run 38 (a producer without local
# memory, 8 or 16 consumer warps, two steps of shared-memory loads ahead) against the
# default. Variants: A default, S stream (8 consumer warps), W stream (16), T stream
# (8, two CTAs an SM). The kernel profile adds two diagnostic builds of S: no copies
# (the consumers' time alone) and no compute (the copies' time alone). One call,
# carrying .gpu/fin.
#   bash scripts/gpu-run39.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_setup
gpu_info
synth_once l8b --arch llama --preset llama-3-8b --type Q4_K_M -t 16
v() {
  case $1 in
    A) echo "RUN=39" ;;
    S) echo "HANGAR_CUDA_STREAM=1" ;;
    W) echo "HANGAR_CUDA_STREAM=1 HANGAR_CUDA_STREAM_WARPS=16" ;;
    T) echo "HANGAR_CUDA_STREAM=1 HANGAR_CUDA_STREAM_CTAS=2" ;;
    N) echo "HANGAR_CUDA_STREAM=1 HANGAR_CUDA_DEFINES=STREAM_NO_COPY" ;;
    C) echo "HANGAR_CUDA_STREAM=1 HANGAR_CUDA_DEFINES=STREAM_NO_COMPUTE" ;;
  esac
}
echo "== (t=$SECONDS) device-check, A, S and W (run 38: 8B 62/64 61/64 0.8456 for A and S)"
for x in A S W; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror|panic" | sed "s/^/8B [$x] /"
done
env $(v W) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,8 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/8B [W] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s)"
for r in 1 2 3; do
  for x in A S W T; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in A S W T N C; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|panic|rror" | head -5 | sed "s/^/[$x] /"
done
echo "== done at $SECONDS s"
