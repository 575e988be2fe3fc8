#!/usr/bin/env bash
# GPU run 18 (docs/GPU.md): split-K attention for decode at small batches (the
# att_split_* kernels) against the one-launch kernel in the same binary
# (HANGAR_CUDA_SPLITK=0), at depth 0 and at long contexts (`bench --depth`, llama-bench's
# -d), checks on both paths, and llama.cpp built in the same session from the shared
# recipe as the anchor.
#
# Here: `target/release/hangar` xz-compressed to .gpu/fin/hangar.xz and llama.cpp's
# sources in .gpu/anchor (../shared/reference/gpu-anchor/make-src.sh .gpu/anchor).
# Two device calls on one warm machine, carrying .gpu:
#   bash scripts/gpu-run18.sh setup   # llama.cpp build started, synthetic models, checks
#   bash scripts/gpu-run18.sh bench   # A/B benches, kernel profile, llama-bench
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
L=/tmp/llbuild/bin
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
case "${1:-setup}" in
setup)
xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
rm -rf /tmp/anc && cp -r .gpu/anchor /tmp/anc
JOBS=12 setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
  cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
  cmake --build /tmp/llbuild -j 8 --target llama-bench > /tmp/anc/build.log 2>&1
  echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 4 --out $W/g270.gguf 2>&1 | tail -1
$H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 8 --out $W/l8b.gguf 2>&1 | tail -1
for v in 1 0; do
  echo "== (t=$SECONDS) device-check, HANGAR_CUDA_SPLITK=$v"
  HANGAR_CUDA_SPLITK=$v $H device-check -m $W/g270.gguf --tokens 512 --greedy 16 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
  HANGAR_CUDA_SPLITK=$v $H device-check -m $W/l8b.gguf --tokens 256 --greedy 8 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
done
;;
bench)
for m in l8b g270; do
  for d in 0 4096; do
    for v in 1 0 1 0; do
      echo "-- (t=$SECONDS) $m depth $d HANGAR_CUDA_SPLITK=$v"
      HANGAR_CUDA_SPLITK=$v $H bench -m $W/$m.gguf --device cuda --pp 0 --tg 128 --depth $d -r 3 2>&1 | grep -E "^\| tg"
    done
  done
done
for v in 1 0; do
  echo "== (t=$SECONDS) kernel profile, 8B depth 4096, HANGAR_CUDA_SPLITK=$v (graphs off, events around launches)"
  HANGAR_CUDA_PROFILE=1 HANGAR_CUDA_SPLITK=$v $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 32 --depth 4096 -r 1 2>&1 | grep -E "HANGAR_CUDA_PROFILE|att|mvs|mvp|add_norm" | head -12
done
for _ in $(seq 1 60); do [ -f /tmp/anc/done ] && break; sleep 5; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
for m in l8b g270; do
  $L/llama-bench -m $W/$m.gguf -ngl 99 -p 0 -n 128 -d 0,4096 -r 3 -fa 1 -o md 2>&1 | grep -E "tg128"
done
echo "== done at $SECONDS s"
;;
esac
