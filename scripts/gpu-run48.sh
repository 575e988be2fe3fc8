#!/usr/bin/env bash
# GPU run 48 (docs/GPU.md, fifteenth session): the streamed GEMVs' ring size and CTAs
# an SM, whether a smaller ring lets the next kernel's blocks sit beside a GEMV's (its
# weight copies start before the PDL wait: HANGAR_CUDA_STREAM_STAGES / _CTAS,
# runner/stream.rs); B: the GEMVs stage their input with every load issued first
# (HANGAR_CUDA_DEFINES=STREAM_ACT_BATCH); and what each GEMV kind costs inside the
# graph (HANGAR_CUDA_SKIP, timing only), beside a same-call llama.cpp anchor. One call
# carrying .gpu/fin (hangar.xz) and .gpu/anchor:
#   bash scripts/gpu-run48.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_begin
tg() { # label env...
  local l=$1; shift
  env "$@" timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 \
    | grep -E "^\| tg|rror|panic" | sed "s/^/8B [$l] /"
}
echo "== (t=$SECONDS) tg128, 8B, alternated twice (P: 2 CTAs an SM, rings of up to 8 stages as fit)"
for r in 1 2; do
  tg P RUN=48
  tg S2 HANGAR_CUDA_STREAM_STAGES=2
  tg S3 HANGAR_CUDA_STREAM_STAGES=3
  tg C1 HANGAR_CUDA_STREAM_CTAS=1
  tg C1S3 HANGAR_CUDA_STREAM_CTAS=1 HANGAR_CUDA_STREAM_STAGES=3
  tg B HANGAR_CUDA_DEFINES=STREAM_ACT_BATCH
done
echo "== (t=$SECONDS) ablations (timing only): each GEMV kind dropped"
for k in mvpt_q4_k mvst_q4_k mvst_q6_k mvpt_q4_k,mvst_q4_k,mvst_q6_k; do tg "X:$k" HANGAR_CUDA_SKIP=$k; done
tg B HANGAR_CUDA_DEFINES=STREAM_ACT_BATCH
tg P RUN=48
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
tg P RUN=48
timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 0 -r 3 2>&1 | grep -E "^\| pp" | sed "s/^/8B [P] /"
echo "== done at $SECONDS s"
