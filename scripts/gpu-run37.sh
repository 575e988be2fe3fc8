#!/usr/bin/env bash
# GPU run 37 (docs/GPU.md): the session's final binary against run 35/36's figures:
# device-check of the default (A), the bulk-copy GEMVs after their refactor (B) and
# the cluster norm (C), and one tg128 each. One call, carrying .gpu/fin.
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
rm -f $H; xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
nvidia-smi --query-gpu=name --format=csv,noheader
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
for x in A B C; do
  e="RUN=37"; [ $x = B ] && e="HANGAR_CUDA_BULK=1"; [ $x = C ] && e="HANGAR_CUDA_DEFER_NORM=0"
  env $e timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|warning|rror" | sed "s/^/8B [$x] /"
  env $e timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror" | sed "s/^/8B [$x] /"
done
echo "== done at $SECONDS s"
