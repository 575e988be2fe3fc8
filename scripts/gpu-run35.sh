#!/usr/bin/env bash
# GPU run 35 (docs/GPU.md): the deferred norm with its batched scales moved to shared
# memory (cp.async) and the batched mvs/mvp held to 64 registers, against the cluster
# norm, at batch 1 and 8; then Nsight Compute on the batch-1 GEMVs and their
# bulk-copy forms (why run 34 measured mvsb1 slower). Variants: A default, C
# HANGAR_CUDA_DEFER_NORM=0, B HANGAR_CUDA_BULK=1. One call, carrying .gpu/fin.
#   bash scripts/gpu-run35.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
OUTD=${OUT:-/tmp}
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
[ -f $W/q05.gguf ] || $H synth --arch qwen2 --preset qwen2.5-0.5b --type Q4_K_M -t 16 --out $W/q05.gguf 2>&1 | tail -1
v() {
  case $1 in
    A) echo "RUN=35" ;;
    C) echo "HANGAR_CUDA_DEFER_NORM=0" ;;
    B) echo "HANGAR_CUDA_BULK=1" ;;
  esac
}
echo "== (t=$SECONDS) device-check, A and C (run 34: 8B 62/64 61/64 0.8456 for A; C 62/64 60/64 0.8697)"
for x in A C; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning|rror" | sed "s/^/8B [$x] /"
  env $(v $x) timeout 60 $H device-check -m $W/q05.gguf --tokens 128 --greedy 16 -t 16 2>&1 | grep -E "^teacher|warning|rror" | sed "s/^/Q0.5B [$x] /"
done
timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8,16 2>&1 | grep -iE "invarian|warning|rror" | sed "s/^/8B [A] /"
echo "== (t=$SECONDS) tg128 and tg128 x8 alternated, 8B (tok/s)"
for r in 1 2 3; do
  for x in A C; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror" | sed "s/^/8B [$x] /"
    env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -b 8 -r 2 2>&1 | grep -E "^\| tg128x|warning|rror" | sed "s/^/8B b8 [$x] /"
  done
done
echo "== (t=$SECONDS) tg128, Qwen2 0.5B (tok/s)"
for x in A C A C; do
  env $(v $x) timeout 30 $H bench -m $W/q05.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror" | sed "s/^/Q0.5B [$x] /"
done
echo "== (t=$SECONDS) ncu, 8B batch-1 GEMVs, A and B (graphs off)"
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
echo "ncu: $NCU"
for x in A B; do
  env $(v $x) HANGAR_CUDA_GRAPHS=0 timeout 150 $NCU --clock-control none \
    -k regex:'^(mvp1_q4_k|mvs1_q4_k|mvs1_q6_k|mvsb1_q4_k|mvsb1_q6_k|mvpb1_q4_k)$' --launch-skip 40 --launch-count 8 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 4 -r 1 > $OUTD/run35-ncu-$x.txt 2>&1
  echo "ncu [$x] rc=$? (t=$SECONDS)"
  grep -E "^  [a-z_0-9]+ \(|Duration|DRAM Throughput|L1/TEX Cache Throughput|Achieved Occupancy|Theoretical Occupancy|Registers Per Thread|Block Limit (Registers|Shared Mem)|Dynamic Shared|Warp Cycles Per Issued|No Eligible" $OUTD/run35-ncu-$x.txt | head -70 | sed "s/^/[$x] /"
done
echo "== done at $SECONDS s"
