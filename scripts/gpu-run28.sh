#!/usr/bin/env bash
# GPU run 28 (docs/GPU.md): what holds the narrow Q4_K/Q6_K decode GEMVs at about
# 2 TB/s. Run 27 showed it is neither the issue rate nor the loads in flight per warp
# (the wide kernels halved both and were level). Here: the GEMVs' L2 prefetch on and
# off (HANGAR_CUDA_SOURCES=.gpu/fin/nopf28: common.cuh with prefetch_row_l2 emptied),
# and Nsight Compute's full set (memory chart: DRAM/L2 sectors, hit rates, stall
# reasons) on mvp1_q4_k, mvs1_q4_k and mvs1_q6_k of the 8B shape at batch 1.
# One call, carrying .gpu/fin: bash scripts/gpu-run28.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
OUTD=${OUT:-/tmp}
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# The no-prefetch variant: the shared helpers with prefetch_row_l2's loop removed.
if [ ! -f .gpu/fin/nopf28/common.cuh ]; then
  mkdir -p .gpu/fin/nopf28
  sed '/for (u64 off = (u64)(part \* 32 + lane) \* 128/d; /prefetch.global.L2/d' crates/cuda/src/kernels/common.cuh > .gpu/fin/nopf28/common.cuh
fi
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
echo "== (t=$SECONDS) tg128, L2 prefetch on (default) and off, alternated"
for v in default nopf default nopf; do
  e=RUN=28; [ $v = nopf ] && e=HANGAR_CUDA_SOURCES=.gpu/fin/nopf28
  env $e timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/8B [$v] /"
done
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
echo "== (t=$SECONDS) ncu --set full, default kernels (graphs off); ncu: $NCU"
HANGAR_CUDA_GRAPHS=0 timeout 150 $NCU --clock-control none --set full --import-source no \
  -k regex:'^(mvp1_q4_k|mvs1_q4_k|mvs1_q6_k|add_norm_q8c)$' --launch-skip 30 --launch-count 5 \
  -o $W/r28 -f $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 4 -r 1 > $W/ncu.log 2>&1
echo "ncu rc=$? (t=$SECONDS)"; tail -2 $W/ncu.log
$NCU --import $W/r28.ncu-rep --page details > $OUTD/run28-ncu.txt 2>&1
$NCU --import $W/r28.ncu-rep --page raw --csv > $OUTD/run28-ncu-raw.csv 2>&1
ls -la $OUTD
grep -E "^  [a-z_0-9]+ \(|Duration|DRAM Throughput|L2 Hit Rate|L1/TEX Hit|Compute \(SM\) Throughput|Warp Cycles Per Issued|Achieved Occupancy|Mem Busy|Max Bandwidth" $OUTD/run28-ncu.txt | head -60
echo "== done at $SECONDS s"
