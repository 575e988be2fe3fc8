#!/usr/bin/env bash
# GPU run 55 (seventeenth session): where prefill time goes, on run 52's warm machine
# (binary of commit 597d4e2; the 1B and 8B shapes written by runs 52 and 54). Two calls,
# as they ran: `a` the kernel profile of pp512 (event timings, graphs off), `b` the
# plain attention kernel just under its 2 048-position threshold against the
# tensor-core one at it.
#   bash scripts/gpu-run55.sh a|b
set -u
W=/tmp/hangar-gpu
export HANGAR_CUDA_CACHE=$W/cuda-cache
case ${1:-a} in
a)
  HANGAR_CUDA_PROFILE=1 timeout 60 /tmp/hangar bench -m $W/l1b.gguf --device cuda --pp 512 --tg 0 -r 2 2>&1 | tail -40
  HANGAR_CUDA_PROFILE=1 timeout 60 /tmp/hangar bench -m $W/l8b.gguf --device cuda --pp 512 --tg 0 -r 1 2>&1 | tail -25
  ;;
b)
  for m in l1b l8b; do for p in 2040 2048 2040 2048; do
    echo "$m pp$p: $(timeout 60 /tmp/hangar bench -m $W/$m.gguf --device cuda --pp $p --tg 0 -r 2 2>&1 | grep -E '^\| pp')"
  done; done
  HANGAR_CUDA_PROFILE=1 timeout 60 /tmp/hangar bench -m $W/l8b.gguf --device cuda --pp 2048 --tg 0 -r 1 2>&1 | grep -E "attention|PROFILE"
  ;;
esac
