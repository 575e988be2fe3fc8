#!/usr/bin/env bash
# GPU run 53 (seventeenth session): serving at 64 streams on the 8B shape against
# llama-server -np 64, both on the same machine, after the graph reuse of runs 50-52.
# Run on the machine that ran scripts/gpu-run52.sh while it is still warm (llama.cpp's
# build tree and the 8B file are there): it builds llama-server into that tree, then
# serves greedy requests with Hangar's default, with HANGAR_CUDA_REUSE=0, with the
# default again, then with llama-server. Carry .gpu/fin and .gpu/anchor:
#   bash scripts/gpu-run53.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_warm l8b.gguf
gpu_info
echo "== (t=$SECONDS) building llama-server"
cmake --build /tmp/llbuild -j 14 --target llama-server > /tmp/anc/server-build.log 2>&1
echo "llama-server build rc=$? (t=$SECONDS)"
serve_hangar() {
  env "$@" $H serve -m $W/l8b.gguf --device cuda --port 18080 --kv-memory 16GiB --max-running 64 \
    --no-request-log --no-monitor > $W/hangar-serve.log 2>&1 &
  HP=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18080/health > /dev/null 2>&1 && break; sleep 0.5; done
  timeout 100 python3 scripts/bench_serve.py --url http://127.0.0.1:18080 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --label "hangar $*" 2>&1 | tail -2
  kill $HP; wait $HP 2> /dev/null
}
echo "== (t=$SECONDS) serve, 8B shape, 64 streams x 2 requests x 128 tokens, greedy"
serve_hangar RUN=53
serve_hangar HANGAR_CUDA_REUSE=0
serve_hangar RUN=53
if [ -x $L/llama-server ]; then
  $L/llama-server -m $W/l8b.gguf -ngl 99 -np 64 -c 65536 --port 18081 > $W/llama-server.log 2>&1 &
  LP=$!
  for _ in $(seq 1 240); do curl -sf http://127.0.0.1:18081/health > /dev/null 2>&1 && break; sleep 0.5; done
  timeout 150 python3 scripts/bench_serve.py --url http://127.0.0.1:18081 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --label "llama-server -np 64" 2>&1 | tail -2
  kill $LP; wait $LP 2> /dev/null
fi
serve_hangar RUN=53
echo "== done at $SECONDS s"
