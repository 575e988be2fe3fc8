#!/usr/bin/env bash
# GPU run 43 (docs/GPU.md): the residual add taken into the streamed GEMVs
# (`PendingAdd`, kernels/mmvq.cu `FusedAdd`) and attention_rope's K/V rows asked of L2
# before its PDL wait, beside a same-run llama.cpp anchor. Variants: P default,
# F without the fused add (HANGAR_CUDA_FUSE_ADD=0), Q without the prefetch,
# N without both (run 41's kernels), K = P without split-K attention (short rows
# split in two from 128 positions). P and N must print the same device-check figures.
# One call on a fresh machine, carrying .gpu/fin (hangar.xz) and .gpu/anchor.
#   bash scripts/gpu-run43.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_setup
anchor_build_bg
gpu_info
synth_once l8b --arch llama --preset llama-3-8b --type Q4_K_M -t 8
synth_once q7b --arch qwen2 --preset qwen2.5-7b --type Q4_K_M -t 8
v() {
  case $1 in
    P) echo "RUN=43" ;;
    F) echo "HANGAR_CUDA_FUSE_ADD=0" ;;
    Q) echo "HANGAR_CUDA_ATT_PREFETCH=0" ;;
    N) echo "HANGAR_CUDA_FUSE_ADD=0 HANGAR_CUDA_ATT_PREFETCH=0" ;;
    K) echo "HANGAR_CUDA_SPLITK=0" ;;
  esac
}
echo "== (t=$SECONDS) device-check, P and N (run 41: 8B 62/64 61/64 0.8456; Q7B 61/64 56/64)"
for m in l8b q7b; do
  for x in P N; do
    env $(v $x) timeout 90 $H device-check -m $W/$m.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror|panic" | sed "s/^/$m [$x] /"
  done
  env $(v P) timeout 90 $H device-check -m $W/$m.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8,16 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/$m [P] /"
done
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s; the llama.cpp build may still run)"
for r in 1 2 3; do
  for x in P F Q N K; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) tg128 at depth 512, 8B: split-K on (P) and off (K)"
for r in 1 2; do
  for x in P K; do
    env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 --depth 512 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) tg128, Qwen2.5-7B (its Q6_K rows take the add_q8s launch)"
for r in 1 2; do
  for x in P N; do
    env $(v $x) timeout 30 $H bench -m $W/q7b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/Q7B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in P N; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|add_|quantize|qk_rope|att_|panic|rror" | head -9 | sed "s/^/[$x] /"
done
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
for x in P N; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -n 128 -p 0 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
for x in P N P; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/hangar 8B [$x] /"
done
echo "== done at $SECONDS s"
