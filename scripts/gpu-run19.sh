#!/usr/bin/env bash
# GPU run 19 (docs/GPU.md): the attention kernels reading ATT_ILP positions per warp at
# once and split-K aiming at more blocks, against run 18's kernels in the same binary
# (HANGAR_CUDA_SOURCES=.gpu/variants/r18, run 18's attention.cu) and split-K's target
# (HANGAR_CUDA_SPLITK=512 / 0); decode at depth 0 and 4096, prefill of 4096 tokens; the
# llama.cpp anchor built in the same session from the shared recipe.
#
# Here: `target/release/hangar` xz-compressed to .gpu/fin/hangar.xz, llama.cpp's sources
# in .gpu/anchor, `git show d5bce61:crates/cuda/src/kernels/attention.cu` in
# .gpu/variants/r18/. Two device calls on one warm machine, carrying .gpu:
#   bash scripts/gpu-run19.sh setup   # llama.cpp build started, synthetic models, checks
#   bash scripts/gpu-run19.sh bench   # A/B benches, llama-bench
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
L=/tmp/llbuild/bin
R18=$PWD/.gpu/variants/r18
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
b() { # label, env..., then bench args
  local label=$1; shift
  echo "-- (t=$SECONDS) $label"
  env "$@" 2>&1 | grep -E "^\| (pp|tg)"
}
case "${1:-setup}" in
setup)
  xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
  rm -rf /tmp/anc && cp -r .gpu/anchor /tmp/anc
  setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
    cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
    cmake --build /tmp/llbuild -j 8 --target llama-bench > /tmp/anc/build.log 2>&1
    echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 4 --out $W/g270.gguf 2>&1 | tail -1
  $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 8 --out $W/l8b.gguf 2>&1 | tail -1
  echo "== (t=$SECONDS) device-check (new kernels)"
  $H device-check -m $W/g270.gguf --tokens 512 --greedy 16 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
  $H device-check -m $W/l8b.gguf --tokens 256 --greedy 8 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
  ;;
bench)
  for m in l8b g270; do
    A=($H bench -m $W/$m.gguf --device cuda -r 3)
    for r in 1 2; do
      b "$m tg128 new" "${A[@]}" --pp 0 --tg 128
      b "$m tg128 r18" HANGAR_CUDA_SOURCES=$R18 "${A[@]}" --pp 0 --tg 128
      b "$m tg128@d4096 new" "${A[@]}" --pp 0 --tg 128 --depth 4096
      b "$m tg128@d4096 new, split target 512" HANGAR_CUDA_SPLITK=512 "${A[@]}" --pp 0 --tg 128 --depth 4096
      b "$m tg128@d4096 r18" HANGAR_CUDA_SOURCES=$R18 "${A[@]}" --pp 0 --tg 128 --depth 4096
    done
    b "$m pp4096 new" "${A[@]}" --pp 4096 --tg 0
    b "$m pp4096 r18" HANGAR_CUDA_SOURCES=$R18 "${A[@]}" --pp 4096 --tg 0
  done
  for _ in $(seq 1 60); do [ -f /tmp/anc/done ] && break; sleep 5; done
  echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
  for m in l8b g270; do
    $L/llama-bench -m $W/$m.gguf -ngl 99 -p 4096 -n 128 -d 0,4096 -r 3 -fa 1 -o md 2>&1 | grep -E "pp4096|tg128"
  done
  echo "== done at $SECONDS s"
  ;;
esac
