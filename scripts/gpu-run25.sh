#!/usr/bin/env bash
# GPU run 25 (docs/GPU.md): run 24's 270M decode (829-913 tok/s) against run 22's
# (989-1 004): the current kernels against run 22's layer.cu and mmvq.cu (commit
# 1c56089, in .gpu/fin/r22, same binary through HANGAR_CUDA_SOURCES), alternated.
set -u
cd "$(dirname "$0")/.."
H=/tmp/hangar
W=/tmp/hangar-gpu
mkdir -p $W
export HANGAR_CUDA_CACHE=$W/cuda-cache
SECONDS=0
[ -x $H ] || { xz -dc .gpu/fin/hangar.xz > $H && chmod +x $H; }
[ -f $W/g270.gguf ] || $H synth --arch gemma3 --preset gemma-3-270m --type Q4_K_M -t 16 --out $W/g270.gguf 2>&1 | tail -1
for v in now r22 now r22 now r22; do
  case $v in r22) e=HANGAR_CUDA_SOURCES=.gpu/fin/r22 ;; *) e=HANGAR_CUDA_PDL=1 ;; esac
  env $e timeout 40 $H bench -m $W/g270.gguf --device cuda --pp 0 --tg 128 -r 3 2>&1 | grep -E "^\| tg" | sed "s/^/$v /"
done
echo "== done at $SECONDS s"
