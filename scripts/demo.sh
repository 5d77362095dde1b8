#!/usr/bin/env bash
# The whole loop on this machine: builds, starts the six services as separate processes,
# ingests penguins, trains and promotes a model, sends normal then drifted traffic, and exits 0
# once the monitor's alert arrives. Extra arguments go to `petrel demo` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/infra.sh
cargo build --locked --bins
exec "${CARGO_TARGET_DIR:-target}/debug/petrel" demo "$@"
