#!/usr/bin/env bash
# GPU run 46 (docs/GPU.md; NOT RUN YET: written in the fourteenth session, whose device
# time ran out): the int8 tensor-core prefill (`mmq_q4_k`, kernels/mmq.cu, opt-in with
# HANGAR_CUDA_MMQ=1) against the default cuBLAS f16 prefill, beside a same-run
# llama.cpp anchor. Variants: P default (cuBLAS on the f16 weight copies), M
# HANGAR_CUDA_MMQ=1, M64 M with 64 tokens a block (MMQ_T64), D
# HANGAR_CUDA_F16_WEIGHTS=0 (cuBLAS, dequantized per step: the
# case MMQ is for, where f16 copies do not fit). M must agree with P's device-check
# within the int8 activations' rounding (decode figures identical: decode does not
# use it). Two calls, the second while the machine is warm, each carrying .gpu/fin
# (hangar.xz) and .gpu/anchor:
#   bash scripts/gpu-run46.sh a      # set-up, checks and the A/B runs
#   bash scripts/gpu-run46.sh b      # the anchor and Hangar on a quiet machine
#   bash scripts/gpu-run46.sh t      # a timeline of 8B decode steps in their CUDA graph
#                                     (Nsight Systems, if the host has it): where a
#                                     layer's time goes between and inside kernels
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
PHASE=${1:-a}
gpu_begin
v() {
  case $1 in
    P) echo "RUN=46" ;;
    M) echo "HANGAR_CUDA_MMQ=1" ;;
    M64) echo "HANGAR_CUDA_MMQ=1 HANGAR_CUDA_DEFINES=MMQ_T64" ;;
    D) echo "HANGAR_CUDA_F16_WEIGHTS=0" ;;
  esac
}
if [ "$PHASE" = a ]; then
echo "== (t=$SECONDS) device-check (run 45: 8B 62/64 61/64 0.8456; 1B 60/64 59/64)"
for m in l8b l1b; do
  for x in P M $([ $m = l8b ] && echo M64); do
    env $(v $x) timeout 90 $H device-check -m $W/$m.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|warning|rror|panic" | sed "s/^/$m [$x] /"
  done
done
echo "== (t=$SECONDS) pp512 / pp2048 alternated, 8B"
for r in 1; do
  for x in P M M64 D; do
    env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 0 -r 3 2>&1 | grep -E "^\| pp|warning|rror|panic" | sed "s/^/8B [$x] /"
    env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 2048 --tg 0 -r 3 2>&1 | grep -E "^\| pp|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B pp512 (events, graphs off)"
for x in P M; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 0 -r 1 2>&1 \
    | grep -E "PROFILE|mmq|gemm|Kernel|dequant|quantize|to_f16|panic|rror" | head -8 | sed "s/^/[$x] /"
done
fi
if [ "$PHASE" = t ]; then
  NSYS=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems*/bin/nsys 2>/dev/null | head -1)
  if [ -z "$NSYS" ]; then echo "no nsys on this host"; exit 0; fi
  echo "== (t=$SECONDS) $NSYS: 8B decode, graph nodes traced"
  timeout 200 $NSYS profile --cuda-graph-trace=node --trace=cuda --force-overwrite=true -o /tmp/tl \
    $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 | grep -E "^\| tg|rror" | head -3
  timeout 120 $NSYS stats --report cuda_gpu_kern_sum --format csv /tmp/tl.nsys-rep 2>/dev/null | head -24
  # Gaps between consecutive kernels of one decode step: the kernels in start order.
  timeout 120 $NSYS stats --report cuda_gpu_trace --format csv /tmp/tl.nsys-rep 2>/dev/null \
    | grep -E "mvst|mvpt|attention|add_q8s|quantize|att_split|qk_rope" | tail -40 | cut -c1-160
  cp /tmp/tl.nsys-rep "$OUT/" 2>/dev/null || true
  exit 0
fi
[ "$PHASE" = b ] || exit 0
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
for x in P M D M64; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 2048 --tg 0 -r 3 2>&1 | grep -E "^\| pp" | sed "s/^/hangar 8B [$x] /"
done
echo "== (t=$SECONDS) 1B pp512"
for x in P M D; do
  env $(v $x) timeout 60 $H bench -m $W/l1b.gguf --device cuda --pp 512 --tg 0 -r 3 2>&1 | grep -E "^\| pp" | sed "s/^/hangar 1B [$x] /"
done
echo "== done at $SECONDS s"
