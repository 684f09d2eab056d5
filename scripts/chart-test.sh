#!/usr/bin/env bash
# Render + lint charts/portcullis with real Helm code and validate every object (see
# charts/tests/chart_test.py). Usage: scripts/chart-test.sh [scenario...] > report.json
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
bash "$ROOT/scripts/chart-setup.sh"
export PORTCULLIS_ROOT="$ROOT"
exec "$ROOT/.venv/bin/python" "$ROOT/charts/tests/chart_test.py" "$@"
