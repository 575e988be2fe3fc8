#!/usr/bin/env bash
# GPU run 54 (seventeenth session): the small shapes, which are launch-bound, against
# llama.cpp in the same call: the gemma-3-270m shape (written by run 52) and the
# Llama-3.2-1B shape, tg128 and pp512, Hangar's default beside HANGAR_CUDA_REUSE=0.
# Run on run 52's warm machine (llama-bench built there). Carry .gpu/fin:
#   bash scripts/gpu-run54.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_warm g270m.gguf
gpu_info
synth_once l1b --arch llama --preset llama-3.2-1b --type Q4_K_M -t 14
for m in g270m l1b; do
  echo "== (t=$SECONDS) $m"
  anchor_bench $W/$m.gguf
  for v in RUN=54 HANGAR_CUDA_REUSE=0 RUN=54 HANGAR_CUDA_REUSE=0; do
    env $v timeout 60 $H bench -m $W/$m.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar $m [$v] /"
  done
done
echo "== done at $SECONDS s"
