#!/usr/bin/env bash
# Builds llama-cpp-python (which vendors llama.cpp) into a virtual environment, with the
# flags from shared/reference/README.md, and prints the environment's python on stdout.
# The compression tests use it to check that files written by Hangar load in llama.cpp:
#   HANGAR_LLAMA_PYTHON=$(bash scripts/install-llamacpp.sh) cargo test -p hangar-compress
#   LLAMA_VENV  where to create it (default: target/llama-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${LLAMA_VENV:-target/llama-venv}
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp, numpy" 2>/dev/null; then
  echo "$(cd "$VENV" && pwd)/bin/python"
  exit 0
fi
python3 -m venv "$VENV" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAMA_CURL=OFF" \
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check llama-cpp-python==0.3.36 numpy >&2
echo "$(cd "$VENV" && pwd)/bin/python"
