#!/usr/bin/env bash
# The test suite: unit, integration (real Postgres and NATS) and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/infra.sh
# Each test makes its own database; drop the ones earlier runs left behind.
for db in $(psql -h 127.0.0.1 -U postgres -d postgres -Atc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'petrel\_test\_%'"); do
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null || true
done
cargo test --workspace --locked "$@"
