#!/usr/bin/env bash
# GPU run 24 (docs/GPU.md): the latency chains of a batch-1 decode step (run 23's ncu:
# single-wave GEMVs and one-block kernels). Default now: add_norm_q8 loads its norm
# weights and qk_rope computes its angles before the PDL wait (same bits; the checks
# must print run 22's figures). A/B: the row split of the small `mvs` GEMVs (Q+K, V,
# the output projection: HANGAR_CUDA_PARTS_SMALL=1, 2, 4) on the 8B and 270M shapes.
#
# Here: `target/release/hangar` xz-compressed to .gpu/fin/hangar.xz. One device call,
# carrying .gpu/fin: bash scripts/gpu-run24.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
$H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
echo "== (t=$SECONDS) device-check (run 22 printed 489/512, 488/512 and 121/128, 119/128)"
timeout 120 $H device-check -m $W/g270.gguf --tokens 512 --greedy 16 -t 16 2>&1 | grep -E "teacher|greedy"
timeout 150 $H device-check -m $W/l8b.gguf --tokens 128 --greedy 8 -t 16 2>&1 | grep -E "teacher|greedy"
for m in l8b g270; do
  for p in 1 2 4 1 2 4; do
    echo "-- (t=$SECONDS) $m HANGAR_CUDA_PARTS_SMALL=$p"
    HANGAR_CUDA_PARTS_SMALL=$p timeout 60 $H bench -m $W/$m.gguf --device cuda --pp 0 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| tg"
  done
done
echo "== done at $SECONDS s"
