#!/usr/bin/env bash
# GPU run 40 (docs/GPU.md): the streamed GEMVs as the default (two CTAs an SM of eight
# consumer warps; gate/up stages of half rows) beside a same-run llama.cpp anchor.
# Variants: T default, A the hoisted kernels (HANGAR_CUDA_STREAM=0), K gate/up stages
# of whole rows (run 39's T: STREAM_MVP_K16), X ten consumer warps. llama.cpp builds
# in the background (sources vendored in llama-cpp-python 0.3.36, sm_90) while the
# checks and the A/B run; the anchor and Hangar's pp512/tg128 run after it, on a quiet
# machine, on the same file (Hangar's synth output). One call on a fresh machine,
# carrying .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources).
#   bash scripts/gpu-run40.sh
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
    T) echo "RUN=40" ;;
    A) echo "HANGAR_CUDA_STREAM=0" ;;
    K) echo "HANGAR_CUDA_DEFINES=STREAM_MVP_K16" ;;
    X) echo "HANGAR_CUDA_STREAM_WARPS=10" ;;
  esac
}
echo "== (t=$SECONDS) device-check, T and A (run 39: 8B 62/64 61/64 0.8456)"
for x in T A; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|greedy head|warning|rror|panic" | sed "s/^/8B [$x] /"
done
env $(v T) timeout 90 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 8 -t 16 --batch-invariance 2,4,8 2>&1 | grep -iE "invarian|warning|rror|panic" | sed "s/^/8B [T] /"
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s; the llama.cpp build may still run)"
for r in 1 2 3; do
  for x in T A K X; do
    env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning|rror|panic" | sed "s/^/8B [$x] /"
  done
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in T K X; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp|mvs|attention|add_|quantize|panic|rror" | head -8 | sed "s/^/[$x] /"
done
for _ in $(seq 1 100); do [ -f /tmp/anc/done ] && break; sleep 3; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
for x in T A; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
timeout 120 $L/llama-bench -m $W/l8b.gguf -ngl 99 -n 128 -p 0 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
echo "== done at $SECONDS s"
