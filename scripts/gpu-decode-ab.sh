#!/usr/bin/env bash
# Issue #17, docs/GPU.md run 11: the decode kernels A/B on the GPU host, in one call,
# on the real default model and a Llama-3-8B-shaped Q4_K_M, with llama.cpp's CUDA
# build as the same-run anchor. Nothing is built here except that anchor.
#
# Configurations (environment of the prebuilt binary):
#   old:    HANGAR_CUDA_SPLIT=0  one warp per row (gemvq), no fused launches (run 7/8
#                                kernels, plus the Q5_0 int8 GEMV)
#   split:  HANGAR_CUDA_FUSE=0   rows split over up to four warps (mvs), no fusion
#   fused:  (default)            split rows + QKV in one GEMV, gate+up+activation in
#                                one, residual add + norm + quantization in one,
#                                RoPE + KV store in one
#
# Usage (repo root on the GPU host):
#   scripts/gpu-decode-ab.sh HANGAR_BIN MODEL.gguf [ANCHOR_BIN_DIR] [checks|bench|all]
# (checks: agreement and perplexity; bench: the timings; all: both, checks first).
# QUICK=1 skips the CPU-side references that an earlier run measured (CPU perplexity,
# CPU-rounded activations, the 8B GPU-vs-CPU check); CHECK_CFGS picks configurations.
# MODEL is the real gemma-3-270m Q4_K_M (sha256 a5fd3b62…6818); ANCHOR_BIN_DIR holds
# llama-bench built from ../shared/reference/gpu-anchor. Logs go to $OUT when set.
set -u
H=${1:?hangar binary}; M=${2:?model}; LB=${3:-}; MODE=${4:-all}
W=${HANGAR_GPU_WORK:-/tmp/hangar-gpu}; mkdir -p "$W"
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
r() { echo "\$ $*"; timeout 240 "$@" 2>&1; }
cfg() { case $1 in old) echo HANGAR_CUDA_SPLIT=0 ;; split) echo HANGAR_CUDA_FUSE=0 ;; *) echo HANGAR_CUDA_FUSE=1 ;; esac; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
echo "model sha256 $(sha256sum "$M" | cut -c1-64)"
P=${PROMPTS:-tests/data/reference/prompts.txt}
L8=$W/l8b-q4km.gguf
if [ "$MODE" != bench ]; then
for c in ${CHECK_CFGS:-old split fused}; do
  echo "== real gemma-3-270m Q4_K_M, $c ($(cfg $c))"
  env $(cfg $c) $H device-check -m "$M" --prompts "$P" --greedy 16 2>&1 | tail -1
  env $(cfg $c) $H device-check -m "$M" --prompts tests/data/greedy40/reference.json 2>&1 | tail -1
done
if [ -z "${QUICK:-}" ]; then
echo "== real model, fused, CPU-rounded activations (HANGAR_CUDA_ACT=cpu)"
HANGAR_CUDA_ACT=cpu $H device-check -m "$M" --prompts "$P" --greedy 16 2>&1 | tail -1
HANGAR_CUDA_ACT=cpu $H device-check -m "$M" --prompts tests/data/greedy40/reference.json 2>&1 | tail -1
r $H perplexity -m "$M" -f tests/data/ppl/long_text.txt --ctx 512 --device cpu -t 16 | tail -1
fi
r $H perplexity -m "$M" -f tests/data/ppl/long_text.txt --ctx 512 --device cuda | tail -1
r $H generate -m "$M" -p "The capital of France is" -n 24 --temperature 0 --device cuda | tail -2
echo "== (t=$SECONDS s) Llama-3-8B shape, Q4_K_M, written by hangar synth"
[ -f "$L8" ] || r $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out "$L8" | tail -1
if [ -z "${QUICK:-}" ]; then
echo "== 8B fused: GPU vs CPU"
$H device-check -m "$L8" --tokens 32 --greedy 8 -t 16 2>&1 | tail -4
fi
fi
[ "$MODE" = checks ] && { echo "== checks done at $SECONDS s"; exit 0; }
for c in old split fused; do
  echo "== real gemma-3-270m Q4_K_M bench, $c ($(cfg $c))"
  env $(cfg $c) $H bench -m "$M" --device cuda --pp 512 --tg 128 --batch 8 -r 5 2>&1 | grep -E "^\| (pp|tg)"
done
for c in old split fused; do
  echo "== 8B $c ($(cfg $c))"
  env $(cfg $c) $H bench -m "$L8" --device cuda --pp 512 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| (pp|tg)"
done
for parts in 1 4; do
  echo "== 8B fused, HANGAR_CUDA_PARTS=$parts (default: 2)"
  HANGAR_CUDA_PARTS=$parts $H bench -m "$L8" --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg"
done
echo "== 8B fused, kernel profile (events on every launch, graphs off)"
HANGAR_CUDA_PROFILE=1 $H bench -m "$L8" --device cuda --pp 0 --tg 128 -r 1 2>&1 | tail -16
if [ -n "$LB" ] && [ -x "$LB/llama-bench" ]; then
  echo "== (t=$SECONDS s) anchor: llama.cpp CUDA llama-bench on the same files"
  "$LB/llama-bench" -m "$L8" -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | tail -3
  "$LB/llama-bench" -m "$M" -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | tail -3
fi
echo "== done at $SECONDS s"
