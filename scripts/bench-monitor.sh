#!/usr/bin/env bash
# Monitor and labeler under the predictor's rated load (docs/benchmarks.md, "Monitor"): starts
# the registry, monitor and labeler (release builds) on a fresh database and namespace, then
# `petrel bench monitor` publishes predictions.logged at RATE predictions/s for SECS seconds,
# as predictors at that load would, and prints each second the consumers' backlog and the
# services' memory, then how late windows closed and whether every prediction was reported.
#
#   scripts/bench-monitor.sh               # 15,000 predictions/s for 30 s, 5-second windows
#   RATE=5000 SECS=60 scripts/bench-monitor.sh
#   PROFILE=debug RATE=500 SECS=5 scripts/bench-monitor.sh   # a quick check that it runs
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${RATE:-15000}
secs=${SECS:-30}
scripts/infra.sh
profile=${PROFILE:-release}
if [ "$profile" = release ]; then cargo build --release --locked --bins; else cargo build --locked --bins; fi
bin=${CARGO_TARGET_DIR:-target}/$profile
work=.petrel/bench-monitor
rm -rf "$work" && mkdir -p "$work/logs" "$work/artifacts"
psql -h 127.0.0.1 -U postgres -d postgres -q -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS petrel_bench_monitor WITH (FORCE)' >/dev/null

export PETREL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/petrel_bench_monitor
export PETREL_NATS_PREFIX=benchmonitor
export PETREL_ARTIFACT_ROOT=$PWD/$work/artifacts
export PETREL_REGISTRY_URL=http://127.0.0.1:18281
export PETREL_MONITOR_URL=http://127.0.0.1:18286
export PETREL_REGISTRY_LISTEN=127.0.0.1:18281 PETREL_LABELER_LISTEN=127.0.0.1:18285
export PETREL_MONITOR_LISTEN=127.0.0.1:18286
export PETREL_MONITOR_WINDOW_SECS=5 PETREL_MONITOR_WINDOW_LATENESS_SECS=2
export RUST_LOG=warn
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
for s in registry labeler monitor; do
  "$bin/petrel-$s" >"$work/logs/$s.log" 2>&1 &
  pids+=($!)
  [ "$s" = registry ] && sleep 1
  [ "$s" = labeler ] && labeler_pid=$!
  [ "$s" = monitor ] && monitor_pid=$!
done
for port in 18281 18285 18286; do
  for _ in $(seq 1 100); do curl -fs "127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg); monitor pid $monitor_pid, labeler pid $labeler_pid"
"$bin/petrel" bench monitor --rate "$rate" --secs "$secs" --pids "$monitor_pid,$labeler_pid"
