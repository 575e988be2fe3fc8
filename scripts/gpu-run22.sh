#!/usr/bin/env bash
# GPU run 22 (docs/GPU.md): programmatic dependent launch (PDL: every kernel may be
# scheduled while the previous one drains; the GEMVs prefetch their weight rows into L2
# before they wait) against plain launches in the same binary (HANGAR_CUDA_PDL=0), and
# the device greedy head (greedy rows' logits stay on the GPU) against host picks
# (HANGAR_CUDA_GREEDY=0), with llama.cpp built in the same session as the anchor.
#
# Here: `target/release/hangar` xz-compressed to .gpu/fin/hangar.xz and llama.cpp's
# sources in .gpu/anchor (../shared/reference/gpu-anchor/make-src.sh .gpu/anchor).
# Two device calls on one warm machine, carrying .gpu/fin and .gpu/anchor:
#   bash scripts/gpu-run22.sh setup   # llama.cpp build started, synthetic models, checks
#   bash scripts/gpu-run22.sh bench   # A/B benches, llama-bench, serving at 64 streams
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
setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
  cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
  cmake --build /tmp/llbuild -j 10 --target llama-bench llama-server > /tmp/anc/build.log 2>&1
  echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 4 --out $W/g270.gguf 2>&1 | tail -1
$H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 6 --out $W/l8b.gguf 2>&1 | tail -1
for v in 1 0 nc; do
  echo "== (t=$SECONDS) device-check, HANGAR_CUDA_PDL=$v"
  case $v in nc) e=HANGAR_CUDA_SOURCES=.gpu/fin/nc ;; *) e=HANGAR_CUDA_PDL=$v ;; esac
  env $e timeout 150 $H device-check -m $W/g270.gguf --tokens 512 --greedy 16 -t 6 2>&1 | grep -vE "^\s*$|compil" | tail -5
  env $e timeout 150 $H device-check -m $W/l8b.gguf --tokens 128 --greedy 8 -t 6 2>&1 | grep -vE "^\s*$|compil" | tail -5
done
echo "== done at $SECONDS s"
;;
bench)
# nopf: PDL without the GEMVs' L2 prefetch (.gpu/fin/nopf/common.cuh, a copy of the
# shared helpers with prefetch_row_l2 emptied, through HANGAR_CUDA_SOURCES); nc: PDL
# with the K-quant weight loads past L1 (.gpu/fin/nc/mmvq.cu, ld.global.nc.L1::no_allocate).
for m in l8b g270; do
  for v in 1 0 nopf nc 1 0 nopf nc; do
    echo "-- (t=$SECONDS) $m HANGAR_CUDA_PDL=$v"
    case $v in nopf|nc) e=HANGAR_CUDA_SOURCES=.gpu/fin/$v ;; *) e=HANGAR_CUDA_PDL=$v ;; esac
    env $e timeout 90 $H bench -m $W/$m.gguf --device cuda --pp 512 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| (pp|tg)"
  done
done
for _ in $(seq 1 60); do [ -f /tmp/anc/done ] && break; sleep 5; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
for m in l8b g270; do
  timeout 120 $L/llama-bench -m $W/$m.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
done
echo "== (t=$SECONDS) serve, 8B shape, 64 streams: hangar (device greedy head, then HANGAR_CUDA_GREEDY=0) vs llama-server -np 64"
serve_hangar() {
  env "$@" $H serve -m $W/l8b.gguf --device cuda --port 18080 --kv-memory 16GiB --max-running 64 \
    --no-request-log --no-monitor > $W/hangar-serve.log 2>&1 &
  HP=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18080/health > /dev/null 2>&1 && break; sleep 0.5; done
  grep -E "^device" $W/hangar-serve.log
  timeout 100 python3 scripts/bench_serve.py --url http://127.0.0.1:18080 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --label "hangar $*" 2>&1 | tail -2
  kill $HP; wait $HP 2> /dev/null
}
serve_hangar HANGAR_CUDA_GREEDY=1
serve_hangar HANGAR_CUDA_GREEDY=0
if [ -x $L/llama-server ]; then
  $L/llama-server -m $W/l8b.gguf -ngl 99 -np 64 -c 65536 --port 18081 > $W/llama-server.log 2>&1 &
  LP=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18081/health > /dev/null 2>&1 && break; sleep 0.5; done
  timeout 100 python3 scripts/bench_serve.py --url http://127.0.0.1:18081 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --label "llama-server -np 64" 2>&1 | tail -2
  kill $LP; wait $LP 2> /dev/null
fi
echo "== done at $SECONDS s"
;;
esac
