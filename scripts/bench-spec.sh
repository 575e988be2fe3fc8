#!/usr/bin/env bash
# Speculative decoding A/B at batch 1 on the CPU: for each task in tests/data/spec
# (input-grounded summarise / extract / edit / code edit, and an open-ended poem
# where prompt lookup has nothing to copy), `hangar bench --speculative` decodes the
# task greedily with and without speculation in the same process, alternating which
# goes first, and reports the median tok/s of each, the acceptance rate and whether
# the tokens are identical.
#
# Usage: scripts/bench-spec.sh [MODE] [K] [RUNS] [MAX_TOKENS]
#   MODE ngram (default) or draft (then set DRAFT_MODEL=path.gguf)
#   K    most drafted tokens per step (default 8, adaptive)
# Env: HANGAR (binary, default target/release/hangar), HANGAR_MODEL, THREADS (0).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-ngram}
K=${2:-8}
RUNS=${3:-3}
TG=${4:-128}
HANGAR=${HANGAR:-target/release/hangar}
THREADS=${THREADS:-0}
extra=()
if [ "$MODE" = draft ]; then
  : "${DRAFT_MODEL:?set DRAFT_MODEL=path.gguf for MODE=draft}"
  extra=(--draft-model "$DRAFT_MODEL")
fi
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg) cores: $(nproc)"
echo "# $HANGAR bench --speculative $MODE --draft-tokens $K --tg $TG --runs $RUNS --chat"
for task in tests/data/spec/*.txt; do
  "$HANGAR" bench -t "$THREADS" --speculative "$MODE" --draft-tokens "$K" "${extra[@]}" \
    --prompt-file "$task" --chat --tg "$TG" --runs "$RUNS"
done
echo "# end load: $(cut -d' ' -f1-3 /proc/loadavg)"
