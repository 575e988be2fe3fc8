#!/usr/bin/env bash
# GPU run 41 (docs/GPU.md): the session's final binary. The streamed GEMVs as the
# default (two CTAs an SM of eight consumer warps, whole-row stages, activations staged
# in lane order) beside a same-run llama.cpp anchor. Variants: P default, L activations
# staged as they are (STREAM_ACT_LINEAR: run 40's K), A the hoisted kernels
# (HANGAR_CUDA_STREAM=0). P, L and A must print the same device-check figures.
# llama.cpp builds in the background while the checks and the A/B run; the anchor and
# Hangar's pp512/tg128 then run on a quiet machine, on the same file. One call on a
# fresh machine, carrying .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources).
#   bash scripts/gpu-run41.sh
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
L=/tmp/llbuild/bin
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
rm -f $H; xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
if [ ! -x $L/llama-bench ] && [ -f .gpu/anchor/llama-src-cuda.tgz ]; then
  rm -rf /tmp/anc; cp -r .gpu/anchor /tmp/anc
  setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
    cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
    cmake --build /tmp/llbuild -j 10 --target llama-bench > /tmp/anc/build.log 2>&1
    echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 8 --out $W/l8b.gguf 2>&1 | tail -1
v() {
  case $1 in
    P) echo "RUN=41" ;;
    L) echo "HANGAR_CUDA_DEFINES=STREAM_ACT_LINEAR" ;;
    A) echo "HANGAR_CUDA_STREAM=0" ;;
  esac
}
echo "== (t=$SECONDS) device-check, P, L and A (run 40: 8B 62/64 61/64 0.8456)"
for x in P L A; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror|panic" | sed "s/^/8B [$x] /"
done
env $(v P) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8,16 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/8B [P] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s; the llama.cpp build may still run)"
for r in 1 2 3; do
  for x in P L A; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in P L; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|add_|quantize|panic|rror" | head -7 | sed "s/^/[$x] /"
done
for _ in $(seq 1 100); do [ -f /tmp/anc/done ] && break; sleep 3; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done'); quiet machine from here"
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
for x in P A L; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -n 128 -p 0 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
env $(v P) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/hangar 8B [P] /"
echo "== done at $SECONDS s"
