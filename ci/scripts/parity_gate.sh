#!/usr/bin/env bash
# The PR parity gate: deterministic `crossval run` on both real models, every receipt validated.
# Usage: ci/scripts/parity_gate.sh [OUT_DIR] [extra crossval run args...]
set -euo pipefail
out="${1:-receipts/runs}"
shift || true
crossval models fetch
rc=0
crossval run --deterministic --out "$out" "$@" || rc=$?
find "$out" -name '*.json' -print0 | xargs -0 crossval validate --quiet
exit "$rc"
