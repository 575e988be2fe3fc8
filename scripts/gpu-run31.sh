#!/usr/bin/env bash
# GPU run 31 (docs/GPU.md): the one-wave batch-1 GEMVs (`mvs1w`/`mvp1w`: a grid the
# SMs hold at once, each warp streaming its rows with four steps of weights in
# flight) against run 30's four-rows-a-block kernels, beside a same-run llama.cpp
# anchor. Variants: A default (two 256-thread blocks an SM), B one block an SM
# (HANGAR_CUDA_WAVE=1), C two steps in flight (WAVE2), D run 30's kernels
# (HANGAR_CUDA_WAVE=0), E decode attention reading one position a warp at a time
# (ATT_AU1; default: eight, their loads issued together). A, D and E must print the
# same device-check figures: the new kernels add the same numbers in the same order.
# F is run 30's decode (both off); G the down GEMV quantizing its own input (WAVE_Q8). One call on a fresh machine,
# carrying .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources).
#   bash scripts/gpu-run31.sh [full|short]   (short: no llama.cpp, the 8B checks and
#                                             the A/B only, for a nearly spent budget)
set -u
STAGE=${1:-full}
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
L=/tmp/llbuild/bin
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
if [ "$STAGE" = full ] && [ ! -d /tmp/anc ] && [ -f .gpu/anchor/llama-src-cuda.tgz ]; then
  cp -r .gpu/anchor /tmp/anc
  setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
    cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
    cmake --build /tmp/llbuild -j 10 --target llama-bench > /tmp/anc/build.log 2>&1
    echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
[ -f $W/g270.gguf ] || $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 4 --out $W/g270.gguf 2>&1 | tail -1
T=10; [ "$STAGE" = full ] || T=16
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t $T --out $W/l8b.gguf 2>&1 | tail -1
v() {
  case $1 in
    A) echo "RUN=31" ;;
    B) echo "HANGAR_CUDA_WAVE=1" ;;
    C) echo "HANGAR_CUDA_DEFINES=WAVE2" ;;
    D) echo "HANGAR_CUDA_WAVE=0" ;;
    E) echo "HANGAR_CUDA_DEFINES=ATT_AU1" ;;
    F) echo "HANGAR_CUDA_WAVE=0 HANGAR_CUDA_DEFINES=ATT_AU1" ;;
    G) echo "HANGAR_CUDA_WAVE_Q8=1" ;;
  esac
}
if [ "$STAGE" = short ]; then
  for x in A D E G; do
    env $(v $x) timeout 60 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning" | sed "s/^/8B [$x] /"
  done
  echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s)"
  for r in 1 2; do
    for x in A D E F G; do
      env $(v $x) timeout 30 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/8B [$x] /"
    done
  done
  for x in A F G; do
    env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
      | grep -E "PROFILE|mvp1|mvs1|attention|qk_rope|quantize|add_norm" | head -9 | sed "s/^/[$x] /"
  done
  echo "== short done at $SECONDS s"
  exit 0
fi
echo "== (t=$SECONDS) device-check: A (default), D (run 30's GEMVs) and E must print the same figures"
for x in A D E G; do
  env $(v $x) timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 8 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning" | sed "s/^/8B [$x] /"
  env $(v $x) timeout 60 $H device-check -m $W/g270.gguf --tokens 256 --greedy 8 -t 8 2>&1 | grep -E "^teacher|warning" | sed "s/^/270M [$x] /"
done
echo "== (t=$SECONDS) tg128 alternated, 8B (tok/s)"
for r in 1 2; do
  for x in A B C D E F G; do
    env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/8B [$x] /"
  done
done
for x in A F; do
  env $(v $x) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| tg128x8|warning" | sed "s/^/8B [$x] /"
done
for x in A F A F; do
  env $(v $x) timeout 40 $H bench -m $W/g270.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/270M [$x] /"
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for x in A F G; do
  env $(v $x) HANGAR_CUDA_PROFILE=1 timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp1|mvs1|attention|qk_rope|quantize|add_norm" | head -9 | sed "s/^/[$x] /"
done
for _ in $(seq 1 60); do [ -f /tmp/anc/done ] && break; sleep 3; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
timeout 100 $L/llama-bench -m $W/l8b.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
for x in A F; do
  env $(v $x) timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B [$x] /"
done
echo "== done at $SECONDS s"
