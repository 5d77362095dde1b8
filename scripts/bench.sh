#!/usr/bin/env bash
# Benchmarks for docs/benchmarks.md: builds release binaries, starts the six services on a fresh
# database (petrel_bench) and NATS namespace (bench), trains the penguins model, then measures
# POST /v1/predict over HTTP and the model code in process. Prints one line per measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/infra.sh
cargo build --release --locked --bins
bin=target/release
work=.petrel/bench
rm -rf "$work" && mkdir -p "$work/logs" "$work/artifacts"
psql -h 127.0.0.1 -U postgres -d postgres -q -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS petrel_bench WITH (FORCE)' >/dev/null

export PETREL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/petrel_bench
export PETREL_NATS_PREFIX=bench
export PETREL_ARTIFACT_ROOT=$PWD/$work/artifacts
export PETREL_REGISTRY_URL=http://127.0.0.1:18081
export PETREL_REGISTRY_LISTEN=127.0.0.1:18081 PETREL_TRAINER_LISTEN=127.0.0.1:18082
export PETREL_INGEST_LISTEN=127.0.0.1:18083 PETREL_PREDICTOR_LISTEN=127.0.0.1:18084
export PETREL_LABELER_LISTEN=127.0.0.1:18085 PETREL_MONITOR_LISTEN=127.0.0.1:18086
export RUST_LOG=warn
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
# The registry first: it creates the database the others share.
for s in registry trainer ingest predictor labeler monitor; do
  "$bin/petrel-$s" >"$work/logs/$s.log" 2>&1 &
  pids+=($!)
  [ "$s" = registry ] && sleep 1
done
for port in 18081 18082 18083 18084 18085 18086; do
  for _ in $(seq 1 100); do curl -fs "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
"$bin/petrel" ingest --ingest-url http://127.0.0.1:18083 >/dev/null
for _ in $(seq 1 300); do curl -fs 127.0.0.1:18084/v1/model >/dev/null && break; sleep 0.1; done

url=http://127.0.0.1:18084
"$bin/petrel" bench predict --predictor-url $url --requests 5000 --concurrency 1 --rows 1
"$bin/petrel" bench predict --predictor-url $url --requests 20000 --concurrency 16 --rows 1
"$bin/petrel" bench predict --predictor-url $url --requests 2000 --concurrency 8 --rows 100
"$bin/petrel" bench model
