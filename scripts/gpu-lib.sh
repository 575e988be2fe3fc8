# Shared steps of the GPU run scripts (scripts/gpu-run38.sh onwards), sourced from
# the checkout's root on the GPU host: the carried binary, the kernel cache, the GPU's
# name, the synthetic models, and llama.cpp built in the background as the anchor.

# H: the binary (unpacked from .gpu/fin/hangar.xz), W: models and cache, L: llama.cpp.
gpu_setup() {
  H=/tmp/hangar
  W=/tmp/hangar-gpu
  L=/tmp/llbuild/bin
  mkdir -p $W
  export HANGAR_CUDA_CACHE=$W/cuda-cache
  SECONDS=0
  rm -f $H; xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H
}

# The same names on a machine an earlier call left warm (binary, models and llama.cpp's
# build there); stops the script when they are not.
gpu_warm() {
  H=/tmp/hangar
  W=/tmp/hangar-gpu
  L=/tmp/llbuild/bin
  export HANGAR_CUDA_CACHE=$W/cuda-cache
  SECONDS=0
  [ -x $H ] && [ -f $W/$1 ] || { echo "no warm machine with $W/$1: run the earlier script first"; exit 1; }
}

# The GPU's name and clocks (or the fields asked for).
gpu_info() {
  nvidia-smi --query-gpu=${1:-name,memory.total,driver_version,clocks.max.sm,clocks.max.mem} --format=csv,noheader
}

# `hangar synth ARGS --out $W/NAME.gguf` unless the file is there (a warm machine).
synth_once() {
  local name=$1; shift
  [ -f $W/$name.gguf ] || $H synth "$@" --out $W/$name.gguf 2>&1 | tail -1
}

# llama.cpp's llama-bench (sources vendored in llama-cpp-python 0.3.36, carried in
# .gpu/anchor), built for sm_90 in the background; /tmp/anc/done holds its exit code.
anchor_build_bg() {
  [ ! -x $L/llama-bench ] && [ -f .gpu/anchor/llama-src-cuda.tgz ] || return 0
  [ -e /tmp/anc/started ] && return 0 # a second call while the first call's build runs
  rm -rf /tmp/anc; cp -r .gpu/anchor /tmp/anc; touch /tmp/anc/started
  setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
    cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
    cmake --build /tmp/llbuild -j 10 --target llama-bench > /tmp/anc/build.log 2>&1
    echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
}

# Waits up to 300 s for the background build; prints its state.
anchor_wait() {
  for _ in $(seq 1 100); do [ -f /tmp/anc/done ] && break; sleep 3; done
  echo "anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
}

# The opening of a two-phase run (a: checks and A/B, b: anchor on a quiet machine):
# the binary, the background llama.cpp build, the GPU, and the 8B and 1B shapes. The
# synth quantizes on 14 of the host's 16 cores beside the build's 10 jobs (runs 46-48
# gave it 8: 137-142 s for the 8B, about 8% of a session's device time a machine; the
# build has slack, phase b waits for it). SYNTH_THREADS overrides.
# `gpu_begin l8b` writes only the 8B; `gpu_begin l8b-bg` writes it in the background
# (12 threads, its pid in SYN: `wait $SYN` before using it) so checks can run beside it.
gpu_begin() {
  gpu_setup
  anchor_build_bg
  gpu_info
  if [ "${1:-}" = l8b-bg ]; then
    (synth_once l8b --arch llama --preset llama-3-8b --type Q4_K_M -t 12 > $W/synth.log 2>&1) &
    SYN=$!
    return 0
  fi
  synth_once l8b --arch llama --preset llama-3-8b --type Q4_K_M -t ${SYNTH_THREADS:-14}
  [ "${1:-}" = l8b ] && return 0
  synth_once l1b --arch llama --preset llama-3.2-1b --type Q4_K_M -t ${SYNTH_THREADS:-14}
}

# llama.cpp's llama-bench on FILE (flash attention on, three runs): pp512 and tg128.
anchor_bench() {
  timeout 120 $L/llama-bench -m "$1" -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
}

# Serving at 64 streams (2 greedy requests of 128 tokens each, scripts/bench_serve.py):
# `serve_bench_hangar MODEL [VAR=VALUE ...]` serves MODEL under those variables,
# `serve_bench_llama MODEL` the same with llama-server -np 64 (when it is built).
serve_bench_hangar() {
  local model=$1; shift
  env "$@" $H serve -m $model --device cuda --port 18080 --kv-memory 16GiB --max-running 64 \
    --no-request-log --no-monitor > $W/hangar-serve.log 2>&1 &
  local pid=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18080/health > /dev/null 2>&1 && break; sleep 0.5; done
  timeout 100 python3 scripts/bench_serve.py --url http://127.0.0.1:18080 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --label "hangar $*" 2>&1 | tail -2
  kill $pid; wait $pid 2> /dev/null
}
serve_bench_llama() {
  [ -x $L/llama-server ] || return 0
  $L/llama-server -m $1 -ngl 99 -np 64 -c 65536 --port 18081 > $W/llama-server.log 2>&1 &
  local pid=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18081/health > /dev/null 2>&1 && break; sleep 0.5; done
  timeout 150 python3 scripts/bench_serve.py --url http://127.0.0.1:18081 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --label "llama-server -np 64" 2>&1 | tail -2
  kill $pid; wait $pid 2> /dev/null
}
