#!/usr/bin/env bash
# GPU run 36 (docs/GPU.md): the batched mvs/mvp kernels held to 64 registers (the
# default since run 35) against the cap lifted (HANGAR_CUDA_DEFINES=MV_REGS_FREE),
# 8B shape, batch 8 and batch 1, alternated. One call, carrying .gpu/fin.
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
for r in 1 2; do
  for x in cap free; do
    d=""; [ $x = free ] && d=MV_REGS_FREE
    HANGAR_CUDA_DEFINES=$d timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -b 8 -r 2 2>&1 | grep -E "^\| tg|warning|rror" | sed "s/^/8B [$x] /"
  done
done
echo "== done at $SECONDS s"
