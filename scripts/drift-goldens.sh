#!/usr/bin/env bash
# Regenerates libs/drift/tests/goldens.json with pinned scipy and numpy in a throwaway venv.
# With --cross-check-evidently it instead checks the script's Evidently formulas against
# Evidently 0.7 itself (in a second venv; it needs network access to PyPI once).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${DRIFT_GOLDENS_VENV:-/tmp/petrel-drift-goldens-venv}
if [[ "${1:-}" == "--cross-check-evidently" ]]; then
  VENV=${VENV}-evidently
  [[ -x "$VENV/bin/python" ]] || { "$PY" -m venv "$VENV"; "$VENV/bin/pip" install -q "evidently==0.7.*" "pandas<3"; }
  exec "$VENV/bin/python" scripts/drift-goldens.py --cross-check-evidently
fi
[[ -x "$VENV/bin/python" ]] || { "$PY" -m venv "$VENV"; "$VENV/bin/pip" install -q scipy==1.14.1 numpy==2.1.3; }
"$VENV/bin/python" scripts/drift-goldens.py
