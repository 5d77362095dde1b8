#!/usr/bin/env bash
# Times Evidently 0.7's DataDriftPreset against `petrel drift --preset evidently` on the same
# CSV files (4 numeric, 2 categorical columns; 10k, 100k and 1M rows per side), checks that the
# per-column decisions agree, and prints medians and ratios. CSV parsing is excluded on both
# sides (see scripts/bench_drift.py). Results go in docs/benchmarks.md.
#
#   scripts/bench-drift.sh [ROWS...]      default: 10000 100000 1000000
#   REPEAT=5 scripts/bench-drift.sh       runs per size (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${BENCH_DRIFT_VENV:-/tmp/petrel-bench-drift-venv}
DATA=${BENCH_DRIFT_DATA:-/tmp/petrel-bench-drift-data}
REPEAT=${REPEAT:-3}
SIZES=("$@")
[[ ${#SIZES[@]} -gt 0 ]] || SIZES=(10000 100000 1000000)

[[ -x "$VENV/bin/python" ]] || { "$PY" -m venv "$VENV"; "$VENV/bin/pip" install -q "evidently==0.7.*" "pandas<3"; }
cargo build --release -q --locked --bins  # the workspace: `-p` would re-resolve features and rebuild every dependency
BIN=${CARGO_TARGET_DIR:-target}/release/petrel

echo "evidently $("$VENV/bin/python" -c 'import evidently; print(evidently.__version__)'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%9s  %12s  %15s  %13s  %8s  %s\n' rows evidently_s petrel_drift_ms petrel_wall_s ratio decisions
for n in "${SIZES[@]}"; do
  dir="$DATA/$n"
  [[ -f "$dir/current.csv" ]] || "$VENV/bin/python" scripts/bench_drift.py generate "$n" "$dir"
  line=$("$VENV/bin/python" -W ignore scripts/bench_drift.py run "$n" "$dir" "$BIN" "$REPEAT" 2>/dev/null)
  echo "$line" | "$VENV/bin/python" scripts/bench_drift.py show
  echo "$line" >> "$DATA/results.jsonl"
done
