#!/usr/bin/env bash
# GPU run 20 (docs/GPU.md): the tiled prefill attention (`attention_tiled`) against the
# one-block-per-token kernel in the same binary (HANGAR_CUDA_TILED=0): checks against
# the CPU, then prefill of 512 and 4 096 tokens and decode after a 4 096-token context.
# No llama.cpp build (not enough device time left): run 19's anchor stands.
#
# Here: `target/release/hangar` xz-compressed to .gpu/fin/hangar.xz. One device call,
# carrying .gpu: bash scripts/gpu-run20.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
for v in 1 0; do
  echo "== (t=$SECONDS) device-check 8B shape, HANGAR_CUDA_TILED=$v"
  HANGAR_CUDA_TILED=$v timeout 120 $H device-check -m $W/l8b.gguf --tokens 256 --greedy 8 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
done
for r in 1 2; do
  for v in 1 0; do
    echo "-- (t=$SECONDS) 8B HANGAR_CUDA_TILED=$v"
    HANGAR_CUDA_TILED=$v timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 0 -r 3 2>&1 | grep -E "^\| pp"
    HANGAR_CUDA_TILED=$v timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 4096 --tg 0 -r 3 2>&1 | grep -E "^\| pp"
    HANGAR_CUDA_TILED=$v timeout 90 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 --depth 4096 -r 2 2>&1 | grep -E "^\| tg"
  done
done
echo "== done at $SECONDS s"
