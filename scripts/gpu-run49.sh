#!/usr/bin/env bash
# GPU run 49 (written in the fifteenth session, NOT RUN YET: its device time ran out).
# Run 48's ablations: the GEMVs take 2.33 ms of a 3.0 ms 8B token, the small kernels
# add 0.21 ms, and 0.68 ms is left when every GEMV is dropped. HANGAR_CUDA_STEP_TIMES=1
# splits a graphed step's wall time: the engine between steps, the host's preparation
# and uploads, recording, the graph launch call, the graph on the GPU (events), and
# what follows it (the greedy pick, the copies back). PIN: HANGAR_CUDA_PINNED=1 (a
# step's uploads and logits through page-locked staging, queued on the stream:
# src/pinned.rs). Also checks STREAM_ACT_BATCH (run 48: level to +1%) and PIN for the
# same figures before either can become the default. One call
# carrying .gpu/fin (hangar.xz) and .gpu/anchor:
#   bash scripts/gpu-run49.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_begin
echo "== (t=$SECONDS) step times, 8B and 1B, batch 1 and 8, without and with PIN"
for m in l8b l1b; do
  for b in 1 8; do
    for x in RUN=49 HANGAR_CUDA_PINNED=1; do
      env $x HANGAR_CUDA_STEP_TIMES=1 timeout 60 $H bench -m $W/$m.gguf --device cuda --pp 0 --tg 128 --batch $b -r 3 2>&1 \
        | grep -E "^\| tg|STEP_TIMES|rror|panic" | sed "s/^/$m x$b [$x] /"
    done
  done
done
echo "== (t=$SECONDS) device-check (must equal P's), then tg128 alternated"
for x in RUN=49 HANGAR_CUDA_DEFINES=STREAM_ACT_BATCH HANGAR_CUDA_PINNED=1; do
  env $x timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|warning|rror|panic" | sed "s/^/[$x] /"
done
for r in 1 2 3; do
  for x in RUN=49 HANGAR_CUDA_DEFINES=STREAM_ACT_BATCH HANGAR_CUDA_PINNED=1; do
    env $x timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|rror" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B /"
echo "== done at $SECONDS s"
