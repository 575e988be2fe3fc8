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
echo "== (t=$SECONDS) serve, 8B shape, 64 streams x 2 requests x 128 tokens, greedy"
serve_bench_hangar $W/l8b.gguf RUN=53
serve_bench_hangar $W/l8b.gguf HANGAR_CUDA_REUSE=0
serve_bench_hangar $W/l8b.gguf RUN=53
serve_bench_llama $W/l8b.gguf
serve_bench_hangar $W/l8b.gguf RUN=53
echo "== done at $SECONDS s"
