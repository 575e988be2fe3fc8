#!/usr/bin/env bash
# GPU run 15 (docs/GPU.md): --gpu-layers (partial offload), f16 weight copies for
# batched steps, the batched-load GEMV variant of commit c43431e timed with the same
# binary (HANGAR_CUDA_SOURCES), and `hangar serve` at 64 streams against
# `llama-server -np 64`, llama.cpp built in the same session from the shared recipe.
#
# Here: `target/release/hangar` xz-compressed to .gpu/fin/hangar.xz, llama.cpp's
# sources in .gpu/anchor (../shared/reference/gpu-anchor/make-src.sh .gpu/anchor), the
# kernel variant in .gpu/variants/bl/mmvq.cu. Device calls (carry .gpu):
#   bash scripts/gpu-run15.sh start    # starts the llama.cpp build, checks, A/B benches
#   bash scripts/gpu-run15.sh serve    # anchor benches, serve at 1/16/64 streams
# Run 16 (fresh machine): `build` (synthetic models, the llama.cpp build), then `serve`.
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
# llama.cpp (llama-bench, llama-server) from /tmp/anc's sources into /tmp/llbuild, in
# the background with JOBS compile jobs; writes /tmp/anc/done when finished.
build_anchor() {
  JOBS=$1 setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
    cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
    cmake --build /tmp/llbuild -j "$JOBS" --target llama-bench llama-server > /tmp/anc/build.log 2>&1
    echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
}
case "${1:-start}" in
start)
  xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
  rm -rf /tmp/anc $W/variants && cp -r .gpu/anchor /tmp/anc && cp -r .gpu/variants $W/
  build_anchor 12
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
  $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
  for g in all 9 0; do
    gl=""; [ $g != all ] && gl="--gpu-layers $g"
    echo "== (t=$SECONDS) device-check gemma-3-270m shape, gpu layers: $g"
    $H device-check -m $W/g270.gguf --tokens 128 --greedy 16 -t 16 $gl 2>&1 | grep -vE "^\s*$|compil" | tail -6
  done
  echo "== (t=$SECONDS) device-check llama-3-8b shape, --gpu-layers 20"
  $H device-check -m $W/l8b.gguf --tokens 32 --greedy 8 -t 16 --gpu-layers 20 2>&1 | grep -vE "^\s*$|compil" | tail -6
  echo "== (t=$SECONDS) 8B: default kernels vs the batched-load variant (c43431e)"
  for v in default bl default bl; do
    env_=(); [ $v = bl ] && env_=(HANGAR_CUDA_SOURCES=$W/variants/bl)
    echo "-- $v"; env "${env_[@]}" $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg"
  done
  echo "== (t=$SECONDS) 270M shape: default vs variant"
  for v in default bl; do
    env_=(); [ $v = bl ] && env_=(HANGAR_CUDA_SOURCES=$W/variants/bl)
    echo "-- $v"; env "${env_[@]}" $H bench -m $W/g270.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg"
  done
  echo "== (t=$SECONDS) 8B batched steps: f16 copies (default) vs dequantized per step"
  for f in 1 0; do
    echo "-- HANGAR_CUDA_F16_WEIGHTS=$f"
    HANGAR_CUDA_F16_WEIGHTS=$f $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 64 --batch 64 -r 2 2>&1 | grep -E "^device|^\| (pp|tg)"
  done
  echo "== (t=$SECONDS) 8B partial offload: --gpu-layers 24 and 28 of 32"
  for g in 28 24; do
    $H bench -m $W/l8b.gguf --device cuda --gpu-layers $g -t 16 --pp 128 --tg 32 -r 1 2>&1 | grep -E "^device|^\| (pp|tg)"
  done
  echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo running)"
  ;;
build)
  xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
  rm -rf /tmp/anc && cp -r .gpu/anchor /tmp/anc
  build_anchor 14
  $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 14 --out $W/l8b.gguf 2>&1 | tail -1
  $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 2 --out $W/g270.gguf 2>&1 | tail -1
  echo "== (t=$SECONDS) --gpu-layers 0 and a request past the layer count"
  $H generate -m $W/g270.gguf --device cuda --gpu-layers 0 -p hello -n 4 2>&1 | tail -2
  $H generate -m $W/g270.gguf --device cuda --gpu-layers 99 -p hello -n 4 2>&1 | tail -1
  echo "== (t=$SECONDS) 8B, 64 sequences (bench loop)"
  $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 --batch 64 -r 2 2>&1 | grep -E "^\| tg"
  echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo running)"
  ;;
serve)
  for _ in $(seq 1 60); do [ -f /tmp/anc/done ] && break; sleep 5; done
  echo "anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"; tail -3 /tmp/anc/build.log
  L=/tmp/llbuild/bin
  echo "== (t=$SECONDS) llama-bench (same files)"
  for m in l8b g270; do $L/llama-bench -m $W/$m.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"; done
  echo "== (t=$SECONDS) hangar bench (same files)"
  for m in l8b g270; do $H bench -m $W/$m.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)"; done
  echo "== (t=$SECONDS) serve, 8B shape: hangar vs llama-server -np 64"
  $H serve -m $W/l8b.gguf --device cuda --port 18080 --kv-memory 16GiB --max-running 64 \
    --no-request-log --no-monitor > $W/hangar-serve.log 2>&1 &
  HP=$!
  $L/llama-server -m $W/l8b.gguf -ngl 99 -np 64 -c 65536 --port 18081 > $W/llama-server.log 2>&1 &
  LP=$!
  for p in 18080 18081; do
    for _ in $(seq 1 120); do curl -sf http://127.0.0.1:$p/health > /dev/null 2>&1 && break; sleep 0.5; done
  done
  grep -E "^device" $W/hangar-serve.log
  for n in 1 16 64; do
    for p in 18080 18081; do
      python3 scripts/bench_serve.py --url http://127.0.0.1:$p --streams $n --requests-per-stream 2 \
        --max-tokens 128 --ban 2 --label "port $p" 2>&1 | tail -2
    done
  done
  kill $HP $LP; wait 2> /dev/null
  echo "== done at $SECONDS s"
  ;;
esac
