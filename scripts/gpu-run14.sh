#!/usr/bin/env bash
# Run 14: aligned-word loads in the Q4_K/Q6_K GEMVs, one warp per row by default.
set -u
cd "$(dirname "$0")/../.."
xz -dc .gpu/fin/hangar.xz > /tmp/hangar && chmod +x /tmp/hangar
H=/tmp/hangar; W=/tmp/hangar-gpu; mkdir -p $W; export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
$H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
$H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
echo "== (t=$SECONDS) device-check gemma-3-270m shape"; $H device-check -m $W/g270.gguf --tokens 128 --greedy 16 -t 16 2>&1 | tail -4
for m in l8b g270; do
  for c in HANGAR_CUDA_SPLIT=0 HANGAR_CUDA_FUSE=1; do
    echo "== $m $c"; env $c $H bench -m $W/$m.gguf --device cuda --pp 512 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| (pp|tg)"
  done
done
echo "== 8B profile"; HANGAR_CUDA_PROFILE=1 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 1 2>&1 | grep -E "us each|in kernels"
if [ -x /tmp/llbuild/bin/llama-bench ]; then
  echo "== (t=$SECONDS) anchor"
  for m in l8b g270; do /tmp/llbuild/bin/llama-bench -m $W/$m.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"; done
fi
echo "== done at $SECONDS s"
