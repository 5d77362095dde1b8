#!/usr/bin/env bash
# Registry benchmark (docs/benchmarks.md, "Registry"): the same MLflow REST API 2.0 calls
# (scripts/bench_registry.py) against Petrel's registry (release build, Postgres) and
# `mlflow server` on SQLite (MLflow 3 from a throwaway virtualenv), in one run: batched metric
# writes (requests of 1,000 points), single metric writes, and a filtered, ordered search_runs.
#
#   scripts/bench-registry.sh              # 2,000 runs for the search
#   RUNS=10000 scripts/bench-registry.sh
#   PETREL_ONLY=1 RUNS=100000 scripts/bench-registry.sh   # Petrel alone (MLflow would take hours to fill)
#   UPLOAD_ONLY=1 ROUNDS=5 scripts/bench-registry.sh       # artifact uploads alone, both servers interleaved
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-2000}
scripts/infra.sh
venv=${BENCH_MLFLOW_VENV:-/tmp/petrel-bench-mlflow}
if [ ! -x "$venv/bin/mlflow" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "mlflow>=3,<4" "pandas<3"
fi
cargo build --release --locked --bins
bin=${CARGO_TARGET_DIR:-target}/release
work=.petrel/bench-registry
rm -rf "$work" && mkdir -p "$work"
psql -h 127.0.0.1 -U postgres -d postgres -q -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS petrel_bench_registry WITH (FORCE)' >/dev/null
export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true RUST_LOG=warn
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
PETREL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/petrel_bench_registry PETREL_NATS_PREFIX=benchregistry \
  PETREL_ARTIFACT_ROOT=$PWD/$work/artifacts PETREL_REGISTRY_LISTEN=127.0.0.1:18381 \
  "$bin/petrel-registry" >"$work/registry.log" 2>&1 &
pids+=($!)
PATH="$venv/bin:$PATH" mlflow server --backend-store-uri "sqlite:///$PWD/$work/mlflow.db" \
  --default-artifact-root "$PWD/$work/mlruns" --artifacts-destination "$PWD/$work/mlartifacts" --host 127.0.0.1 --port 18382 >"$work/mlflow.log" 2>&1 &
pids+=($!)
for url in http://127.0.0.1:18381/readyz http://127.0.0.1:18382/health; do
  for _ in $(seq 1 300); do curl -fs "$url" >/dev/null && break; sleep 0.2; done
done
sleep 20  # mlflow server's workers are slow for their first seconds
echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $("$venv/bin/python" -c 'import mlflow; print("mlflow", mlflow.__version__)')"
# Populating the search's runs is not timed; MLflow's SQLite store gets one client (parallel
# writers would meet "database is locked").
# Between populating and searching, each database refreshes its planner statistics, as a
# running one would (Postgres's autovacuum analyses, and is off on some development machines).
if [ -n "${UPLOAD_ONLY:-}" ]; then
  # Uploads alone, interleaved between the two servers with the ceilings (scripts/bench_upload.py).
  PYTHONPATH=scripts "$venv/bin/python" scripts/bench_upload.py http://127.0.0.1:18381 http://127.0.0.1:18382 --scratch "$work" --rounds "${ROUNDS:-5}"
  exit 0
fi
petrel=$("$venv/bin/python" scripts/bench_registry.py http://127.0.0.1:18381 --runs "$runs" --scratch "$work" --populate-threads 4 \
  --after-populate "psql -h 127.0.0.1 -U postgres -d petrel_bench_registry -qc ANALYZE")
echo "petrel $petrel"
if [ -n "${PETREL_ONLY:-}" ]; then exit 0; fi
mlflow=$("$venv/bin/python" scripts/bench_registry.py http://127.0.0.1:18382 --runs "$runs" --scratch "$work" --populate-threads 1 \
  --after-populate "$venv/bin/python -c \"import sqlite3; c = sqlite3.connect('$work/mlflow.db'); c.execute('ANALYZE'); c.commit()\"")
echo "mlflow $mlflow"
"$venv/bin/python" - "$petrel" "$mlflow" <<'PY'
import json, sys
p, m = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"batched writes: {p['batched_points_per_s']:,.0f} vs {m['batched_points_per_s']:,.0f} points/s = {p['batched_points_per_s']/m['batched_points_per_s']:.1f}x")
print(f"single write p50: {p['single_write_ms_p50']:.2f} ms vs {m['single_write_ms_p50']:.2f} ms = {m['single_write_ms_p50']/p['single_write_ms_p50']:.1f}x")
print(f"search over {p['runs']} runs p50: {p['search_ms_p50']:.1f} ms vs {m['search_ms_p50']:.1f} ms = {m['search_ms_p50']/p['search_ms_p50']:.1f}x")
if p.get("upload_mb_s"):
    print(f"artifact upload ({p['artifact_mb']} MB): {p['upload_mb_s']:.0f} MB/s vs {m['upload_mb_s']:.0f} MB/s = {p['upload_mb_s']/m['upload_mb_s']:.1f}x; "
          f"disk ceiling (write + fsync) {p['disk_mb_s']:.0f} MB/s, Petrel at {p['upload_mb_s']/p['disk_mb_s']:.0%} of it; "
          f"loopback socket into a synced file {p['socket_disk_mb_s']:.0f} MB/s, Petrel at {p['upload_mb_s']/p['socket_disk_mb_s']:.0%} of it; "
          f"the same with the SHA-256 Petrel records {p['socket_disk_sha256_mb_s']:.0f} MB/s, Petrel at {p['upload_mb_s']/p['socket_disk_sha256_mb_s']:.0%} of it")
PY
