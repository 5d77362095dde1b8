#!/usr/bin/env bash
# Labeler bulk-label benchmark for docs/benchmarks.md: starts petrel-labeler on a fresh database
# (petrel_bench_labels) and NATS namespace (benchlabels), then posts N labels (100,000) in
# requests of BATCH (10,000), one request after the other, and prints labels/s for:
#   csv-waiting   CSV bodies, ids without predictions (the labels wait)
#   json-waiting  the same as JSON bodies
#   csv-joining   CSV bodies for ids whose predictions the labeler already holds, so every label
#                 is joined and announced (one labels.joined event per 256 labels, via the outbox)
# Predictions for the last case are seeded straight into the labeler's table with psql: the
# benchmark is about the label path, not the consumer.
#
# The default is the debug profile, whose dependencies are optimised (opt-level 2) but whose
# Petrel crates are not; CARGO_PROFILE_DEV_OPT_LEVEL=2 optimises those too (a few minutes of
# rebuilding, best in a separate CARGO_TARGET_DIR); PROFILE=release builds a release binary (a
# full release build of the dependencies, burn included: long on a small machine). Needs
# Postgres and NATS running (scripts/infra.sh), curl and psql. The namespace's stream is
# reused between runs; it keeps events 7 days.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-100000}
BATCH=${BATCH:-10000}
PORT=${PORT:-18185}
PROFILE=${PROFILE:-debug}
target=${CARGO_TARGET_DIR:-target}
pg=postgres://postgres@127.0.0.1:5432
db=petrel_bench_labels
url=http://127.0.0.1:$PORT

if [ "$PROFILE" = release ]; then
  cargo build --workspace --release --bin petrel-labeler
else
  cargo build --workspace --bin petrel-labeler
fi
bin=$target/$PROFILE/petrel-labeler

work=$(mktemp -d)
pid=
cleanup() {
  [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

psql "$pg/postgres" -q -c 'SET client_min_messages = warning' \
  -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
RUST_LOG=warn "$bin" --listen "127.0.0.1:$PORT" --database-url "$pg/$db" \
  --nats-prefix benchlabels >"$work/labeler.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do curl -fs "$url/readyz" >/dev/null && break; sleep 0.1; done
curl -fs "$url/readyz" >/dev/null || { cat "$work/labeler.log"; exit 1; }

# Request bodies, written before the clock starts: batch k of run r holds ids r-<k*BATCH+i>.
classes=(Adelie Gentoo Chinstrap)
make_bodies() { # run format
  local run=$1 format=$2
  for ((k = 0; k * BATCH < N; k++)); do
    local from=$((k * BATCH)) to=$(((k + 1) * BATCH < N ? (k + 1) * BATCH : N))
    if [ "$format" = csv ]; then
      { echo inference_id,label
        seq "$from" $((to - 1)) | awk -v r="$run" '{ c = $1 % 3; print r "-" $1 "," (c == 0 ? "Adelie" : c == 1 ? "Gentoo" : "Chinstrap") }'
      } >"$work/$run-$k.body"
    else
      seq "$from" $((to - 1)) | awk -v r="$run" 'BEGIN { printf "{\"labels\": [" }
        { c = $1 % 3; printf "%s{\"inference_id\": \"%s-%d\", \"label\": \"%s\"}", (NR > 1 ? "," : ""), r, $1, (c == 0 ? "Adelie" : c == 1 ? "Gentoo" : "Chinstrap") }
        END { print "]}" }' >"$work/$run-$k.body"
    fi
  done
}

post_all() { # run format expected_joined_per_request
  local run=$1 format=$2 type
  [ "$format" = csv ] && type=text/csv || type=application/json
  local start end accepted=0 joined=0
  start=$(date +%s.%N)
  for f in $(ls "$work/$run"-*.body | sort -V); do
    local answer
    answer=$(curl -fsS -X POST "$url/v1/labels" -H "content-type: $type" --data-binary "@$f")
    # Read without starting a process per request, which would weigh on the measurement.
    [[ $answer =~ \"accepted\":([0-9]+) ]] && accepted=$((accepted + BASH_REMATCH[1]))
    [[ $answer =~ \"joined\":([0-9]+) ]] && joined=$((joined + BASH_REMATCH[1]))
  done
  end=$(date +%s.%N)
  [ "$accepted" -eq "$N" ] || { echo "$run: accepted $accepted of $N" >&2; exit 1; }
  awk -v r="$run" -v n="$N" -v b="$BATCH" -v j="$joined" -v s="$start" -v e="$end" 'BEGIN {
    printf "%-13s %d labels in requests of %d: %.2f s, %.0f labels/s (%d joined)\n", r, n, b, e - s, n / (e - s), j }'
}

make_bodies csv-waiting csv
make_bodies json-waiting json
make_bodies csv-joining csv
psql "$pg/$db" -q -c "INSERT INTO labeler.joins (inference_id, model_name, model_version,
    predicted_class, predicted_at, received_at)
  SELECT 'csv-joining-' || i, 'penguins', 1, 'Adelie', now(), now() FROM generate_series(0, $N - 1) AS i" \
  -c 'VACUUM ANALYZE labeler.joins' >/dev/null

echo "petrel-labeler ($PROFILE profile${CARGO_PROFILE_DEV_OPT_LEVEL:+, Petrel crates at opt-level $CARGO_PROFILE_DEV_OPT_LEVEL}), $(nproc) cores, load $(cut -d" " -f1 /proc/loadavg)"
# The floor: Postgres's COPY of the same rows, through psql, into a table with the same key.
for f in $(ls "$work"/csv-waiting-*.body | sort -V); do tail -n +2 "$f"; done >"$work/all.csv"
psql "$pg/$db" -q -c 'CREATE TABLE public.copy_floor (inference_id TEXT PRIMARY KEY, label TEXT,
  labelled_at TIMESTAMPTZ NOT NULL DEFAULT now())'
start=$(date +%s.%N)
psql "$pg/$db" -q -c "\\copy public.copy_floor (inference_id, label) FROM '$work/all.csv' WITH (FORMAT csv)"
awk -v n="$N" -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {
  printf "%-13s %d rows in one COPY: %.2f s, %.0f rows/s\n", "copy-floor", n, e - s, n / (e - s) }'
post_all csv-waiting csv
post_all json-waiting json
post_all csv-joining csv
# The outbox relay publishes the joins after the commits; wait for it, to see the whole cost.
start=$(date +%s.%N)
for _ in $(seq 1 600); do
  left=$(psql "$pg/$db" -tA -c 'SELECT count(*) FROM labeler.outbox WHERE published_at IS NULL')
  [ "$left" -eq 0 ] && break
  sleep 0.1
done
events=$(psql "$pg/$db" -tA -c "SELECT count(*) FROM labeler.outbox WHERE subject LIKE '%labels.joined'")
awk -v s="$start" -v e="$(date +%s.%N)" -v n="$events" 'BEGIN {
  printf "outbox        %d labels.joined events published %.2f s after the last commit\n", n, e - s }'
