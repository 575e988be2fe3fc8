#!/usr/bin/env bash
# The real default model on the GPU host, for the agreement A/B of issue #17:
# activations rounded as the CPU rounds them (HANGAR_CUDA_ACT=cpu) against llama.cpp's
# per-32 q8_1 (fine, the default), then the router over three GPU replicas.
#
# The model (253 MB) exceeds one device call's 64 MiB, so it travels in pieces, one
# call each on a warm machine (idle release is 30 s: send them back to back):
#   split -b 52M -d -a 1 ~/.cache/hangar/models/gemma-3-270m-q4_k_m.gguf /tmp/gguf.
#   for i in 0 1 2 3 4; do mkdir -p .gpu/p$i && ln -f /tmp/gguf.$i .gpu/p$i/; done
#   mkdir -p .gpu/fin && cp scripts/gpu-real-model.sh .gpu/fin/ && \
#     strip -o /tmp/h target/release/hangar && xz -c /tmp/h > .gpu/fin/hangar.xz
#   printf '%s\n' "<one prompt a line>" > .gpu/fin/prompts.txt   (the shared reference prompts)
# then, with the device tool: carry .gpu/pN and run
#   mkdir -p /tmp/parts && cp .gpu/pN/gguf.* /tmp/parts/        (N = 0..3)
# and last, carrying .gpu/p4 and .gpu/fin:
#   set -o pipefail; bash .gpu/fin/gpu-real-model.sh 2>&1 | tee $OUT/real.log
set -u
cd "$(dirname "$0")/../.."
P=/tmp/parts; mkdir -p $P; cp .gpu/p4/gguf.* $P/ 2>/dev/null
M=/tmp/gemma-3-270m-q4_k_m.gguf
cat $P/gguf.0 $P/gguf.1 $P/gguf.2 $P/gguf.3 $P/gguf.4 > $M
echo "sha256 $(sha256sum $M | cut -c1-64) (want a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818)"
xz -dc .gpu/fin/hangar.xz > /tmp/hangar && chmod +x /tmp/hangar
H=/tmp/hangar; export HANGAR_CUDA_CACHE=/tmp/cc
SECONDS=0
r() { echo "\$ $*"; timeout 200 "$@" 2>&1; }
nvidia-smi -L
for act in fine cpu; do
  export HANGAR_CUDA_ACT=$act
  echo "== HANGAR_CUDA_ACT=$act"
  r $H device-check -m $M --prompts .gpu/fin/prompts.txt --greedy 16 | tail -2
  r $H device-check -m $M --prompts tests/data/greedy40/reference.json | tail -2
  r $H device-check -m $M --text "$(head -c 2000 tests/data/ppl/long_text.txt)" --greedy 32 | tail -4
  # Where GPU and CPU drift apart, layer by layer (docs/GPU.md has the CPU's own
  # fast-vs-ggml table for the same text).
  r $H device-check -m $M --text "$(head -c 2000 tests/data/ppl/long_text.txt)" --layers | tail -20
  r $H device-check -m $M --device cpu --text "$(head -c 2000 tests/data/ppl/long_text.txt)" --layers | tail -20
  r $H perplexity -m $M -f tests/data/ppl/long_text.txt --ctx 512 --device cuda | tail -1
  r $H bench -m $M --device cuda --pp 512 --tg 128 --batch 8 -r 5 | grep -E "pp512|tg128"
done
unset HANGAR_CUDA_ACT
r $H perplexity -m $M -f tests/data/ppl/long_text.txt --ctx 512 --device cpu -t 16 | tail -1
echo "== router over three GPU replicas (t=$SECONDS s)"
HANGAR_BIN=$H HANGAR_MODEL=$M timeout 300 python3 scripts/bench-router.py --device cuda --replicas 3 \
  --kv-memory 2GiB --system-words 3000 --groups 4 --per-group 8 --concurrency 6 --json $OUT/router.json 2>&1 | tail -8
echo "== done at $SECONDS s"
