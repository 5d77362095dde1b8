#!/usr/bin/env bash
# Times ingest on a ~1 GB penguins CSV (23.5M rows, noisy so that rows are distinct) against
# pandas' read_csv plus the same checks written in pandas (scripts/bench_ingest.py), in one
# run, and prints medians, rows/s, MB/s, ingest's peak resident memory and the ratios.
# Results go in docs/benchmarks.md.
#
#   scripts/bench-ingest.sh              ROWS=23500000 REPEAT=3 by default
#   ROWS=2000000 REPEAT=1 scripts/bench-ingest.sh
#
# Ingest runs as a release build against the local Postgres and NATS, with its artifact store,
# data directory and spool on local disk. Each ingest run uses a new dataset name, so no run is
# answered from the digest of an earlier one (datasets are deduplicated by name, digest and
# schema).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${BENCH_INGEST_VENV:-/tmp/petrel-bench-ingest-venv}
DATA=${BENCH_INGEST_DATA:-/tmp/petrel-bench-ingest}
ROWS=${ROWS:-23500000}
REPEAT=${REPEAT:-3}
PORT=${BENCH_INGEST_PORT:-18283}
DB=${BENCH_INGEST_DB:-petrel_bench_ingest}

[[ -x "$VENV/bin/python" ]] || { "$PY" -m venv "$VENV"; "$VENV/bin/pip" install -q pandas pyarrow; }
cargo build --release -q --locked --bins  # the workspace: `-p` would re-resolve features and rebuild every dependency
BIN=${CARGO_TARGET_DIR:-target}/release

mkdir -p "$DATA/data" "$DATA/spool"
FILE="$DATA/data/penguins.csv"
if [[ ! -f "$FILE" || $(($(wc -l < "$FILE") - 1)) -ne $ROWS ]]; then
  "$BIN/petrel" penguins --rows "$ROWS" --seed 7 --noise 0.3 --missing 0.01 --out "$FILE"
fi
cat > "$DATA/checks.json" <<'EOF'
{
  "columns": {
    "bill_length_mm": {"min": 32, "max": 60, "max_missing_share": 0.05},
    "bill_depth_mm": {"min": 13, "max": 22},
    "flipper_length_mm": {"min": 170, "max": 235},
    "body_mass_g": {"min": 2700, "max": 6300},
    "island": {"categories": ["Biscoe", "Dream", "Torgersen"]},
    "species": {"categories": ["Adelie", "Chinstrap", "Gentoo"]}
  },
  "max_rejected_share": 0.2,
  "max_duplicate_share": 0.01
}
EOF

OUT="$DATA/results"
rm -rf "$OUT" "$DATA/artifacts" "$DATA/spool"/*
mkdir -p "$OUT" "$DATA/spool"
echo "pandas $("$VENV/bin/python" -c 'import pandas; print(pandas.__version__)'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
"$VENV/bin/python" -W ignore scripts/bench_ingest.py pandas "$FILE" "$DATA/checks.json" "$REPEAT" "$OUT"

# Each mode in a fresh ingest process, so that its peak resident memory is that of the runs.
PID=
trap '[[ -n $PID ]] && kill $PID 2>/dev/null || true' EXIT
for mode in path upload; do
  psql -q -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $DB" \
    -c "CREATE DATABASE $DB" >/dev/null
  "$BIN/petrel-ingest" --listen "127.0.0.1:$PORT" \
    --database-url "postgres://postgres@127.0.0.1:5432/$DB" \
    --nats-prefix "bench-ingest-$$" --artifact-root "$DATA/artifacts" \
    --data-dir "$DATA/data" --spool-dir "$DATA/spool" --scheduler false \
    > "$DATA/ingest-$mode.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.2; done
  "$VENV/bin/python" -W ignore scripts/bench_ingest.py ingest "$mode" "$FILE" "$DATA/checks.json" \
    "http://127.0.0.1:$PORT" "$PID" "$REPEAT" "$OUT"
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  rm -rf "$DATA/artifacts"
done
"$VENV/bin/python" scripts/bench_ingest.py show "$FILE" "$OUT"
