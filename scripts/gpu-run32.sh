#!/usr/bin/env bash
# GPU run 32 (docs/GPU.md): after run 31. The one-wave GEMVs with interleaved rows
# (warp w takes rows w, w + nw, ...: every warp reads one window of the matrix, as
# the four-row blocks do) against run 31's contiguous runs and the default (run 30's
# GEMVs, now with the batched attention loads); two untimed variants beside them.
# Variants: A default, R wave interleaved (HANGAR_CUDA_WAVE=2), S wave with run 31's
# runs (WAVE_RUNS), H `mvs` hoisted, `mvp` not (HOIST_MVS_ONLY), U attention with
# four positions a group (ATT_AU4). A and R must print the same device-check
# figures (the others add the same numbers in the same order too; trimmed for a
# nearly spent device budget). One call on a fresh machine, carrying .gpu/fin (hangar.xz).
#   bash scripts/gpu-run32.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
v() {
  case $1 in
    A) echo "RUN=32" ;;
    R) echo "HANGAR_CUDA_WAVE=2" ;;
    S) echo "HANGAR_CUDA_WAVE=2 HANGAR_CUDA_DEFINES=WAVE_RUNS" ;;
    H) echo "HANGAR_CUDA_DEFINES=HOIST_MVS_ONLY" ;;
    U) echo "HANGAR_CUDA_DEFINES=ATT_AU4" ;;
  esac
}
echo "== (t=$SECONDS) tg128, 8B (tok/s), first pass"
for x in A R S; do
  env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/8B [$x] /"
done
echo "== (t=$SECONDS) device-check, 8B, 64 tokens: every variant must print A's figures"
for x in A R; do
  env $(v $x) timeout 60 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning" | sed "s/^/8B [$x] /"
done
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s)"
for r in 1 2; do
  xs="A R S"; [ $r = 1 ] && xs="A R S H U"
  for x in $xs; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in A R; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp1|mvs1|attention|qk_rope|quantize|add_norm" | head -8 | sed "s/^/[$x] /"
done
echo "== done at $SECONDS s"
