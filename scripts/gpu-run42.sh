#!/usr/bin/env bash
# GPU run 42 (docs/GPU.md): the streamed GEMVs on two more shapes. Llama-3.2-1B (2 048
# and 8 192 wide: every Q4_K and Q6_K matrix streams) and Qwen2.5-7B (3 584 and 18 944
# wide: 14 and 74 blocks, partial last steps; its Q6_K rows of 14 blocks cannot be
# bulk-copied and keep the hoisted kernels). P default, A HANGAR_CUDA_STREAM=0: the
# device-check figures must be equal. One call, carrying .gpu/fin.
#   bash scripts/gpu-run42.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_setup
gpu_info name
synth_once l1b --arch llama --preset llama-3.2-1b --type Q4_K_M -t 16
synth_once q7b --arch qwen2 --preset qwen2.5-7b --type Q4_K_M -t 16
v() {
  case $1 in
    P) echo "RUN=42" ;;
    A) echo "HANGAR_CUDA_STREAM=0" ;;
  esac
}
for m in l1b q7b; do
  echo "== (t=$SECONDS) $m"
  for x in P A; do
    env $(v $x) timeout 90 $H device-check -m $W/$m.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror|panic" | sed "s/^/$m [$x] /"
  done
  env $(v P) timeout 90 $H device-check -m $W/$m.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,8 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/$m [P] /"
  for x in P A P A; do
    env $(v $x) timeout 30 $H bench -m $W/$m.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/$m [$x] /"
  done
done
echo "== done at $SECONDS s"
