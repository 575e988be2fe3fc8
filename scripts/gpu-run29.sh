#!/usr/bin/env bash
# GPU run 29 (docs/GPU.md): three decode changes, each with its switch, against the
# kernels they replace and with a same-run llama.cpp anchor:
#  - the batch-1 GEMVs with their loads hoisted (a warp holds four steps of weights in
#    registers, the first chunk loaded before the PDL wait; NO_HOIST: the old loop,
#    HOIST2: two steps);
#  - the gate/up kernel quantizing its own output (HANGAR_CUDA_MVP_Q8=0: off);
#  - RoPE and the K/V store folded into decode attention (HANGAR_CUDA_ATT_ROPE=0: off).
# Every variant computes the same sums, so device-check must print the same figures.
# Ran 2026-12-05 21:56 (stage ab, an H100) with the binary of commit d896099; the q8_1
# tail and its HANGAR_CUDA_MVP_Q8 switch existed in that commit only (removed after the
# run: docs/GPU.md run 29).
#   ab:     starts the llama.cpp build (background), writes the synthetic models,
#           device-check for the three variants, tg128 alternated, Nsight Compute on
#           the 8B shape's batch-1 GEMVs for the default and NO_HOIST.
#   anchor: (same warm machine) llama-bench and hangar bench on the same files.
# Carry .gpu/fin (hangar.xz) and .gpu/anchor (llama.cpp sources); $OUT keeps the reports.
set -u
STAGE=${1:-ab}
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
L=/tmp/llbuild/bin
OUTD=${OUT:-/tmp}
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
if [ ! -d /tmp/anc ] && [ -f .gpu/anchor/llama-src-cuda.tgz ]; then
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
variant() {
  case $1 in
    all) echo "RUN=29" ;;
    hoist2) echo "HANGAR_CUDA_DEFINES=HOIST2" ;;
    nohoist) echo "HANGAR_CUDA_DEFINES=NO_HOIST" ;;
    nofuse) echo "HANGAR_CUDA_MVP_Q8=0 HANGAR_CUDA_ATT_ROPE=0" ;;
    base) echo "HANGAR_CUDA_DEFINES=NO_HOIST HANGAR_CUDA_MVP_Q8=0 HANGAR_CUDA_ATT_ROPE=0" ;;
  esac
}
case "$STAGE" in
ab)
echo "== (t=$SECONDS) device-check (every variant must print the same figures: same sums)"
for v in all base nohoist nofuse hoist2; do
  env $(variant $v) timeout 90 $H device-check -m $W/l8b.gguf --tokens 128 --greedy 8 -t 8 2>&1 | grep -E "^teacher|^gpu prefill|greedy head|warning" | sed "s/^/8B [$v] /"
done
for v in all base; do
  env $(variant $v) timeout 60 $H device-check -m $W/g270.gguf --tokens 256 --greedy 8 -t 8 2>&1 | grep -E "^teacher|warning" | sed "s/^/270M [$v] /"
done
env RUN=29 timeout 150 $H device-check -m $W/l8b.gguf --tokens 16 --greedy 24 --batch-invariance 2,4,8,16 -t 16 2>&1 | grep -E "batch invariance|warning" | sed "s/^/8B [all] /"
echo "== (t=$SECONDS) tg128 and tg128 x8 alternated (tok/s)"
for v in all base nohoist nofuse hoist2 all base nohoist nofuse hoist2; do
  env $(variant $v) timeout 40 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 128 --batch 8 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/8B [$v] /"
done
for v in all base all base; do
  env $(variant $v) timeout 40 $H bench -m $W/g270.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg|warning" | sed "s/^/270M [$v] /"
done
echo "== (t=$SECONDS) kernel profile, 8B batch 1 (events around every launch, graphs off)"
for v in all base; do
  env $(variant $v) HANGAR_CUDA_PROFILE=1 timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 64 -r 1 2>&1 \
    | grep -E "PROFILE|mvp1|mvs1|attention|qk_rope|quantize|add_norm" | head -9 | sed "s/^/[$v] /"
done
[ $SECONDS -lt 450 ] || { echo "== no time left for ncu (t=$SECONDS)"; exit 0; }
echo "== (t=$SECONDS) ncu full set, 8B batch-1 GEMVs (graphs off); ncu: $NCU"
for v in all base; do
  env $(variant $v) HANGAR_CUDA_GRAPHS=0 timeout 100 $NCU --clock-control none --set full \
    --import-source no -k regex:'^(mvp1_q4_k|mvs1_q4_k|mvs1_q6_k)$' --launch-skip 30 --launch-count 4 \
    -o $W/r29-$v -f $H bench -m $W/l8b.gguf --device cuda --pp 0 --tg 4 -r 1 > $W/ncu-$v.log 2>&1
  echo "ncu $v rc=$? (t=$SECONDS)"; tail -2 $W/ncu-$v.log
  $NCU --import $W/r29-$v.ncu-rep --page details > $OUTD/run29-ncu-$v.txt 2>&1
  grep -E "^  [a-z_0-9]+ \(|Duration|DRAM Throughput|Warp Cycles Per Issued|Achieved Occupancy|Registers Per" $OUTD/run29-ncu-$v.txt | head -30
done
;;
anchor)
for _ in $(seq 1 80); do [ -f /tmp/anc/done ] && break; sleep 3; done
echo "== (t=$SECONDS) anchor build: $(cat /tmp/anc/done 2>/dev/null || echo 'not done')"
for m in l8b g270; do
  timeout 150 $L/llama-bench -m $W/$m.gguf -ngl 99 -p 512 -n 128 -r 3 -fa 1 -o md 2>&1 | grep -E "pp512|tg128"
  for v in all base all base; do
    env $(variant $v) timeout 90 $H bench -m $W/$m.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar $m [$v] /"
  done
done
;;
esac
echo "== $STAGE done at $SECONDS s"
