#!/usr/bin/env bash
# GPU run 21 (docs/GPU.md): the attention kernels after their shared device functions
# (att_row / att_score / att_add_v / fa_load_tile) were factored out: checks against the
# CPU on the 270M shape (split decode) and the Llama-3.2-1B shape at 2 100 tokens (the
# tiled prefill, heads of 64), and the speeds of run 19/20 to compare.
# One device call, carrying .gpu (the binary xz-compressed in .gpu/fin/hangar.xz).
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
$H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
$H synth --arch llama --preset llama-3.2-1b --type Q4_K_M -t 16 --out $W/l1b.gguf 2>&1 | tail -1
echo "== (t=$SECONDS) device-check 270M shape, 512 tokens"
$H device-check -m $W/g270.gguf --tokens 512 --greedy 8 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
echo "== (t=$SECONDS) device-check 1B shape, 2100 tokens"
timeout 100 $H device-check -m $W/l1b.gguf --tokens 2100 --greedy 8 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
for v in 1 0; do
  echo "-- (t=$SECONDS) 1B HANGAR_CUDA_TILED=$v"
  HANGAR_CUDA_TILED=$v timeout 30 $H bench -m $W/l1b.gguf --device cuda --pp 4096 --tg 0 -r 2 2>&1 | grep -E "^\| pp"
done
echo "-- (t=$SECONDS) 270M tg128@d4096"
timeout 30 $H bench -m $W/g270.gguf --device cuda --pp 0 --tg 128 --depth 4096 -r 2 2>&1 | grep -E "^\| tg"
echo "== done at $SECONDS s"
