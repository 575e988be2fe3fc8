#!/usr/bin/env bash
# GPU run 23 (docs/GPU.md): batch invariance on the GPU (`device-check
# --batch-invariance`), where a batch-1 decode step of the 8B shape spends its time
# (events around every launch), and Nsight Compute's reading of the decode GEMVs
# (what bounds them: DRAM, L1, issue or latency), for the 1.3x goal's next step; and
# the activation-stationary Q4_K GEMV (`mva_q4_k`, HANGAR_CUDA_MVA=1) against the
# default one-warp-per-row kernels in the same binary.
#
# Here: `target/release/hangar` xz-compressed to .gpu/fin/hangar.xz. One device call,
# carrying .gpu/fin: bash scripts/gpu-run23.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
OUTD=${OUT:-/tmp}
SECONDS=0
xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
$H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
echo "== (t=$SECONDS) batch invariance (decode steps of 2-16 sequences against one alone)"
timeout 120 $H device-check -m $W/g270.gguf --tokens 64 --greedy 24 --batch-invariance 2,4,8,16 -t 16 2>&1 | grep -E "batch invariance|greedy head"
timeout 150 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 24 --batch-invariance 2,4,8,16 -t 16 2>&1 | grep -E "batch invariance|greedy head"
echo "== (t=$SECONDS) device-check with HANGAR_CUDA_MVA=1"
HANGAR_CUDA_MVA=1 timeout 150 $H device-check -m $W/l8b.gguf --tokens 128 --greedy 8 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -5
HANGAR_CUDA_MVA=1 timeout 120 $H device-check -m $W/g270.gguf --tokens 256 --greedy 8 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -5
echo "== (t=$SECONDS) 8B batch 1: HANGAR_CUDA_MVA=1 vs 0"
for v in 1 0 1 0 1 0; do
  HANGAR_CUDA_MVA=$v timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/mva=$v /"
done
echo "== (t=$SECONDS) HANGAR_CUDA_PARTS=1 (default) vs 2, with PDL"
for p in 1 2 1 2; do
  HANGAR_CUDA_PARTS=$p timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/parts=$p /"
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (graphs off, events around every launch)"
HANGAR_CUDA_PROFILE=1 timeout 90 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 | grep -vE "^\| |^device|^\s*$|compil" | head -20
echo "== (t=$SECONDS) ncu, 8B batch-1 decode kernels (graphs off)"
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
echo "ncu: $NCU"
HANGAR_CUDA_GRAPHS=0 timeout 300 $NCU --clock-control none \
  -k regex:'^(mvp1_q4_k|mvs1_q4_k|mvs1_q6_k|gemvq1_q4_k|gemvq1_q6_k|add_norm_q8|attention|qk_rope|quantize_q8_1)$' \
  --launch-skip 40 --launch-count 14 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
  $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 4 -r 1 > $OUTD/run23-ncu.txt 2>&1
echo "ncu rc=$?"
HANGAR_CUDA_MVA=1 HANGAR_CUDA_GRAPHS=0 timeout 120 $NCU --clock-control none -k regex:'^mva_q4_k$' \
  --launch-skip 12 --launch-count 3 \
  --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats --section MemoryWorkloadAnalysis \
  $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 4 -r 1 >> $OUTD/run23-ncu.txt 2>&1
echo "ncu (mva) rc=$?"
grep -E "^  [a-z_0-9]+\(|Duration|DRAM Throughput|L1/TEX Cache Throughput|Memory Throughput|Achieved Occupancy|Registers Per Thread|Stall|Issue Slots Busy|Theoretical Occupancy" $OUTD/run23-ncu.txt | head -150
echo "== done at $SECONDS s"
