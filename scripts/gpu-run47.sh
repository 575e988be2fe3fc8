#!/usr/bin/env bash
# GPU run 47 (docs/GPU.md, fifteenth session): what each small decode launch costs
# inside the CUDA graph, and `mvpt`'s q8_1 tail. Variants: P default, T
# HANGAR_CUDA_MVP_TAIL=1 (the gate/up GEMV quantizes its own output for the down
# projection: no `quantize_q8_1` launch; its device-check must print P's figures, the
# values are the same bits), A HANGAR_CUDA_ADD_TAIL=1 (the output and down projections
# do the residual add and the next input's int8 copy in their tails: no `add_q8s`
# launches after the first layer's), AT both, and the ablations X:<kernels> (HANGAR_CUDA_SKIP: those
# launches dropped; timing only, the outputs are wrong). Two calls on one warm machine,
# each carrying .gpu/fin (hangar.xz) and .gpu/anchor:
#   bash scripts/gpu-run47.sh a      # set-up, checks, the A/B and the ablations
#   bash scripts/gpu-run47.sh b      # the anchor and P / T on a quiet machine
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
PHASE=${1:-a}
gpu_begin
v() {
  case $1 in
    P) echo "RUN=47" ;;
    T) echo "HANGAR_CUDA_MVP_TAIL=1" ;;
    A) echo "HANGAR_CUDA_ADD_TAIL=1" ;;
    AT) echo "HANGAR_CUDA_ADD_TAIL=1 HANGAR_CUDA_MVP_TAIL=1" ;;
    X:*) echo "HANGAR_CUDA_SKIP=${1#X:}" ;;
  esac
}
tg() { # variant model [batch]
  env $(v $1) timeout 60 $H bench -m $W/$2.gguf --device cuda --pp 0 --tg 128 --batch ${3:-1} -r 3 2>&1 \
    | grep -E "^\| tg|rror|panic" | sed "s/^/$2 [$1] /"
}
if [ "$PHASE" = a ]; then
echo "== (t=$SECONDS) device-check (run 46: 8B 62/64 61/64 0.8456; 1B 60/64 59/64)"
for m in l8b l1b; do
  for x in P T $([ $m = l8b ] && echo A) AT; do
    env $(v $x) timeout 90 $H device-check -m $W/$m.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|^greedy|^batch|warning|rror|panic" | sed "s/^/$m [$x] /"
  done
done
echo "== (t=$SECONDS) tg128 alternated, 8B (P, T, A, AT), then the ablations"
for r in 1 2 3; do for x in P T A AT; do tg $x l8b; done; done
for x in X:quantize_q8_1 X:add_q8s X:attention_rope X:add_q8s,quantize_q8_1 P; do tg $x l8b; done
echo "== (t=$SECONDS) 1B, and batch 4 (the tails are batch 1 only: level expected)"
for x in P AT P AT; do tg $x l1b; done
for x in P AT; do tg $x l8b 4; done
fi
[ "$PHASE" = b ] || exit 0
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
for x in P AT T A P AT; do tg $x l8b; done
anchor_bench $W/l8b.gguf
echo "== done at $SECONDS s"
