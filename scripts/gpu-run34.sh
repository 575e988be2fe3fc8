#!/usr/bin/env bash
# GPU run 34 (docs/GPU.md): the deferred norm (runner/deferred.rs: `add_q8s`, a
# residual add that quantizes x * w with per-32 sums of squares, and GEMVs that
# scale by 1 / rms) against the cluster norm it replaces, with run 32's untimed
# variants beside them, and the bulk-copy GEMVs (mvsb1/mvpb1: TMA copies of the
# block's rows into shared memory). Variants: A default, C HANGAR_CUDA_DEFER_NORM=0
# (add_norm_q8c as in run 31), B bulk-copy GEMVs (HANGAR_CUDA_BULK=1, with A's
# deferred norm; must print A's figures), R one-wave GEMVs with interleaved rows (HANGAR_CUDA_WAVE=2; the
# norm is not deferred there), U attention with four positions a group (ATT_AU4).
# Correctness first: A and C against the CPU on three layouts (Llama 8B, Qwen2 0.5B
# with QKV biases, Gemma 3 270M with post-norms: not deferred, must print C's
# figures), and A's batch invariance. One call on a fresh machine, carrying .gpu/fin.
#   bash scripts/gpu-run34.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
[ -f $W/q05.gguf ] || $H synth --arch qwen2 --preset qwen2.5-0.5b --type Q4_K_M -t 16 --out $W/q05.gguf 2>&1 | tail -1
[ -f $W/g270.gguf ] || $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
v() {
  case $1 in
    A) echo "RUN=34" ;;
    C) echo "HANGAR_CUDA_DEFER_NORM=0" ;;
    B) echo "HANGAR_CUDA_BULK=1" ;;
    R) echo "HANGAR_CUDA_WAVE=2" ;;
    U) echo "HANGAR_CUDA_DEFINES=ATT_AU4" ;;
  esac
}
echo "== (t=$SECONDS) device-check against the CPU: A (deferred norm) and C (cluster norm)"
for x in A C B; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning|rror" | sed "s/^/8B [$x] /"
  env $(v $x) timeout 60 $H device-check -m $W/q05.gguf --tokens 128 --greedy 16 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror" | sed "s/^/Q0.5B [$x] /"
  [ $x = B ] && continue
  env $(v $x) timeout 60 $H device-check -m $W/g270.gguf --tokens 256 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror" | sed "s/^/270M [$x] /"
done
echo "== (t=$SECONDS) batch invariance, A"
timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8,16 2>&1 | grep -iE "invarian|warning|rror" | sed "s/^/8B [A] /"
timeout 60 $H device-check -m $W/q05.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8 2>&1 | grep -iE "invarian|warning|rror" | sed "s/^/Q0.5B [A] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s)"
for r in 1 2 3; do
  for x in A C B R U; do
    [ $r = 3 ] && [ $x = R -o $x = U ] && continue
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) batch 8 and pp512, 8B"
for x in A C; do
  env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 0 -r 2 2>&1 | grep -E "^\| pp|warning|rror" | sed "s/^/8B [$x] /"
  env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -b 8 -r 2 2>&1 | grep -E "^\| tg128x|warning|rror" | sed "s/^/8B b8 [$x] /"
done
echo "== (t=$SECONDS) tg128, small models (tok/s)"
for x in A C B A C B; do
  env $(v $x) timeout 30 $H bench -m $W/q05.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror" | sed "s/^/Q0.5B [$x] /"
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in A C B; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|qk_rope|quantize|add_" | head -9 | sed "s/^/[$x] /"
done
echo "== done at $SECONDS s"
