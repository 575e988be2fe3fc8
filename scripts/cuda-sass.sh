#!/usr/bin/env bash
# Reads the kernels' SASS without a GPU: NVRTC compiles every unit to a CUBIN (as the
# runner does), NVIDIA's cuobjdump and nvdisasm (PyPI, CUDA 13) print each
# kernel's registers and, per kernel, how many global loads, dp4a / tensor-core
# instructions and WARPSYNC.COLLECTIVE sequences (shuffles the compiler could not
# prove converged) its SASS holds. docs/GPU.md (eighth session) reads these.
#
#   bash scripts/cuda-sass.sh [ARCH] [DEFINE,...]      e.g. sm_90a GEMV_BATCH,UNIFORM_SHFL
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-sm_90a}
DEFS=${2:-}
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/hangar
NVRTC_DIR=${HANGAR_NVRTC_DIR:-$CACHE/nvrtc-13}
TOOLS=$CACHE/cuobjdump-13
PY=${PYTHON:-python3}
if [ ! -f "$NVRTC_DIR/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  $PY -m pip install --quiet --disable-pip-version-check --no-deps --target "$NVRTC_DIR" "nvidia-cuda-nvrtc>=13,<14"
fi
if [ ! -x "$TOOLS/nvidia/cu13/bin/cuobjdump" ] || [ ! -x "$TOOLS/nvidia/cu13/bin/nvdisasm" ]; then
  # cuobjdump prints SASS through nvdisasm: both wheels.
  $PY -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$TOOLS" \
    "nvidia-cuda-cuobjdump>=13,<14" "nvidia-cuda-nvdisasm>=13,<14"
fi
export PATH="$TOOLS/nvidia/cu13/bin:$PATH"
export HANGAR_NVRTC_LIB="$NVRTC_DIR/nvidia/cu13/lib/libnvrtc.so.13"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
HANGAR_CUDA_DEFINES=$DEFS cargo run --quiet --release -p hangar-cuda --example dump_cubin -- "$ARCH" "$OUT" > /dev/null
OBJ="$TOOLS/nvidia/cu13/bin/cuobjdump"
printf "%-22s %5s %7s %6s %6s %6s %5s\n" kernel regs instr LDG dp4a HMMA coll
for f in "$OUT"/*.cubin; do
  "$OBJ" -res-usage "$f" 2>/dev/null | awk '/Function/{f=$2; sub(":","",f)} /REG:/{match($0,/REG:[0-9]+/); print f, substr($0,RSTART+4,RLENGTH-4)}' > "$OUT/regs.txt"
  "$OBJ" -sass "$f" 2>/dev/null | awk -v regs="$OUT/regs.txt" '
    BEGIN { while ((getline l < regs) > 0) { split(l, a, " "); r[a[1]] = a[2] } }
    /Function :/ { f = $3; k[f] = 1 }
    /^ *\/\*[0-9a-f]+\*\// { n[f]++ }
    /LDG/ { g[f]++ }  /IDP\.4A/ { d[f]++ }  /HMMA/ { h[f]++ }  /WARPSYNC.COLLECTIVE/ { c[f]++ }
    END { for (f in k) printf "%-22s %5s %7d %6d %6d %6d %5d\n", f, r[f], n[f], g[f], d[f], h[f], c[f] }' | sort
done
