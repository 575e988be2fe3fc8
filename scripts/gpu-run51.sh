#!/usr/bin/env bash
# GPU run 51 (sixteenth session): run 50's decode (1.37x llama.cpp in the same call)
# on another machine, with the same-call anchor. First a device-check of the greedy
# pick (its skip lists now go through the page-locked staging); while llama.cpp
# builds, tg128 alternated against run 49's default (OLD); then, on a quiet machine,
# llama-bench and Hangar on the same file. Sized for the ~360 s of device time the
# session had left. One call carrying .gpu/fin and .gpu/anchor:
#   bash scripts/gpu-run51.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_begin l8b
echo "== (t=$SECONDS) the greedy pick's skip lists now go through the staging: device-check (tiny llama)"
$H synth --arch llama --preset tiny --type Q4_K_M --out $W/tiny-llama.gguf > /dev/null 2>&1
timeout 90 $H device-check -m $W/tiny-llama.gguf --tokens 64 --greedy 32 --batch-invariance 3 2>&1 | grep -E "^teacher|^device greedy|^batch inv|^greedy|warning|rror|panic"
echo "== (t=$SECONDS) while llama.cpp builds: tg128 alternated (OLD: run 49's default)"
for x in RUN=51 OLD RUN=51 OLD; do
  v=$x; [ $x = OLD ] && v="HANGAR_CUDA_REUSE=0 HANGAR_CUDA_PINNED=0"
  env $v timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|rror" | sed "s/^/8B [$x] /"
done
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B /"
echo "== done at $SECONDS s"
