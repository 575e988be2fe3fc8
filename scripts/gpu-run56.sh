#!/usr/bin/env bash
# GPU run 56 (seventeenth session, NOT RUN YET): the tensor-core prefill attention from 128
# positions (was 2 048) in steps of 64+ tokens a sequence. Run 55 had found pp2040 on
# the plain kernel 5-10x slower than pp2048 on the tensor-core one. Correctness first
# (device-check on the 1B shape, heads of 64, at 128 and 512 tokens, new against old
# threshold; a server under a mix of prompt lengths with REUSE=check), then prefill
# speed at 64-1024 tokens, alternated (HANGAR_CUDA_MMA_MIN=2048 is the old rule, =64 a
# lower threshold than the default 128).
# One call on a fresh machine, carrying .gpu/fin:
#   bash scripts/gpu-run56.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
gpu_setup
gpu_info
synth_once l1b --arch llama --preset llama-3.2-1b --type Q4_K_M -t 16
echo "== (t=$SECONDS) device-check, 1B shape (run 46 at 64 tokens: 60/64, 59/64, 0.3806 / 0.4737)"
for n in 128 512; do
  for v in RUN=56 HANGAR_CUDA_MMA_MIN=2048; do
    env $v timeout 60 $H device-check -m $W/l1b.gguf --tokens $n --greedy 8 -t 16 2>&1 \
      | grep -E "^teacher|^gpu prefill|warning|rror|panic" | sed "s/^/1B $n [$v] /"
  done
done
echo "== (t=$SECONDS) REUSE=check: a 1B server, 16 requests of 1-300 words at once, greedy and sampled, twice"
HANGAR_CUDA_REUSE=check $H serve -m $W/l1b.gguf --device cuda --port 18931 --home $W/home > $W/serve.log 2>&1 &
SP=$!
python3 scripts/gpu-mixed-requests.py 18931 20
kill -INT $SP; sleep 2; kill $SP 2>/dev/null; wait $SP 2>/dev/null
grep -E "REUSE|warning|panic" $W/serve.log | head -5 | sed "s/^/serve log: /"
echo "== (t=$SECONDS) prefill tok/s, 1B shape, alternated"
for p in 64 128 256 512 1024; do
  for v in RUN=56 HANGAR_CUDA_MMA_MIN=64 HANGAR_CUDA_MMA_MIN=2048 RUN=56 HANGAR_CUDA_MMA_MIN=64 HANGAR_CUDA_MMA_MIN=2048; do
    env $v timeout 30 $H bench -m $W/l1b.gguf --device cuda --pp $p --tg 0 -r 3 2>&1 | grep -E "^\| pp" | sed "s/^/1B [$v] /"
  done
done
echo "== done at $SECONDS s"
