#!/usr/bin/env bash
# Serving benchmark (docs/benchmarks.md, "Serving"): the same wrk loads against Petrel's
# POST /v1/predict with the whole stack running (every prediction durably logged, the labeler
# and the monitor consuming), against a bare axum handler that only parses the JSON body (the
# HTTP ceiling on this machine), and optionally against `mlflow models serve`, in one run.
#
#   scripts/bench-serve.sh                 # Petrel and the ceiling
#   scripts/bench-serve.sh --mlflow        # and MLflow 3 (scikit-learn MLP) from a throwaway venv
#   DURATION=20 scripts/bench-serve.sh     # seconds per load (default 10)
#
# Prints one line per load and server, then the ratios; `--json FILE` also writes them as JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
with_mlflow=0
json_out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --mlflow) with_mlflow=1 ;;
    --json) json_out="$2"; shift ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
duration=${DURATION:-10}
scripts/infra.sh
if ! command -v wrk >/dev/null; then
  echo "--- installing wrk (Debian package)"
  apt-get update -qq >/dev/null && apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --locked --bins
bin=target/release
work=.petrel/bench-serve
rm -rf "$work" && mkdir -p "$work/logs" "$work/artifacts"
psql -h 127.0.0.1 -U postgres -d postgres -q -c 'SET client_min_messages = warning' -c 'DROP DATABASE IF EXISTS petrel_bench_serve WITH (FORCE)' >/dev/null

export PETREL_DATABASE_URL=postgres://postgres@127.0.0.1:5432/petrel_bench_serve
export PETREL_NATS_PREFIX=benchserve
export PETREL_ARTIFACT_ROOT=$PWD/$work/artifacts
export PETREL_REGISTRY_URL=http://127.0.0.1:18181
export PETREL_REGISTRY_LISTEN=127.0.0.1:18181 PETREL_TRAINER_LISTEN=127.0.0.1:18182
export PETREL_INGEST_LISTEN=127.0.0.1:18183 PETREL_PREDICTOR_LISTEN=127.0.0.1:18184
export PETREL_LABELER_LISTEN=127.0.0.1:18185 PETREL_MONITOR_LISTEN=127.0.0.1:18186
export RUST_LOG=warn
pids=()
cleanup() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
for s in registry trainer ingest predictor labeler monitor; do
  "$bin/petrel-$s" >"$work/logs/$s.log" 2>&1 &
  pids+=($!)
  [ "$s" = registry ] && sleep 1
  [ "$s" = predictor ] && predictor_pid=$!
done
for port in 18181 18182 18183 18184 18185 18186; do
  for _ in $(seq 1 100); do curl -fs "127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
done
"$bin/petrel" ingest --ingest-url http://127.0.0.1:18183 >/dev/null
for _ in $(seq 1 300); do curl -fs 127.0.0.1:18184/v1/model >/dev/null && break; sleep 0.1; done
"$bin/petrel" bench bodies --out "$work/bodies" --rows 1,1000 >/dev/null
"$bin/petrel" bench ceiling --listen 127.0.0.1:18190 2>/dev/null &
pids+=($!)
for _ in $(seq 1 50); do curl -fs -o /dev/null -X POST -d '{}' 127.0.0.1:18190/v1/predict && break; sleep 0.1; done

cat >"$work/post.lua" <<'LUA'
local f = assert(io.open(os.getenv("BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CONTENT_TYPE") or "application/json"
LUA

# CPU time (clock ticks) per process name, from /proc: where a load's CPU goes.
cpu_ticks() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{
    name = $2; gsub(/[()]/, "", name); sub(/^petrel-/, "", name)
    if (name ~ /^postgres/) name = "postgres"
    t[name] += $14 + $15 } END { for (n in t) print n, t[n] }' | sort
}

# One wrk run: prints "req_per_s p50_ms p99_ms non2xx".
measure() { # url body connections
  local out
  local threads=$(( $3 < 2 ? $3 : 2 ))
  out=$(BODY="$2" wrk -t"$threads" -c"$3" -d"${duration}s" --latency -s "$work/post.lua" "$1")
  echo "$out" >>"$work/wrk.log"
  echo "$out" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    /Non-2xx/ { bad = $NF }
    END { printf "%s %.3f %.3f %d\n", rps, p50, p99, bad + 0 }'
}

# The MLflow side: a scikit-learn MLP on penguins, served by `mlflow models serve`.
mlflow_url=""
if [ "$with_mlflow" = 1 ]; then
  venv=/tmp/petrel-bench-mlflow
  if [ ! -x "$venv/bin/mlflow" ]; then
    echo "--- installing MLflow and scikit-learn into $venv (a few minutes)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "mlflow>=3,<4" scikit-learn "pandas<3"
  fi
  export DO_NOT_TRACK=true MLFLOW_DISABLE_TELEMETRY=true
  "$venv/bin/python" scripts/bench-serve-mlflow.py --data data/penguins.csv --out "$work/mlflow"
  PATH="$venv/bin:$PATH" "$venv/bin/mlflow" models serve -m "$work/mlflow/model" --env-manager local \
    -p 18195 --host 127.0.0.1 >"$work/logs/mlflow.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 600); do curl -fs 127.0.0.1:18195/ping >/dev/null && break; sleep 0.1; done
  mlflow_url=http://127.0.0.1:18195/invocations
fi

results=()
printf '%-22s %-8s %12s %12s %9s %9s %7s\n' load server req/s rows/s p50_ms p99_ms non2xx
for load in "1 16" "1 1" "1000 1" "1000 16"; do
  set -- $load
  rows=$1 conns=$2
  for server in petrel ceiling mlflow; do
    case $server in
      petrel) url=http://127.0.0.1:18184/v1/predict body="$work/bodies/predict-$rows.json" ;;
      ceiling) url=http://127.0.0.1:18190/v1/predict body="$work/bodies/predict-$rows.json" ;;
      mlflow) [ -n "$mlflow_url" ] || continue
              url=$mlflow_url body="$work/mlflow/records-$rows.json" ;;
    esac
    [ "$server" = petrel ] && cpu_ticks >"$work/cpu-before"
    read -r rps p50 p99 bad < <(measure "$url" "$body" "$conns")
    if [ "$server" = petrel ]; then
      # CPU per request by process during this load (clock ticks are 10 ms).
      cpu_ticks >"$work/cpu-after"
      awk -v reqs="$(awk -v r="$rps" -v d="$duration" 'BEGIN { print r * d }')" -v what="$rows row(s), $conns conn" '
        NR == FNR { before[$1] = $2; next }
        { d = $2 - before[$1]; if (d > 20) out = out sprintf(" %s %.0fus", $1, d * 10000 / reqs) }
        END { print "  cpu per request (" what "):" out }' "$work/cpu-before" "$work/cpu-after" >>"$work/cpu.txt"
    fi
    rowsps=$(awk -v r="$rps" -v n="$rows" 'BEGIN { printf "%.0f", r * n }')
    printf '%-22s %-8s %12s %12s %9s %9s %7s\n' "$rows row(s), $conns conn" "$server" "$rps" "$rowsps" "$p50" "$p99" "$bad"
    results+=("{\"rows\":$rows,\"connections\":$conns,\"server\":\"$server\",\"req_per_s\":$rps,\"rows_per_s\":$rowsps,\"p50_ms\":$p50,\"p99_ms\":$p99,\"non_2xx\":$bad}")
  done
done

# Memory once loaded, and time from start to ready for a second predictor on the same data.
rss_mb=$(awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$predictor_pid/status")
start=$(date +%s%N)
PETREL_PREDICTOR_LISTEN=127.0.0.1:18187 "$bin/petrel-predictor" >"$work/logs/predictor2.log" 2>&1 &
second=$!
until curl -fs 127.0.0.1:18187/readyz >/dev/null; do sleep 0.005; done
ready_ms=$(( ($(date +%s%N) - start) / 1000000 ))
kill -TERM $second; wait $second || true
echo "predictor RSS after the loads: ${rss_mb} MB; a second predictor ready (model loaded) in ${ready_ms} ms"

echo "--- where the CPU goes (Petrel loads, whole machine)"
cat "$work/cpu.txt"
echo "--- ratios"
python3 - "$work" "${results[@]}" <<'PY'
import json, sys
rows = [json.loads(r) for r in sys.argv[2:]]
by = {(r["rows"], r["connections"], r["server"]): r for r in rows}
for (n, c, s), r in sorted(by.items()):
    if s != "petrel":
        continue
    line = f"{n} row(s), {c} conn: petrel {r['rows_per_s']:,} rows/s"
    ceil = by.get((n, c, "ceiling"))
    if ceil:
        line += f" = {r['req_per_s'] / ceil['req_per_s']:.2f} of the bare-axum ceiling"
    ml = by.get((n, c, "mlflow"))
    if ml and ml["rows_per_s"]:
        line += f", {r['rows_per_s'] / ml['rows_per_s']:.1f}x mlflow models serve"
    print(line)
PY
if [ -n "$json_out" ]; then
  printf '%s\n' "[$(IFS=,; echo "${results[*]}")]" >"$json_out"
  echo "wrote $json_out"
fi
