#!/usr/bin/env bash
# GPU checks and benchmarks of the CUDA backend, run on the GPU host with a prebuilt
# binary (nothing is built there). Usage: scripts/gpu-test.sh [HANGAR_BIN] [quick|full]
#   quick: driver/NVRTC/device sanity and GPU-vs-CPU agreement on tiny synthetic models
#   decode: the tiny checks, then A/B benches of the decode kernels (int8 GEMVs and CUDA
#          graphs against HANGAR_CUDA_GEMV=wide / HANGAR_CUDA_GRAPHS=0) on the 270M, 0.5B
#          and 8B shapes (docs/GPU.md run 6)
#   full:  + gemma-3-270m-shaped agreement and CPU/GPU benchmarks, and a
#          Llama-3-8B-shaped Q4_K_M GPU benchmark (compare with the llama.cpp anchors in
#          ../shared/reference: pp512 9185 tok/s, tg128 271 tok/s on the H200)
# Writes logs to $OUT (when set) or ./gpu-test-out. See docs/GPU.md.
set -uo pipefail
BIN=${1:-target/release/hangar}
MODE=${2:-full}
OUTDIR=${OUT:-gpu-test-out}
mkdir -p "$OUTDIR"
W=${HANGAR_GPU_WORK:-/tmp/hangar-gpu}
mkdir -p "$W"
export HANGAR_CUDA_CACHE=$W/cuda-cache
LOG=$OUTDIR/gpu-test.log
say() { echo "== $*" | tee -a "$LOG"; }
run() { echo "\$ $*" >>"$LOG"; "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

say "host"
run nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
run bash -c "ldconfig -p | grep -E 'libcuda.so|libnvrtc.so' | head -4"
run bash -c "nproc; ldd --version | head -1"

say "tiny synthetic models: GPU vs CPU"
for arch in gemma3 llama qwen2; do
  run "$BIN" synth --arch "$arch" --preset tiny --type Q4_K_M --out "$W/tiny-$arch.gguf" >/dev/null
  say "device-check $arch tiny Q4_K_M"
  run "$BIN" device-check -m "$W/tiny-$arch.gguf" --tokens 64 --greedy 32
done
for ty in Q8_0 F16; do
  run "$BIN" synth --arch llama --preset tiny --type "$ty" --out "$W/tiny-llama-$ty.gguf" >/dev/null
  say "device-check llama tiny $ty"
  run "$BIN" device-check -m "$W/tiny-llama-$ty.gguf" --tokens 64 --greedy 32
done
say "generate on the GPU (tiny gemma3)"
run "$BIN" generate -m "$W/tiny-gemma3.gguf" -p "The capital of France is" -n 16 --temperature 0 --device cuda --stats
say "serve on the GPU (tiny gemma3): 4 concurrent completions"
"$BIN" serve -m "$W/tiny-gemma3.gguf" --device cuda --port 18931 --home "$W/home" >"$W/serve.log" 2>&1 &
SERVE_PID=$!
python3 - <<'PY' 2>&1 | tee -a "$LOG"
import json, time, urllib.request, concurrent.futures as cf
url = "http://127.0.0.1:18931/v1/completions"
for _ in range(100):
    try:
        urllib.request.urlopen("http://127.0.0.1:18931/v1/models", timeout=1); break
    except Exception:
        time.sleep(0.2)
def ask(i):
    body = json.dumps({"prompt": f"Hello number {i}", "max_tokens": 16, "temperature": 0}).encode()
    r = urllib.request.urlopen(urllib.request.Request(url, body, {"content-type": "application/json"}), timeout=60)
    return json.load(r)["usage"]
with cf.ThreadPoolExecutor(4) as ex:
    print("serve --device cuda usage:", list(ex.map(ask, range(4))))
PY
kill "$SERVE_PID" 2>/dev/null; wait "$SERVE_PID" 2>/dev/null
head -3 "$W/serve.log" | tee -a "$LOG"
if [ "$MODE" = quick ]; then say "quick mode done"; exit 0; fi

if [ "$MODE" = decode ]; then
  # The decode work of run 6: int8 (dp4a) GEMVs and CUDA graphs, each A/B against the
  # previous kernels (HANGAR_CUDA_GEMV=wide) and launches (HANGAR_CUDA_GRAPHS=0).
  say "gemma-3-270m shape, Q4_K_M"
  run "$BIN" synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M --out "$W/g270m.gguf" >/dev/null
  run "$BIN" device-check -m "$W/g270m.gguf" --tokens 128 --greedy 32
  for v in "" "HANGAR_CUDA_GRAPHS=0" "HANGAR_CUDA_GEMV=wide HANGAR_CUDA_GRAPHS=0"; do
    say "bench gemma-3-270m shape: cuda ${v:-default}"
    run env $v "$BIN" bench -m "$W/g270m.gguf" --device cuda --pp 512 --tg 128 --batch 8 -r 5
  done
  say "qwen2.5-0.5b shape, Q8_0"
  run "$BIN" synth --arch qwen2 --preset qwen2.5-0.5b --type Q8_0 --out "$W/q05b.gguf" >/dev/null
  run "$BIN" device-check -m "$W/q05b.gguf" --tokens 64 --greedy 16
  run "$BIN" bench -m "$W/q05b.gguf" --device cuda --pp 512 --tg 128 -r 3
  say "llama-3-8b shape, Q4_K_M"
  [ -f "$W/l8b.gguf" ] || run "$BIN" synth --arch llama --preset llama-3-8b --type Q4_K_M --out "$W/l8b.gguf" >/dev/null
  ls -l "$W/l8b.gguf" | tee -a "$LOG"
  run "$BIN" bench -m "$W/l8b.gguf" --device cuda --pp 512 --tg 128 --batch 8 -r 3
  for v in "HANGAR_CUDA_GRAPHS=0" "HANGAR_CUDA_GEMV=wide" "HANGAR_CUDA_GEMV=wide HANGAR_CUDA_GRAPHS=0"; do
    say "llama-3-8b shape: $v"
    run env $v "$BIN" bench -m "$W/l8b.gguf" --device cuda --pp 0 --tg 128 --batch 8 -r 3
  done
  say "llama-3-8b shape: GPU vs CPU"
  run "$BIN" device-check -m "$W/l8b.gguf" --tokens 32 --greedy 8
  say "decode mode done"; exit 0
fi

say "gemma-3-270m shape, Q4_K_M"
run "$BIN" synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M --out "$W/g270m.gguf"
run "$BIN" device-check -m "$W/g270m.gguf" --tokens 128 --greedy 32
say "bench gemma-3-270m shape: cpu"
run "$BIN" bench -m "$W/g270m.gguf" --device cpu --pp 512 --tg 128 -r 3
say "bench gemma-3-270m shape: cuda"
run "$BIN" bench -m "$W/g270m.gguf" --device cuda --pp 512 --tg 128 -r 5

say "qwen2.5-0.5b shape, Q8_0"
run "$BIN" synth --arch qwen2 --preset qwen2.5-0.5b --type Q8_0 --out "$W/q05b.gguf"
run "$BIN" device-check -m "$W/q05b.gguf" --tokens 64 --greedy 16

say "llama-3-8b shape, Q4_K_M"
run "$BIN" synth --arch llama --preset llama-3-8b --type Q4_K_M --out "$W/l8b.gguf"
ls -l "$W/l8b.gguf" | tee -a "$LOG"
run "$BIN" bench -m "$W/l8b.gguf" --device cuda --pp 512 --tg 128 --batch 8 -r 3
say "llama-3-8b shape: decode through the basic GEMV for every type (HANGAR_CUDA_GEMV=basic)"
HANGAR_CUDA_GEMV=basic run "$BIN" bench -m "$W/l8b.gguf" --device cuda --pp 0 --tg 128 -r 3
say "llama-3-8b shape: decode with the wide Q6_K GEMV too (HANGAR_CUDA_GEMV=wide)"
HANGAR_CUDA_GEMV=wide run "$BIN" bench -m "$W/l8b.gguf" --device cuda --pp 0 --tg 128 -r 3
say "device-check with HANGAR_CUDA_GEMV=wide (llama tiny Q4_K_M, gemma-3-270m shape)"
HANGAR_CUDA_GEMV=wide run "$BIN" device-check -m "$W/tiny-llama.gguf" --tokens 64 --greedy 32
HANGAR_CUDA_GEMV=wide run "$BIN" device-check -m "$W/g270m.gguf" --tokens 64 --greedy 16
if [ -n "${HANGAR_GPU_TEST_GEMV_PREFILL:-}" ]; then
  say "llama-3-8b shape: prefill through the GEMV kernels instead of cuBLAS"
  HANGAR_CUDA_NO_CUBLAS=1 run "$BIN" bench -m "$W/l8b.gguf" --device cuda --pp 512 --tg 0 -r 1
fi
say "llama-3-8b shape: GPU vs CPU"
run "$BIN" device-check -m "$W/l8b.gguf" --tokens 32 --greedy 8
say "done"
