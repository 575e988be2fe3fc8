#!/usr/bin/env bash
# GPU run 52 (written in the sixteenth session, NOT RUN YET: its device time ran out).
# After run 50 the graph key was made coarser: the longest row only as 1 / 2-15 / 16+,
# the logits rows only by their number, no sequence count (runner.rs `forward`). The
# launches do not depend on what was dropped, so steps that launch the same list now
# share one graph. This run checks that with HANGAR_CUDA_REUSE=check (every reusable
# step rebuilt and compared). It covers the tiny models with batch invariance, the 270M
# shape, and a server under a mix the coarser key merges: greedy and sampled requests
# at once, prompts of many lengths. Then it re-anchors run 50's decode (run 51 ran out
# before its anchor). One call carrying .gpu/fin and .gpu/anchor:
#   bash scripts/gpu-run52.sh
set -u
cd "$(dirname "$0")/.."
. scripts/gpu-lib.sh
# The checks first, the 8B written beside them: a call cut short still has them.
gpu_begin l8b-bg
echo "== (t=$SECONDS) REUSE=check: tiny models, 270M shape"
for a in gemma3 llama qwen2; do
  $H synth --arch $a --preset tiny --type Q4_K_M --out $W/tiny-$a.gguf > /dev/null 2>&1
  HANGAR_CUDA_REUSE=check timeout 120 $H device-check -m $W/tiny-$a.gguf --tokens 64 --greedy 32 --batch-invariance 3,6 2>&1 \
    | grep -E "^teacher|^device greedy|^batch inv|REUSE|warning|rror|panic" | sed "s/^/tiny $a: /"
done
$H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M --out $W/g270m.gguf > /dev/null 2>&1
echo "== (t=$SECONDS) REUSE=check: a server, 16 greedy and sampled requests at once, twice"
HANGAR_CUDA_REUSE=check $H serve -m $W/g270m.gguf --device cuda --port 18931 --home $W/home > $W/serve.log 2>&1 &
SP=$!
python3 scripts/gpu-mixed-requests.py 18931
kill -INT $SP; sleep 3; kill $SP 2>/dev/null; wait $SP 2>/dev/null
grep -E "REUSE|warning|panic" $W/serve.log | head -5 | sed "s/^/serve log: /"
wait $SYN; tail -1 $W/synth.log
echo "== (t=$SECONDS) REUSE=check: 8B at batch 1 and 8; device-check (run 50: 62/64, 61/64, 0.8456)"
for b in 1 8; do
  HANGAR_CUDA_REUSE=check timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 64 --tg 64 --batch $b -r 1 2>&1 | grep -E "REUSE|warning|rror|panic" | sed "s/^/l8b x$b: /"
done
timeout 90 $H device-check -m $W/l8b.gguf --tokens 64 --greedy 8 -t 16 2>&1 | grep -E "^teacher|^gpu prefill|warning|rror|panic"
echo "== (t=$SECONDS) $(anchor_wait); quiet machine from here"
anchor_bench $W/l8b.gguf
timeout 60 $H bench -m $W/l8b.gguf --device cuda --pp 512 --tg 128 -r 3 2>&1 | grep -E "^\| (pp|tg)" | sed "s/^/hangar 8B /"
echo "== done at $SECONDS s"
