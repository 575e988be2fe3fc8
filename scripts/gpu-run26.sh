#!/usr/bin/env bash
# GPU run 26 (docs/GPU.md, not yet run: the eighth session had no device machine).
# The sampling head (kernels/sample.cu): its load-time self-check, device-check's
# comparison with the host reference on the 270M and 8B shapes, and serving sampled
# requests (temperature 1, and llama.cpp's defaults) at 64 streams with the head
# on and with HANGAR_CUDA_SAMPLE=0 (rows copied to the host), greedy as the anchor.
# Then the opt-in tensor-core prefill attention (HANGAR_CUDA_ATT_MMA=1): heads of 64
# against the CPU at 2 100 tokens (1B shape), heads of 128 against the CUDA-core
# tiled kernel (8B perplexity at a 4 096 context, same numbers expected to ~1e-4),
# and pp4096 alternated. And the opt-in batched K-quant GEMV loads
# (HANGAR_CUDA_DEFINES=GEMV_BATCH) and the converged shuffles (UNIFORM_SHFL):
# device-check figures must repeat the default's exactly (same arithmetic, same
# order), then batch-1 decode alternated.
# Three calls, each under the 10-minute limit (each makes the files it needs if a
# fresh machine lost them): `bash scripts/gpu-run26.sh head`, `... decode`, `... attn`.
# Carry .gpu/fin (hangar.xz, the stripped release binary).
set -u
STAGE=${1:-head}
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
[ -f $W/g270.gguf ] || $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 16 --out $W/l8b.gguf 2>&1 | tail -1
if [ "$STAGE" = head ]; then
echo "== (t=$SECONDS) device-check (a 'sampling head is off' warning means the self-check failed)"
timeout 150 $H device-check -m $W/g270.gguf --tokens 256 --greedy 8 -t 6 2>&1 | grep -vE "^\s*$|compil" | tail -6
timeout 60 $H device-check -m $W/g270.gguf --tokens 256 --layers -t 6 2>&1 | tail -20
timeout 150 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 6 2>&1 | grep -vE "^\s*$|compil" | tail -6
serve_hangar() {
  local label=$1 body=$2; shift 2
  env "$@" $H serve -m $W/l8b.gguf --device cuda --port 18080 --kv-memory 16GiB --max-running 64 \
    --no-request-log --no-monitor > $W/hangar-serve.log 2>&1 &
  local pid=$!
  for _ in $(seq 120); do curl -sf http://127.0.0.1:18080/health > /dev/null && break; sleep 1; done
  grep -iE "^device|warning" $W/hangar-serve.log
  timeout 100 python3 scripts/bench_serve.py --url http://127.0.0.1:18080 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --extra-body "$body" --label "$label" 2>&1 | tail -2
  curl -s http://127.0.0.1:18080/metrics | grep -E "^hangar_sampling_head"
  kill $pid; wait $pid 2> /dev/null
}
echo "== (t=$SECONDS) serve, 8B shape, 64 streams"
serve_hangar "greedy (device greedy head)" '{"temperature": 0}'
serve_hangar "temperature 1, head" '{"temperature": 1}' HANGAR_CUDA_SAMPLE=1
serve_hangar "temperature 1, host" '{"temperature": 1}' HANGAR_CUDA_SAMPLE=0
serve_hangar "t 0.8 top-k 40 top-p 0.95 min-p 0.05, head" '{"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}' HANGAR_CUDA_SAMPLE=1
serve_hangar "t 0.8 top-k 40 top-p 0.95 min-p 0.05, host" '{"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}' HANGAR_CUDA_SAMPLE=0
fi
if [ "$STAGE" = decode ]; then
echo "== (t=$SECONDS) opt-in decode variants (HANGAR_CUDA_DEFINES): same bits expected, then tg128 alternated"
for v in "" GEMV_BATCH UNIFORM_SHFL GEMV_BATCH,UNIFORM_SHFL; do
  HANGAR_CUDA_DEFINES=$v timeout 120 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 6 2>&1 | grep -E "^teacher|^gpu prefill" | sed "s/^/[$v] /"
  HANGAR_CUDA_DEFINES=$v timeout 120 $H device-check -m $W/g270.gguf --tokens 128 --greedy 8 -t 6 2>&1 | grep -E "^teacher|^gpu prefill" | sed "s/^/270M [$v] /"
done
for v in "" GEMV_BATCH GEMV_BATCH,UNIFORM_SHFL "" GEMV_BATCH GEMV_BATCH,UNIFORM_SHFL "" GEMV_BATCH GEMV_BATCH,UNIFORM_SHFL; do
  for m in l8b g270; do
    HANGAR_CUDA_DEFINES=$v timeout 40 $H bench -m $W/$m.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/$m [$v] /"
  done
done
fi
if [ "$STAGE" = attn ]; then
[ -f $W/l1b.gguf ] || $H synth --arch llama --preset llama-3.2-1b --type Q4_K_M -t 16 --out $W/l1b.gguf 2>&1 | tail -1
echo "== (t=$SECONDS) attention_mma: 1B shape, 2 100 tokens, against the CPU"
HANGAR_CUDA_ATT_MMA=1 timeout 150 $H device-check -m $W/l1b.gguf --tokens 2100 --greedy 4 -t 16 2>&1 | grep -vE "^\s*$|compil" | tail -4
echo "== (t=$SECONDS) 8B perplexity at ctx 4096: CUDA-core tiled (0) vs tensor cores (1)"
for v in 0 1; do
  HANGAR_CUDA_ATT_MMA=$v timeout 90 $H perplexity -m $W/l8b.gguf -f tests/data/ppl/long_text.txt --ctx 4096 --device cuda 2>&1 | tail -1 | sed "s/^/ATT_MMA=$v /"
done
for v in 0 1 0 1; do
  HANGAR_CUDA_ATT_MMA=$v timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 4096 --tg 0 -r 2 2>&1 | grep -E "^\| pp" | sed "s/^/ATT_MMA=$v /"
done
fi
echo "== $STAGE done at $SECONDS s"
