#!/usr/bin/env bash
# GPU run 27 (docs/GPU.md): the wide K-quant decode GEMV (four lanes a block, 16-byte
# loads, the next step's weights in flight) against the narrow one it replaces
# (HANGAR_CUDA_DEFINES=K4_LANE8), and a same-run llama.cpp anchor for #17's speed goals.
#   one:     (what ran) device-check, the A/B, llama-bench and hangar bench, ncu.
#   profile: starts the llama.cpp build (background), writes the synthetic models,
#            device-check and tg128 for both GEMVs, Nsight Compute's full set on the
#            8B shape's batch-1 GEMVs for both; the opt-in four-lane Q6_K GEMV (Q6_WIDE) too.
#   anchor:  (same warm machine) hangar bench against llama-bench on the same files
#            (pp512, pp4096, tg128), serving at 64 streams (greedy and temperature 1)
#            against llama-server -np 64.
# Carry .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources); $OUT keeps the reports.
# Ran 2026-12-05 11:35 with the binary of commit 223095c (stage one, then anchor);
# the K4_LANE8 and Q6_WIDE defines existed in that commit's kernels only: the wide
# GEMVs lost and were removed after the run (docs/GPU.md, run 27).
set -u
STAGE=${1:-one}
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
L=/tmp/llbuild/bin
OUTD=${OUT:-/tmp}
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
if [ ! -d /tmp/anc ]; then
  cp -r .gpu/anchor /tmp/anc
  setsid nohup bash -c 'mkdir -p /tmp/llsrc && tar xzf /tmp/anc/llama-src-cuda.tgz -C /tmp/llsrc &&
    cmake -S /tmp/llsrc -B /tmp/llbuild -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
      -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
      -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF > /tmp/anc/cmake.log 2>&1 &&
    cmake --build /tmp/llbuild -j 10 --target llama-bench llama-server > /tmp/anc/build.log 2>&1
    echo "rc=$?" > /tmp/anc/done' > /dev/null 2>&1 < /dev/null &
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader
[ -f $W/g270.gguf ] || $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 4 --out $W/g270.gguf 2>&1 | tail -1
[ -f $W/l8b.gguf ] || $H synth --arch llama --preset llama-3-8b --type Q4_K_M -t 6 --out $W/l8b.gguf 2>&1 | tail -1
NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
case "$STAGE" in
one)
# Everything in one call (device starts were scarce): checks and the A/B first, the
# llama.cpp anchor once its build is done, then Nsight Compute on the default.
# Variants: the new default (wide K-quant GEMV, cluster norm), each change undone
# alone, both undone (run 26's kernels), and the opt-in four-lane Q6_K GEMV.
variant() {
  case $1 in
    default) echo "" ;;
    k4lane8) echo "HANGAR_CUDA_DEFINES=K4_LANE8" ;;
    nc0) echo "HANGAR_CUDA_NORM_CLUSTER=0" ;;
    run26) echo "HANGAR_CUDA_DEFINES=K4_LANE8 HANGAR_CUDA_NORM_CLUSTER=0" ;;
    q6wide) echo "HANGAR_CUDA_DEFINES=Q6_WIDE" ;;
  esac
}
echo "== (t=$SECONDS) device-check, 8B shape (a 'cluster norm kernel is off' warning means its load check failed)"
for v in default run26 q6wide; do
  env RUN=27 $(variant $v) timeout 90 $H device-check -m $W/l8b.gguf --tokens 128 --greedy 8 -t 8 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning" | sed "s/^/8B [$v] /"
done
timeout 60 $H device-check -m $W/g270.gguf --tokens 256 --greedy 8 -t 8 2>&1 | grep -E "^teacher|warning" | sed "s/^/270M /"
echo "== (t=$SECONDS) tg128 and tg128 x8 alternated (tok/s)"
for v in default k4lane8 nc0 run26 q6wide default k4lane8 nc0 run26 q6wide; do
  env RUN=27 $(variant $v) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/8B [$v] /"
done
for v in default run26; do
  env RUN=27 $(variant $v) timeout 40 $H bench -m $W/g270.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/270M [$v] /"
done
for _ in $(seq 1 60); do [ -f /tmp/anc/done ] && break; sleep 3; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
timeout 90 $L/llama-bench -m $W/l8b.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
for r in 1 2; do
  timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B /"
done
[ $SECONDS -lt 420 ] || { echo "== no time left for ncu (t=$SECONDS)"; exit 0; }
echo "== (t=$SECONDS) ncu full set, default GEMVs (graphs off)"
HANGAR_CUDA_GRAPHS=0 timeout 100 $NCU --clock-control none --set full \
  --import-source no -k regex:'^(mvp1_q4_k|mvs1_q4_k|mvs1_q6_k|add_norm_q8c)$' --launch-skip 30 --launch-count 3 \
  -o $W/r27-wide -f $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 4 -r 1 > $W/ncu-wide.log 2>&1
echo "ncu rc=$? (t=$SECONDS)"
$NCU --import $W/r27-wide.ncu-rep --page details > $OUTD/run27-ncu-wide.txt 2>&1
$NCU --import $W/r27-wide.ncu-rep --page source --csv --print-source sass -k mvp1_q4_k --launch-count 1 \
  > $OUTD/run27-sass-mvp1-wide.csv 2>&1
grep -E "^  [a-z_0-9]+ \(|Duration|DRAM Throughput|Compute \(SM\) Throughput|Warp Cycles Per Issued|Achieved Occupancy|Registers Per" $OUTD/run27-ncu-wide.txt | head -40
;;
profile)
echo "== (t=$SECONDS) device-check: the wide K-quant GEMV (default) and the narrow one (K4_LANE8)"
for v in "" K4_LANE8 Q6_WIDE; do
  HANGAR_CUDA_DEFINES=$v timeout 120 $H device-check -m $W/l8b.gguf --tokens 128 --greedy 8 -t 8 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning" | sed "s/^/8B [$v] /"
  HANGAR_CUDA_DEFINES=$v timeout 120 $H device-check -m $W/g270.gguf --tokens 256 --greedy 8 -t 8 2>&1 | grep -E "^teacher|^gpu prefill|warning" | sed "s/^/270M [$v] /"
done
echo "== (t=$SECONDS) tg128 and tg128 x8 alternated (tok/s)"
for v in "" K4_LANE8 Q6_WIDE "" K4_LANE8 Q6_WIDE "" K4_LANE8 Q6_WIDE; do
  HANGAR_CUDA_DEFINES=$v timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/8B [$v] /"
done
echo "== (t=$SECONDS) ncu full set, 8B batch-1 GEMVs (graphs off); ncu: $NCU"
for v in wide K4_LANE8; do
  d=""; [ $v = wide ] || d=$v
  HANGAR_CUDA_DEFINES=$d HANGAR_CUDA_GRAPHS=0 timeout 120 $NCU --clock-control none --set full \
    --import-source no -k regex:'^(mvp1_q4_k|mvs1_q4_k|mvs1_q6_k|add_norm_q8c)$' --launch-skip 30 --launch-count 4 \
    -o $W/r27-$v -f $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 4 -r 1 > $W/ncu-$v.log 2>&1
  echo "ncu $v rc=$? (t=$SECONDS)"; tail -2 $W/ncu-$v.log
  $NCU --import $W/r27-$v.ncu-rep --page details > $OUTD/run27-ncu-$v.txt 2>&1
  $NCU --import $W/r27-$v.ncu-rep --page source --csv --print-source sass -k mvp1_q4_k --launch-count 1 \
    > $OUTD/run27-sass-mvp1-$v.csv 2>&1
  grep -E "^  [a-z_0-9]+ \(|Duration|DRAM Throughput|Compute \(SM\) Throughput|Warp Cycles Per Issued|Achieved Occupancy|Registers Per" $OUTD/run27-ncu-$v.txt | head -40
done
;;
anchor)
for _ in $(seq 1 80); do [ -f /tmp/anc/done ] && break; sleep 3; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
for m in l8b g270; do
  timeout 150 $L/llama-bench -m $W/$m.gguf -ngl 99 -p 512,4096 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|pp4096|tg128"
  for r in 1 2; do
    timeout 90 $H bench -m $W/$m.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar $m /"
  done
  timeout 90 $H bench -m $W/$m.gguf --device cuda --pp 4096 --tg 0 -r 2 2>&1 | grep -E "^\| pp" | sed "s/^/hangar $m /"
done
echo "== (t=$SECONDS) serve, 8B shape, 64 streams"
bench() { timeout 100 python3 scripts/bench_serve.py --url $1 --streams 64 --requests-per-stream 2 \
    --max-tokens 128 --ban 2 --extra-body "$2" --label "$3" 2>&1 | tail -2; }
$H serve -m $W/l8b.gguf --device cuda --port 18080 --kv-memory 16GiB --max-running 64 \
  --no-request-log --no-monitor > $W/hangar-serve.log 2>&1 &
HP=$!
for _ in $(seq 120); do curl -sf http://127.0.0.1:18080/health > /dev/null && break; sleep 1; done
bench http://127.0.0.1:18080 '{"temperature": 0}' "hangar greedy"
bench http://127.0.0.1:18080 '{"temperature": 1}' "hangar temperature 1"
kill $HP; wait $HP 2> /dev/null
if [ -x $L/llama-server ]; then
  $L/llama-server -m $W/l8b.gguf -ngl 99 -np 64 -c 65536 --port 18081 > $W/llama-server.log 2>&1 &
  LP=$!
  for _ in $(seq 1 120); do curl -sf http://127.0.0.1:18081/health > /dev/null 2>&1 && break; sleep 1; done
  bench http://127.0.0.1:18081 '{"temperature": 0}' "llama-server -np 64 greedy"
  bench http://127.0.0.1:18081 '{"temperature": 1}' "llama-server -np 64 temperature 1"
  kill $LP; wait $LP 2> /dev/null
fi
;;
esac
echo "== $STAGE done at $SECONDS s"
